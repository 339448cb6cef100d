"""The HTTP API: Synthesize Bio's GEM-1 endpoints, served from local model bundles.

Hosted (asynchronous) protocol, what pysynthbio/rsynthbio use by default::

    POST /api/models/{model_id}/predict          -> {"modelQueryId": id}
    GET  /api/model-queries/{id}/status          -> {"status": queued|running|ready|failed,
                                                     "downloadUrl" (ready), "message" (failed)}
    GET  <downloadUrl>  (signed, expiring, no bearer token) -> the result JSON (gzip)

Self-hosted (synchronous) protocol: the same POST with
``Accept: application/vnd.apache.arrow.stream`` answers with an Arrow IPC stream.

Both validate the query before accepting it (422 with every problem; 404 for an
unknown model) and run it on a worker process (:mod:`opengem.server.worker`).

:func:`create_app` assembles the application: the body-limit middleware, the docs,
the web page (:mod:`opengem.server.ui`), the API's routers
(:mod:`opengem.server.routes`), the per-model OpenAPI document
(:mod:`opengem.server.openapi`) and the lifespan that runs the workers. The routes
share one :class:`~opengem.server.state.ServerState`, reached through the
:data:`~opengem.server.state.State` dependency.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import opengem
from opengem.server import openapi
from opengem.server.config import ServerConfig
from opengem.server.routes import ROUTERS
from opengem.server.state import ServerState

log = logging.getLogger("opengem.server")


class BodyLimitMiddleware:
    """413 for request bodies over ``max_bytes`` (declared or streamed); 408 for a body
    that stalls ``timeout_s`` between chunks. Once the body is in, ``receive`` is the
    server's own, without a time limit: a response streaming for minutes waits on it
    for the client's disconnect."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    def _detail(self) -> str:
        return f"request body too large: this server accepts at most {self.max_bytes:,} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    response = JSONResponse({"detail": self._detail()}, status_code=413)
                    await response(scope, receive, send)
                    return
        seen, body_done = 0, False

        async def limited() -> Message:
            nonlocal seen, body_done
            if body_done:  # what follows the body is the disconnect: no time limit on it
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError:
                raise HTTPException(
                    408, f"the request body stalled: no data for {self.timeout_s:g} s"
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self._detail())
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, limited, send)


def _mount_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) with every asset served by opengem; ``/redoc`` points there."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse, RedirectResponse
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/static/swagger-ui", StaticFiles(directory=swagger_ui_path), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/swagger-ui/favicon-32x32.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> RedirectResponse:
        return RedirectResponse("/docs")


def create_app(config: ServerConfig, *, start_workers: bool = True) -> FastAPI:
    """The FastAPI application; ``start_workers=False`` serves the API without running
    queries (tests, or workers started elsewhere)."""
    state = ServerState(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if start_workers:
            state.supervisor.start()
        else:
            state.supervisor.recover()
        threading.Thread(target=lambda: state.registry, name="warm-up", daemon=True).start()
        try:
            yield
        finally:
            if start_workers:
                await run_in_threadpool(state.supervisor.stop)
            state.store.close()

    app = FastAPI(
        title="opengem",
        version=opengem.__version__,
        description=(
            "Open generative gene-expression models behind Synthesize Bio's GEM-1 API: "
            "the pysynthbio and rsynthbio clients work unchanged, hosted (asynchronous, "
            "JSON behind a signed URL) or self-hosted (synchronous Arrow stream)."
        ),
        lifespan=lifespan,
        docs_url=None,  # served below from opengem's own copy of Swagger UI (no CDN)
        redoc_url=None,
    )
    app.state.opengem = state
    _mount_docs(app)
    from opengem.server.ui import mount_ui  # the web page at / (server/ui.py)

    mount_ui(app)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=config.max_body_bytes, timeout_s=config.body_timeout_s
    )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"detail": "internal server error; the server log has the details"}, status_code=500
        )

    openapi.install(app)
    return app


def serve(config: ServerConfig) -> None:
    """Run the API (uvicorn) and its workers until interrupted."""
    import uvicorn

    from opengem.server.logs import configure, log_config

    log_level = config.log_level.lower()
    configure(log_level, config.log_format)
    app = create_app(config)
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level=log_level,
        timeout_graceful_shutdown=15,
        server_header=False,
        limit_concurrency=config.max_connections,
        log_config=log_config(log_level, config.log_format),
    )

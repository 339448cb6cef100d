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
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import opengem
from opengem.contract import (
    MODEL_IDS,
    MODEL_SPECS,
    QueryError,
    UnknownModelError,
    get_example_query,
    list_models,
    parse_model_id,
)
from opengem.server import openapi
from opengem.server.config import ServerConfig
from opengem.server.formats import ARROW_STREAM, ResultFiles, non_finite_paths, wants_arrow
from opengem.server.keys import authenticate, charge, fail_and_refund
from opengem.server.signing import UrlSigner, Verdict
from opengem.server.store import (
    FAILED,
    READY,
    ApiKey,
    Job,
    JobStore,
    open_store,
    seconds_to_next_week,
)
from opengem.server.supervisor import KILL_GRACE_S, Supervisor
from opengem.server.worker import timeout_message

log = logging.getLogger("opengem.server")

_CHUNK = 1 << 20


def _error(status: int, description: str) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "description": description,
            "content": {
                "application/json": {
                    "schema": {"type": "object", "properties": {"detail": {"type": "string"}}}
                }
            },
        }
    }


#: routes that need a key when auth is on
_AUTH = _error(401, "Missing, malformed, unknown or revoked API key (when auth is on)")


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def validation_body(exc: QueryError, model_id: str) -> dict[str, Any]:
    """The 422 body: ``QueryError.to_dict()`` plus ``error``/``errors`` (path, message),
    which pysynthbio 4.2 renders one line per problem."""
    body = exc.to_dict()
    body["error"] = f"Invalid query for {model_id}"
    body["errors"] = [
        {"path": p.location, "message": str(dataclasses.replace(p, location=""))}
        for p in exc.problems
    ]
    return body


class BodyLimitMiddleware:
    """413 for request bodies over ``max_bytes`` (declared or streamed); 408 for a body
    that stalls ``timeout_s`` between chunks."""

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
        seen = 0

        async def limited() -> Message:
            nonlocal seen
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


class _BigFileResponse(FileResponse):
    """Results are tens of megabytes: send them in 1 MiB chunks."""

    chunk_size = _CHUNK


class ServerState:
    """What the routes share: store, signer, result files, the API's model registry."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store: JobStore = open_store(config.data_dir, config.resolved_database_url)
        self.signer = UrlSigner.from_data_dir(config.data_dir)
        self.files = ResultFiles(config.data_dir)
        self.limits = config.query_limits()
        self.supervisor = Supervisor(config, self.store, on_idle_check=self.unload_idle)
        self._registry: Any = None
        self._registry_lock = threading.Lock()

    @property
    def registry(self) -> Any:
        """The API process's models (validation vocabularies), loaded on first use."""
        with self._registry_lock:
            if self._registry is None:
                from opengem.engine.registry import ModelRegistry

                self._registry = ModelRegistry(self.config.models_dir)
            return self._registry

    def unload_idle(self) -> None:
        if self._registry is not None:
            self._registry.unload_idle(self.config.model_idle_s)

    def loaded_models(self) -> set[str]:
        loaded = set(self._registry.loaded()) if self._registry is not None else set()
        stale = time.time() - self.config.stale_after_s
        for w in self.store.workers():
            if w.heartbeat_at >= stale:
                loaded.update(w.loaded)
        return loaded

    def live_workers(self) -> int:
        stale = time.time() - self.config.stale_after_s
        return sum(1 for w in self.store.workers() if w.heartbeat_at >= stale)


def signed_result(
    state: ServerState, query_id: str, expires: str | None, signature: str | None
) -> tuple[Job, FilePath]:
    """The job and result file (gzip JSON) a signed download URL names: 403 for a bad or
    expired signature, 404 when there is no such result."""
    try:
        expiry = int(expires or "")
    except ValueError:
        raise HTTPException(403, "invalid download URL (bad or missing expiry)") from None
    verdict = state.signer.verify(query_id, expiry, signature or "")
    if verdict is Verdict.BAD:
        raise HTTPException(403, "invalid download URL signature")
    if verdict is Verdict.EXPIRED:
        raise HTTPException(
            403,
            f"this download URL expired at {_iso(expiry)}; ask the status endpoint for a fresh one",
        )
    job = state.store.get(query_id)
    if job is None or job.status != READY or job.kind != "json" or not job.result_path:
        raise HTTPException(404, f"no result for model query {query_id!r}")
    path = state.files.path(job.result_path)
    if not path.is_file():
        raise HTTPException(404, f"the result of model query {query_id!r} was deleted")
    return job, path


_bearer = HTTPBearer(auto_error=False, description="an API key from `opengem keys create`")


def require_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey | None:
    """The caller's key when auth is on (401 without a valid one); None when it is off."""
    state: ServerState = request.app.state.opengem
    if not state.config.auth_enabled:
        return None
    if credentials is None:
        raise HTTPException(
            401,
            "missing API key: send 'Authorization: Bearer <key>' (an operator creates "
            "keys with `opengem keys create`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = authenticate(state.store, credentials.credentials)
    if key is None:
        raise HTTPException(
            401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"}
        )
    return key


Key = Annotated[ApiKey | None, Depends(require_key)]
ModelId = Annotated[
    str, Path(description="a model id (GET /api/models lists them)", examples=list(MODEL_IDS))
]


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
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=config.max_body_bytes, timeout_s=config.body_timeout_s
    )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"detail": "internal server error; the server log has the details"}, status_code=500
        )

    def spec_or_404(model_id: str) -> Any:
        try:
            return parse_model_id(model_id)
        except UnknownModelError as exc:
            raise HTTPException(404, str(exc)) from None

    def predictor_or_503(model_id: str) -> Any:
        from opengem.engine.bundle import BundleError

        try:
            return state.registry.predictor(model_id)
        except BundleError as exc:
            raise HTTPException(503, f"{model_id} is not available on this server: {exc}") from None

    def download_url(request: Request, job: Job) -> str:
        expires, signature = state.signer.sign(job.id, config.download_ttl_s)
        base = (config.public_url or str(request.base_url)).rstrip("/")
        return f"{base}/api/model-queries/{job.id}/result?expires={expires}&signature={signature}"

    # ------------------------------------------------------------------ routes
    @app.head("/healthz", include_in_schema=False)
    @app.get("/healthz", tags=["server"])
    def healthz() -> dict[str, Any]:
        """Liveness and a summary of the queue (no key needed)."""
        return {
            "status": "ok",
            "version": opengem.__version__,
            "auth": config.auth_enabled,
            "workers": state.live_workers(),
            "queries": state.store.counts(),
        }

    @app.get("/api/models", tags=["models"], responses=_AUTH)
    def models(key: Key) -> dict[str, Any]:
        """Every model id served, with whether its bundle is present and loaded."""
        loaded = state.loaded_models()
        registry = state.registry
        out = []
        for entry in list_models()["models"]:
            spec = MODEL_SPECS[entry["model_id"]]
            out.append(
                {
                    **entry,
                    "available": registry.available(spec.model_id),
                    "loaded": spec.base_model_id in loaded,
                }
            )
        return {"models": out}

    @app.get(
        "/api/models/{model_id}/example-query",
        tags=["models"],
        responses={**_AUTH, **_error(404, "Unknown model id")},
    )
    def example_query(model_id: ModelId, key: Key) -> dict[str, Any]:
        """A valid query for the model, as ``{"example_query": {...}}``."""
        spec_or_404(model_id)
        return get_example_query(model_id)

    @app.get(
        "/api/models/{model_id}/vocab",
        tags=["models"],
        responses={
            **_AUTH,
            **_error(404, "Unknown model id"),
            **_error(503, "Model not installed"),
        },
    )
    def vocab(model_id: ModelId, key: Key) -> dict[str, Any]:
        """Per metadata field, the values the model was trained on (value → label)."""
        spec_or_404(model_id)
        predictor = predictor_or_503(model_id)
        v = predictor.vocab
        return {
            "model_id": model_id,
            "model_version": predictor.bundle.model_version,
            "fields": {name: v.values(name) for name in v.fields},
        }

    @app.post(
        "/api/models/{model_id}/predict",
        tags=["queries"],
        responses={
            **_AUTH,
            **_error(400, "The body is not JSON (or holds NaN / Infinity)"),
            **_error(408, "The request body stalled"),
            200: {
                "description": '``{"modelQueryId": id}``, or with '
                "``Accept: application/vnd.apache.arrow.stream`` the result as an Arrow "
                "IPC stream",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"modelQueryId": {"type": "string"}},
                        }
                    },
                    ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}},
                },
            },
            **_error(400, "The body is not JSON"),
            **_error(401, "Missing or invalid API key"),
            **_error(404, "Unknown model id"),
            **_error(413, "Body too large"),
            **_error(422, "Invalid query: every problem, with where and why"),
            **_error(429, "Weekly sample quota used up"),
            **_error(503, "Model not installed"),
            **_error(504, "The query ran past the server's time limit"),
        },
    )
    async def predict(model_id: ModelId, request: Request, key: Key) -> Response:
        """Validate and queue a query (hosted protocol), or run it and stream the result
        as Arrow (``Accept: application/vnd.apache.arrow.stream``)."""
        from opengem.engine.bundle import BundleError
        from opengem.server.jobs import sample_count, validate_for_model

        spec_or_404(model_id)
        body = await request.body()
        try:
            query = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            where = non_finite_paths(body)
            if where:
                raise HTTPException(
                    400,
                    "the request body holds NaN or Infinity, which JSON does not allow, at "
                    + ", ".join(where[:5])
                    + "; counts must be finite integers (and no other value takes NaN)",
                ) from None
            raise HTTPException(400, f"the request body is not valid JSON: {exc}") from None
        try:
            normalised = await run_in_threadpool(
                validate_for_model, state.registry, model_id, query, state.limits
            )
        except QueryError as exc:
            return JSONResponse(validation_body(exc, model_id), status_code=422)
        except BundleError as exc:
            raise HTTPException(503, f"{model_id} is not available on this server: {exc}") from None
        samples = sample_count(normalised)
        if key is not None:
            refusal = await run_in_threadpool(charge, state.store, key, samples)
            if refusal:
                raise HTTPException(
                    429, refusal, headers={"Retry-After": str(seconds_to_next_week())}
                )
        arrow = wants_arrow(request.headers.get("accept", ""))
        job_id = await run_in_threadpool(
            state.store.submit,
            model_id,
            body,
            kind="arrow" if arrow else "json",
            key_id=key.key_id if key else None,
            samples=samples,
        )
        if not arrow:
            return JSONResponse({"modelQueryId": job_id})
        return await _arrow_response(request, job_id)

    async def _arrow_response(request: Request, job_id: str) -> Response:
        deadline = time.monotonic() + config.query_timeout_s + KILL_GRACE_S + 30
        pause = 0.005
        while True:
            job = await run_in_threadpool(state.store.get, job_id)
            if job is None:
                raise HTTPException(500, "the query disappeared from the queue")
            if job.status in (READY, FAILED):
                break
            if time.monotonic() > deadline:
                await run_in_threadpool(
                    fail_and_refund, state.store, job_id, None, "no result in time"
                )
                raise HTTPException(504, timeout_message(config.query_timeout_s))
            if await request.is_disconnected():  # nothing will be delivered: not charged
                await run_in_threadpool(
                    fail_and_refund, state.store, job_id, None, "the client disconnected"
                )
                return Response(status_code=499)
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 0.05)
        if job.status == FAILED:
            message = job.message or "the query failed"
            status = 504 if message == timeout_message(config.query_timeout_s) else 500
            raise HTTPException(status, message)
        name = job.result_path or ""
        return _BigFileResponse(
            state.files.path(name),
            media_type=ARROW_STREAM,
            headers={"X-Model-Query-Id": job.id},
            background=BackgroundTask(state.files.delete, name),
        )

    @app.get(
        "/api/model-queries/{query_id}/status",
        tags=["queries"],
        responses={**_AUTH, **_error(404, "Unknown query id")},
    )
    def status(query_id: str, request: Request, key: Key) -> dict[str, Any]:
        """Where a query stands: ``queued``, ``running``, ``ready`` (with a signed
        ``downloadUrl``) or ``failed`` (with a ``message``)."""
        job = state.store.get(query_id)
        if job is None or (key is not None and job.key_id != key.key_id):
            raise HTTPException(404, f"no model query {query_id!r}")
        out: dict[str, Any] = {
            "modelQueryId": job.id,
            "status": job.status,
            "modelId": job.model_id,
            "samples": job.samples,
            "createdAt": _iso(job.created_at),
            "startedAt": _iso(job.started_at),
            "finishedAt": _iso(job.finished_at),
        }
        if job.status == READY and job.kind == "json":
            out["downloadUrl"] = download_url(request, job)
        if job.status == FAILED:
            out["message"] = job.message or "the query failed"
        return out

    @app.get(
        "/api/model-queries/{query_id}/result",
        tags=["queries"],
        responses={
            200: {"description": "The result JSON", "content": {"application/json": {}}},
            **_error(403, "Bad or expired signature"),
            **_error(404, "No such result (expired or not ready)"),
        },
    )
    def result(
        query_id: str,
        request: Request,
        expires: str | None = None,
        signature: str | None = None,
    ) -> Response:
        """The result JSON of a ready query: the ``downloadUrl`` of its status (signed,
        expiring; no API key needed). Gzip-encoded when the client accepts it."""
        _, path = signed_result(state, query_id, expires, signature)
        headers = {"Vary": "Accept-Encoding", "Cache-Control": "private, max-age=3600"}
        if "gzip" in request.headers.get("accept-encoding", "").lower():
            return _BigFileResponse(
                path,
                media_type="application/json",
                headers={**headers, "Content-Encoding": "gzip"},
            )

        def unzipped() -> Iterator[bytes]:
            with gzip.open(path, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    yield chunk

        return StreamingResponse(unzipped(), media_type="application/json", headers=headers)

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

"""Running a query: ``POST /api/models/{model_id}/predict`` (queued, or streamed as
Arrow) and ``GET /api/model-queries/{id}/status``."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from opengem.contract import QueryError
from opengem.server.arrow_stream import arrow_response
from opengem.server.formats import ARROW_STREAM, non_finite_paths, wants_arrow
from opengem.server.keys import charge
from opengem.server.routes.common import AUTH, Key, ModelId, error_response, iso
from opengem.server.routes.models import spec_or_404
from opengem.server.state import ServerState, State
from opengem.server.store import FAILED, READY, Job, seconds_to_next_week

router = APIRouter(tags=["queries"])


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


def download_url(state: ServerState, request: Request, job: Job) -> str:
    config = state.config
    expires, signature = state.signer.sign(job.id, config.download_ttl_s)
    base = (config.public_url or str(request.base_url)).rstrip("/")
    return f"{base}/api/model-queries/{job.id}/result?expires={expires}&signature={signature}"


@router.post(
    "/api/models/{model_id}/predict",
    responses={
        **AUTH,
        **error_response(400, "The body is not JSON (or holds NaN / Infinity)"),
        **error_response(408, "The request body stalled"),
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
        **error_response(400, "The body is not JSON"),
        **error_response(401, "Missing or invalid API key"),
        **error_response(404, "Unknown model id"),
        **error_response(413, "Body too large"),
        **error_response(422, "Invalid query: every problem, with where and why"),
        **error_response(429, "Weekly sample quota used up"),
        **error_response(503, "Model not installed"),
        **error_response(504, "The query ran past the server's time limit"),
    },
)
async def predict(model_id: ModelId, request: Request, key: Key, state: State) -> Response:
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
            raise HTTPException(429, refusal, headers={"Retry-After": str(seconds_to_next_week())})
    arrow = wants_arrow(request.headers.get("accept", ""))
    job_id = await run_in_threadpool(
        state.store.submit,
        model_id,
        body,
        kind="arrow" if arrow else "json",
        key_id=key.key_id if key else None,
        samples=samples,
    )
    state.wakeup.notify()  # an idle worker takes it now rather than at its next poll
    if not arrow:
        return JSONResponse({"modelQueryId": job_id})
    return await arrow_response(state, request, job_id)


@router.get(
    "/api/model-queries/{query_id}/status",
    responses={**AUTH, **error_response(404, "Unknown query id")},
)
def status(query_id: str, request: Request, key: Key, state: State) -> dict[str, Any]:
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
        "createdAt": iso(job.created_at),
        "startedAt": iso(job.started_at),
        "finishedAt": iso(job.finished_at),
    }
    if job.status == READY and job.kind == "json":
        out["downloadUrl"] = download_url(state, request, job)
    if job.status == FAILED:
        out["message"] = job.message or "the query failed"
    return out

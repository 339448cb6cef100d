"""What several routers use: the key dependency, documented error responses, signed
result lookup."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import Depends, Path
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from opengem.contract import MODEL_IDS
from opengem.server.keys import authenticate
from opengem.server.signing import Verdict
from opengem.server.state import ServerState, State
from opengem.server.store import READY, ApiKey, Job

CHUNK = 1 << 20


def error_response(status: int, description: str) -> dict[int | str, dict[str, Any]]:
    """An OpenAPI ``responses`` entry: ``status`` with a ``{"detail": str}`` body."""
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
AUTH = error_response(401, "Missing, malformed, unknown or revoked API key (when auth is on)")


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


class BigFileResponse(FileResponse):
    """Results are tens of megabytes: send them in 1 MiB chunks."""

    chunk_size = CHUNK


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
            f"this download URL expired at {iso(expiry)}; ask the status endpoint for a fresh one",
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
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey | None:
    """The caller's key when auth is on (401 without a valid one); None when it is off."""
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

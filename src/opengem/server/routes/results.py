"""``GET /api/model-queries/{id}/result``: a ready query's JSON behind its signed,
expiring ``downloadUrl`` (no API key)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from opengem.server.routes.common import CHUNK, BigFileResponse, error_response, signed_result
from opengem.server.state import State

router = APIRouter(tags=["queries"])


@router.get(
    "/api/model-queries/{query_id}/result",
    responses={
        200: {"description": "The result JSON", "content": {"application/json": {}}},
        **error_response(403, "Bad or expired signature"),
        **error_response(404, "No such result (expired or not ready)"),
    },
)
def result(
    query_id: str,
    request: Request,
    state: State,
    expires: str | None = None,
    signature: str | None = None,
) -> Response:
    """The result JSON of a ready query: the ``downloadUrl`` of its status (signed,
    expiring; no API key needed). Gzip-encoded when the client accepts it."""
    _, path = signed_result(state, query_id, expires, signature)
    headers = {"Vary": "Accept-Encoding", "Cache-Control": "private, max-age=3600"}
    if "gzip" in request.headers.get("accept-encoding", "").lower():
        return BigFileResponse(
            path,
            media_type="application/json",
            headers={**headers, "Content-Encoding": "gzip"},
        )

    def unzipped() -> Iterator[bytes]:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                yield chunk

    return StreamingResponse(unzipped(), media_type="application/json", headers=headers)

"""The exceptions of pysynthbio's HTTP layer, by the same names, for the remote client.

Code written for pysynthbio catches these by name; opengem raises them when it
talks to a server (``api_base_url`` / ``SYNTHESIZE_API_BASE_URL``). Every one
carries ``status_code`` (None for network failures).
"""

from __future__ import annotations

from typing import Any


class SynthesizeAPIError(Exception):
    """A request to a GEM-1 API server failed (any status, or the network)."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class AuthenticationError(SynthesizeAPIError):
    """401 or 403: the API key is missing, wrong or revoked."""


class NotFoundError(SynthesizeAPIError):
    """404: an unknown model id, query id or path."""


class ValidationError(SynthesizeAPIError, ValueError):
    """400 or 422: the server rejected the query; ``response_json`` holds every problem.

    Also a ``ValueError``, like the embedded API's ``QueryError``, so one ``except
    ValueError`` handles a bad query whether it ran locally or on a server."""

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        *,
        response_body: str | None = None,
        response_json: Any = None,
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.response_body = response_body
        self.response_json = response_json


__all__ = ["AuthenticationError", "NotFoundError", "SynthesizeAPIError", "ValidationError"]

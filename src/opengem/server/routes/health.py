"""``/healthz``: liveness and a summary of the queue (no key needed)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

import opengem
from opengem.server.state import State

router = APIRouter()


@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", tags=["server"])
def healthz(state: State) -> dict[str, Any]:
    """Liveness and a summary of the queue (no key needed)."""
    return {
        "status": "ok",
        "version": opengem.__version__,
        "auth": state.config.auth_enabled,
        "workers": state.live_workers(),
        "queries": state.store.counts(),
    }

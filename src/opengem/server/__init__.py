"""opengem's HTTP server: the GEM-1 API (hosted and self-hosted protocols) on local bundles.

- :mod:`opengem.server.app`: the FastAPI application (routes in :mod:`opengem.server.routes`,
  shared state in :mod:`opengem.server.state`); :func:`serve` runs it with uvicorn;
- :mod:`opengem.server.store`: the job store protocol, SQLite by default
  (:mod:`opengem.server.store_pg`: PostgreSQL);
- :mod:`opengem.server.worker` / :mod:`opengem.server.supervisor`: worker processes;
- :mod:`opengem.server.keys`, :mod:`opengem.server.signing`: API keys, signed URLs;
- :mod:`opengem.server.formats`: result JSON and Arrow streams;
- :mod:`opengem.server.testing`: start a real server in a subprocess (tests, notebooks).

Start one with ``opengem serve``.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "create_app": "opengem.server.app",
    "serve": "opengem.server.app",
    "ServerConfig": "opengem.server.config",
    "JobStore": "opengem.server.store",
    "open_store": "opengem.server.store",
    "create_key": "opengem.server.keys",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'opengem.server' has no attribute {name!r}")

"""The API's routes, one router per group; :func:`opengem.server.app.create_app`
includes them in this order.

- :mod:`.health`: ``/healthz``;
- :mod:`.models`: ``/api/models``, ``…/example-query``, ``…/vocab``;
- :mod:`.queries`: ``…/predict`` and ``/api/model-queries/{id}/status``;
- :mod:`.results`: the signed ``/api/model-queries/{id}/result``.

Every route reaches the shared state through :data:`opengem.server.state.State`
and the caller's key through :data:`opengem.server.routes.common.Key`.
"""

from __future__ import annotations

from fastapi import APIRouter

from opengem.server.routes import health, models, queries, results

ROUTERS: tuple[APIRouter, ...] = (health.router, models.router, queries.router, results.router)

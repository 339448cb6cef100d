"""What the routes share, and the one way they reach it: the :func:`get_state` dependency."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from opengem.server.config import ServerConfig
from opengem.server.formats import ResultFiles
from opengem.server.signing import UrlSigner
from opengem.server.store import JobStore, open_store
from opengem.server.supervisor import Supervisor
from opengem.server.wake import Wakeup

if TYPE_CHECKING:  # the engine (torch) loads on first use, not when the server starts
    from opengem.engine.registry import ModelRegistry


class ServerState:
    """What the routes share: store, signer, result files, the API's model registry."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store: JobStore = open_store(config.data_dir, config.resolved_database_url)
        self.signer = UrlSigner.from_data_dir(config.data_dir)
        self.files = ResultFiles(config.data_dir)
        self.wakeup = Wakeup(config.data_dir)
        self.limits = config.query_limits()
        self.supervisor = Supervisor(config, self.store, on_idle_check=self.unload_idle)
        self._registry: ModelRegistry | None = None
        self._registry_lock = threading.Lock()

    @property
    def registry(self) -> ModelRegistry:
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


async def get_state(request: Request) -> ServerState:
    """The app's :class:`ServerState` (``create_app`` puts it on ``app.state.opengem``)."""
    state: ServerState = request.app.state.opengem
    return state


#: a route parameter that receives the shared state
State = Annotated[ServerState, Depends(get_state)]

"""Server settings: one frozen object, handed to the API process and every worker."""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from opengem.settings import QueryLimits


def default_data_dir() -> Path:
    """``OPENGEM_DATA_DIR``, else ``$XDG_DATA_HOME/opengem/server`` (``~/.local/share/…``)."""
    env = os.environ.get("OPENGEM_DATA_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "opengem" / "server"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host.lower() in {"localhost", "ip6-localhost"}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``opengem serve`` can be told.

    Attributes
    ----------
    data_dir
        Job database (SQLite), results and the URL-signing secret.
    models_dir
        Model bundles (default: ``OPENGEM_MODELS`` or the shipped bundles).
    workers
        Worker processes that run queries (0: run them elsewhere, e.g. other hosts
        sharing a PostgreSQL store, with ``python -m opengem.server.worker``).
    auth
        Require ``Authorization: Bearer <key>``; None: on unless ``host`` is loopback.
    database_url
        ``postgresql://…`` for the PostgreSQL store (default env ``OPENGEM_DATABASE_URL``).
    max_body_bytes
        Largest request body accepted (413 beyond).
    body_timeout_s
        Seconds a request body may take to arrive between two chunks (408 beyond: a
        client that sends headers and stalls holds no connection for long).
    max_connections
        Concurrent connections served (503 beyond).
    max_samples_per_query
        Most samples one query may generate (422 beyond).
    query_timeout_s
        Wall time a query may run before it fails (and the worker is replaced if stuck).
    model_idle_s
        Unload a model no query has used for this long.
    download_ttl_s
        Lifetime of a signed download URL.
    result_ttl_s
        Finished queries and their results are deleted after this long.
    public_url
        Base of download URLs when clients reach the server through a proxy
        (default: the URL the client used).
    torch_threads
        Intra-op threads per worker (default: torch's, as an embedded process on the
        same machine uses, so results match it exactly; fewer trade that for
        throughput with several workers).
    """

    data_dir: Path
    models_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    auth: bool | None = None
    database_url: str | None = None
    max_body_bytes: int = 64 * 1024 * 1024
    body_timeout_s: float = 30.0
    max_connections: int = 512
    max_samples_per_query: int = QueryLimits().max_samples_per_query
    query_timeout_s: float = 600.0
    model_idle_s: float = 900.0
    download_ttl_s: int = 3600
    result_ttl_s: int = 7 * 24 * 3600
    public_url: str | None = None
    max_attempts: int = 3
    heartbeat_s: float = 2.0
    torch_threads: int | None = None
    log_level: str = "info"
    log_format: str = "plain"

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        if self.models_dir is not None:
            object.__setattr__(self, "models_dir", Path(self.models_dir).expanduser())
        problems = []
        if self.workers < 0:
            problems.append("workers must be 0 or more")
        if self.max_body_bytes < 1024:
            problems.append("the body size limit must be at least 1 KiB")
        if self.max_samples_per_query < 1:
            problems.append("the samples-per-query limit must be at least 1")
        if self.query_timeout_s <= 0:
            problems.append("the query timeout must be positive")
        if self.log_level.lower() not in {"debug", "info", "warning", "error", "critical"}:
            problems.append("the log level must be debug, info, warning, error or critical")
        if self.log_format not in ("plain", "json"):
            problems.append(f"the log format must be plain or json, not {self.log_format!r}")
        if self.body_timeout_s <= 0:
            problems.append("the body timeout must be positive")
        if self.max_connections < 1:
            problems.append("at least one connection must be allowed")
        if self.download_ttl_s < 1:
            problems.append("download URLs must live at least 1 second")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def auth_enabled(self) -> bool:
        return (not is_loopback(self.host)) if self.auth is None else self.auth

    @property
    def resolved_database_url(self) -> str | None:
        return self.database_url or os.environ.get("OPENGEM_DATABASE_URL") or None

    @property
    def stale_after_s(self) -> float:
        """A worker silent this long is dead (its jobs are re-queued)."""
        return max(10.0, 5 * self.heartbeat_s)

    def query_limits(self) -> QueryLimits:
        env = QueryLimits.from_env()
        return QueryLimits(
            max_samples_per_input=min(env.max_samples_per_input, self.max_samples_per_query),
            max_samples_per_query=self.max_samples_per_query,
        )

    def to_json(self) -> str:
        data: dict[str, Any] = asdict(self)
        data["data_dir"] = str(self.data_dir)
        data["models_dir"] = str(self.models_dir) if self.models_dir else None
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> ServerConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_(self, **changes: Any) -> ServerConfig:
        return replace(self, **changes)

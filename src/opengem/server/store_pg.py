"""The job store on PostgreSQL (``OPENGEM_DATABASE_URL=postgresql://…``).

Same protocol and SQL as the SQLite store; workers on any number of hosts claim
jobs with ``FOR UPDATE SKIP LOCKED``, so a claim never waits on another worker's
and no job is handed out twice. psycopg 3 is imported only when this store is used
(``pip install 'psycopg[binary]'``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opengem.server.store import _JOB_COLUMNS, QUEUED, RUNNING, SQLJobStore

#: any constant: serialises schema creation between processes starting together
_SCHEMA_LOCK_ID = 0x06E6E


class _Tx:
    """Adapts a psycopg connection inside a transaction to ``execute(sql, params)``."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self.conn.execute(_pg(sql), params)


def _pg(sql: str) -> str:
    """``?`` placeholders (shared SQL) → psycopg's ``%s``."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresJobStore(SQLJobStore):
    """The job store on PostgreSQL; one autocommit connection per thread."""

    SEQ_COLUMN = "seq BIGSERIAL PRIMARY KEY"
    BLOB = "BYTEA"
    FOR_UPDATE = " FOR UPDATE"

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "OPENGEM_DATABASE_URL points at PostgreSQL, which needs psycopg 3: "
                "pip install 'psycopg[binary]'"
            ) from exc
        self._psycopg = psycopg
        self.url = url
        self._local = threading.local()
        self._all: list[Any] = []
        self._all_lock = threading.Lock()
        with self._tx() as tx:
            tx.execute(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK_ID})")
            for statement in self._schema():
                tx.execute(statement)

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._psycopg.connect(self.url, autocommit=True)
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _tx(self) -> Iterator[_Tx]:
        conn = self._conn()
        with conn.transaction():
            yield _Tx(conn)

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return self._rows(self._conn().execute(_pg(sql), params))

    def _claim_sql(self) -> str:
        return (
            f"UPDATE jobs SET status = '{RUNNING}', started_at = ?, worker_id = ?,"
            " attempts = attempts + 1"
            f" WHERE seq = (SELECT seq FROM jobs WHERE status = '{QUEUED}' ORDER BY seq"
            " LIMIT 1 FOR UPDATE SKIP LOCKED)"
            f" RETURNING {_JOB_COLUMNS}"
        )

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                try:
                    conn.close()
                except Exception:  # closing is best effort
                    pass
            self._all.clear()
        self._local = threading.local()

"""The job store: model queries (queued → running → ready | failed), workers, API keys, usage.

:class:`JobStore` is the protocol the server and its workers talk to.
:class:`SQLiteJobStore` (one file in the data folder, WAL mode) is the default;
:class:`opengem.server.store_pg.PostgresJobStore` implements the same protocol on
PostgreSQL (``OPENGEM_DATABASE_URL=postgresql://…``) for several hosts sharing one queue.

Both share :class:`SQLJobStore`: the SQL is the same apart from a few dialect
hooks (parameter style, column types, how a queued job is claimed atomically).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

QUEUED, RUNNING, READY, FAILED = "queued", "running", "ready", "failed"
JOB_STATUSES = (QUEUED, RUNNING, READY, FAILED)
#: ``json``: the hosted protocol (result JSON behind a signed URL); ``arrow``: a client
#: is waiting on the synchronous self-hosted protocol for an Arrow stream.
JOB_KINDS = ("json", "arrow")
SQLITE_FILE = "opengem.db"


@dataclass(frozen=True)
class Job:
    """One model query and where it stands."""

    id: str
    model_id: str
    kind: str
    status: str
    query: bytes
    key_id: str | None
    samples: int
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    worker_id: str | None = None
    attempts: int = 0
    message: str | None = None
    result_path: str | None = None


@dataclass(frozen=True)
class ApiKey:
    """A stored API key: never the key itself, only a salted digest of its secret."""

    key_id: str
    name: str
    salt: str
    digest: str
    quota_samples_per_week: int | None
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True)
class WorkerInfo:
    """A worker process as it last reported itself."""

    worker_id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    job_id: str | None = None
    loaded: list[str] = field(default_factory=list)


def week_of(when: float | None = None) -> str:
    """The ISO week (UTC) quotas are counted in, e.g. ``2026-W47``."""
    moment = datetime.fromtimestamp(time.time() if when is None else when, UTC)
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


def seconds_to_next_week(when: float | None = None) -> int:
    """Seconds until the next ISO week (UTC) starts, when a weekly quota resets."""
    now = datetime.fromtimestamp(time.time() if when is None else when, UTC)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    days = 7 - now.weekday()  # Monday is 0
    return max(1, int((start.timestamp() + days * 86400) - now.timestamp()))


def new_job_id() -> str:
    return uuid.uuid4().hex


@runtime_checkable
class JobStore(Protocol):
    """What the server and workers need from a store; every method is safe across processes."""

    def submit(
        self, model_id: str, query: bytes, *, kind: str, key_id: str | None, samples: int
    ) -> str:
        """Queue a query; returns its id."""
        ...

    def get(self, job_id: str) -> Job | None: ...

    def claim(self, worker_id: str) -> Job | None:
        """Atomically take the oldest queued job (it becomes ``running``), or ``None``."""
        ...

    def finish(self, job_id: str, worker_id: str, result_path: str) -> bool:
        """``running`` → ``ready``, only if ``worker_id`` still holds the job."""
        ...

    def fail(self, job_id: str, worker_id: str | None, message: str) -> bool:
        """``running`` → ``failed`` (any worker when ``worker_id`` is None)."""
        ...

    def release(self, job_id: str, worker_id: str) -> bool:
        """``running`` → ``queued`` without counting the attempt (worker shutting down)."""
        ...

    def requeue_orphans(
        self, dead_worker_ids: Iterable[str], stale_before: float, max_attempts: int
    ) -> list[str]:
        """Re-queue ``running`` jobs whose worker is dead: listed in ``dead_worker_ids``,
        or without a heartbeat since ``stale_before``. Jobs that already used
        ``max_attempts`` attempts fail instead. Returns the ids re-queued or failed."""
        ...

    def counts(self) -> dict[str, int]: ...

    def heartbeat(self, info: WorkerInfo) -> None: ...

    def workers(self) -> list[WorkerInfo]: ...

    def remove_worker(self, worker_id: str) -> None: ...

    def purge_finished(self, before: float, kind: str | None = None) -> list[Job]:
        """Delete ready/failed jobs (of ``kind``, or all) that finished before ``before``;
        returns them."""
        ...

    def add_key(self, key: ApiKey) -> None: ...

    def get_key(self, key_id: str) -> ApiKey | None: ...

    def list_keys(self) -> list[ApiKey]: ...

    def revoke_key(self, key_id: str) -> bool: ...

    def usage(self, key_id: str, week: str) -> int: ...

    def consume_quota(
        self, key_id: str, week: str, samples: int, limit: int | None
    ) -> tuple[bool, int]:
        """Add ``samples`` to a key's usage in ``week`` unless that would pass ``limit``.

        Returns ``(accepted, used_before)``; check and update are one transaction."""
        ...

    def close(self) -> None: ...


_JOB_COLUMNS = (
    "id, model_id, kind, status, query, key_id, samples, created_at, started_at, "
    "finished_at, worker_id, attempts, message, result_path"
)
_KEY_COLUMNS = "key_id, name, salt, digest, quota, created_at, revoked_at"
_WORKER_COLUMNS = "worker_id, host, pid, started_at, heartbeat_at, job_id, loaded"


def _job(row: Any) -> Job:
    values = list(row)
    values[4] = bytes(values[4])
    return Job(*values)


def _worker(row: Any) -> WorkerInfo:
    values = list(row)
    loaded = values[6]
    values[6] = [x for x in (loaded or "").split(",") if x]
    return WorkerInfo(*values)


class SQLJobStore:
    """The SQL shared by the SQLite and PostgreSQL stores (``?`` placeholders)."""

    #: column types that differ between dialects
    SEQ_COLUMN = "seq INTEGER PRIMARY KEY AUTOINCREMENT"
    BLOB = "BLOB"
    FOR_UPDATE = ""

    def _schema(self) -> list[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS jobs (
                {self.SEQ_COLUMN},
                id TEXT NOT NULL UNIQUE,
                model_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                status TEXT NOT NULL,
                query {self.BLOB} NOT NULL,
                key_id TEXT,
                samples BIGINT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                started_at DOUBLE PRECISION,
                finished_at DOUBLE PRECISION,
                worker_id TEXT,
                attempts INTEGER NOT NULL DEFAULT 0,
                message TEXT,
                result_path TEXT)""",
            "CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq)",
            """CREATE TABLE IF NOT EXISTS workers (
                worker_id TEXT PRIMARY KEY,
                host TEXT NOT NULL,
                pid INTEGER NOT NULL,
                started_at DOUBLE PRECISION NOT NULL,
                heartbeat_at DOUBLE PRECISION NOT NULL,
                job_id TEXT,
                loaded TEXT)""",
            """CREATE TABLE IF NOT EXISTS api_keys (
                key_id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                salt TEXT NOT NULL,
                digest TEXT NOT NULL,
                quota BIGINT,
                created_at DOUBLE PRECISION NOT NULL,
                revoked_at DOUBLE PRECISION)""",
            """CREATE TABLE IF NOT EXISTS usage (
                key_id TEXT NOT NULL,
                week TEXT NOT NULL,
                samples BIGINT NOT NULL,
                PRIMARY KEY (key_id, week))""",
        ]

    # ------------------------------------------------------------ dialect hooks
    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """A write transaction; yields something with ``execute(sql, params)``."""
        raise NotImplementedError
        yield

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Run one statement outside an explicit transaction; returns all rows."""
        raise NotImplementedError

    def _claim_sql(self) -> str:
        raise NotImplementedError

    @staticmethod
    def _rows(cursor: Any) -> list[Any]:
        return cursor.fetchall() if cursor.description is not None else []

    # ------------------------------------------------------------------- jobs
    def submit(
        self, model_id: str, query: bytes, *, kind: str, key_id: str | None, samples: int
    ) -> str:
        if kind not in JOB_KINDS:
            raise ValueError(f"job kind must be one of {JOB_KINDS}, not {kind!r}")
        job_id = new_job_id()
        self._execute(
            "INSERT INTO jobs (id, model_id, kind, status, query, key_id, samples, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, model_id, kind, QUEUED, query, key_id, int(samples), time.time()),
        )
        return job_id

    def get(self, job_id: str) -> Job | None:
        rows = self._execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def claim(self, worker_id: str) -> Job | None:
        with self._tx() as tx:
            rows = self._rows(tx.execute(self._claim_sql(), (time.time(), worker_id)))
        return _job(rows[0]) if rows else None

    def finish(self, job_id: str, worker_id: str, result_path: str) -> bool:
        with self._tx() as tx:
            cur = tx.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, result_path = ?, message = NULL"
                " WHERE id = ? AND status = ? AND worker_id = ?",
                (READY, time.time(), result_path, job_id, RUNNING, worker_id),
            )
            return cur.rowcount == 1

    def fail(self, job_id: str, worker_id: str | None, message: str) -> bool:
        sql = (
            "UPDATE jobs SET status = ?, finished_at = ?, message = ?"
            " WHERE id = ? AND status IN (?, ?)"
        )
        params: tuple[Any, ...] = (FAILED, time.time(), message, job_id, QUEUED, RUNNING)
        if worker_id is not None:
            sql += " AND worker_id = ?"
            params += (worker_id,)
        with self._tx() as tx:
            return tx.execute(sql, params).rowcount == 1

    def release(self, job_id: str, worker_id: str) -> bool:
        with self._tx() as tx:
            cur = tx.execute(
                "UPDATE jobs SET status = ?, started_at = NULL, worker_id = NULL,"
                " attempts = attempts - 1 WHERE id = ? AND status = ? AND worker_id = ?",
                (QUEUED, job_id, RUNNING, worker_id),
            )
            return cur.rowcount == 1

    def requeue_orphans(
        self, dead_worker_ids: Iterable[str], stale_before: float, max_attempts: int
    ) -> list[str]:
        dead = set(dead_worker_ids)
        touched: list[str] = []
        with self._tx() as tx:
            alive = {
                r[0]
                for r in self._rows(
                    tx.execute(
                        "SELECT worker_id FROM workers WHERE heartbeat_at >= ?", (stale_before,)
                    )
                )
            }
            alive -= dead
            running = self._rows(
                tx.execute(
                    f"SELECT id, worker_id, attempts FROM jobs WHERE status = ?{self.FOR_UPDATE}",
                    (RUNNING,),
                )
            )
            for job_id, worker_id, attempts in running:
                if worker_id in alive:
                    continue
                if attempts >= max_attempts:
                    tx.execute(
                        "UPDATE jobs SET status = ?, finished_at = ?, message = ? WHERE id = ?",
                        (
                            FAILED,
                            time.time(),
                            f"the worker running this query stopped {attempts} times "
                            "(out of memory or killed?); not retrying it",
                            job_id,
                        ),
                    )
                else:
                    tx.execute(
                        "UPDATE jobs SET status = ?, started_at = NULL, worker_id = NULL"
                        " WHERE id = ?",
                        (QUEUED, job_id),
                    )
                touched.append(job_id)
            stale = [
                r[0]
                for r in self._rows(tx.execute("SELECT worker_id FROM workers", ()))
                if r[0] not in alive
            ]
            for worker_id in stale:
                tx.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))
        return touched

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(JOB_STATUSES, 0)
        for status, n in self._execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"):
            out[status] = int(n)
        return out

    def purge_finished(self, before: float, kind: str | None = None) -> list[Job]:
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status IN (?, ?) AND finished_at < ?"
        params: tuple[Any, ...] = (READY, FAILED, before)
        if kind is not None:
            sql += " AND kind = ?"
            params += (kind,)
        with self._tx() as tx:
            rows = self._rows(tx.execute(sql, params))
            jobs = [_job(r) for r in rows]
            for job in jobs:
                tx.execute("DELETE FROM jobs WHERE id = ?", (job.id,))
        return jobs

    # ---------------------------------------------------------------- workers
    def heartbeat(self, info: WorkerInfo) -> None:
        self._execute(
            f"INSERT INTO workers ({_WORKER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,"
            " job_id = excluded.job_id, loaded = excluded.loaded",
            (
                info.worker_id,
                info.host,
                info.pid,
                info.started_at,
                info.heartbeat_at,
                info.job_id,
                ",".join(info.loaded),
            ),
        )

    def workers(self) -> list[WorkerInfo]:
        rows = self._execute(f"SELECT {_WORKER_COLUMNS} FROM workers ORDER BY started_at")
        return [_worker(r) for r in rows]

    def remove_worker(self, worker_id: str) -> None:
        self._execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))

    # ------------------------------------------------------------ keys, usage
    def add_key(self, key: ApiKey) -> None:
        self._execute(
            f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                key.key_id,
                key.name,
                key.salt,
                key.digest,
                key.quota_samples_per_week,
                key.created_at,
                key.revoked_at,
            ),
        )

    def get_key(self, key_id: str) -> ApiKey | None:
        rows = self._execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,))
        return ApiKey(*rows[0]) if rows else None

    def list_keys(self) -> list[ApiKey]:
        rows = self._execute(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at")
        return [ApiKey(*r) for r in rows]

    def revoke_key(self, key_id: str) -> bool:
        with self._tx() as tx:
            cur = tx.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (time.time(), key_id),
            )
            return cur.rowcount == 1

    def usage(self, key_id: str, week: str) -> int:
        rows = self._execute(
            "SELECT samples FROM usage WHERE key_id = ? AND week = ?", (key_id, week)
        )
        return int(rows[0][0]) if rows else 0

    def consume_quota(
        self, key_id: str, week: str, samples: int, limit: int | None
    ) -> tuple[bool, int]:
        with self._tx() as tx:
            tx.execute(
                "INSERT INTO usage (key_id, week, samples) VALUES (?, ?, 0)"
                " ON CONFLICT (key_id, week) DO NOTHING",
                (key_id, week),
            )
            rows = self._rows(
                tx.execute(
                    f"SELECT samples FROM usage WHERE key_id = ? AND week = ?{self.FOR_UPDATE}",
                    (key_id, week),
                )
            )
            used = int(rows[0][0])
            if limit is not None and used + samples > limit:
                return False, used
            tx.execute(
                "UPDATE usage SET samples = samples + ? WHERE key_id = ? AND week = ?",
                (int(samples), key_id, week),
            )
            return True, used


class SQLiteJobStore(SQLJobStore):
    """The default store: one SQLite file (WAL mode), one connection per thread.

    Writers take SQLite's write lock up front (``BEGIN IMMEDIATE``), so a claim is
    a select-then-update that no other process can interleave with.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        with self._tx() as tx:
            for statement in self._schema():
                tx.execute(statement)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=60, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout = 60000")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return self._rows(self._conn().execute(sql, params))

    def _claim_sql(self) -> str:
        return (
            f"UPDATE jobs SET status = '{RUNNING}', started_at = ?, worker_id = ?,"
            " attempts = attempts + 1"
            f" WHERE seq = (SELECT seq FROM jobs WHERE status = '{QUEUED}' ORDER BY seq LIMIT 1)"
            f" RETURNING {_JOB_COLUMNS}"
        )

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()


def open_store(data_dir: Path | str, database_url: str | None = None) -> JobStore:
    """The store for a server: PostgreSQL when ``database_url`` (or env
    ``OPENGEM_DATABASE_URL``) is a ``postgresql://`` URL, else SQLite in ``data_dir``."""
    url = database_url if database_url is not None else os.environ.get("OPENGEM_DATABASE_URL")
    if url:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                f"OPENGEM_DATABASE_URL must be a postgresql:// URL, not {url.split('://')[0]!r}"
            )
        from opengem.server.store_pg import PostgresJobStore

        return PostgresJobStore(url)
    return SQLiteJobStore(Path(data_dir) / SQLITE_FILE)


def this_host() -> str:
    return socket.gethostname()

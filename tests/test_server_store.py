"""The job store protocol on SQLite and on a real PostgreSQL server.

PostgreSQL tests use ``OPENGEM_TEST_DATABASE_URL`` when set, else start a throwaway
cluster with ``scripts/start_test_postgres.sh`` when PostgreSQL's binaries are
installed, else skip (with the reason).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from opengem.server.store import (
    FAILED,
    QUEUED,
    READY,
    RUNNING,
    ApiKey,
    JobStore,
    SQLiteJobStore,
    WorkerInfo,
    open_store,
    week_of,
)

REPO = Path(__file__).resolve().parents[1]
PG_SCRIPT = REPO / "scripts" / "start_test_postgres.sh"


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server URL (skips when none can be had)."""
    url = os.environ.get("OPENGEM_TEST_DATABASE_URL")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg 3 is not installed (pip install 'psycopg[binary]')")
    if url:
        yield url
        return
    if shutil.which("bash") is None:
        pytest.skip("no bash to run scripts/start_test_postgres.sh")
    directory = Path("/tmp") / f"opengem-pg-{uuid.uuid4().hex[:8]}"
    out = subprocess.run(
        ["bash", str(PG_SCRIPT), str(directory)], capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        subprocess.run(["bash", str(PG_SCRIPT), "--stop", str(directory)], check=False)
        pytest.skip(
            "no PostgreSQL server: set OPENGEM_TEST_DATABASE_URL or install postgresql "
            f"({out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode})"
        )
    try:
        yield out.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(PG_SCRIPT), "--stop", str(directory)], check=False)


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty database on the PostgreSQL server, dropped afterwards."""
    import psycopg

    name = f"opengem_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlsplit(pg_server)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path, str | None]:
    """(kind, data dir, database URL or None)."""
    if request.param == "sqlite":
        return "sqlite", tmp_path, None
    return "postgres", tmp_path, request.getfixturevalue("pg_url")


@pytest.fixture
def store(backend: tuple[str, Path, str | None]) -> Iterator[JobStore]:
    _, data_dir, url = backend
    s = open_store(data_dir, url or None) if url else SQLiteJobStore(data_dir / "opengem.db")
    yield s
    s.close()


def beat(store: JobStore, worker_id: str, when: float | None = None, pid: int = 1) -> None:
    now = time.time() if when is None else when
    store.heartbeat(WorkerInfo(worker_id, "host", pid, now, now))


# ------------------------------------------------------------------ jobs
def test_lifecycle_queued_running_ready_with_timestamps(store: JobStore) -> None:
    before = time.time()
    job_id = store.submit("gem-1-bulk", b'{"inputs": []}', kind="json", key_id="k1", samples=7)
    job = store.get(job_id)
    assert job is not None and job.status == QUEUED and job.query == b'{"inputs": []}'
    assert job.samples == 7 and job.key_id == "k1" and job.attempts == 0
    assert before <= job.created_at <= time.time()
    assert job.started_at is None and job.finished_at is None

    beat(store, "w1")
    claimed = store.claim("w1")
    assert claimed is not None and claimed.id == job_id
    assert claimed.status == RUNNING and claimed.worker_id == "w1" and claimed.attempts == 1
    assert claimed.started_at is not None and claimed.started_at >= job.created_at
    assert store.claim("w1") is None

    assert not store.finish(job_id, "someone-else", "x.json.gz")
    assert store.finish(job_id, "w1", f"{job_id}.json.gz")
    done = store.get(job_id)
    assert done is not None and done.status == READY and done.result_path == f"{job_id}.json.gz"
    assert done.finished_at is not None and done.finished_at >= claimed.started_at
    assert store.counts() == {QUEUED: 0, RUNNING: 0, READY: 1, FAILED: 0}
    assert store.get("no-such-job") is None


def test_fail_and_release(store: JobStore) -> None:
    a = store.submit("gem-1-bulk", b"{}", kind="json", key_id=None, samples=1)
    b = store.submit("gem-1-sc", b"{}", kind="arrow", key_id=None, samples=1)
    assert store.claim("w1").id == a  # type: ignore[union-attr]
    assert store.fail(a, "w1", "went wrong")
    failed = store.get(a)
    assert failed is not None and failed.status == FAILED and failed.message == "went wrong"
    assert not store.fail(a, "w1", "again")  # terminal

    assert store.claim("w2").id == b  # type: ignore[union-attr]
    assert store.release(b, "w2")
    released = store.get(b)
    assert released is not None and released.status == QUEUED and released.attempts == 0
    assert released.worker_id is None and released.kind == "arrow"
    with pytest.raises(ValueError, match="kind"):
        store.submit("gem-1-bulk", b"{}", kind="csv", key_id=None, samples=1)


def test_claims_are_first_in_first_out(store: JobStore) -> None:
    ids = [store.submit("gem-1-bulk", b"{}", kind="json", key_id=None, samples=1) for _ in range(5)]
    assert [store.claim("w").id for _ in ids] == ids  # type: ignore[union-attr]


CLAIMER = """
import json, sys, time
from opengem.server.store import open_store
data_dir, url, worker = sys.argv[1], sys.argv[2] or None, sys.argv[3]
store = open_store(data_dir, url) if url else open_store(data_dir, "")
start = float(sys.argv[4])
while time.time() < start:
    time.sleep(0.001)
claimed = []
while (job := store.claim(worker)) is not None:
    claimed.append(job.id)
print(json.dumps(claimed))
"""


def test_concurrent_processes_never_claim_a_job_twice(
    store: JobStore, backend: tuple[str, Path, str | None]
) -> None:
    _, data_dir, url = backend
    ids = {
        store.submit("gem-1-bulk", b"{}", kind="json", key_id=None, samples=1) for _ in range(120)
    }
    start = time.time() + 2.0
    env = {**os.environ, "OPENGEM_DATABASE_URL": ""}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(data_dir), url or "", f"w{i}", str(start)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(4)
    ]
    claimed: list[str] = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        claimed += json.loads(out)
    assert len(claimed) == len(set(claimed)) == len(ids)
    assert set(claimed) == ids
    assert store.counts()[RUNNING] == len(ids)


def test_requeue_orphans(store: JobStore) -> None:
    now = time.time()
    beat(store, "alive", now)
    beat(store, "stale", now - 600)
    beat(store, "listed-dead", now)
    jobs = {}
    for worker in ("alive", "stale", "listed-dead", "never-reported"):
        job_id = store.submit("gem-1-bulk", b"{}", kind="json", key_id=None, samples=1)
        assert store.claim(worker).id == job_id  # type: ignore[union-attr]
        jobs[worker] = job_id
    touched = store.requeue_orphans(["listed-dead"], now - 60, max_attempts=3)
    assert set(touched) == {jobs["stale"], jobs["listed-dead"], jobs["never-reported"]}
    assert store.get(jobs["alive"]).status == RUNNING  # type: ignore[union-attr]
    for worker in ("stale", "listed-dead", "never-reported"):
        job = store.get(jobs[worker])
        assert job is not None and job.status == QUEUED and job.worker_id is None
    assert {w.worker_id for w in store.workers()} == {"alive"}


def test_a_query_that_keeps_killing_workers_fails(store: JobStore) -> None:
    job_id = store.submit("gem-1-bulk", b"{}", kind="json", key_id=None, samples=1)
    for attempt in range(1, 4):
        claimed = store.claim(f"w{attempt}")
        assert claimed is not None and claimed.attempts == attempt
        store.requeue_orphans([f"w{attempt}"], time.time() - 60, max_attempts=3)
    job = store.get(job_id)
    assert job is not None and job.status == FAILED
    assert "stopped 3 times" in (job.message or "")


def test_purge_finished(store: JobStore) -> None:
    a = store.submit("gem-1-bulk", b"{}", kind="json", key_id=None, samples=1)
    b = store.submit("gem-1-bulk", b"{}", kind="arrow", key_id=None, samples=1)
    c = store.submit("gem-1-bulk", b"{}", kind="json", key_id=None, samples=1)
    for job_id in (a, b):
        store.claim("w")
        store.finish(job_id, "w", f"{job_id}.x")
    cutoff = time.time() + 1
    assert [j.id for j in store.purge_finished(cutoff, kind="arrow")] == [b]
    assert [j.id for j in store.purge_finished(cutoff)] == [a]
    assert store.get(a) is None and store.get(b) is None
    assert store.get(c) is not None  # queued jobs stay


# ------------------------------------------------------------------ workers, keys, quota
def test_heartbeats_update_in_place(store: JobStore) -> None:
    store.heartbeat(WorkerInfo("w", "h", 42, 1.0, 2.0, None, []))
    store.heartbeat(WorkerInfo("w", "h", 42, 1.0, 3.0, "job", ["gem-1-bulk", "gem-1-sc"]))
    (w,) = store.workers()
    assert (w.heartbeat_at, w.job_id, w.loaded) == (3.0, "job", ["gem-1-bulk", "gem-1-sc"])
    store.remove_worker("w")
    assert store.workers() == []


def test_keys_and_revocation(store: JobStore) -> None:
    key = ApiKey("abc", "lab", "00" * 16, "d" * 64, 100, time.time())
    store.add_key(key)
    assert store.get_key("abc") == key
    assert [k.key_id for k in store.list_keys()] == ["abc"]
    assert store.revoke_key("abc") and not store.revoke_key("abc")
    revoked = store.get_key("abc")
    assert revoked is not None and revoked.revoked_at is not None
    assert store.get_key("nope") is None


def test_quota_is_checked_and_charged_atomically(store: JobStore) -> None:
    week = week_of()
    assert store.consume_quota("k", week, 60, 100) == (True, 0)
    assert store.consume_quota("k", week, 50, 100) == (False, 60)
    assert store.consume_quota("k", week, 40, 100) == (True, 60)
    assert store.usage("k", week) == 100
    assert store.consume_quota("k", "1999-W01", 100, 100) == (True, 0)  # other week
    assert store.consume_quota("free", week, 10**6, None) == (True, 0)

    results: list[bool] = []
    lock = threading.Lock()

    def one() -> None:
        ok, _ = store.consume_quota("race", week, 1, 10)
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=one) for _ in range(25)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 10
    assert store.usage("race", week) == 10


# ------------------------------------------------------------------ selection
def test_open_store_picks_sqlite_in_wal_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENGEM_DATABASE_URL", raising=False)
    store = open_store(tmp_path)
    assert isinstance(store, SQLiteJobStore)
    assert store.path == tmp_path / "opengem.db"
    with contextlib.closing(sqlite3.connect(store.path)) as db:  # WAL is kept in the file
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    with pytest.raises(ValueError, match="postgresql://"):
        open_store(tmp_path, "mysql://x")


def test_open_store_picks_postgres_from_the_environment(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opengem.server.store_pg import PostgresJobStore

    monkeypatch.setenv("OPENGEM_DATABASE_URL", pg_url)
    store = open_store(tmp_path)
    assert isinstance(store, PostgresJobStore)
    assert store.counts()[QUEUED] == 0
    store.close()
    assert not (tmp_path / "opengem.db").exists()


@pytest.mark.slow
def test_server_runs_queries_on_postgres(pg_url: str, tmp_path: Path) -> None:
    """``opengem serve`` with OPENGEM_DATABASE_URL: a hosted query goes through PostgreSQL."""
    import urllib.request

    from opengem.contract import get_example_query
    from opengem.server.testing import bundle_available, running_server

    if not bundle_available("gem-1-bulk"):
        pytest.skip("no gem-1-bulk bundle (set OPENGEM_MODELS)")
    query = get_example_query("gem-1-bulk")["example_query"]
    with running_server(
        tmp_path / "data", workers=1, env={"OPENGEM_DATABASE_URL": pg_url}
    ) as server:
        request = urllib.request.Request(
            f"{server.url}/api/models/gem-1-bulk/predict",
            data=json.dumps(query).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            query_id = json.loads(r.read())["modelQueryId"]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with urllib.request.urlopen(
                f"{server.url}/api/model-queries/{query_id}/status", timeout=30
            ) as r:
                status = json.loads(r.read())
            if status["status"] in ("ready", "failed"):
                break
            time.sleep(0.2)
        assert status["status"] == "ready", status
    from opengem.server.store_pg import PostgresJobStore

    pg = PostgresJobStore(pg_url)
    job = pg.get(query_id)
    assert job is not None and job.status == READY
    pg.close()
    assert not (tmp_path / "data" / "opengem.db").exists()

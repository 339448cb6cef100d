"""Worker processes: claim a queued query, run it, write its result, repeat.

``opengem serve`` starts ``--workers`` of these and replaces any that die. Each
one reports a heartbeat (its current query and the models it has loaded) every
``heartbeat_s`` seconds; a query whose worker stops reporting is re-queued, so a
crash, an out-of-memory kill or a killed server loses no accepted query.

A query that runs past ``query_timeout_s`` is interrupted (SIGALRM in the worker;
the server also kills a worker stuck beyond that) and fails with a message.
SIGTERM puts a running query back in the queue and exits.

Run one by hand (another host sharing a PostgreSQL store, say)::

    OPENGEM_DATABASE_URL=postgresql://… python -m opengem.server.worker --data-dir DIR
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson

from opengem.contract import QueryError, UnknownModelError
from opengem.server.config import ServerConfig
from opengem.server.formats import ResultFiles, RowStream
from opengem.server.keys import fail_and_refund
from opengem.server.store import Job, JobStore, WorkerInfo, open_store, this_host
from opengem.server.wake import Wakeup

log = logging.getLogger("opengem.worker")
CONFIG_ENV = "OPENGEM_SERVER_CONFIG"
_IDLE_CHECK_S = 10.0


class QueryTimeout(Exception):
    """The query ran longer than the server allows."""


class Shutdown(BaseException):
    """The worker was asked to stop while running a query."""


def timeout_message(seconds: float) -> str:
    return (
        f"the query ran longer than this server's limit of {seconds:g} s; ask for fewer "
        "samples or split it into several queries"
    )


def die_with_parent(parent_pid: int | None) -> None:
    """Exit when the server that started us dies, even by SIGKILL (Linux: PDEATHSIG).

    Without ``parent_pid`` (a worker started by hand) nothing is set up."""
    if not parent_pid:
        return
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(0)  # the parent died before we could ask to follow it


class Worker:
    """Runs queries from a store until asked to stop."""

    def __init__(
        self, config: ServerConfig, store: JobStore | None = None, worker_id: str | None = None
    ) -> None:
        from opengem.engine.registry import ModelRegistry

        self.config = config
        self.store = store or open_store(config.data_dir, config.resolved_database_url)
        self.files = ResultFiles(config.data_dir)
        self.wakeup = Wakeup(config.data_dir)
        self.registry = ModelRegistry(config.models_dir)
        self.limits = config.query_limits()
        self.worker_id = worker_id or f"{this_host()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.started_at = time.time()
        self.current: str | None = None
        self.stopping = threading.Event()
        self._in_job = False
        self._uses_alarm = threading.current_thread() is threading.main_thread()

    # ------------------------------------------------------------ reporting
    def beat(self) -> None:
        self.store.heartbeat(
            WorkerInfo(
                worker_id=self.worker_id,
                host=this_host(),
                pid=os.getpid(),
                started_at=self.started_at,
                heartbeat_at=time.time(),
                job_id=self.current,
                loaded=self.registry.loaded(),
            )
        )

    def _heartbeats(self) -> None:
        while not self.stopping.wait(self.config.heartbeat_s):
            try:
                self.beat()
            except Exception as exc:  # a busy database must not kill the worker
                log.warning("heartbeat failed: %s", exc)

    # ------------------------------------------------------------ signals
    def _on_term(self, signum: int, frame: Any) -> None:
        self.stopping.set()
        if self._in_job:
            raise Shutdown

    def _on_alarm(self, signum: int, frame: Any) -> None:
        if self._in_job:
            raise QueryTimeout

    @contextlib.contextmanager
    def _deadline(self) -> Iterator[None]:
        self._in_job = True
        if self._uses_alarm:
            signal.setitimer(signal.ITIMER_REAL, self.config.query_timeout_s)
        try:
            yield
        finally:
            if self._uses_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
            self._in_job = False

    # ------------------------------------------------------------ the loop
    def run(self, max_jobs: int | None = None, idle_exit_s: float | None = None) -> int:
        """Process jobs until stopped (or ``max_jobs`` done / idle ``idle_exit_s``).

        Returns the number of jobs processed."""
        if self._uses_alarm:
            signal.signal(signal.SIGTERM, self._on_term)
            signal.signal(signal.SIGINT, self._on_term)
            signal.signal(signal.SIGALRM, self._on_alarm)
        self.beat()
        beats = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        beats.start()
        woken = self.wakeup.open()  # the API wakes us when it queues a query
        done, pause, idle_since, last_idle_check = 0, 0.01, time.monotonic(), time.monotonic()
        try:
            while not self.stopping.is_set():
                if max_jobs is not None and done >= max_jobs:
                    break
                job = self.store.claim(self.worker_id)
                if job is None:
                    now = time.monotonic()
                    if idle_exit_s is not None and now - idle_since > idle_exit_s:
                        break
                    if now - last_idle_check > min(_IDLE_CHECK_S, self.config.model_idle_s / 2):
                        last_idle_check = now
                        if self.registry.unload_idle(self.config.model_idle_s):
                            gc.collect()
                            self.beat()
                    if woken:
                        self.wakeup.wait(pause)
                    else:
                        self.stopping.wait(pause)
                    pause = min(pause * 2, 0.1)
                    continue
                if self.stopping.is_set():  # asked to stop while claiming
                    self.store.release(job.id, self.worker_id)
                    break
                self.run_job(job)
                done += 1
                pause, idle_since = 0.01, time.monotonic()
        finally:
            self.stopping.set()
            self.wakeup.close()
            with contextlib.suppress(Exception):
                self.store.remove_worker(self.worker_id)
        return done

    def run_job(self, job: Job) -> None:
        """Run one claimed job to ready or failed (or back to queued on shutdown)."""
        from opengem.engine.bundle import BundleError
        from opengem.server import jobs

        self.current = job.id
        with contextlib.suppress(Exception):
            self.beat()
        started = time.monotonic()
        try:
            try:
                with self._deadline():
                    query = orjson.loads(job.query)
                    if job.kind == "arrow":  # the API streams it to the client as it grows
                        name = self._run_arrow(job, query)
                    else:
                        result = jobs.run(self.registry, job.model_id, query, self.limits)
                        name = self.files.write(job.id, job.kind, result)
            except Shutdown:
                self.store.release(job.id, self.worker_id)
                log.warning("stopping: query %s goes back to the queue", job.id)
                return
            except QueryTimeout:
                self._fail(job, timeout_message(self.config.query_timeout_s))
                return
            except (QueryError, UnknownModelError, BundleError) as exc:
                self._fail(job, str(exc))
                return
            except orjson.JSONDecodeError:
                self._fail(job, "the stored query is not valid JSON")
                return
            except MemoryError:
                self._fail(
                    job, "the server ran out of memory for this query; ask for fewer samples"
                )
                return
            except Exception as exc:
                log.exception("query %s failed", job.id)
                self._fail(
                    job,
                    f"internal error while running the query ({type(exc).__name__}); "
                    "the server log has the details",
                )
                return
            if not self.store.finish(job.id, self.worker_id, name):
                # someone else owns the job now (it was re-queued): drop our copy
                self.files.delete(name)
            else:
                log.info(
                    "query %s (%s) ready in %.2f s",
                    job.id,
                    job.model_id,
                    time.monotonic() - started,
                )
        finally:
            self.current = None

    def _run_arrow(self, job: Job, query: Any) -> str:
        """Run an Arrow query, its record batches written while later rows are still
        being decoded when the engine can say upfront that its counts fit the stream's
        int32 (:class:`RowStream`), else once the result is whole; the result's name."""
        from opengem.server import jobs

        normalised = jobs.validate_for_model(self.registry, job.model_id, query, self.limits)
        predictor = self.registry.predictor(job.model_id)
        streams: list[RowStream] = []

        def on_start(result: Any, bound: int | None) -> Any:
            if not RowStream.fits(result, bound):
                return None
            streams.append(RowStream(self.files, job.id, self.worker_id, result))
            return streams[0].rows

        try:
            result = predictor.predict(normalised, on_start=on_start)
            if streams:
                return streams[0].finish()
        except BaseException:  # a failure, a time-out, a shutdown: no stream left behind
            for stream in streams:
                stream.abort()
            raise
        return self.files.stream_arrow(job.id, self.worker_id, result)

    def _fail(self, job: Job, message: str) -> None:
        log.info("query %s failed: %s", job.id, message)
        fail_and_refund(self.store, job.id, self.worker_id, message)


def _configure_torch(config: ServerConfig) -> None:
    """Pin torch's threads only when asked: results (rounded counts) can differ in the
    last digit between thread counts, and by default a worker must match the embedded
    API on the same machine exactly."""
    if config.torch_threads:
        import torch

        torch.set_num_threads(config.torch_threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m opengem.server.worker", description="Run opengem queries from a job store."
    )
    parser.add_argument("--data-dir", help="data folder of the server (results, SQLite store)")
    parser.add_argument("--models", help="model bundles folder (default: OPENGEM_MODELS)")
    parser.add_argument("--query-timeout", type=float, default=None, help="seconds per query")
    parser.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    die_with_parent(args.parent_pid)
    if os.environ.get(CONFIG_ENV):
        config = ServerConfig.from_json(os.environ[CONFIG_ENV])
    else:
        from opengem.server.config import default_data_dir

        config = ServerConfig(data_dir=args.data_dir or default_data_dir())
    changes: dict[str, Any] = {}
    if args.data_dir:
        changes["data_dir"] = args.data_dir
    if args.models:
        changes["models_dir"] = args.models
    if args.query_timeout:
        changes["query_timeout_s"] = args.query_timeout
    if changes:
        config = config.with_(**changes)
    from opengem.server.logs import configure

    configure(config.log_level, config.log_format)
    _configure_torch(config)
    worker = Worker(config)
    log.info("worker %s ready", worker.worker_id)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

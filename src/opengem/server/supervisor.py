"""Keeps the worker processes running and the queue honest (a thread in the API process).

- on start, and then every few seconds, re-queues ``running`` jobs whose worker is
  dead: a pid on this host that no longer exists, or no heartbeat for
  ``stale_after_s`` (a worker on another host, or a frozen one);
- starts ``workers`` worker processes, restarts any that exit (with a back-off
  when they keep crashing), and kills one stuck in a query well past the timeout,
  failing that query;
- deletes finished queries, and their result files, after ``result_ttl_s``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from opengem.server.config import ServerConfig
from opengem.server.formats import ResultFiles
from opengem.server.keys import fail_and_refund
from opengem.server.store import JobStore, this_host
from opengem.server.worker import CONFIG_ENV, timeout_message

log = logging.getLogger("opengem.supervisor")
#: a worker stuck this long past the query timeout is killed
KILL_GRACE_S = 15.0
_TICK_S = 0.5
_HOUSEKEEPING_S = 60.0
#: results of synchronous (Arrow) queries nobody collected are deleted after this long
ARROW_RESULT_TTL_S = 3600.0
OPENBLAS_TIMEOUT_ENV = "OPENBLAS_THREAD_TIMEOUT"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class _Slot:
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    not_before: float = 0.0


class Supervisor:
    """Owns ``config.workers`` worker processes for one API process."""

    def __init__(
        self,
        config: ServerConfig,
        store: JobStore,
        on_idle_check: Callable[[], object] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.on_idle_check = on_idle_check
        self._last_idle_check = time.monotonic()
        self.files = ResultFiles(config.data_dir)
        self.slots = [_Slot() for _ in range(config.workers)]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_housekeeping = 0.0
        self._last_recover = time.monotonic()

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Re-queue orphans, then run the workers from the supervisor thread.

        Workers are started (and stopped) by that one long-lived thread: Linux sends
        the parent-death signal when the *thread* that forked a child ends."""
        self.recover()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the workers gracefully (their running queries go back to the queue)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout + 5)

    def _terminate_workers(self, timeout: float = 10.0) -> None:
        procs = [s.process for s in self.slots if s.process is not None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def pids(self) -> list[int]:
        return [s.process.pid for s in self.slots if s.process and s.process.poll() is None]

    # -------------------------------------------------------------- recovery
    def dead_workers(self) -> list[str]:
        """Workers in the store that are certainly dead: their pid is gone from this host."""
        host = this_host()
        return [
            w.worker_id for w in self.store.workers() if w.host == host and not pid_alive(w.pid)
        ]

    def recover(self, extra_dead: list[str] | None = None) -> list[str]:
        """Re-queue the jobs of dead workers (returns the job ids touched)."""
        dead = self.dead_workers() + list(extra_dead or [])
        touched = self.store.requeue_orphans(
            dead, time.time() - self.config.stale_after_s, self.config.max_attempts
        )
        if touched:
            log.warning("re-queued %d query(ies) left by dead workers: %s", len(touched), touched)
        return touched

    # -------------------------------------------------------------- workers
    def _spawn(self, slot: _Slot) -> None:
        env = dict(os.environ)
        env[CONFIG_ENV] = self.config.to_json()
        if self.config.torch_threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.config.torch_threads)
        # OpenBLAS's idle threads spin for ~0.1 s after each call (2**28 cycles) before
        # they sleep: after a query they would take a core from the API sending its
        # result; 2**4 cycles lets them sleep at once (the threads, and so every bit of
        # every result, stay the same)
        env.setdefault(OPENBLAS_TIMEOUT_ENV, "4")
        slot.process = subprocess.Popen(
            [sys.executable, "-m", "opengem.server.worker", "--parent-pid", str(os.getpid())],
            env=env,
            stdin=subprocess.DEVNULL,
            # not in the terminal's process group: Ctrl-C reaches the server, which then
            # stops its workers gracefully (they still die with it if it is killed)
            start_new_session=True,
        )
        slot.started = time.monotonic()
        log.info("started worker process %d", slot.process.pid)

    def _check_slot(self, slot: _Slot) -> None:
        now = time.monotonic()
        if slot.process is None:
            if now >= slot.not_before:
                self._spawn(slot)
            return
        code = slot.process.poll()
        if code is None:
            return
        pid = slot.process.pid
        log.warning("worker process %d exited with code %s", pid, code)
        slot.process = None
        host = this_host()
        gone = [w.worker_id for w in self.store.workers() if w.host == host and w.pid == pid]
        self.recover(gone)
        lived = now - slot.started
        slot.failures = 0 if lived > 60 else slot.failures + 1
        slot.not_before = now + min(30.0, 0.5 * 2**slot.failures) if slot.failures else now
        if not self._stop.is_set() and now >= slot.not_before:
            self._spawn(slot)

    def _kill_stuck(self) -> None:
        """Kill our workers stuck in a query well past the timeout; fail that query."""
        limit = self.config.query_timeout_s + KILL_GRACE_S
        ours = {s.process.pid: s for s in self.slots if s.process and s.process.poll() is None}
        host, now = this_host(), time.time()
        for w in self.store.workers():
            if w.host != host or w.pid not in ours or not w.job_id:
                continue
            job = self.store.get(w.job_id)
            if job is None or job.status != "running" or job.worker_id != w.worker_id:
                continue
            if job.started_at is not None and now - job.started_at > limit:
                log.error("worker %d stuck on query %s; killing it", w.pid, job.id)
                fail_and_refund(
                    self.store, job.id, w.worker_id, timeout_message(self.config.query_timeout_s)
                )
                with contextlib.suppress(ProcessLookupError):
                    ours[w.pid].process.kill()  # type: ignore[union-attr]

    def housekeeping(self) -> None:
        """Delete expired results and stray temporaries."""
        now = time.time()
        expired = self.store.purge_finished(now - self.config.result_ttl_s)
        expired += self.store.purge_finished(now - ARROW_RESULT_TTL_S, kind="arrow")
        for job in expired:
            self.files.delete(job.result_path)
        self.files.sweep_temporary()

    def _run(self) -> None:
        try:
            for slot in self.slots:
                self._spawn(slot)
            self._loop()
        finally:
            self._terminate_workers()

    def _loop(self) -> None:
        while not self._stop.wait(_TICK_S):
            try:
                for slot in self.slots:
                    self._check_slot(slot)
                self._kill_stuck()
                idle_every = min(10.0, self.config.model_idle_s / 2)
                if self.on_idle_check and time.monotonic() - self._last_idle_check > idle_every:
                    self._last_idle_check = time.monotonic()
                    self.on_idle_check()
                if time.monotonic() - self._last_recover > self.config.stale_after_s:
                    self._last_recover = time.monotonic()
                    self.recover()
                if time.monotonic() - self._last_housekeeping > _HOUSEKEEPING_S:
                    self._last_housekeeping = time.monotonic()
                    self.housekeeping()
            except Exception:  # the supervisor must outlive a busy database
                log.exception("supervisor tick failed")

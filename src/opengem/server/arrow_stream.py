"""The synchronous (self-hosted) protocol's answer: the Arrow stream a worker writes,
sent on to the client while the worker is still writing it.

:func:`arrow_response` waits for the query (polling the store, and the partial file
of the worker running it, more slowly the longer it runs) and answers
errors before any byte of the result as HTTP errors (504 past the time limit, the
worker's message otherwise). Once the worker's partial file has bytes it returns an
:class:`ArrowStream`, which sends the file as it grows and ends the response only
when the store says that worker finished the query: a worker that dies, is
stopped or times out mid-stream leaves the response cut off (the client's HTTP
library raises), never a shorter stream that reads as complete; the query is then
failed and its samples refunded. A client that goes away, before or during the
stream, is refunded too (unless its query had already finished).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

from fastapi.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from opengem.server.formats import ARROW_STREAM
from opengem.server.keys import fail_and_refund
from opengem.server.state import ServerState
from opengem.server.store import FAILED, QUEUED, READY, RUNNING, Job
from opengem.server.supervisor import KILL_GRACE_S
from opengem.server.worker import timeout_message

log = logging.getLogger("opengem.server")
#: bytes per read of the result file and per message to the client
CHUNK = 4 << 20
#: polling: the partial file (a stat) every FAST_S at first, then every ~2% of the
#: time waited, at most SLOW_S; the store every STORE_S (more often while queued)
FAST_S, SLOW_S, STORE_S = 0.001, 0.02, 0.025
#: the message of a query whose worker stopped after sending part of its result
WORKER_LOST = (
    "the worker running this query stopped while its result was being sent; "
    "the query was not charged: run it again"
)


def _deadline(state: ServerState) -> float:
    return time.monotonic() + state.config.query_timeout_s + KILL_GRACE_S + 30


def _failure(state: ServerState, job: Job) -> HTTPException:
    message = job.message or "the query failed"
    status = 504 if message == timeout_message(state.config.query_timeout_s) else 500
    return HTTPException(status, message)


def _open(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


def _open_nonempty(path: Path) -> int | None:
    """The file open for reading once it holds a byte, else None."""
    try:
        if path.stat().st_size == 0:
            return None
    except OSError:
        return None
    return _open(path)


async def arrow_response(state: ServerState, request: Request, job_id: str) -> Response:
    """Wait for the query's first bytes (or its end), then stream it; errors before the
    first byte are HTTP errors."""
    deadline, started = _deadline(state), time.monotonic()
    next_store, store_every = 0.0, FAST_S
    job: Job | None = None
    part: tuple[str, Path] | None = None  # (worker id, its partial file)
    while True:
        now = time.monotonic()
        if job is None or now >= next_store:
            job = await run_in_threadpool(state.store.get, job_id)
            if job is None:
                raise HTTPException(500, "the query disappeared from the queue")
            if job.status == FAILED:
                raise _failure(state, job)
            if job.status == READY and job.result_path:
                fd = _open(state.files.path(job.result_path))
                if fd is None:
                    raise HTTPException(500, "the result of the query was deleted")
                return ArrowStream(state, job, fd, complete=True, deadline=deadline)
            # queued: poll quickly, the worker picks it up within milliseconds
            store_every = FAST_S if job.status == QUEUED else STORE_S
            store_every = min(max(store_every, (now - started) / 50), STORE_S)
            next_store = now + store_every
            if await request.is_disconnected():  # nothing will be delivered: not charged
                await run_in_threadpool(
                    fail_and_refund, state.store, job_id, None, "the client disconnected"
                )
                return Response(status_code=499)
        if job.status == RUNNING and job.worker_id:
            if part is None or part[0] != job.worker_id:
                part = (job.worker_id, state.files.partial(job_id, job.worker_id))
            fd = _open_nonempty(part[1])
            if fd is not None:
                # still that worker's query? (a dead worker's partial file stays behind)
                job = await run_in_threadpool(state.store.get, job_id)
                if job is not None and job.status == RUNNING and job.worker_id == part[0]:
                    return ArrowStream(state, job, fd, complete=False, deadline=deadline)
                os.close(fd)
                next_store = 0.0
                continue
        if now > deadline:
            await run_in_threadpool(fail_and_refund, state.store, job_id, None, "no result in time")
            raise HTTPException(504, timeout_message(state.config.query_timeout_s))
        await asyncio.sleep(min(max(FAST_S, (now - started) / 50), SLOW_S))


class ArrowStream(Response):
    """Sends a query's Arrow result file while its worker may still be writing it."""

    media_type = ARROW_STREAM

    def __init__(
        self, state: ServerState, job: Job, fd: int, *, complete: bool, deadline: float
    ) -> None:
        super().__init__(media_type=ARROW_STREAM, headers={"X-Model-Query-Id": job.id})
        self.state, self.job, self.fd = state, job, fd
        self.complete, self.deadline = complete, deadline
        self.worker_id = job.worker_id or ""
        self.final = state.files.path(state.files.name(job.id, "arrow"))
        self.sent = 0
        self.worker_gone = False
        self.disconnected = asyncio.Event()
        if complete:  # a finished result: its length is known
            self.headers["content-length"] = str(os.fstat(fd).st_size)
        else:
            del self.headers["content-length"]

    async def _listen(self, receive: Receive) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        listener = asyncio.ensure_future(self._listen(receive))
        delivered = False
        try:
            delivered = await self._send_all(send)
        except OSError:  # a server that reports a client gone by raising
            await self._abort("the client disconnected", warn=False)
        except Exception:  # never a traceback mid-stream: cut the response off, refund
            log.exception("query %s: sending the Arrow result failed", self.job.id)
            await self._abort("internal error while sending the result")
        finally:
            listener.cancel()
            with contextlib.suppress(OSError):
                os.close(self.fd)
            await run_in_threadpool(self._clean_up, delivered)  # freeing 80 MB takes ms

    async def _send_all(self, send: Send) -> bool:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        next_store, waited_since = 0.0, time.monotonic()
        while True:
            if self.disconnected.is_set():
                await self._abort("the client disconnected", warn=False)
                return False
            chunk = await run_in_threadpool(os.pread, self.fd, CHUNK, self.sent)
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self.sent += len(chunk)
                waited_since = time.monotonic()
                continue
            if self.complete:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return True
            # caught up with the worker: has it finished (renamed the file into place
            # and marked the query ready), is it still writing, or is it gone?
            now = time.monotonic()
            if self.final.exists() or now >= next_store:
                next_store = now + STORE_S
                job = await run_in_threadpool(self.state.store.get, self.job.id)
                if job is not None and job.status == READY and job.worker_id == self.worker_id:
                    fd = _open(self.final)
                    if fd is None:
                        await self._abort("the result file was deleted while being sent")
                        return False
                    os.close(self.fd)
                    self.fd, self.complete = fd, True
                    continue
                if job is None or job.status != RUNNING or job.worker_id != self.worker_id:
                    reason = WORKER_LOST
                    if job is not None and job.status == FAILED and job.message:
                        reason = job.message
                    self.worker_gone = True
                    await self._abort(reason)
                    return False
            if now > self.deadline:
                await self._abort(timeout_message(self.state.config.query_timeout_s))
                return False
            await asyncio.sleep(min(max(FAST_S, (now - waited_since) / 50), SLOW_S))

    async def _abort(self, reason: str, warn: bool = True) -> None:
        """End the stream short (no terminating chunk: the client sees it cut off) and
        fail the query, refunding it (a no-op when it already failed)."""
        (log.warning if warn else log.info)(
            "query %s: Arrow stream cut off after %d bytes: %s", self.job.id, self.sent, reason
        )
        with contextlib.suppress(Exception):
            await run_in_threadpool(fail_and_refund, self.state.store, self.job.id, None, reason)

    def _clean_up(self, delivered: bool) -> None:
        """Delete the result once sent, or the partial file a lost worker left; a worker
        still writing for a client that left deletes its own (its query failed)."""
        with contextlib.suppress(OSError, ValueError):
            if delivered or self.complete:
                self.final.unlink(missing_ok=True)
            elif self.worker_gone:
                self.state.files.partial(self.job.id, self.worker_id).unlink(missing_ok=True)

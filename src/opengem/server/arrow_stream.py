"""The synchronous (self-hosted) protocol's answer: the Arrow stream a worker writes,
sent on to the client while the worker is still writing it.

:func:`arrow_response` waits for the query (polling the store, and the partial file
of the worker running it, more slowly the longer it runs) and answers errors
before any byte of the result as HTTP errors (504 past the time limit, the
worker's message otherwise). Once the worker's partial file has its header (the
stream's length: the response's ``Content-Length``) it returns an
:class:`ArrowStream`, which sends the file as it grows and sends its last bytes
only when the store says that worker finished the query: a worker that dies, is
stopped or times out mid-stream leaves the response cut off short of its length,
after bytes no Arrow reader takes for a message (so the client's HTTP library or
its Arrow reader raises), never a shorter stream that reads as complete; the query
is then failed and its samples refunded. A client that goes away, before or during the
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

from opengem.server.formats import ARROW_HEADER, ARROW_STREAM, read_arrow_header
from opengem.server.keys import fail_and_refund
from opengem.server.state import ServerState
from opengem.server.store import FAILED, QUEUED, READY, RUNNING, Job
from opengem.server.supervisor import KILL_GRACE_S
from opengem.server.worker import timeout_message

log = logging.getLogger("opengem.server")
#: bytes per read of the result file and per message to the client
CHUNK = 4 << 20
#: polling: the worker's files (a stat) every FAST_S at first, then every ~2% of the
#: time waited, at most SLOW_S; the store as often while the query is queued (a worker
#: takes it within milliseconds), at most every STORE_S, and every STORE_S once it runs
#: (a failure or a lost worker) or at once when the result file appears
FAST_S, SLOW_S, STORE_S = 0.001, 0.02, 0.05
#: bytes of a stream held back until its worker is known to have finished (its
#: end-of-stream marker): what was sent before never reads as a complete response
HOLD = 8
#: sent in place of the rest of a stream that is cut off: no Arrow IPC message starts
#: so (a negative metadata length), so even a client whose HTTP library does not check
#: the ``Content-Length`` fails to read the stream rather than taking a shorter table
POISON = b"\xff" * HOLD
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


def _open_framed(path: Path) -> tuple[int, int | None] | None:
    """A result file open for reading, with the stream length its header announces
    (None: not a result file); None while the header is not there yet."""
    try:
        if path.stat().st_size < ARROW_HEADER.size:
            return None
    except OSError:
        return None
    fd = _open(path)
    if fd is None:
        return None
    try:
        return fd, read_arrow_header(os.pread(fd, ARROW_HEADER.size, 0))
    except OSError:
        os.close(fd)
        return None


def _unreadable(state: ServerState, job_id: str) -> HTTPException:
    message = "the worker wrote a result this server cannot read (a different version?)"
    fail_and_refund(state.store, job_id, None, message)
    return HTTPException(500, message)


async def arrow_response(state: ServerState, request: Request, job_id: str) -> Response:
    """Wait for the query's first bytes (or its end), then stream it; errors before the
    first byte are HTTP errors."""
    deadline, started = _deadline(state), time.monotonic()
    next_store, store_every = 0.0, FAST_S
    job: Job | None = None
    part: tuple[str, Path] | None = None  # (worker id, its partial file)
    final = state.files.path(state.files.name(job_id, "arrow"))
    while True:
        now = time.monotonic()
        if job is None or now >= next_store:
            job = await run_in_threadpool(state.store.get, job_id)
            if job is None:
                raise HTTPException(500, "the query disappeared from the queue")
            if job.status == FAILED:
                raise _failure(state, job)
            if job.status == READY and job.result_path:
                opened = _open_framed(state.files.path(job.result_path))
                if opened is None:
                    raise HTTPException(500, "the result of the query was deleted")
                fd, length = opened
                if length is None:
                    os.close(fd)
                    raise await run_in_threadpool(_unreadable, state, job_id)
                return ArrowStream(state, job, fd, length, confirmed=True, deadline=deadline)
            store_every = STORE_S
            if job.status == QUEUED:
                store_every = min(max(FAST_S, (now - started) / 50), STORE_S)
            next_store = now + store_every
            if await request.is_disconnected():  # nothing will be delivered: not charged
                await run_in_threadpool(
                    fail_and_refund, state.store, job_id, None, "the client disconnected"
                )
                return Response(status_code=499)
        if job.status == RUNNING and job.worker_id:
            if part is None or part[0] != job.worker_id:
                part = (job.worker_id, state.files.partial(job_id, job.worker_id))
            opened = _open_framed(part[1])
            if opened is not None:
                fd, length = opened
                # still that worker's query? (a dead worker's partial file stays behind)
                job = await run_in_threadpool(state.store.get, job_id)
                if job is not None and job.status == RUNNING and job.worker_id == part[0]:
                    if length is None:
                        os.close(fd)
                        raise await run_in_threadpool(_unreadable, state, job_id)
                    return ArrowStream(state, job, fd, length, confirmed=False, deadline=deadline)
                os.close(fd)
                next_store = 0.0
                continue
            elif final.exists():  # written and renamed between two looks: ready now
                next_store = 0.0
        if now > deadline:
            await run_in_threadpool(fail_and_refund, state.store, job_id, None, "no result in time")
            raise HTTPException(504, timeout_message(state.config.query_timeout_s))
        await asyncio.sleep(min(max(FAST_S, (now - started) / 50), SLOW_S))


class ArrowStream(Response):
    """Sends a query's result file (its Arrow stream, after the header) while its worker
    may still be writing it; ``confirmed``: the store says the worker finished."""

    media_type = ARROW_STREAM

    def __init__(
        self,
        state: ServerState,
        job: Job,
        fd: int,
        length: int,
        *,
        confirmed: bool,
        deadline: float,
    ) -> None:
        super().__init__(media_type=ARROW_STREAM, headers={"X-Model-Query-Id": job.id})
        self.headers["content-length"] = str(length)
        self.state, self.job, self.fd = state, job, fd
        self.confirmed, self.deadline = confirmed, deadline
        self.worker_id = job.worker_id or ""
        self.final = state.files.path(state.files.name(job.id, "arrow"))
        self.pos, self.end = ARROW_HEADER.size, ARROW_HEADER.size + length
        self.worker_gone = False
        self.disconnected = asyncio.Event()

    @property
    def sent(self) -> int:
        return self.pos - ARROW_HEADER.size

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
            await self._abort("internal error while sending the result", send)
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
            limit = self.end if self.confirmed else self.end - HOLD
            if self.pos < limit:
                chunk = await run_in_threadpool(
                    os.pread, self.fd, min(CHUNK, limit - self.pos), self.pos
                )
                if chunk:
                    more = self.pos + len(chunk) < self.end
                    await send({"type": "http.response.body", "body": chunk, "more_body": more})
                    self.pos += len(chunk)
                    waited_since = time.monotonic()
                    if not more:
                        return True
                    continue
            if self.confirmed:  # finished, yet shorter than its header says
                await self._abort("the result file is shorter than its header says", send)
                return False
            # caught up with the worker (or holding back the stream's end): has it
            # finished (renamed the file into place and marked the query ready), is it
            # still writing, or is it gone?
            now = time.monotonic()
            if self.final.exists() or now >= next_store:
                next_store = now + STORE_S
                job = await run_in_threadpool(self.state.store.get, self.job.id)
                if job is not None and job.status == READY and job.worker_id == self.worker_id:
                    fd = _open(self.final)
                    if fd is None:
                        await self._abort("the result file was deleted while being sent", send)
                        return False
                    os.close(self.fd)
                    self.fd, self.confirmed = fd, True
                    continue
                if job is None or job.status != RUNNING or job.worker_id != self.worker_id:
                    reason = WORKER_LOST
                    if job is not None and job.status == FAILED and job.message:
                        reason = job.message
                    self.worker_gone = True
                    await self._abort(reason, send)
                    return False
            if now > self.deadline:
                await self._abort(timeout_message(self.state.config.query_timeout_s), send)
                return False
            await asyncio.sleep(min(max(FAST_S, (now - waited_since) / 50), SLOW_S))

    async def _abort(self, reason: str, send: Send | None = None, warn: bool = True) -> None:
        """End the response short of its ``Content-Length`` (the client sees it cut
        off), with :data:`POISON` (when ``send`` is given) where the stream went on, and
        fail the query, refunding it (a no-op when it already failed)."""
        (log.warning if warn else log.info)(
            "query %s: Arrow stream cut off after %d bytes: %s", self.job.id, self.sent, reason
        )
        if send is not None and self.pos + len(POISON) <= self.end:
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": POISON, "more_body": True})
        with contextlib.suppress(Exception):
            await run_in_threadpool(fail_and_refund, self.state.store, self.job.id, None, reason)

    def _clean_up(self, delivered: bool) -> None:
        """Delete the result once sent, or the partial file a lost worker left; a worker
        still writing for a client that left deletes its own (its query failed)."""
        with contextlib.suppress(OSError, ValueError):
            if delivered or self.confirmed:
                self.final.unlink(missing_ok=True)
            elif self.worker_gone:
                self.state.files.partial(self.job.id, self.worker_id).unlink(missing_ok=True)

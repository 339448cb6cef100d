"""Waking idle workers when a query is queued, instead of letting them sleep out their
poll interval: a named pipe (FIFO) in the data folder.

The API writes a byte to the pipe after queueing a query; idle workers wait on it
(``select``) with their poll interval as the time-out, so the pipe is only ever a
hint: a worker on another host (a PostgreSQL store), a system without FIFOs or a
byte lost to a full pipe still finds its query at the next poll.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import stat
import time
from pathlib import Path

log = logging.getLogger("opengem.wake")
FIFO_NAME = "wake.fifo"


class Wakeup:
    """The wake-up pipe of one data folder."""

    def __init__(self, data_dir: Path | str) -> None:
        self.path = Path(data_dir) / FIFO_NAME
        self._read_fd: int | None = None
        self._write_fd: int | None = None

    # ------------------------------------------------------------ the API side
    def notify(self) -> None:
        """Wake an idle worker, if one waits on this pipe (never blocks, never fails)."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # no pipe yet, or nobody reading it (ENXIO): the poll will do
            return
        try:
            os.write(fd, b"\0")
        except OSError:  # full (EAGAIN): the workers have wake-ups pending anyway
            pass
        finally:
            os.close(fd)

    # --------------------------------------------------------- the worker side
    def open(self) -> bool:
        """Create the pipe if needed and open it for waiting; False when not possible
        (the worker then polls, as it would without a pipe)."""
        if self._read_fd is not None:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkfifo(self.path, 0o600)
            if not stat.S_ISFIFO(os.stat(self.path).st_mode):
                log.warning("%s is not a named pipe: workers poll for queries", self.path)
                return False
            self._read_fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            # our own writer keeps the pipe from reading as closed (EOF) between writers
            self._write_fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except (OSError, AttributeError) as exc:  # AttributeError: no os.mkfifo
            log.info("no wake-up pipe (%s): workers poll for queries", exc)
            self.close()
            return False
        return True

    def wait(self, timeout: float) -> bool:
        """Sleep until woken or ``timeout`` seconds pass; True when woken."""
        if self._read_fd is None:
            time.sleep(timeout)
            return False
        try:
            ready, _, _ = select.select([self._read_fd], [], [], timeout)
        except (OSError, ValueError):
            time.sleep(timeout)
            return False
        if not ready:
            return False
        with contextlib.suppress(OSError):  # BlockingIOError: another worker took it
            os.read(self._read_fd, 4096)
        return True

    def close(self) -> None:
        for name in ("_read_fd", "_write_fd"):
            fd = getattr(self, name)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, None)

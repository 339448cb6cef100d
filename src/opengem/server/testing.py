"""Start a real ``opengem serve`` in a subprocess on a free loopback port (tests, notebooks).

with running_server(tmp_path / "data", workers=1) as server:
    pysynthbio.list_models(api_base_url=server.url)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A running server: its URL, data folder, process and log file."""

    data_dir: Path
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self, timeout: float = 2.0) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=timeout) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def wait_ready(self, workers: int = 0, timeout: float = 90.0) -> dict[str, Any]:
        """Wait until /healthz answers and ``workers`` workers report in."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with code {self.process.returncode}:\n{self.log()}"
                )
            health = self.health()
            if health is not None and health.get("workers", 0) >= workers:
                return health
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout:g} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20_000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (graceful: running queries go back to the queue), then SIGKILL."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)

    def kill(self) -> None:
        """SIGKILL the server process (its workers die with it)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


def start_server(
    data_dir: Path | str,
    *,
    workers: int = 1,
    models_dir: Path | str | None = None,
    auth: bool | None = None,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    port: int | None = None,
    wait: bool = True,
    ready_timeout: float = 90.0,
) -> ServerProcess:
    """Start ``opengem serve`` on 127.0.0.1 and (by default) wait for it and its workers."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        chosen = port or free_port()
        cmd = [
            sys.executable,
            "-m",
            "opengem.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(chosen),
            "--data-dir",
            str(data_dir),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ]
        if models_dir is not None:
            cmd += ["--models", str(models_dir)]
        if auth is not None:
            cmd.append("--auth" if auth else "--no-auth")
        cmd += list(args)
        log_path = data_dir / f"server-{chosen}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
            )
        server = ServerProcess(data_dir, chosen, process, log_path)
        if not wait:
            return server
        try:
            server.wait_ready(workers, ready_timeout)
            return server
        except (RuntimeError, TimeoutError):
            server.kill()
            if port is None and attempt < 2 and "address already in use" in server.log().lower():
                continue
            raise
    raise RuntimeError("could not find a free port")


@contextmanager
def running_server(data_dir: Path | str, **kwargs: Any) -> Iterator[ServerProcess]:
    server = start_server(data_dir, **kwargs)
    try:
        yield server
    finally:
        server.stop()


def models_dir() -> Path:
    """Where the server will look for bundles (``OPENGEM_MODELS`` or the shipped ones),
    found without importing torch."""
    env = os.environ.get("OPENGEM_MODELS")
    if env:
        return Path(env).expanduser()
    from importlib import resources

    return Path(str(resources.files("opengem").joinpath("models")))


def bundle_available(model_id: str) -> bool:
    """True when the bundle serving ``model_id`` is installed."""
    from opengem.contract import parse_model_id

    return (models_dir() / parse_model_id(model_id).base_model_id / "bundle.json").is_file()

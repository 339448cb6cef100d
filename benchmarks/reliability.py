"""What a hostile or unlucky client gets from ``opengem serve`` (a script, not a test).

    python benchmarks/reliability.py [--jobs 20] [--clients 50]

Starts a real server (subprocess, loopback, auth on, fresh data folder) and prints one
row per probe: the HTTP status, the seconds to the answer and the size of the body:

- oversized and malformed inputs (20,000 invalid ontology ids, ten 1 MB strings,
  100,000 unknown keys, a count of 2^64, a NaN literal);
- 200 connections that send headers and stall their body (closed after
  ``--body-timeout``, set to 5 s here);
- ``kill -9`` of the server and its workers while jobs run, then a restart on the
  same data folder: jobs lost (should be 0);
- many parallel clients: errors (should be 0).

The tests (``tests/test_hostile_inputs.py``, ``tests/test_server_api.py``) assert the
behaviour; this prints the numbers the README quotes. Needs the shipped bundles.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from opengem.contract import get_example_query
from opengem.server.keys import create_key
from opengem.server.store import open_store
from opengem.server.testing import ServerProcess, bundle_available, start_server

BODY_TIMEOUT = 5


def post(url: str, key: str, model: str, body: bytes | str) -> tuple[int, float, int]:
    start = time.perf_counter()
    r = requests.post(
        f"{url}/api/models/{model}/predict",
        data=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=120,
    )
    return r.status_code, time.perf_counter() - start, len(r.content)


def probes(url: str, key: str) -> list[tuple[str, tuple[int, float, int]]]:
    bulk = get_example_query("gem-1-bulk")["example_query"]
    ref = get_example_query("gem-1-bulk_reference-conditioning")["example_query"]
    rows = []
    bad_ids = dict(bulk, inputs=[
        {"metadata": {"tissue_ontology_id": f"UBERON:9{i:06d}"}, "num_samples": 1}
        for i in range(20_000)
    ])  # fmt: skip
    rows.append(
        (
            "20,000 inputs, each an invalid ontology id",
            post(url, key, "gem-1-bulk", json.dumps(bad_ids)),
        )
    )
    long = dict(bulk, inputs=[
        {"metadata": {"tissue_ontology_id": "x" * 1_000_000}, "num_samples": 1} for _ in range(10)
    ])  # fmt: skip
    rows.append(
        ("ten 1 MB strings in an ontology field", post(url, key, "gem-1-bulk", json.dumps(long)))
    )
    keys = dict(
        bulk, inputs=[{"metadata": {f"k{i}": "v" for i in range(100_000)}, "num_samples": 1}]
    )
    rows.append(("100,000 unknown metadata keys", post(url, key, "gem-1-bulk", json.dumps(keys))))
    big = json.loads(json.dumps(ref))
    big["inputs"][0]["counts"][0] = 2**64
    rows.append(
        (
            "a reference count of 2^64",
            post(url, key, "gem-1-bulk_reference-conditioning", json.dumps(big)),
        )
    )
    nan = json.dumps(ref).replace('"counts": [', '"counts": [NaN, ', 1)
    rows.append(
        ("a NaN literal in counts", post(url, key, "gem-1-bulk_reference-conditioning", nan))
    )
    return rows


def stalled_connections(url: str, n: int = 200) -> tuple[int, float]:
    """Open ``n`` connections that promise a body and never send it; how many the
    server closed, and when the last one went."""
    host, port = url.removeprefix("http://").split(":")
    socks = []
    start = time.perf_counter()
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=BODY_TIMEOUT * 4)
        s.sendall(
            b"POST /api/models/gem-1-bulk/predict HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        socks.append(s)
    closed, last = 0, 0.0
    for s in socks:
        try:
            while s.recv(65536):
                pass
            closed += 1
            last = time.perf_counter() - start
        except OSError:
            pass
        finally:
            s.close()
    return closed, last


def kill_during_jobs(data: Path, key: str, jobs: int) -> tuple[int, int]:
    """Submit ``jobs`` queries, kill -9 server and workers, restart: (ready, lost)."""
    server = start_server(data, workers=2, auth=True)
    query = dict(get_example_query("gem-1-bulk")["example_query"])
    query["inputs"] = [dict(query["inputs"][0], num_samples=200)]
    headers = {"Authorization": f"Bearer {key}"}
    ids = []
    for _ in range(jobs):
        r = requests.post(
            f"{server.url}/api/models/gem-1-bulk/predict", json=query, headers=headers, timeout=60
        )
        ids.append(r.json()["modelQueryId"])
    time.sleep(0.5)
    server.kill()
    server = start_server(data, workers=2, auth=True)
    try:
        deadline = time.monotonic() + 300
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            for i in ids:
                r = requests.get(
                    f"{server.url}/api/model-queries/{i}/status", headers=headers, timeout=30
                )
                states[i] = r.json().get("status", "?") if r.ok else f"http {r.status_code}"
            if all(s in ("ready", "failed") for s in states.values()):
                break
            time.sleep(1)
        ready = sum(s == "ready" for s in states.values())
        return ready, jobs - ready
    finally:
        server.stop()


def parallel_clients(url: str, key: str, clients: int) -> tuple[int, float]:
    query = get_example_query("gem-1-bulk")["example_query"]

    def one(_: int) -> bool:
        r = requests.post(
            f"{url}/api/models/gem-1-bulk/predict",
            json=query,
            headers={
                "Authorization": f"Bearer {key}",
                "Accept": "application/vnd.apache.arrow.stream",
            },
            timeout=300,
        )
        return r.status_code == 200 and len(r.content) > 0

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        ok = list(pool.map(one, range(clients)))
    return clients - sum(ok), time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20, help="jobs in flight at the kill -9")
    parser.add_argument("--clients", type=int, default=50, help="parallel clients")
    args = parser.parse_args()
    if not bundle_available("gem-1-bulk"):
        print("no gem-1-bulk bundle: nothing to measure")
        return 1
    data = Path(tempfile.mkdtemp(prefix="opengem-reliability-")) / "data"
    store = open_store(data, "")
    key = create_key(store, "reliability")
    store.close()
    server: ServerProcess = start_server(
        data, workers=2, auth=True, args=["--body-timeout", str(BODY_TIMEOUT)]
    )
    rows: list[tuple[str, str]] = []
    try:
        for name, (status, seconds, size) in probes(server.url, key):
            rows.append((name, f"{status} in {seconds:.2f} s, body {size:,} bytes"))
        closed, last = stalled_connections(server.url)
        rows.append((
            "200 connections stalling their body",
            f"{closed}/200 closed by the server, the last after {last:.1f} s "
            f"(--body-timeout {BODY_TIMEOUT})",
        ))  # fmt: skip
        errors, seconds = parallel_clients(server.url, key, args.clients)
        rows.append(
            (
                f"{args.clients} parallel clients (Arrow)",
                f"{errors} errors, all answered in {seconds:.1f} s",
            )
        )
    finally:
        server.stop()
    ready, lost = kill_during_jobs(data, key, args.jobs)
    rows.append(
        (
            f"kill -9 of server and workers with {args.jobs} jobs queued/running, restart",
            f"{ready} ready, {lost} lost",
        )
    )
    width = max(len(r[0]) for r in rows)
    print(f"{'probe':<{width}}  result")
    for name, result in rows:
        print(f"{name:<{width}}  {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

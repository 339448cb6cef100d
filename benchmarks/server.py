"""Latency and throughput of ``opengem serve`` on this machine (a script, not a test).

    python benchmarks/server.py [--workers 2] [--requests 40] [--concurrency 4]

Starts a real server (subprocess, loopback, auth off, fresh data folder), then prints:

- p50 / p95 end-to-end latency of a 10-sample bulk query, self-hosted (one POST,
  Arrow stream back) and hosted (POST, poll the status, signed JSON download);
- samples/s of the Arrow path for a 1,000-sample bulk query (mean estimation),
  against the embedded API in this process for reference.

Needs the bundles (``OPENGEM_MODELS`` or the shipped ones).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import opengem
from opengem.client.remote import RemoteClient
from opengem.server.testing import bundle_available, start_server


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def timed_queries(
    client: RemoteClient, query: dict, n: int, concurrency: int, self_hosted: bool
) -> list[float]:
    def one(_: int) -> float:
        start = time.perf_counter()
        client.predict_query(
            copy.deepcopy(query), "gem-1-bulk", self_hosted=self_hosted, poll_interval_seconds=0.2
        )
        return time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(one, range(n)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--requests", type=int, default=40, help="queries per latency series")
    parser.add_argument("--concurrency", type=int, default=4, help="clients at once")
    parser.add_argument("--samples", type=int, default=1000, help="samples of the big query")
    args = parser.parse_args()
    if not bundle_available("gem-1-bulk"):
        sys.exit("no gem-1-bulk bundle: set OPENGEM_MODELS to a folder holding gem-1-bulk/")

    small = opengem.get_example_query("gem-1-bulk")["example_query"]  # 2 inputs x 5 samples
    big = copy.deepcopy(small)
    big["sampling_strategy"] = "mean estimation"
    big["inputs"][0]["num_samples"] = args.samples // 2
    big["inputs"][1]["num_samples"] = args.samples - args.samples // 2

    with tempfile.TemporaryDirectory(prefix="opengem-bench-") as tmp:
        server = start_server(Path(tmp) / "data", workers=args.workers, auth=False)
        try:
            client = RemoteClient(server.url, timeout=600)
            for self_hosted in (True, False):  # warm up: models load in every worker
                timed_queries(client, small, 2 * args.workers, args.workers, self_hosted)
            client.predict_query(copy.deepcopy(big), "gem-1-bulk", self_hosted=True)

            print(
                f"opengem serve, {args.workers} worker(s); {args.requests} queries of 10 bulk "
                f"samples, {args.concurrency} at a time:"
            )
            for label, self_hosted in (("self-hosted (Arrow)", True), ("hosted (JSON)", False)):
                lat = timed_queries(client, small, args.requests, args.concurrency, self_hosted)
                print(
                    f"  {label:<20} p50 {percentile(lat, 50) * 1000:7.0f} ms   "
                    f"p95 {percentile(lat, 95) * 1000:7.0f} ms   "
                    f"({args.requests / sum(lat) * args.concurrency:.1f} queries/s)"
                )

            times = []
            for _ in range(3):
                start = time.perf_counter()
                frames = client.predict_query(copy.deepcopy(big), "gem-1-bulk", self_hosted=True)
                times.append(time.perf_counter() - start)
                assert len(frames["expression"]) == args.samples
            best, median = min(times), statistics.median(times)
        finally:
            server.stop()

    from opengem.client.embedded import run_query

    run_query(copy.deepcopy(big), "gem-1-bulk")
    start = time.perf_counter()
    run_query(copy.deepcopy(big), "gem-1-bulk")
    embedded = time.perf_counter() - start
    print(
        f"{args.samples:,}-sample bulk query over the Arrow path: "
        f"{args.samples / best:,.0f} samples/s (best of 3; median {args.samples / median:,.0f}/s; "
        f"{best:.2f} s end to end)"
    )
    rate = args.samples / embedded
    print(f"  for reference, the embedded API in this process: {rate:,.0f} samples/s")


if __name__ == "__main__":
    main()

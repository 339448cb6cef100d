"""Latency and throughput of ``opengem serve`` on this machine (a script, not a test).

    python benchmarks/server.py [--workers 2] [--requests 40] [--concurrency 4]

Starts a real server (subprocess, loopback, auth off, fresh data folder), then prints:

- p50 / p95 end-to-end latency of a 10-sample bulk query, self-hosted (one POST,
  Arrow stream back) and hosted (POST, poll the status, signed JSON download);
- samples/s of the Arrow path for a 1,000-sample bulk query (mean estimation), with
  opengem's client and with pysynthbio's (when installed; both return DataFrames),
  against the embedded API in this process, as ratios: ``run_query`` (validate and
  predict: the reference) and ``predict_query`` (the same, plus the DataFrames the
  clients return). The runs alternate, three times, and each rate is the median of
  its three, so a busy machine moves all of them alike.

Needs the bundles (``OPENGEM_MODELS`` or the shipped ones).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import opengem
from opengem.client.remote import RemoteClient
from opengem.server.testing import bundle_available, start_server

#: a pause between the timed runs: OpenBLAS's threads spin ~0.1 s after the embedded
#: run's last product, which would take a core from the server's run that follows
IDLE_S = 0.3


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
            for _ in range(2):  # as many at once as workers: each warms its buffers
                timed_queries(client, big, args.workers, args.workers, True)

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

            from opengem.client.embedded import predict_query, run_query

            run_query(copy.deepcopy(big), "gem-1-bulk")  # load the model in this process
            clients = {
                "opengem client": lambda: client.predict_query(
                    copy.deepcopy(big), "gem-1-bulk", self_hosted=True
                )
            }
            try:
                import pysynthbio

                clients["pysynthbio"] = lambda: pysynthbio.predict_query(
                    copy.deepcopy(big),
                    model_id="gem-1-bulk",
                    api_base_url=server.url,
                    self_hosted=True,
                )
            except ImportError:
                pass
            times: dict[str, list[float]] = {
                "embedded": [],
                "frames": [],
                **{name: [] for name in clients},
            }
            for _ in range(3):
                times["embedded"].append(timed(lambda: run_query(copy.deepcopy(big), "gem-1-bulk")))
                time.sleep(IDLE_S)
                times["frames"].append(
                    timed(lambda: predict_query(copy.deepcopy(big), "gem-1-bulk"), args.samples)
                )
                for name, call in clients.items():
                    time.sleep(IDLE_S)
                    times[name].append(timed(call, expect_rows=args.samples))
                time.sleep(IDLE_S)
        finally:
            server.stop()

    embedded = statistics.median(times["embedded"])
    frames = statistics.median(times["frames"])
    print(
        f"{args.samples:,}-sample bulk query, medians of 3 (alternating runs):\n"
        f"  embedded run_query (this process)      {args.samples / embedded:7,.0f} samples/s\n"
        f"  embedded predict_query (DataFrames)    {args.samples / frames:7,.0f} samples/s"
    )
    for name in clients:
        median = statistics.median(times[name])
        print(
            f"  Arrow path, {name:<16} {args.samples / median:7,.0f} samples/s   "
            f"{embedded / median:.2f}x run_query, {frames / median:.2f}x predict_query   "
            f"({median:.2f} s end to end, DataFrames out)"
        )


def timed(call: Callable[[], Any], expect_rows: int | None = None) -> float:
    start = time.perf_counter()
    out = call()
    seconds = time.perf_counter() - start
    if expect_rows is not None:
        assert len(out["expression"]) == expect_rows
    return seconds


if __name__ == "__main__":
    main()

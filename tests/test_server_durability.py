"""Durability of accepted queries: a killed server, a graceful stop, a killed worker
(one story, three servers on one data folder); a query past the time limit, and
models unloading when idle."""

from __future__ import annotations

import copy
import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from opengem.client.embedded import predict_query as embedded_predict
from opengem.client.remote import frames_from_json
from opengem.server.store import QUEUED, READY, RUNNING, SQLiteJobStore
from opengem.server.supervisor import pid_alive
from opengem.server.testing import ServerProcess, bundle_available, start_server

from .helpers import example

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not bundle_available("gem-1-bulk"), reason="no gem-1-bulk bundle (set OPENGEM_MODELS)"
    ),
]
NO_PG = {"OPENGEM_DATABASE_URL": ""}


def big_query(samples_per_input: int = 150) -> dict[str, Any]:
    """A bulk query that takes a few seconds on two cores."""
    query = example("gem-1-bulk", seed=7)
    for item in query["inputs"]:
        item["num_samples"] = samples_per_input
    return query


def http(method: str, url: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def submit(server: ServerProcess, model_id: str, query: dict[str, Any]) -> str:
    code, body = http("POST", f"{server.url}/api/models/{model_id}/predict", query)
    assert code == 200, body
    return str(body["modelQueryId"])


def status(server: ServerProcess, query_id: str) -> dict[str, Any]:
    code, body = http("GET", f"{server.url}/api/model-queries/{query_id}/status")
    assert code == 200, body
    return dict(body)


def wait_for(server: ServerProcess, query_id: str, states: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = status(server, query_id)
        if now["status"] in states:
            return now
        time.sleep(0.02)
    raise AssertionError(f"{query_id} never reached {states}: {now}\n{server.log()[-3000:]}")


def assert_same_result(server: ServerProcess, query_id: str, model_id: str, query: dict) -> None:
    done = wait_for(server, query_id, {"ready", "failed"})
    assert done["status"] == "ready", done
    code, payload = http("GET", done["downloadUrl"])
    assert code == 200
    got = frames_from_json(payload, model_id)
    want = embedded_predict(copy.deepcopy(query), model_id)
    assert set(got) == set(want)
    for name in want:
        if name == "expression":
            assert list(got[name].columns) == list(want[name].columns)
            assert np.array_equal(got[name].to_numpy(), want[name].to_numpy())
        else:
            pd.testing.assert_frame_equal(got[name], want[name], obj=name)


def worker_pids(data: Path) -> list[int]:
    store = SQLiteJobStore(data / "opengem.db")
    try:
        return [w.pid for w in store.workers()]
    finally:
        store.close()


def job_row(data: Path, query_id: str) -> Any:
    store = SQLiteJobStore(data / "opengem.db")
    try:
        return store.get(query_id)
    finally:
        store.close()


def wait_dead(pids: list[int], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids):
        assert time.monotonic() < deadline, f"processes still alive: {pids}"
        time.sleep(0.05)


def test_killed_server_loses_no_accepted_query(tmp_path: Path) -> None:
    data = tmp_path / "data"
    jobs = [
        ("gem-1-bulk", big_query()),
        ("gem-1-bulk", example("gem-1-bulk", seed=3)),
        ("gem-1-bulk_predict-metadata", example("gem-1-bulk_predict-metadata")),
    ]
    first = start_server(data, workers=1, env=NO_PG)
    try:
        ids = [submit(first, m, q) for m, q in jobs]
        wait_for(first, ids[0], {"running"})
        pids = worker_pids(data)
        assert pids
        first.kill()  # SIGKILL mid-query: no chance to clean up
    finally:
        first.kill()
    wait_dead(pids)  # the workers die with the server (parent-death signal)
    interrupted = job_row(data, ids[0])
    assert interrupted.status == RUNNING and interrupted.attempts == 1
    assert job_row(data, ids[-1]).status == QUEUED

    second = start_server(data, workers=1, env=NO_PG)
    try:
        for query_id, (model_id, query) in zip(ids, jobs, strict=True):
            assert_same_result(second, query_id, model_id, query)
        assert job_row(data, ids[0]).attempts == 2

        # a graceful stop (SIGTERM) puts the running query back in the queue
        last = submit(second, "gem-1-bulk", big_query())
        wait_for(second, last, {"running"})
        assert second.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
        assert "goes back to the queue" in second.log()
        row = job_row(data, last)
        assert row.status in (QUEUED, READY)
    finally:
        second.kill()

    third = start_server(data, workers=1, env=NO_PG)
    try:
        assert_same_result(third, last, "gem-1-bulk", big_query())
        # a worker killed mid-query is replaced, and its query runs again
        query = big_query()
        query["seed"] = 11
        query_id = submit(third, "gem-1-bulk", query)
        wait_for(third, query_id, {"running"})
        (pid,) = worker_pids(data)
        os.kill(pid, signal.SIGKILL)
        assert_same_result(third, query_id, "gem-1-bulk", query)
        assert job_row(data, query_id).attempts == 2
        assert third.wait_ready(workers=1, timeout=60)["workers"] == 1
        assert pid not in worker_pids(data)
        leftovers = [p.name for p in (data / "results").iterdir() if p.name.startswith(".")]
        assert leftovers == []
    finally:
        third.stop()


def test_time_limit_and_idle_unload(tmp_path: Path) -> None:
    pysynthbio = pytest.importorskip("pysynthbio")
    data = tmp_path / "data"
    server = start_server(
        data,
        workers=1,
        env=NO_PG,
        args=["--query-timeout", "1", "--model-idle-seconds", "2"],
    )
    try:
        os.environ["SYNTHESIZE_API_KEY"] = "unused: auth is off on loopback"
        with pytest.raises(pysynthbio.SynthesizeAPIError) as caught:
            pysynthbio.predict_query(
                big_query(1000),
                model_id="gem-1-bulk",
                api_base_url=server.url,
                poll_interval_seconds=1,
            )
        assert "Model query failed: the query ran longer than this server's limit of 1 s" in str(
            caught.value
        )
        assert "Traceback" not in str(caught.value)
        with pytest.raises(pysynthbio.SynthesizeAPIError) as caught:
            pysynthbio.predict_query(
                big_query(1000), model_id="gem-1-bulk", api_base_url=server.url, self_hosted=True
            )
        assert caught.value.status_code == 504
        # the worker survived and serves the next query
        small = pysynthbio.predict_query(
            example("gem-1-bulk"), model_id="gem-1-bulk", api_base_url=server.url, self_hosted=True
        )
        assert len(small["expression"]) == 10

        def loaded() -> bool:
            models = pysynthbio.list_models(api_base_url=server.url)["models"]
            return bool(models[0]["loaded"])

        deadline = time.monotonic() + 30
        while loaded():
            assert time.monotonic() < deadline, "gem-1-bulk never unloaded"
            time.sleep(0.5)
    finally:
        os.environ.pop("SYNTHESIZE_API_KEY", None)
        server.stop()

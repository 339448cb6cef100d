"""The self-hosted Arrow path while the worker is still writing: the API sends the
partial file as it grows, ends the response only when the store says the worker
finished, and cuts it off (failing and refunding the query) when the worker is
lost; a client that leaves is refunded. The API runs in-process (uvicorn in a
thread, no worker processes); the test plays the worker, step by step."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from opengem.client.errors import SynthesizeAPIError
from opengem.client.remote import RemoteClient
from opengem.engine.results import ExpressionResult, MetadataResult
from opengem.server.config import ServerConfig
from opengem.server.formats import (
    ARROW_HEADER,
    ARROW_MAGIC,
    ARROW_STREAM,
    BATCH_ROWS,
    ArrowBatches,
    ResultFiles,
    arrow_table,
    counts_array,
    write_arrow_stream,
)
from opengem.server.keys import create_key, fail_and_refund
from opengem.server.store import FAILED, READY, RUNNING, Job, SQLiteJobStore, week_of
from opengem.server.testing import bundle_available, free_port
from opengem.server.wake import Wakeup

from .helpers import example

WORKER = "test-host:1:fake"
GENES = [f"ENSG{i:011d}" for i in range(50)]


def big_result(rows: int = 3 * BATCH_ROWS - 10) -> ExpressionResult:
    rng = np.random.default_rng(2)
    return ExpressionResult(
        counts=rng.integers(0, 1000, size=(rows, len(GENES)), dtype=np.int64),
        metadata=[{"sex": "female" if i % 2 else "male", "modality": "bulk"} for i in range(rows)],
        latents={
            g: rng.standard_normal((rows, d)).astype(np.float32)
            for g, d in (("biological", 4), ("technical", 2), ("perturbation", 3))
        },
        gene_order=GENES,
        model_version="opengem-test",
        request_type="baseline",
    )


def stream_bytes(result: Any) -> tuple[bytes, list[int]]:
    """The Arrow stream of a result, and where each record batch ends in it."""
    sink = io.BytesIO()
    ends: list[int] = []
    write_arrow_stream(arrow_table(result), sink, after_batch=lambda: ends.append(sink.tell()))
    return sink.getvalue(), ends


def header(stream: bytes) -> bytes:
    """What a result file holds before its stream."""
    return ARROW_HEADER.pack(ARROW_MAGIC, len(stream))


# ------------------------------------------------------------------ units
def metadata_result(rows: int = 2 * BATCH_ROWS + 3) -> MetadataResult:
    rng = np.random.default_rng(3)
    return MetadataResult(
        metadata=[{"sex": "male", "modality": "bulk"} for _ in range(rows)],
        classifier_probs=[{"sex": {"female": i / rows, "male": 1 - i / rows}} for i in range(rows)],
        latents={g: rng.standard_normal((rows, 3)).astype(np.float32) for g in ("biological",)},
        decoder_counts=rng.integers(0, 50, size=(rows, len(GENES)), dtype=np.int64),
        gene_order=GENES,
        model_version="opengem-test",
    )


@pytest.mark.parametrize("kind", ["int32 counts", "int64 counts", "metadata", "empty", "float"])
def test_streamed_file_holds_the_bytes_of_the_whole_table(tmp_path: Path, kind: str) -> None:
    result: Any = metadata_result() if kind == "metadata" else big_result()
    if kind == "int64 counts":
        result.counts[-1, -1] = 2**40  # the last batch decides: list<int64> throughout
    if kind == "empty":
        result = big_result(0)
    if kind == "float":  # not the predictor's int64: converted whole, as before
        result.counts = result.counts.astype(np.float64)
    files = ResultFiles(tmp_path)
    name = files.stream_arrow("q1", WORKER, result)
    assert name == "q1.arrows"
    stream = stream_bytes(result)[0]  # the whole table, written as before streaming
    assert files.path(name).read_bytes() == header(stream) + stream
    assert [p.name for p in files.root.iterdir()] == ["q1.arrows"]  # no partial left
    assert ArrowBatches(result).length() == len(stream)
    assert files.write("q2", "arrow", result) == "q2.arrows"
    assert files.path("q2.arrows").read_bytes() == files.path(name).read_bytes()


def test_counts_are_int32_exactly_when_every_value_fits() -> None:
    import pyarrow as pa

    edge = np.array([[np.iinfo(np.int32).min, np.iinfo(np.int32).max]], dtype=np.int64)
    assert counts_array(edge).type == pa.list_(pa.int32())
    assert counts_array(edge).to_pylist() == edge.tolist()
    wide = np.zeros((3, 200_000), dtype=np.int64)  # several conversion blocks
    wide[2, -1] = 2**31
    assert counts_array(wide).type == pa.list_(pa.int64())
    wide[2, -1] = 7
    assert np.array_equal(counts_array(wide).flatten().to_numpy(), wide.reshape(-1))
    assert counts_array(np.asfortranarray(wide)).to_pylist()[2][-1] == 7


def test_partial_files_are_per_worker_and_swept(tmp_path: Path) -> None:
    files = ResultFiles(tmp_path)
    a, b = files.partial("q1", "host:1:aa"), files.partial("q1", "host:2:bb")
    assert a != b and a.parent == b.parent == files.root and a.name.startswith(".q1.")
    with pytest.raises(ValueError):
        files.partial("../q1", "w")
    files.root.mkdir(parents=True)
    a.write_bytes(b"x")
    b.write_bytes(b"y")
    old = time.time() - 7200
    os.utime(a, (old, old))
    assert files.sweep_temporary() == 1
    assert not a.exists() and b.exists()


def test_wakeup_pipe_wakes_a_waiting_worker(tmp_path: Path) -> None:
    api, worker = Wakeup(tmp_path), Wakeup(tmp_path)
    api.notify()  # nobody listening yet: nothing happens, nothing fails
    assert worker.open()
    try:
        start = time.monotonic()
        assert not worker.wait(0.05)
        assert time.monotonic() - start >= 0.04
        threading.Timer(0.05, api.notify).start()
        start = time.monotonic()
        assert worker.wait(5.0)
        assert time.monotonic() - start < 2.0
        assert not worker.wait(0.01)  # the wake-up was consumed
    finally:
        worker.close()
    (tmp_path / "not-a-pipe").mkdir()
    odd = Wakeup(tmp_path)
    odd.path = tmp_path / "not-a-pipe"
    assert not odd.open()


# ------------------------------------------------------------ the API, in-process
@dataclass
class Api:
    url: str
    data: Path
    store: SQLiteJobStore
    files: ResultFiles
    key: str
    key_id: str

    def claim(self, timeout: float = 30.0) -> Job:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.store.claim(WORKER)
            if job is not None:
                return job
            time.sleep(0.005)
        raise AssertionError("no query was queued")

    def used(self) -> int:
        return self.store.usage(self.key_id, week_of())

    def wait_status(self, job_id: str, status: str, timeout: float = 10.0) -> Job:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.store.get(job_id)
            if job is not None and job.status == status:
                return job
            time.sleep(0.01)
        raise AssertionError(f"{job_id} never became {status}: {self.store.get(job_id)}")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    if not bundle_available("gem-1-bulk"):
        pytest.skip("no gem-1-bulk bundle (set OPENGEM_MODELS)")
    import uvicorn

    from opengem.server.app import create_app

    data = tmp_path_factory.mktemp("stream") / "data"
    port = free_port()
    # a short body time limit: it must not apply once the body is in (a streaming
    # response waits for the client's disconnect far longer)
    config = ServerConfig(
        data, host="127.0.0.1", port=port, workers=0, auth=True, body_timeout_s=0.5
    )
    app = create_app(config, start_workers=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    store = SQLiteJobStore(data / "opengem.db")
    key = create_key(store, "streaming tests", 1_000_000)
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the API did not start"
        time.sleep(0.02)
    try:
        yield Api(
            f"http://127.0.0.1:{port}", data, store, ResultFiles(data), key, key.split("_")[1]
        )
    finally:
        server.should_exit = True
        thread.join(30)
        store.close()


def query_body() -> bytes:
    return json.dumps(example("gem-1-bulk", seed=3)).encode()


def post(api: Api) -> Any:
    request = urllib.request.Request(
        f"{api.url}/api/models/gem-1-bulk/predict",
        data=query_body(),
        method="POST",
        headers={
            "Accept": ARROW_STREAM,
            "Content-Type": "application/json",
            "Authorization": f"Bearer {api.key}",
        },
    )
    return urllib.request.urlopen(request, timeout=60)


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = call()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def write_part(api: Api, job: Job, data: bytes) -> Path:
    part = api.files.partial(job.id, WORKER)
    part.parent.mkdir(parents=True, exist_ok=True)
    with open(part, "ab") as fh:
        fh.write(data)
    return part


def finish(api: Api, job: Job, part: Path) -> None:
    name = api.files.name(job.id, "arrow")
    os.replace(part, api.files.path(name))
    assert api.store.finish(job.id, WORKER, name)


def test_the_stream_reaches_the_client_while_the_worker_writes(api: Api) -> None:
    data, ends = stream_bytes(big_result())
    first = threading.Event()

    def client() -> tuple[bytes, Any]:
        with post(api) as response:
            head = response.read(ends[0])
            first.set()
            return head + response.read(), response.headers

    thread, out = in_thread(client)
    job = api.claim()
    assert job.kind == "arrow"
    part = write_part(api, job, header(data) + data[: ends[0]])
    assert first.wait(10), "the first batch did not reach the client before the worker finished"
    write_part(api, job, data[ends[0] :])
    time.sleep(0.3)
    assert thread.is_alive()  # all written, but the end waits for the store's word
    finish(api, job, part)
    thread.join(30)
    assert "error" not in out, out.get("error")
    body, headers = out["value"]
    assert body == data  # byte for byte the stream a whole-file answer would send
    assert headers["Content-Type"] == ARROW_STREAM
    assert headers["X-Model-Query-Id"] == job.id
    assert headers["Content-Length"] == str(len(data))  # known from the first byte
    assert api.store.get(job.id).status == READY  # type: ignore[union-attr]
    deadline = time.monotonic() + 5
    while api.files.path(f"{job.id}.arrows").exists():  # sent once, then deleted
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_result_ready_before_the_api_looks_is_sent_whole(api: Api) -> None:
    data, _ = stream_bytes(big_result(5))
    thread, out = in_thread(lambda: post(api).read())
    job = api.claim()
    finish(api, job, write_part(api, job, header(data) + data))  # no partial to see
    thread.join(30)
    assert out.get("value") == data


def test_a_result_file_without_its_header_is_a_clear_error(api: Api) -> None:
    data, _ = stream_bytes(big_result(5))
    used = api.used()
    thread, out = in_thread(lambda: post(api).read())
    job = api.claim()
    write_part(api, job, data)  # a bare stream: a worker of another version?
    thread.join(30)
    error = out["error"]
    assert isinstance(error, urllib.error.HTTPError) and error.code == 500
    assert "cannot read" in json.loads(error.read())["detail"]
    assert api.wait_status(job.id, FAILED).message
    wait_refunded(api, used)


def wait_refunded(api: Api, used: int) -> None:
    """The key's use is back to ``used``: a refund lands just after the job is failed."""
    deadline = time.monotonic() + 5
    while api.used() != used:
        assert time.monotonic() < deadline, f"not refunded: {api.used()} used, {used} before"
        time.sleep(0.01)


LOSSES = {
    # the supervisor re-queues the query of a worker that died
    "killed": lambda api, job: api.store.requeue_orphans([WORKER], 0.0, 3),
    # ... and another worker takes it
    "replaced": lambda api, job: (
        api.store.requeue_orphans([WORKER], 0.0, 3),
        api.store.claim("test-host:2:other"),
    ),
    # the worker failed it itself (time limit, out of memory, a full disk)
    "failed": lambda api, job: fail_and_refund(
        api.store, job.id, WORKER, "the server ran out of memory for this query"
    ),
}


@pytest.mark.parametrize("how", sorted(LOSSES))
@pytest.mark.parametrize("client", ["opengem", "pysynthbio", "urllib-and-pyarrow"])
def test_a_worker_lost_mid_stream_is_an_error_never_a_short_table(
    api: Api, how: str, client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, ends = stream_bytes(big_result())
    used = api.used()
    if client == "pysynthbio":
        pysynthbio = pytest.importorskip("pysynthbio")
        monkeypatch.setenv("SYNTHESIZE_API_KEY", api.key)

        def call() -> Any:
            return pysynthbio.predict_query(
                example("gem-1-bulk", seed=3),
                model_id="gem-1-bulk",
                api_base_url=api.url,
                self_hosted=True,
            )

    elif client == "opengem":

        def call() -> Any:
            remote = RemoteClient(api.url, api_key=api.key)
            return remote.predict_query(
                example("gem-1-bulk", seed=3), "gem-1-bulk", self_hosted=True
            )

    else:  # http.client does not check a body against its Content-Length when read in parts

        def call() -> Any:
            import pyarrow.ipc as ipc

            with post(api) as response:
                return ipc.open_stream(response).read_all()

    thread, out = in_thread(call)
    job = api.claim()
    # a prefix that ends where a record batch ends: read as it stands, it is a valid
    # (shorter) table; only the cut-off response tells the client it is not complete
    part = write_part(api, job, header(data) + data[: ends[0]])
    assert api.used() == used + job.samples
    time.sleep(1.0)  # the API polls the partial file every few ms: these bytes go out
    assert api.store.get(job.id).status == RUNNING  # type: ignore[union-attr]
    LOSSES[how](api, job)
    thread.join(30)
    assert not thread.is_alive()
    assert "value" not in out, "the client got a table from a stream that was cut off"
    error = out["error"]
    if client == "opengem":
        assert isinstance(error, SynthesizeAPIError), repr(error)
        assert "cut off" in str(error) and "Traceback" not in str(error)
    failed = api.wait_status(job.id, FAILED)
    assert failed.message
    wait_refunded(api, used)
    deadline = time.monotonic() + 5
    while part.exists():  # the lost worker's partial file is removed
        assert time.monotonic() < deadline, "the partial file stayed"
        time.sleep(0.01)


def raw_post(api: Api) -> socket.socket:
    body = query_body()
    sock = socket.create_connection(("127.0.0.1", int(api.url.rsplit(":", 1)[1])), timeout=30)
    sock.sendall(
        (
            "POST /api/models/gem-1-bulk/predict HTTP/1.1\r\nHost: test\r\n"
            f"Accept: {ARROW_STREAM}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {api.key}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
    )
    return sock


@pytest.mark.parametrize("when", ["waiting", "streaming"])
def test_a_client_that_leaves_is_refunded(api: Api, when: str) -> None:
    data, ends = stream_bytes(big_result())
    used = api.used()
    sock = raw_post(api)
    job = api.claim()
    if when == "streaming":
        part = write_part(api, job, header(data) + data[: ends[0]])
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(1.0)  # past the body time limit: the API still hears the client leave
    sock.close()
    failed = api.wait_status(job.id, FAILED)
    assert failed.message == "the client disconnected"
    wait_refunded(api, used)
    if when == "streaming":  # the worker carries on, and finds its query failed
        write_part(api, job, data[ends[0] :])
        name = api.files.name(job.id, "arrow")
        os.replace(part, api.files.path(name))
        assert not api.store.finish(job.id, WORKER, name)
        api.files.delete(name)

"""Arrow batches written while the engine still decodes later rows (opt-in): the
engine reports rows as they become final without changing a count, the worker's
:class:`RowStream` writes the bytes of the whole result's stream, and a failure
mid-decode leaves no file (the API then cuts the response off)."""

from __future__ import annotations

import copy
import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from opengem.engine import default_registry
from opengem.server.formats import BATCH_ROWS, INT32_MAX, ResultFiles, RowStream

from .test_server_streaming import WORKER, big_result, header, stream_bytes

needs_bulk = pytest.mark.skipif(
    not default_registry().available("gem-1-bulk"), reason="no shipped gem-1-bulk bundle"
)


def _query(strategy: str, model: str = "gem-1-bulk") -> Any:
    import opengem

    registry = default_registry()
    query = copy.deepcopy(opengem.get_example_query(model)["example_query"])
    query.update(sampling_strategy=strategy, seed=11)
    for item, n in zip(query["inputs"], (300, 45), strict=False):
        item["num_samples"] = n
    return registry.validate(model, query), registry.predictor(model)


@needs_bulk
@pytest.mark.parametrize("strategy", ["mean estimation", "sample generation"])
def test_rows_reported_final_are_final_and_counts_unchanged(strategy: str) -> None:
    query, predictor = _query(strategy)
    plain = predictor.predict(query)
    seen: list[tuple[int, np.ndarray]] = []
    bounds: list[int | None] = []

    def on_start(result: Any, bound: int | None) -> Any:
        bounds.append(bound)
        assert result.metadata == plain.metadata  # all but the counts known upfront
        for g in plain.latents:
            assert np.array_equal(result.latents[g], plain.latents[g])

        def rows(done: int) -> None:
            seen.append((done, result.counts[:done].copy()))

        return rows

    streamed = predictor.predict(query, on_start=on_start)
    assert np.array_equal(streamed.counts, plain.counts)  # the same bits
    assert [d for d, _ in seen] == sorted({d for d, _ in seen})  # growing
    assert seen[-1][0] == len(plain.counts)
    for done, prefix in seen:  # what was reported final did not change afterwards
        assert np.array_equal(prefix, plain.counts[:done])
    if strategy == "mean estimation":
        assert bounds[0] is not None and int(plain.counts.max()) <= bounds[0] <= INT32_MAX
    else:  # drawn counts: no bound, so the worker streams the whole result instead
        assert bounds == [None]


def _decode_in_steps(result: Any, stream: RowStream, step: int = 16) -> None:
    final = result.counts.copy()
    result.counts[...] = -1  # not decoded yet
    for a in range(0, len(final), step):
        result.counts[a : a + step] = final[a : a + step]
        stream.rows(min(len(final), a + step))


@pytest.mark.parametrize("rows", [3 * BATCH_ROWS - 10, BATCH_ROWS, 5, 0])
def test_row_stream_writes_the_whole_tables_bytes(tmp_path: Path, rows: int) -> None:
    result = big_result(rows)
    want = stream_bytes(result)[0]
    files = ResultFiles(tmp_path)
    stream = RowStream(files, "q1", WORKER, result)
    _decode_in_steps(result, stream)
    assert stream.finish() == "q1.arrows"
    assert files.path("q1.arrows").read_bytes() == header(want) + want
    assert [p.name for p in files.root.iterdir()] == ["q1.arrows"]


def test_row_stream_writes_only_final_rows(tmp_path: Path) -> None:
    result = big_result()
    files = ResultFiles(tmp_path)
    final = result.counts.copy()
    result.counts[...] = -1
    stream = RowStream(files, "q1", WORKER, result)
    result.counts[:BATCH_ROWS] = final[:BATCH_ROWS]
    stream.rows(BATCH_ROWS)
    part = files.partial("q1", WORKER)
    for _ in range(200):  # the first batch goes out before the rest is decoded
        if part.exists() and part.stat().st_size > 0:
            break
        threading.Event().wait(0.01)
    result.counts[BATCH_ROWS:] = final[BATCH_ROWS:]
    stream.rows(len(final))
    stream.finish()
    result.counts[...] = final
    want = stream_bytes(result)[0]
    assert files.path("q1.arrows").read_bytes() == header(want) + want


def test_an_aborted_row_stream_leaves_nothing(tmp_path: Path) -> None:
    result = big_result()
    files = ResultFiles(tmp_path)
    stream = RowStream(files, "q1", WORKER, result)
    stream.rows(BATCH_ROWS + 3)  # some batches written, the decoding then fails
    stream.abort()
    assert list(files.root.iterdir()) == []


def test_a_count_past_the_bound_fails_instead_of_wrapping(tmp_path: Path) -> None:
    result = big_result()
    result.counts[-1, 0] = 2**40
    files = ResultFiles(tmp_path)
    stream = RowStream(files, "q1", WORKER, result)
    stream.rows(len(result.counts))
    with pytest.raises(ValueError, match="int32"):
        stream.finish()
    assert list(files.root.iterdir()) == []


def test_only_bounded_expression_counts_are_streamed_while_decoding() -> None:
    result = big_result()
    assert RowStream.fits(result, 10**6)
    assert not RowStream.fits(result, None)
    assert not RowStream.fits(result, INT32_MAX + 1)


@needs_bulk
def test_the_worker_streams_while_decoding_and_leaves_nothing_when_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import opengem
    from opengem.server.formats import arrow_table, write_arrow_stream
    from opengem.server.store import Job
    from opengem.server.worker import Worker
    from opengem.settings import QueryLimits

    worker = object.__new__(Worker)  # only what _run_arrow uses
    worker.files, worker.worker_id = ResultFiles(tmp_path), WORKER
    worker.registry, worker.limits = default_registry(), QueryLimits()
    query = copy.deepcopy(opengem.get_example_query("gem-1-bulk")["example_query"])
    query.update(sampling_strategy="mean estimation", seed=4)
    query["inputs"][0]["num_samples"] = 600
    job = Job("q1", "gem-1-bulk", "arrow", "running", b"", None, 0, 0.0)
    streamed: list[int] = []
    real = RowStream.rows

    def rows(self: RowStream, done: int) -> None:
        streamed.append(done)
        real(self, done)

    monkeypatch.setattr(RowStream, "rows", rows)
    name = worker._run_arrow(job, copy.deepcopy(query))
    assert streamed and streamed[-1] == 600 + query["inputs"][1]["num_samples"]
    whole = (
        default_registry()
        .predictor("gem-1-bulk")
        .predict(default_registry().validate("gem-1-bulk", copy.deepcopy(query)))
    )
    sink = io.BytesIO()
    write_arrow_stream(arrow_table(whole), sink)
    assert worker.files.path(name).read_bytes() == header(sink.getvalue()) + sink.getvalue()
    worker.files.delete(name)

    def failing(self: RowStream, done: int) -> None:
        real(self, done)
        if done >= 2 * BATCH_ROWS:  # a time-out, a shutdown, an error mid-decode
            raise KeyboardInterrupt

    monkeypatch.setattr(RowStream, "rows", failing)
    with pytest.raises(KeyboardInterrupt):
        worker._run_arrow(job, copy.deepcopy(query))
    assert list(worker.files.root.iterdir()) == []

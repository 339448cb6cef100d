"""A seed gives the same bytes whatever the thread count; the fast decode paths keep the
results of the plain ones (vectorised rounding, in-place expected counts)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from opengem.engine import default_registry
from opengem.engine.predictor import ROWS, CountSink, round_preserving_total
from opengem.model import GEMModel

needs_bundles = pytest.mark.skipif(
    not default_registry().available("gem-1-bulk") or not default_registry().available("gem-1-sc"),
    reason=f"no shipped bundles in {default_registry().models_dir}",
)

#: prints one sha256 per query: (model, strategy, samples per input, inputs)
HASHES = """
import copy, hashlib, sys
import opengem
from opengem.client.embedded import run_query
for spec in sys.argv[1:]:
    model, strategy, per, inputs = spec.split(",")
    example = opengem.get_example_query(model)["example_query"]
    query = {**example, "sampling_strategy": strategy, "seed": 3}
    query["inputs"] = [copy.deepcopy(example["inputs"][k % len(example["inputs"])])
                       for k in range(int(inputs))]
    for item in query["inputs"]:
        item["num_samples"] = int(per)
    counts = run_query(query, model).counts
    print(spec, hashlib.sha256(counts.tobytes()).hexdigest())
"""


def _hashes(threads: int, specs: list[str]) -> list[str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    out = subprocess.run(
        [sys.executable, "-c", HASHES, *specs], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, f"{threads} threads: {out.stderr[-2000:]}"
    return out.stdout.splitlines()


@needs_bundles
@pytest.mark.slow
def test_same_bytes_with_1_2_and_4_threads() -> None:
    small = [
        f"{model},{strategy},{n},1"
        for n in (1, 2, 3, 4, 5, 7, 8, 13, 16)
        for model, strategy in (
            ("gem-1-bulk", "mean estimation"),
            ("gem-1-bulk", "sample generation"),
            ("gem-1-sc", "mean estimation"),
        )
    ]
    large = [
        "gem-1-bulk,mean estimation,1000,10",
        "gem-1-sc,mean estimation,1000,10",
        "gem-1-bulk,sample generation,1000,2",  # the draws dominate: 2,000 suffice
    ]
    runs = {t: _hashes(t, small + large) for t in (1, 2, 4)}
    assert len(runs[1]) == len(small + large)
    assert runs[1] == runs[2] == runs[4]


# ------------------------------------------------------------ fast paths = plain paths
def _reference_rounding(mu: np.ndarray) -> np.ndarray:
    """Largest-remainder rounding row by row (the rule the vectorised code follows)."""
    counts = np.rint(mu).astype(np.int64)
    totals = np.rint(mu.sum(axis=1)).astype(np.int64)
    off = np.abs(counts.sum(axis=1) - totals) > 1e-3 * np.maximum(totals, 1)
    n = mu.shape[1]
    for i in np.flatnonzero(off):
        floor = np.floor(mu[i])
        frac = mu[i] - floor
        row = floor.astype(np.int64)
        d = int(min(max(totals[i] - row.sum(), 0), n))
        if d:
            row[np.argpartition(frac, n - d)[n - d :]] += 1
        counts[i] = row
    return counts


def _cases(rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for trial in range(120):
        r, n = int(rng.integers(1, 40)), int(rng.integers(1, 300))
        kind = trial % 6
        if kind == 0:  # shallow cells
            mu = rng.gamma(0.3, 1, (r, n))
            mu = mu / mu.sum(1, keepdims=True) * rng.integers(1, 3 * n, (r, 1))
        elif kind == 1:  # ties everywhere
            mu = rng.integers(0, 5, (r, n)) / 4.0
        elif kind == 2:
            mu = np.full((r, n), 1 / 3)
        elif kind == 3:
            mu = rng.uniform(0, 1e-3, (r, n))
            mu[:, : n // 2] = 0.49
        elif kind == 4:  # deep and shallow rows mixed
            mu = rng.gamma(0.3, 1, (r, n))
            mu = mu / mu.sum(1, keepdims=True) * rng.choice([1, 10, 1e6], (r, 1))
        else:
            mu = rng.uniform(0, 0.02, (r, n))
            mu[rng.uniform(size=(r, n)) < 0.5] = 0
        out.append(mu)
    return out


def test_vectorised_rounding_equals_row_by_row() -> None:
    rng = np.random.default_rng(0)
    for mu in _cases(rng):
        want = _reference_rounding(mu)
        assert np.array_equal(round_preserving_total(mu), want)
        out, scratch = np.empty(mu.shape, np.int64), np.empty_like(mu)
        kept = mu.copy()
        round_preserving_total(mu, out, scratch=scratch)
        assert np.array_equal(out, want) and np.array_equal(mu, kept)  # input untouched
        round_preserving_total(mu.copy(), out, overwrite=True)
        assert np.array_equal(out, want)
        totals = np.rint(mu.sum(axis=1))
        shallow = np.abs(want.sum(axis=1) - totals) > 1e-3 * np.maximum(totals, 1)
        assert not shallow.any()


def test_in_place_expected_counts_and_row_steps_keep_the_bits() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(2, 3, (2 * ROWS + 5, 300))
    library = rng.uniform(1e3, 1e7, len(y))
    want = GEMModel.expected_counts(y, library)
    buf = y.copy()
    assert GEMModel.expected_counts(buf, library, out=buf) is buf
    assert want.tobytes() == buf.tobytes()
    for strategy in ("mean estimation", "sample generation"):
        sink = CountSink(len(y), y.shape[1], strategy, np.random.default_rng(5))
        sink.add(7, library[:7], lambda a, b, dst: dst.__setitem__(..., y[a:b]))
        sink.add(len(y) - 7, library[7:], lambda a, b, dst: dst.__setitem__(..., y[7 + a : 7 + b]))
        got = sink.finish()
        g = np.random.default_rng(5)
        plain = g.poisson(want) if strategy == "sample generation" else _reference_rounding(want)
        assert got.dtype == np.int64 and got.tobytes() == plain.tobytes()

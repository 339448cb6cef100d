"""Wall-clock budgets the test suite used to assert, as a script (timings are not tests).

    python benchmarks/timed_checks.py [--corpus build/corpus/bulk.h5ad] [--no-eval]

The tests check what these operations return; this prints how long they take on this
machine against the budget each once had in the tests, and exits 1 when one is over:

- refusing 20,000 invalid ontology ids (stops at the problem cap; budget 10 s);
- refusing a 1,000,000-character value and key (budget 5 s);
- refusing 100,000 unknown top-level keys (budget 5 s);
- ``opengem eval --protocol fit --fast`` on one study: seconds per training
  (budget 60 s; skipped with ``--no-eval`` or without the corpus).

Parallel clients against a real server (50 at once) are timed by
``benchmarks/reliability.py``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opengem.contract import QueryError, validate_query


def _refusal_seconds(query: dict[str, Any]) -> float:
    start = time.perf_counter()
    try:
        validate_query(query, "gem-1-bulk")
    except QueryError:
        return time.perf_counter() - start
    raise AssertionError("the query was accepted")


def _many_bad_ids() -> float:
    inputs = [
        {"metadata": {"tissue_ontology_id": f"UBERON:99{i:05d}"}, "num_samples": 1}
        for i in range(20_000)
    ]
    return _refusal_seconds({"inputs": inputs})


def _huge_value() -> float:
    long = "x" * 1_000_000
    md = {"tissue_ontology_id": long, long: "y"}
    return _refusal_seconds({"inputs": [{"metadata": md, "num_samples": 1}]})


def _many_keys() -> float:
    return _refusal_seconds(
        {"inputs": [{"num_samples": 1}], **{f"k{i}": 1 for i in range(100_000)}}
    )


def _eval_seconds_per_training(corpus: Path) -> float:
    from typer.testing import CliRunner

    from opengem.cli import app

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fit"
        args = ["eval", "--protocol", "fit", "--corpus", str(corpus)]
        args += ["--study", "gse89888_t47d_e2", "--fast", "--out", str(out)]
        result = CliRunner().invoke(app, args)
        if result.exit_code != 0:
            raise RuntimeError(result.output)
        metrics = json.loads((out / "metrics.json").read_text())
    return float(metrics["timings"]["training_seconds_total"]) / max(metrics["n_trainings"], 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("build/corpus/bulk.h5ad"))
    parser.add_argument("--no-eval", action="store_true", help="skip the eval training")
    args = parser.parse_args()
    checks: list[tuple[str, float, Callable[[], float]]] = [
        ("refuse 20,000 invalid ids", 10.0, _many_bad_ids),
        ("refuse a 1 MB value and key", 5.0, _huge_value),
        ("refuse 100,000 unknown keys", 5.0, _many_keys),
    ]
    if not args.no_eval and args.corpus.is_file():
        corpus = args.corpus
        checks.append(
            ("eval fit --fast: s per training", 60.0, lambda: _eval_seconds_per_training(corpus))
        )
    over = 0
    for name, budget, run in checks:
        seconds = run()
        verdict = "ok" if seconds < budget else "OVER"
        over += seconds >= budget
        print(f"{name:<34} {seconds:8.2f} s  (budget {budget:.0f} s)  {verdict}")
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())

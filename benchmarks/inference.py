"""Inference speed of the shipped models, as rates and ratios to floors measured in the same run.

    python benchmarks/inference.py [--repeats 3] [--compare OTHER_SRC] [--quick]
        [--scvi-python PATH] [--corpus build/corpus/sc.h5ad]

This machine is shared and noisy, so every rate is printed next to a *floor* measured
in the same process right before it: the same arithmetic done the cheapest way numpy
allows (products, ``expm1``, row sums, scaling, rounding into one fresh int64 result),
once in float64 (what the engine computes) and once in float32. Each figure is the
median of ``--repeats`` runs.

- cold start: a fresh process imports opengem, loads the bulk bundle and answers a
  10-sample query (goal <= 2 s), with the slowest imports of ``python -X importtime``;
- bulk mean estimation via ``predict_query`` (DataFrames) at 1,000 and 10,000
  samples (goal >= 3,000 samples/s), and single-cell mean estimation at 1,000 and
  10,000 cells;
- single-cell mean estimation at 5,000 cells x 20,120 genes (gem-1-sc's gene space) as a
  ratio to scVI's ``get_normalized_expression`` on the same number of cells and genes,
  from an scVI model trained a few epochs (it only needs to exist) on 5,000 cells of the
  sc corpus, in scVI's own environment (``--scvi-python`` or ``OPENGEM_SCVI_PYTHON``;
  ``benchmarks/scvi_peer.py``; opengem's rate is measured again right after scVI's);
  skipped with the reason when there is none;
- bulk sample generation at 1,000 samples (Poisson counts; no floor: the draws are
  the work), and single-cell sample generation at 5,000 cells (negative-binomial
  counts) as a ratio to scVI's ``posterior_predictive_sample`` on the same cells;
- peak RSS of the process.

``--compare SRC`` runs the same warm measurements on another checkout's ``src``
(e.g. ``git worktree add /tmp/base HEAD~3``, then ``--compare /tmp/base/src``) in a
subprocess on the same bundles, and prints this checkout's rates as ratios to it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import scvi_env

SCVI = ("gem-1-sc", "mean estimation", 5000)  # the case compared with scVI
SCVI_CASE = " ".join(map(str, SCVI))
#: compared with scVI's posterior_predictive_sample (drawn cells; beyond GEM-1)
SCVI_DRAWN = ("gem-1-sc", "sample generation", 5000)
SCVI_DRAWN_CASE = " ".join(map(str, SCVI_DRAWN))

COLD = """
import time
t = time.perf_counter()
import opengem
q = opengem.get_example_query("gem-1-bulk")["example_query"]
q["sampling_strategy"] = "mean estimation"
for i in q["inputs"]:
    i["num_samples"] = 5
opengem.predict_query(q, model_id="gem-1-bulk")
print(time.perf_counter() - t)
"""

CASES = (
    ("gem-1-bulk", "mean estimation", 1000),
    ("gem-1-bulk", "mean estimation", 10000),
    ("gem-1-sc", "mean estimation", 1000),
    SCVI,
    ("gem-1-sc", "mean estimation", 10000),
    ("gem-1-bulk", "sample generation", 1000),
    SCVI_DRAWN,
)


def query_of(model: str, strategy: str, n: int) -> dict[str, Any]:
    import opengem

    example = opengem.get_example_query(model)["example_query"]
    per = min(1000, n)
    inputs = [copy.deepcopy(example["inputs"][k % len(example["inputs"])]) for k in range(n // per)]
    for item in inputs:
        item["num_samples"] = per
    return {**example, "inputs": inputs, "sampling_strategy": strategy, "seed": 1}


_FLOOR_BUFFERS: dict[tuple[str, str], Any] = {}


def floor_rate(model: str, n: int, dtype: str) -> float:
    """Samples/s of the decode arithmetic alone: y = mean + z_bio W_bio + z_tech W_tech,
    expected counts, plain rounding into a fresh int64 result (every other buffer held
    between runs, every step in place)."""
    import numpy as np

    from opengem.engine import default_registry

    m = default_registry().predictor(model).model
    ft = np.dtype(dtype)
    per, rows = min(1000, n), 16
    key = (model, dtype)
    if key not in _FLOOR_BUFFERS:
        rng = np.random.default_rng(0)
        w_bio, w_tech = m.w_bio.astype(ft), m.w_tech.astype(ft)
        _FLOOR_BUFFERS[key] = (
            w_bio,
            w_tech,
            m.gene_mean.astype(ft)[None, :],
            rng.standard_normal((per, w_bio.shape[0])).astype(ft),
            rng.standard_normal((per, w_tech.shape[0])).astype(ft),
            np.zeros((per, m.n_genes), ft),
            np.zeros((per, m.n_genes), ft),
            np.zeros((rows, m.n_genes), ft),
        )
    w_bio, w_tech, mean, zb, zt, bio, tech, step = _FLOOR_BUFFERS[key]
    start = time.perf_counter()
    out = np.empty((n, m.n_genes), np.int64)
    for k in range(n // per):
        np.matmul(zb, w_bio, out=bio)
        np.matmul(zt, w_tech, out=tech)
        for a in range(0, per, rows):
            s = step[: min(per, a + rows) - a]
            np.add(mean, bio[a : a + len(s)], out=s)
            s += tech[a : a + len(s)]
            np.clip(s, 0, 30, out=s)
            np.expm1(s, out=s)
            s *= (1e6 / s.sum(axis=1, keepdims=True)).astype(ft)
            np.rint(s, out=s)
            np.copyto(out[k * per + a : k * per + a + len(s)], s, casting="unsafe")
    return n / (time.perf_counter() - start)


def warm_rates(
    repeats: int, cases: tuple[tuple[str, str, int], ...]
) -> dict[str, dict[str, float]]:
    """Median rates of each case and of its floors (same process, interleaved)."""
    import opengem

    out: dict[str, dict[str, float]] = {}
    for model, strategy, n in cases:
        query = query_of(model, strategy, n)
        opengem.predict_query(copy.deepcopy(query), model_id=model)  # load, warm up
        rates: dict[str, list[float]] = {"opengem": [], "float64": [], "float32": []}
        for _ in range(repeats):
            if strategy == "mean estimation":
                rates["float64"].append(floor_rate(model, n, "float64"))
                rates["float32"].append(floor_rate(model, n, "float32"))
            t = time.perf_counter()
            result = opengem.predict_query(copy.deepcopy(query), model_id=model)
            rates["opengem"].append(len(result["expression"]) / (time.perf_counter() - t))
            del result
        out[f"{model} {strategy} {n}"] = {k: statistics.median(v) for k, v in rates.items() if v}
    return out


def cold_start(repeats: int) -> tuple[list[float], list[tuple[float, str]]]:
    colds = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", COLD], capture_output=True, text=True, check=True
        )
        colds.append(float(out.stdout.strip().splitlines()[-1]))
    # python -X importtime: "import time: self [us] | cumulative | imported package"
    report = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", COLD], capture_output=True, text=True, check=True
    ).stderr
    top: dict[str, float] = {}
    for line in report.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match and len(match.group(3)) <= 3:  # top-level and direct children
            top[match.group(4)] = max(top.get(match.group(4), 0.0), int(match.group(2)) / 1e6)
    slowest = sorted(((s, name) for name, s in top.items()), reverse=True)[:8]
    return colds, slowest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare", metavar="SRC", help="another checkout's src folder")
    parser.add_argument("--quick", action="store_true", help="1,000-sample cases only")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # --compare's child
    parser.add_argument("--corpus", type=Path, default=Path("build/corpus/sc.h5ad"))
    parser.add_argument("--scvi-epochs", type=int, default=2, help="scVI model's epochs")
    scvi_env.add_argument(parser)
    args = parser.parse_args()
    cases = tuple(c for c in CASES if not args.quick or c[2] <= 1000)
    if args.json:
        print(json.dumps(warm_rates(args.repeats, cases)))
        return

    colds, slowest = cold_start(args.repeats)
    cold = statistics.median(colds)
    print(
        f"cold start (import + load + 10-sample query): {cold:.2f} s median "
        f"(goal 2 s: {cold / 2:.2f}x of it; runs {', '.join(f'{c:.2f}' for c in colds)})"
    )
    print(
        "  slowest imports (python -X importtime, cumulative): "
        + ", ".join(f"{name} {s:.2f} s" for s, name in slowest)
    )
    rates = warm_rates(args.repeats, cases)
    other: dict[str, dict[str, float]] = {}
    if args.compare:
        env = {**os.environ, "PYTHONPATH": args.compare}
        env.setdefault("OPENGEM_MODELS", str(_models_dir()))
        cmd = [sys.executable, __file__, "--json", "--repeats", str(args.repeats)]
        child = subprocess.run(
            cmd + (["--quick"] if args.quick else []),
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        other = json.loads(child.stdout.strip().splitlines()[-1])
    for name, r in rates.items():
        line = f"{name}: {r['opengem']:,.0f} samples/s"
        if "float64" in r:
            line += (
                f"; {r['opengem'] / r['float64']:.2f}x of the float64 floor "
                f"({r['float64']:,.0f}/s), {r['opengem'] / r['float32']:.2f}x of float32 "
                f"({r['float32']:,.0f}/s)"
            )
        if name.startswith("gem-1-bulk mean"):
            line += f"; goal 3,000/s: {r['opengem'] / 3000:.2f}x"
        if name in other:
            o = other[name]
            line += f"; {r['opengem'] / o['opengem']:.2f}x of {args.compare} ({o['opengem']:,.0f}/s"
            if "float64" in o:
                line += f", {o['opengem'] / o['float64']:.2f}x of its float64 floor"
            line += ")"
        print(line)
    if SCVI_CASE in rates:
        print(scvi_row(rates, args))
    else:
        print(f"scVI: not compared with --quick (the comparison is the {SCVI_CASE} case)")
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak RSS: {rss_gb:.2f} GB (10,000 int64 samples alone are 1.6 GB)")


def scvi_row(rates: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    """scVI's get_normalized_expression and posterior_predictive_sample on as many cells x
    genes as opengem's 5,000-cell mean estimation and sample generation cases."""
    import numpy as np

    from opengem.engine import default_registry

    n_genes = default_registry().predictor("gem-1-sc").model.n_genes
    python, found = scvi_env.find_scvi_python(args.scvi_python)
    if python is None:
        return scvi_env.skip_line(found)
    if not args.corpus.is_file():
        return scvi_env.skip_line(f"no corpus at {args.corpus} to train scVI on")
    import anndata

    adata = anndata.read_h5ad(args.corpus, backed="r")
    if adata.n_vars != n_genes:
        return f"scVI: skipped ({args.corpus} has {adata.n_vars} genes, gem-1-sc {n_genes})"
    n = SCVI[2]
    rows = np.sort(np.random.default_rng(0).choice(adata.n_obs, min(n, adata.n_obs), replace=False))
    cells = adata[rows].to_memory()
    peer_args = ["--epochs", str(args.scvi_epochs), "--repeats", str(args.repeats)]
    peer = scvi_env.run_peer(python, cells, [*peer_args, "--measure", "normalized,posterior"])
    # opengem again right after scVI, so both ends of the ratio saw about the same load
    again = warm_rates(args.repeats, (SCVI, SCVI_DRAWN))
    lines = []
    for case, peer_key, theirs_name in (
        (SCVI_CASE, "normalized", "get_normalized_expression"),
        (SCVI_DRAWN_CASE, "posterior", "posterior_predictive_sample"),
    ):
        theirs = peer[peer_key]["cells_per_s"]
        ours, now = rates[case]["opengem"], again[case]["opengem"]
        lines.append(
            f"{case} vs scVI {peer['scvi_version']} {theirs_name} "
            f"({peer['n_cells']:,} cells x {peer['n_genes']:,} genes, model trained "
            f"{peer['epochs']} epochs, torch {peer['torch_threads']} threads): "
            f"opengem {now:,.0f} cells/s (measured again right after scVI; {ours:,.0f} above), "
            f"scVI {theirs:,.0f} cells/s; opengem / scVI: {now / theirs:.2f}x "
            f"({ours / theirs:.2f}x with the earlier rate)"
        )
    return "\n".join(lines)


def _models_dir() -> Any:
    from opengem.engine.registry import default_models_dir

    return default_models_dir()


if __name__ == "__main__":
    main()

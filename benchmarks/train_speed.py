"""Training speed: opengem's exact fit vs scVI on the same cells and genes, in one run.

    python benchmarks/train_speed.py [--corpus build/corpus/sc.h5ad]
        [--study zheng2017_pbmc_sorted] [--epochs 3] [--repeats 3] [--scvi-python PATH]

The workload is one study of the single-cell corpus (by default the sorted PBMC study,
3,500 cells x the 7,843 genes it measured, from the corpus's per-study gene mask).

- opengem fits the sc model as shipped (``configs/sc.toml``: ridge, PCA and convex heads,
  no epochs) on the study's cells; its rate is cells / wall time of one complete fit.
  A warm-up fit on a small subset comes first, so lazy imports and first calls are not
  counted. The fit sees the corpus's full gene space (it requires it) with the study's
  mask, i.e. exactly the measured genes.
- scVI (n_hidden 128, n_latent 10, one layer, batch 128, CPU, ``train_size=1.0``) trains
  ``--epochs`` epochs on the same cells restricted to the same measured genes, in its own
  environment (``--scvi-python`` or ``OPENGEM_SCVI_PYTHON``; ``benchmarks/scvi_peer.py``);
  only ``train`` is timed, after an untimed warm-up. Without that environment scVI is
  skipped with the reason and only opengem's rate is printed.

Printed: both rates and their ratio (opengem's complete fit vs one scVI epoch), and the
time to a trained model: opengem's fit vs scVI at its default epoch count for this many
cells (its own rule, min(round(20000 / n * 400), 400); extrapolated from the measured
seconds per epoch). Every figure is the median of ``--repeats`` runs, opengem's split
around scVI's (the machine may be shared and its load drifts): the load average is
printed, and the ratios are what compares.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import scvi_env

ROOT = Path(__file__).resolve().parents[1]


def load_avg() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def workload(corpus: Path, study: str) -> tuple[Any, np.ndarray, str]:
    """The study's cells (full gene space), the genes it measured, and a description."""
    import anndata

    from opengem.train.data import study_masks

    if corpus.is_file():
        adata = anndata.read_h5ad(corpus)
        source = str(corpus)
    else:
        from opengem.corpus.synthetic import synthetic_corpus

        adata, _ = synthetic_corpus(n_genes=2000, samples_per_condition=100)
        source = "synthetic corpus (build the corpus for real cells)"
    studies = adata.obs["study"].astype(str)
    if study not in set(studies):
        largest = str(studies.value_counts().index[0])
        print(f"study {study!r} not in {source}; using the largest, {largest!r}")
        study = largest
    cells = adata[np.flatnonzero(studies.to_numpy() == study)].copy()
    try:
        genes = np.flatnonzero(study_masks(cells)[study])
        how = "the corpus's study mask"
    except KeyError:
        genes = np.flatnonzero(np.asarray(cells.X.sum(axis=0)).ravel() > 0)
        how = "nonzero in the study"
    outside = cells.X[:, np.setdiff1d(np.arange(cells.n_vars), genes)].sum()
    desc = (
        f"{source}, study {study}: {cells.n_obs:,} cells x {len(genes):,} measured genes "
        f"({how}; counts outside them: {outside:g})"
    )
    return cells, genes, desc


def config_for(modality: str, path: Path) -> Any:
    from opengem.train import TrainConfig
    from opengem.train.config import load_config

    if path.is_file():
        config = load_config(path)
        if config.modality == modality:
            return config
    return TrainConfig.model_validate({"modality": modality, "training": {"seed": 0}})


def fit_once(cells: Any, config: Any) -> tuple[float, list[tuple[float, str]]]:
    """Wall seconds of one complete fit, and when each of its log lines came."""
    from opengem.train.fit import train_bundle

    marks: list[tuple[float, str]] = []
    start = time.perf_counter()
    train_bundle(
        cells,
        config,
        None,
        progress=False,
        store_latents=False,
        log=lambda m: marks.append((time.perf_counter() - start, m.strip())),
    )
    return time.perf_counter() - start, marks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path("build/corpus/sc.h5ad"))
    ap.add_argument("--study", default="zheng2017_pbmc_sorted")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "sc.toml")
    ap.add_argument("--epochs", type=int, default=3, help="scVI epochs per timed training")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup-cells", type=int, default=200)
    scvi_env.add_argument(ap)
    args = ap.parse_args()

    print(f"load average at start: {load_avg()}")
    cells, genes, desc = workload(args.corpus, args.study)
    print(f"data: {desc}")
    modality = str(cells.uns.get("modality", "sc"))
    config = config_for(modality, args.config)

    rng = np.random.default_rng(0)
    warm = np.sort(rng.choice(cells.n_obs, size=min(args.warmup_cells, cells.n_obs), replace=False))
    t = time.perf_counter()
    fit_once(cells[warm].copy(), config)
    print(
        f"opengem warm-up fit on {len(warm)} cells (not counted): {time.perf_counter() - t:.1f} s"
    )
    python, found = scvi_env.find_scvi_python(args.scvi_python)
    # with scVI, the fits sit on both sides of its run (load drifts on a shared machine)
    before = (args.repeats + 1) // 2 if python is not None else args.repeats
    runs = [fit_once(cells, config) for _ in range(before)]
    peer: dict[str, Any] = {}
    if python is not None:
        peer = scvi_env.run_peer(
            python,
            cells[:, genes],
            ["--epochs", str(args.epochs), "--repeats", str(args.repeats), "--measure", "train"],
        )
        runs += [fit_once(cells, config) for _ in range(args.repeats - before)]
    seconds = [s for s, _ in runs]
    fit_s = statistics.median(seconds)
    ours = cells.n_obs / fit_s
    order = f"{before} before scVI, {args.repeats - before} after; " if peer else ""
    print(
        f"opengem: {ours:,.0f} training cells/s (one complete fit of {cells.n_obs:,} cells: "
        f"{fit_s:.1f} s median; {order}runs {', '.join(f'{s:.1f}' for s in seconds)})"
    )
    _, marks = min(runs, key=lambda r: abs(r[0] - fit_s))
    print(
        "  log lines of the median fit (s since start): "
        + "; ".join(f"{t:.1f} {m}" for t, m in marks)
    )
    if python is None:
        print(scvi_env.skip_line(found))
        print(f"load average at end: {load_avg()}")
        return
    tr = peer["train"]
    theirs = tr["cells_per_s"]
    per_epoch = tr["seconds_per_epoch"]
    print(
        f"scVI {peer['scvi_version']} (torch {peer['torch_version']}, "
        f"{peer['torch_threads']} threads; {peer['n_cells']:,} cells x {peer['n_genes']:,} genes, "
        f"{tr['n_train_cells']:,} in training, train_size={tr['train_size']}): "
        f"{theirs:,.0f} training cells/s per epoch ({per_epoch:.2f} s/epoch; "
        f"{args.epochs}-epoch runs {', '.join(f'{s:.1f}' for s in tr['seconds'])} s)"
    )
    print(f"opengem complete fit / one scVI epoch, cells/s: {ours / theirs:.2f}x")
    default = peer["default_epochs"]
    trained = per_epoch * default
    print(
        f"time to a trained model: opengem {fit_s:.1f} s vs scVI {trained:,.0f} s "
        f"at its default {default} epochs for {peer['n_cells']:,} cells "
        f"(extrapolated from s/epoch); scVI / opengem: {trained / fit_s:.1f}x"
    )
    print(f"load average at end: {load_avg()}")


if __name__ == "__main__":
    main()

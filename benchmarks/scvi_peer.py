"""scVI's side of the speed benchmarks: run by scVI's own Python, never by opengem's.

    $OPENGEM_SCVI_PYTHON benchmarks/scvi_peer.py --h5ad CELLS.h5ad [--epochs 3] [--repeats 3]

Reads counts (cells x genes, obs ``study`` as the batch) written by a parent benchmark
(``scvi_env.run_peer``) and prints one JSON object on stdout:

- ``train``: SCVI(n_hidden=128, n_latent=10, n_layers=1) trained ``--epochs`` epochs
  (batch 128, CPU, every cell in the training set when scvi accepts ``train_size=1.0``,
  else only the training fraction is credited); only ``train`` is timed (a fresh model
  per repeat, after one untimed 1-epoch warm-up training; ``setup_anndata`` and model
  construction are excluded). Also scVI's
  default epoch count for this many cells (its own ``get_max_epochs_heuristic``), so the
  parent can report time to a trained model;
- ``normalized``: ``get_normalized_expression(library_size=...)`` cells/s on the cells;
- ``posterior``: ``posterior_predictive_sample(n_samples=1)`` cells/s on the cells.

Every rate is the median of ``--repeats`` runs. Imports nothing from opengem.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
import warnings
from typing import Any


def default_epochs(n_obs: int) -> int:
    """scVI's own default ``max_epochs`` (min(round(20000 / n * 400), 400), at least 1)."""
    try:
        from scvi.model._utils import get_max_epochs_heuristic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return int(get_max_epochs_heuristic(n_obs))
    except ImportError:  # moved in another release: the rule as of scvi-tools 1.4
        return max(min(round(20000 / n_obs * 400), 400), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--h5ad", required=True)
    ap.add_argument("--batch-key", default="study")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-repeats", type=int, help="timed trainings (default --repeats)")
    ap.add_argument("--library-size", type=float, default=1e6)
    ap.add_argument(
        "--measure",
        default="train,normalized,posterior",
        help="comma-separated subset of train,normalized,posterior",
    )
    args = ap.parse_args()
    measure = set(args.measure.split(","))
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    import anndata
    import scvi
    import torch

    scvi.settings.verbosity = logging.ERROR
    adata = anndata.read_h5ad(args.h5ad)
    scvi.model.SCVI.setup_anndata(adata, batch_key=args.batch_key)

    def train_once() -> tuple[Any, float, int, float | None]:
        model = scvi.model.SCVI(adata, n_hidden=128, n_latent=10, n_layers=1)
        kwargs: dict[str, Any] = {
            "max_epochs": args.epochs,
            "batch_size": 128,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "early_stopping": False,
        }
        train_size: float | None = 1.0
        t = time.perf_counter()
        try:
            model.train(train_size=1.0, **kwargs)
        except (TypeError, ValueError):  # train_size=1.0 refused: default split
            model = scvi.model.SCVI(adata, n_hidden=128, n_latent=10, n_layers=1)
            train_size = None
            t = time.perf_counter()
            model.train(**kwargs)
        seconds = time.perf_counter() - t
        indices = getattr(model, "train_indices", None)
        n_train = adata.n_obs if indices is None else len(indices)
        return model, seconds, n_train, train_size

    out: dict[str, Any] = {
        "scvi_version": scvi.__version__,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "pid": os.getpid(),
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "epochs": args.epochs,
        "default_epochs": default_epochs(adata.n_obs),
    }
    train_runs = (args.train_repeats or args.repeats) if "train" in measure else 1
    if "train" in measure:  # warm-up (untimed): first-call costs inside train()
        epochs, args.epochs = args.epochs, 1
        train_once()
        args.epochs = epochs
    seconds, model, n_train, train_size = [], None, adata.n_obs, 1.0
    for _ in range(train_runs):
        model, s, n_train, train_size = train_once()
        seconds.append(s)
    out["train"] = {
        "seconds": seconds,
        "n_train_cells": n_train,
        "train_size": train_size,
        "seconds_per_epoch": statistics.median(seconds) / args.epochs,
        "cells_per_s": n_train * args.epochs / statistics.median(seconds),
    }

    def rate(fn: Any) -> dict[str, Any]:
        fn()  # warm-up
        runs = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t)
        return {"seconds": runs, "cells_per_s": adata.n_obs / statistics.median(runs)}

    if "normalized" in measure:
        out["normalized"] = rate(
            lambda: model.get_normalized_expression(
                library_size=args.library_size, batch_size=128, return_numpy=True
            )
        )
        out["normalized"]["library_size"] = args.library_size
    if "posterior" in measure:
        out["posterior"] = rate(lambda: model.posterior_predictive_sample(n_samples=1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()

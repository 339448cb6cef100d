"""Training throughput: opengem vs scVI (when scvi-tools is installed) on the same cells.

    python benchmarks/train_speed.py [--corpus build/corpus/sc.h5ad] [--cells 5000]

Trains each model for a fixed number of epochs on the same single-cell subset at a
similar width (hidden 128, 10 latent dims for scVI vs opengem's 56 across three
groups) and prints training samples/s and their ratio. scVI is optional
(``pip install scvi-tools``); without it only opengem's rate is printed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, default=Path("build/corpus/sc.h5ad"))
    ap.add_argument("--cells", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()

    import anndata

    from opengem.corpus.synthetic import synthetic_corpus
    from opengem.train import TrainConfig
    from opengem.train.fit import train_bundle

    if args.corpus.is_file():
        adata = anndata.read_h5ad(args.corpus)
        rng = np.random.default_rng(0)
        keep = np.sort(rng.choice(adata.n_obs, size=min(args.cells, adata.n_obs), replace=False))
        adata = adata[keep].copy()
        source = f"{args.corpus} ({adata.n_obs} cells)"
    else:
        adata, _ = synthetic_corpus(n_genes=2000, samples_per_condition=100)
        source = f"synthetic ({adata.n_obs} samples; build the corpus for real cells)"
    modality = str(adata.uns.get("modality", "sc"))
    config = TrainConfig.model_validate(
        {
            "modality": modality,
            "training": {
                "max_epochs": args.epochs,
                "batch_size": 128,
                "validation_fraction": 0,
                "validation_split": "sample",
                "kl_warmup_epochs": 1,
            },
        }
    )
    t = time.perf_counter()
    train_bundle(adata, config, None, progress=False, store_latents=False)
    ours = adata.n_obs * args.epochs / (time.perf_counter() - t)
    print(f"data: {source}")
    print(f"opengem: {ours:,.0f} training samples/s")
    try:
        import scvi
    except ImportError:
        print("scVI: not installed (pip install scvi-tools) - no ratio")
        return
    sub = adata.copy()
    sub = sub[:, np.asarray(sub.X.sum(axis=0)).ravel() > 0].copy()
    scvi.model.SCVI.setup_anndata(sub, batch_key="study")
    model = scvi.model.SCVI(sub, n_hidden=128, n_latent=10, n_layers=1)
    t = time.perf_counter()
    model.train(
        max_epochs=args.epochs,
        batch_size=128,
        accelerator="cpu",
        enable_progress_bar=False,
        early_stopping=False,
    )
    theirs = sub.n_obs * args.epochs / (time.perf_counter() - t)
    print(f"scVI ({sub.n_vars} expressed genes): {theirs:,.0f} training samples/s")
    print(f"opengem / scVI throughput ratio: {ours / theirs:.2f}")


if __name__ == "__main__":
    main()

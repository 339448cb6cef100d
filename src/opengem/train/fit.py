"""``opengem train``: corpus + config → a model bundle (Lightning; CPU, or DDP when asked)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from opengem.engine.bundle import Bundle, save_bundle
from opengem.model import GROUPS, GEMModule
from opengem.ontology.describe import term_ancestors, term_label
from opengem.ontology.genes import default_gene_space
from opengem.train.config import TrainConfig
from opengem.train.data import CorpusData, loader


@dataclass
class TrainResult:
    bundle: Bundle
    path: Path | None
    wall_seconds: float
    epochs: int
    best_epoch: int
    validation: dict[str, Any]


def _label(field: str, value: str) -> str:
    return term_label(value)


@torch.no_grad()
def posterior_means(
    module: GEMModule, data: CorpusData, index: np.ndarray, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """Posterior latent means q(z|x) of the given samples, per group, in ``index`` order."""
    module.eval()
    out = {
        g.value: np.zeros((len(index), module.config.latent_dim(g)), dtype=np.float32)
        for g in GROUPS
    }
    position = {int(r): i for i, r in enumerate(index)}
    for rows in data.batches(index, batch_size, rng=None):
        batch = data.collate(rows)
        q = module.inference(batch["x"], batch["genes"])
        where = [position[int(r)] for r in batch["rows"]]
        for g in GROUPS:
            out[g.value][where] = q[g][0].numpy()
    return out


@torch.no_grad()
def evaluate(module: GEMModule, data: CorpusData, index: np.ndarray) -> dict[str, Any]:
    """Validation loss terms and classifier accuracy on held-out studies."""
    module.eval()
    if len(index) == 0:
        return {}
    torch.manual_seed(0)
    totals: dict[str, float] = {}
    correct: dict[str, list[int]] = {}
    n = 0
    for rows in data.batches(index, 256, rng=None):
        batch = data.collate(rows)
        out = module.loss(batch["x"], batch["meta"], batch["labels"], batch["genes"])
        k = batch["x"].shape[0]
        n += k
        totals["loss"] = totals.get("loss", 0.0) + float(out.loss) * k
        totals["reconstruction_per_gene"] = (
            totals.get("reconstruction_per_gene", 0.0)
            + float(out.reconstruction) / batch["x"].shape[1] * k
        )
        q = module.inference(batch["x"], batch["genes"])
        logits = module.classify({g: q[g][0] for g in GROUPS})
        for f, y in batch["labels"].items():
            known = y >= 0
            if f in logits and bool(known.any()):
                hits = int((logits[f][known].argmax(-1) == y[known]).sum())
                c = correct.setdefault(f, [0, 0])
                c[0] += hits
                c[1] += int(known.sum())
    result: dict[str, Any] = {k: v / n for k, v in totals.items()}
    result["classifier_accuracy"] = {f: c[0] / c[1] for f, c in sorted(correct.items())}
    result["n_samples"] = n
    return result


def _corpus_provenance(corpus: Path, adata: Any) -> dict[str, Any]:
    manifest_path = corpus.parent / "manifest.json"
    counts = adata.obs["study"].astype(str).value_counts().sort_index()
    info: dict[str, Any] = {
        "studies": {s: int(n) for s, n in counts.items()},
        "n_samples": int(adata.n_obs),
    }
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        info["corpus_checksum"] = manifest.get("checksum")
        info["accessions"] = {
            s: v.get("accession")
            for s, v in manifest.get("studies", {}).items()
            if s in info["studies"]
        }
    return info


def train_bundle(
    corpus: Path | Any,
    config: TrainConfig,
    out: Path | None = None,
    *,
    progress: bool = True,
    devices: int | str | None = None,
    num_nodes: int | None = None,
    strategy: str | None = None,
    max_epochs: int | None = None,
    store_latents: bool = True,
    model_version: str | None = None,
    validation_studies: Sequence[str] | None = None,
) -> TrainResult:
    """Train a GEM model on a corpus (path to ``bulk.h5ad``/``sc.h5ad`` or an AnnData).

    The same config and seed give the same weights on the same machine.
    """
    import anndata
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping

    from opengem.train.plan import EpochLog, KeepBest, TrainingPlan

    t = config.training
    start = time.perf_counter()
    L.seed_everything(t.seed, workers=True, verbose=False)
    if isinstance(corpus, str | Path):
        corpus_path: Path | None = Path(corpus)
        adata = anndata.read_h5ad(corpus_path, backed="r" if t.backed else None)
    else:
        corpus_path, adata = None, corpus
    modality = str(adata.uns.get("modality", config.modality))
    if modality != config.modality:
        raise ValueError(f"config is for {config.modality!r} but the corpus is {modality!r}")
    genes = default_gene_space()
    if list(adata.var_names) != list(genes.gene_ids):
        raise ValueError("corpus genes differ from opengem's gene space; rebuild the corpus")
    data = CorpusData(
        adata,
        validation_studies=validation_studies or t.validation_studies,
        validation_fraction=t.validation_fraction,
        seed=t.seed,
        gene_index=genes.index_of,
        ancestors=term_ancestors,
        labels=_label,
        validation_split=t.validation_split,
    )
    module = GEMModule(config.model_config_for(len(genes)), data.vocab)
    train_loader = loader(data, data.train_index, t.batch_size, t.seed, shuffle=True)
    val_loader = (
        loader(data, data.val_index, 256, t.seed, shuffle=False) if len(data.val_index) else None
    )
    plan = TrainingPlan(module, t, steps_per_epoch=len(train_loader))
    keep = KeepBest()
    callbacks: list[Any] = [keep] if progress else [keep, EpochLog()]
    if val_loader is not None:
        callbacks.append(EarlyStopping(monitor="val_loss", patience=t.patience, mode="min"))
    chosen = strategy or t.strategy
    if chosen in ("ddp", "ddp_spawn"):
        # a batch may leave parameters unused (a classifier head without labels in it, the
        # on-target term without targeted samples): DDP must be told, or ranks deadlock
        chosen = f"{chosen}_find_unused_parameters_true"
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices or t.devices,
        num_nodes=num_nodes or t.num_nodes,
        strategy=chosen,
        max_epochs=max_epochs or t.max_epochs,
        max_time={"minutes": t.max_minutes},
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=True,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    trainer.fit(plan, train_loader, val_loader)
    if keep.state is not None:
        module.load_state_dict(keep.state)
    epochs = trainer.current_epoch
    validation = evaluate(module, data, data.val_index)
    if not trainer.is_global_zero:
        return TrainResult(
            Bundle(module, data.vocab, modality, list(genes.gene_ids)),
            None,
            time.perf_counter() - start,
            epochs,
            keep.best_epoch,
            validation,
        )
    all_rows = np.arange(len(data.records))
    latents = posterior_means(module, data, all_rows) if store_latents else {}
    wall = time.perf_counter() - start
    info = {
        "model_version": model_version or f"opengem-gem-1-{modality}",
        "training": {
            "config": config.to_dict(),
            "wall_seconds": round(wall, 1),
            "epochs": epochs,
            "best_epoch": keep.best_epoch,
            "validation_split": t.validation_split,
            "validation_studies": data.validation_studies,
            "torch": torch.__version__,
        },
        "corpus": (
            _corpus_provenance(corpus_path, adata)
            if corpus_path is not None
            else {"n_samples": int(adata.n_obs)}
        ),
        "validation": validation,
        "latent_library_sizes": (
            np.asarray(adata.obs["library_size"]).astype(int).tolist()
            if store_latents and "library_size" in adata.obs
            else []
        ),
    }
    bundle = Bundle(
        module,
        data.vocab,
        modality,
        list(genes.gene_ids),
        info,
        data.sample_ids if store_latents else [],
        latents,
    )
    if out is not None:
        save_bundle(bundle, out)
    return TrainResult(bundle, out, wall, epochs, keep.best_epoch, validation)

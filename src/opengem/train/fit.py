"""``opengem train``: corpus + config → a model bundle (an exact / convex fit; no epochs)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from opengem.engine.bundle import Bundle, save_bundle
from opengem.model import Vocabulary
from opengem.model.fitting import fit_model
from opengem.ontology.describe import term_ancestors, term_label
from opengem.ontology.genes import default_gene_space
from opengem.train.config import TrainConfig
from opengem.train.data import choose_validation_studies, match_groups, obs_records, study_masks


@dataclass
class TrainResult:
    """A fitted bundle and how it was made (``epochs`` is 0: the fit has no epochs)."""

    bundle: Bundle
    path: Path | None
    wall_seconds: float
    validation: dict[str, Any]
    epochs: int = 0
    best_epoch: int = 0
    truncated: bool = False

    @property
    def seconds(self) -> float:
        return self.wall_seconds


def _label(field: str, value: str) -> str:
    return term_label(value)


def _validation(
    bundle: Bundle, counts: sp.csr_matrix, records: list[dict[str, str]]
) -> dict[str, Any]:
    """Metadata-head accuracy on the held-out rows (exact class, known classes only)."""
    if not records:
        return {}
    m = bundle.model
    x = counts.toarray().astype(np.float64)
    mask = m.measured(x)
    probs = m.classify(m.log_expression(x, mask), mask)
    acc = {}
    for name, p in sorted(probs.items()):
        classes = m.classifiers[name].classes
        truth = [r.get(name, "") for r in records]
        keep = [i for i, t in enumerate(truth) if t in classes]
        if keep:
            pred = p[keep].argmax(axis=1)
            acc[name] = float(
                np.mean([classes[k] == truth[i] for k, i in zip(pred, keep, strict=True)])
            )
    return {"classifier_accuracy": acc, "n_samples": len(records)}


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
    store_latents: bool = True,
    model_version: str | None = None,
    validation_studies: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Fit a GEM model on a corpus (path to ``bulk.h5ad``/``sc.h5ad`` or an AnnData).

    The same config and corpus give the same arrays on the same machine.
    """
    import anndata

    t = config.training
    start = time.perf_counter()
    say = log or (print if progress else (lambda _m: None))
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
    obs = adata.obs
    records = obs_records(obs)
    studies = obs["study"].astype(str).to_numpy()
    known = set(studies)
    if t.validation_split == "sample" and t.validation_fraction > 0:
        is_val = np.random.default_rng(t.seed).random(len(studies)) < t.validation_fraction
        val_studies: list[str] = []
    else:
        val_studies = list(
            validation_studies
            or t.validation_studies
            or choose_validation_studies(obs, t.validation_fraction, t.seed)
        )
        unknown = sorted(set(val_studies) - known)
        if unknown:
            raise ValueError(
                f"validation_studies {unknown} are not studies of the corpus; "
                f"studies: {sorted(known)}"
            )
        is_val = np.isin(studies, val_studies)
    train = np.flatnonzero(~is_val)
    x = adata.X if not t.backed else adata.X[:]
    counts = sp.csr_matrix(x, dtype=np.float64)
    masks = study_masks(adata)
    train_records = [records[i] for i in train]
    vocab = Vocabulary.build(train_records, ancestors=term_ancestors, labels=_label)
    groups = match_groups(obs)
    say(f"fitting gem-1-{modality} on {len(train):,} samples")
    model = fit_model(
        counts[train],
        train_records,
        studies[train],
        masks,
        vocab,
        config.model_config_for(len(genes)),
        gene_index=genes.index_of,
        match_groups=[groups[i] for i in train],
        seed=t.seed,
        store_samples=store_latents,
        log=say,
    )
    sample_ids = list(adata.obs_names.astype(str))
    library = (
        np.asarray(obs["library_size"]).astype(float)
        if "library_size" in obs
        else np.asarray(counts.sum(axis=1)).ravel()
    )
    wall = time.perf_counter() - start
    info = {
        "model_version": model_version or f"opengem-gem-1-{modality}",
        "training": {
            "config": config.to_dict(),
            "wall_seconds": round(wall, 1),
            "validation_split": t.validation_split,
            "validation_studies": val_studies,
            "n_training_samples": len(train),
        },
        "corpus": (
            _corpus_provenance(corpus_path, adata)
            if corpus_path is not None
            else {"n_samples": int(adata.n_obs)}
        ),
    }
    bundle = Bundle(
        model,
        modality,
        list(genes.gene_ids),
        info,
        [sample_ids[i] for i in train] if store_latents else [],
        [float(library[i]) for i in train] if store_latents else [],
    )
    val_rows = np.flatnonzero(is_val)
    validation = _validation(bundle, counts[val_rows], [records[i] for i in val_rows])
    bundle.info["validation"] = validation
    if out is not None:
        save_bundle(bundle, out)
    say(f"fitted in {wall:.1f} s")
    return TrainResult(bundle, out, wall, validation)

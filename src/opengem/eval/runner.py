"""Plumbing shared by the protocols: the corpus view, training configs, trained models.

A trained model is saved as a bundle in a temporary models directory and queried
through :func:`opengem.client.embedded.run_query` with a
:class:`~opengem.engine.registry.ModelRegistry` over that directory: the same
validation and inference path a user's query takes.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from opengem.contract import FIELDS, QueryError, validate_query
from opengem.eval.metrics import log_cpm
from opengem.train.config import TrainConfig

Log = Callable[[str], None]

#: the tiny model of ``--fast``: a protocol runs in seconds per training on a subset
FAST_MODEL = {
    "hidden": 32,
    "latent_biological": 8,
    "latent_technical": 4,
    "latent_perturbation": 4,
    "embedding": 8,
    "prior_hidden": 16,
    "dropout": 0.0,
}
FAST_TRAINING = {
    "max_epochs": 8,
    "max_minutes": 0.75,
    "batch_size": 64,
    "learning_rate": 3e-3,
    "kl_warmup_epochs": 2,
    "patience": 5,
    "validation_fraction": 0.0,
    "validation_studies": [],
}
#: ``--fast`` trains on at most this many samples (the evaluated studies first)
FAST_MAX_TRAIN = 200


class EvalError(ValueError):
    """An evaluation that cannot run as asked (no units, unknown study...)."""


def _quiet(message: str) -> None:
    return None


# --------------------------------------------------------------------------- corpus


class CorpusView:
    """Read access to a corpus AnnData: rows, study gene masks, log-CPM per study."""

    def __init__(self, adata: Any, path: Path | None = None) -> None:
        self.adata = adata
        self.path = path
        self.obs: pd.DataFrame = adata.obs
        self.modality = str(adata.uns.get("modality", "bulk"))
        self.studies = self.text("study").to_numpy()
        names = [str(s) for s in adata.uns["study_mask_studies"]]
        mask = np.asarray(adata.varm["study_mask"]).astype(bool)
        self._genes = {s: np.flatnonzero(mask[:, j]) for j, s in enumerate(names)}
        self._mask = {s: mask[:, j] for j, s in enumerate(names)}
        self.n_genes = int(adata.n_vars)

    @classmethod
    def load(cls, corpus: Path | str | Any) -> CorpusView:
        if isinstance(corpus, str | Path):
            import anndata

            path = Path(corpus)
            if not path.is_file():
                raise EvalError(
                    f"corpus file {path} does not exist (build it with `opengem corpus build`)"
                )
            return cls(anndata.read_h5ad(path), path)
        return cls(corpus, None)

    def checksum(self) -> str | None:
        """The corpus checksum of the ``manifest.json`` beside the corpus file, if any."""
        if self.path is None:
            return None
        manifest = self.path.parent / "manifest.json"
        if not manifest.is_file():
            return None
        return json.loads(manifest.read_text()).get("checksum")

    def text(self, column: str) -> pd.Series:
        if column not in self.obs:
            return pd.Series([""] * len(self.obs), index=self.obs.index)
        return self.obs[column].astype(str).replace({"nan": "", "None": ""})

    def study_list(self) -> list[str]:
        return sorted(set(self.studies))

    def genes_of(self, study: str) -> np.ndarray:
        """Gene indices the study measured."""
        return self._genes[study]

    def counts(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Dense raw counts (float64) of corpus rows, all genes."""
        rows = np.asarray(rows, dtype=np.intp)
        block = self.adata.X[rows]
        dense = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
        return dense.astype(np.float64)

    def lcpm(self, rows: Sequence[int] | np.ndarray, study: str) -> np.ndarray:
        """log1p(CPM) of rows over the genes ``study`` measured (CPM within those genes)."""
        return log_cpm(self.counts(rows)[:, self.genes_of(study)])

    def measured(self, rows: Sequence[int] | np.ndarray, study: str) -> np.ndarray:
        """Bool (rows x genes of ``study``): whether each row's own study measured the gene."""
        genes = self.genes_of(study)
        return np.vstack([self._mask[self.studies[r]][genes] for r in np.asarray(rows)])

    def record(self, row: int, fields: Sequence[str] = tuple(FIELDS)) -> dict[str, str]:
        out = {}
        for f in fields:
            if f in self.obs:
                v = str(self.obs[f].iloc[row])
                if v and v not in ("nan", "None"):
                    out[f] = v
        return out

    def subset(self, rows: np.ndarray) -> Any:
        return self.adata[np.sort(np.asarray(rows, dtype=np.intp))].copy()


def fast_rows(
    view: CorpusView,
    train_rows: np.ndarray,
    focus: Sequence[str],
    cap: int = FAST_MAX_TRAIN,
) -> np.ndarray:
    """A small training set for ``--fast``: the focus studies' rows, then related studies.

    Other studies are added whole, most related first (shared biological metadata
    values with the focus studies), then smallest, until ``cap`` samples.
    """
    train_rows = np.asarray(train_rows, dtype=np.intp)
    in_focus = np.isin(view.studies[train_rows], list(focus))
    keep = list(train_rows[in_focus])
    bio = [
        "tissue_ontology_id",
        "cell_type_ontology_id",
        "cell_line_ontology_id",
        "disease_ontology_id",
        "sample_type",
        "perturbation_type",
    ]
    focus_rows = np.flatnonzero(np.isin(view.studies, list(focus)))
    focus_values = {(f, v) for f in bio for v in view.text(f).to_numpy()[focus_rows] if v}
    others = sorted(set(view.studies[train_rows[~in_focus]]))
    sizes = {s: int(np.sum(view.studies[train_rows] == s)) for s in others}

    def shared(s: str) -> int:
        rows = np.flatnonzero(view.studies == s)
        return len({(f, v) for f in bio for v in view.text(f).to_numpy()[rows] if v} & focus_values)

    for s in sorted(others, key=lambda s: (-shared(s), sizes[s], s)):
        if len(keep) >= cap:
            break
        if len(keep) + sizes[s] <= cap or not keep:
            keep.extend(train_rows[view.studies[train_rows] == s])
    return np.sort(np.asarray(keep, dtype=np.intp))


# --------------------------------------------------------------------------- configs


def eval_config(
    base: TrainConfig | None, modality: str, fast: bool, max_minutes: float | None
) -> TrainConfig:
    """The training config of an evaluation: ``base`` (or defaults), made tiny by ``fast``."""
    cfg = base or TrainConfig(modality=modality)
    if cfg.modality != modality:
        raise EvalError(f"config is for {cfg.modality!r} but the corpus is {modality!r}")
    if fast:
        cfg = TrainConfig.model_validate(
            {
                "modality": modality,
                "model": {**cfg.model.model_dump(), **FAST_MODEL},
                "training": {
                    **cfg.training.model_dump(),
                    **FAST_TRAINING,
                    "validation_split": "study",
                },
            }
        )
    if max_minutes is not None:
        cfg = cfg.model_copy(
            update={"training": cfg.training.model_copy(update={"max_minutes": max_minutes})}
        )
    return cfg


def config_for_training(
    cfg: TrainConfig, train_obs: pd.DataFrame, protect: Sequence[str]
) -> TrainConfig:
    """Fix the validation studies of one training run.

    Validation studies absent from the training data are dropped; studies whose
    samples the protocol needs in training (``protect``: where the held-out units'
    controls or replicates live) are never used for validation.
    """
    from opengem.train.data import choose_validation_studies

    t = cfg.training
    if t.validation_split == "sample":
        return cfg
    present = set(train_obs["study"].astype(str))
    if t.validation_studies is not None:
        val = [s for s in t.validation_studies if s in present and s not in protect]
    elif t.validation_fraction > 0:
        pool = train_obs[~train_obs["study"].astype(str).isin(list(protect))]
        val = choose_validation_studies(pool, t.validation_fraction, t.seed) if len(pool) else []
    else:
        val = []
    return cfg.model_copy(update={"training": t.model_copy(update={"validation_studies": val})})


# --------------------------------------------------------------------------- models


class TrainedModel:
    """A model trained for one rotation, served from a temporary models directory."""

    def __init__(self, result: Any, modality: str, seconds: float) -> None:
        from opengem.engine import ModelRegistry, save_bundle

        self.result = result
        self.modality = modality
        self.seconds = seconds
        self.bundle = result.bundle
        self._dir = Path(tempfile.mkdtemp(prefix="opengem-eval-"))
        save_bundle(result.bundle, self._dir / f"gem-1-{modality}")
        self.registry = ModelRegistry(self._dir)
        self.predictor = self.registry.predictor(f"gem-1-{modality}")
        self.inference_seconds = 0.0
        self.inference_samples = 0

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> TrainedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def model_id(self, task: str | None) -> str:
        return f"gem-1-{self.modality}" + (f"_{task}" if task else "")

    def run(self, query: dict[str, Any], task: str | None) -> Any:
        """Run a query (validated against this model's vocabulary), as a user would."""
        from opengem.client.embedded import run_query

        start = time.perf_counter()
        result = run_query(query, self.model_id(task), self.registry)
        self.inference_seconds += time.perf_counter() - start
        n = result.counts.shape[0] if hasattr(result, "counts") else len(result.metadata)
        self.inference_samples += int(n)
        return result

    def usable_metadata(
        self, records: Sequence[dict[str, str]]
    ) -> tuple[list[dict[str, str]], list[list[str]]]:
        """Records with the fields this model cannot take dropped (unseen study, tissue...).

        Uses the query validator itself: fields it rejects are removed and the rest kept.
        """
        recs = [dict(r) for r in records]
        dropped: list[list[str]] = [[] for _ in recs]
        vocab = self.predictor.vocab
        pattern = re.compile(r"inputs\[(\d+)\]\.metadata\.(\w+)")
        for _ in range(8):
            try:
                validate_query(
                    {
                        "inputs": [{"metadata": r, "num_samples": 1} for r in recs],
                        "sampling_strategy": "mean estimation",
                    },
                    self.model_id(None),
                    vocabulary=vocab.as_validation_vocabulary(),
                    ancestor_tokens=vocab.ancestor_tokens(),
                )
                return recs, dropped
            except QueryError as exc:
                changed = False
                for p in exc.problems:
                    m = pattern.match(p.location)
                    if m and m.group(2) in recs[int(m.group(1))]:
                        del recs[int(m.group(1))][m.group(2)]
                        dropped[int(m.group(1))].append(m.group(2))
                        changed = True
                if not changed:
                    raise
        return recs, dropped


def train_model(
    view: CorpusView,
    rows: np.ndarray,
    cfg: TrainConfig,
    protect: Sequence[str],
    log: Log = _quiet,
) -> tuple[TrainedModel, TrainConfig, np.ndarray]:
    """Train on ``rows`` of the corpus; returns the model, the config used, its training rows.

    The training rows returned exclude the validation studies (the samples the
    model's weights were fitted on), for the baselines to use the same data.
    """
    from opengem.train.fit import train_bundle

    sub = view.subset(rows)
    run_cfg = config_for_training(cfg, sub.obs, protect)
    val = set(run_cfg.training.validation_studies or [])
    log(
        f"  training on {len(rows):,} samples of {len(set(view.studies[rows]))} studies "
        f"(validation: {', '.join(sorted(val)) or 'none'}; max {run_cfg.training.max_epochs} "
        f"epochs / {run_cfg.training.max_minutes:g} min)"
    )
    start = time.perf_counter()
    result = train_bundle(sub, run_cfg, None, progress=False, store_latents=False)
    seconds = time.perf_counter() - start
    log(f"  trained in {seconds:.1f} s, {result.epochs} epochs (best epoch {result.best_epoch})")
    fitted = np.sort(rows)[~np.isin(view.studies[np.sort(rows)], list(val))]
    return TrainedModel(result, view.modality, seconds), run_cfg, fitted

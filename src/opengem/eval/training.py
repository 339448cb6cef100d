"""Training inside an evaluation: fixed budgets, the trained-model adapter, the record.

The protocols never see the model's internals. They get a :class:`QueryableModel`
from a :data:`Trainer` (a function of the corpus view and the training rows) and
query it only through the public query contract
(:func:`opengem.client.embedded.run_query`). Tests plug in fake trainers whose
models have known answers.

Budgets are fixed: a training runs what the config says, recorded per training in
``metrics.json``. ``--max-minutes`` is only a wall-clock safety cap, for configs
whose ``[training]`` has a wall-clock budget (``max_minutes``): a training it
stopped is marked *truncated*. The current model is an exact fit with no such
budget, so there the option has no effect (the run says so once).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from opengem.eval.corpus import CorpusView, EvalError

__all__ = [
    "FAST_PRESET",
    "QueryableModel",
    "TrainedModel",
    "Trainer",
    "TrainingRecord",
    "eval_config",
    "has_wall_clock_budget",
    "train_bundle_model",
]

Log = Callable[[str], None]

#: the documented ``--fast`` preset: keys applied where the config has them (a small
#: model, one imputation round, no validation split); everything else stays as configured
FAST_PRESET: dict[str, dict[str, Any]] = {
    "model": {
        "latent_biological": 8,
        "latent_technical": 4,
        "latent_perturbation": 4,
        "n_components": 16,
        "mean_rank": 32,
        "n_top_genes": 500,
        "classifier_iterations": 100,
        "max_residual_rows": 500,
        "imputation_rounds": 1,
    },
    "training": {
        "validation_fraction": 0.0,
        "validation_studies": [],
        "validation_split": "study",
    },
}

#: the warning of a ``--max-minutes`` that nothing can apply
MAX_MINUTES_IGNORED = (
    "--max-minutes has no effect: the training config has no wall-clock budget "
    "(max_minutes); each training runs to completion and none is marked truncated"
)


@runtime_checkable
class QueryableModel(Protocol):
    """What a protocol needs of a model: the query contract, and nothing else.

    ``run`` takes a pysynthbio query and a task (``None`` for generation from
    metadata, ``"reference-conditioning"``, ``"predict-metadata"``) and returns a
    result with ``counts`` (samples x all genes) or ``classifier_probs`` (one
    ``{field: {class: probability}}`` per sample). ``check`` raises
    :class:`opengem.contract.QueryError` for a query the model cannot take, with every
    problem found (not only the first few a user is shown).
    """

    modality: str

    def run(self, query: dict[str, Any], task: str | None) -> Any: ...

    def check(self, query: dict[str, Any], task: str | None) -> None: ...

    def close(self) -> None: ...


@dataclass
class TrainingRecord:
    """One training of an evaluation, as recorded in ``metrics.json``."""

    label: str
    n_train_samples: int
    n_train_studies: int
    held_out: list[str] = field(default_factory=list)
    validation_studies: list[str] = field(default_factory=list)
    budget: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    best_epoch: int | None = None
    wall_seconds: float = 0.0
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "n_train_samples": self.n_train_samples,
            "n_train_studies": self.n_train_studies,
            "held_out": self.held_out,
            "validation_studies": self.validation_studies,
            "budget": self.budget,
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "truncated": self.truncated,
        }


#: trains on ``rows`` (never validating on ``protect`` studies); returns the model,
#: its record and the rows its weights were fitted on (for the baselines)
Trainer = Callable[
    [CorpusView, np.ndarray, Sequence[str], str],
    tuple[QueryableModel, TrainingRecord, np.ndarray],
]


# --------------------------------------------------------------------------- configs


def _section_keys(section: Any) -> set[str]:
    fields = getattr(type(section), "model_fields", None)
    return set(fields) if fields else set(section.model_dump())


def has_wall_clock_budget(cfg: Any) -> bool:
    """Whether ``cfg``'s ``[training]`` has a wall-clock budget (``max_minutes``) to cap."""
    return "max_minutes" in _section_keys(cfg.training)


def base_config(base: Any | None, modality: str) -> Any:
    """``base``, or the config defaults for ``modality``."""
    from opengem.train.config import TrainConfig

    return base if base is not None else TrainConfig(modality=modality)


def eval_config(base: Any | None, modality: str, fast: bool, max_minutes: float | None) -> Any:
    """The training config of an evaluation: ``base`` (or defaults), made tiny by ``fast``.

    ``fast`` applies :data:`FAST_PRESET` to the keys the config has; ``max_minutes``
    sets the wall-clock safety cap where the config has a wall-clock budget
    (:func:`has_wall_clock_budget`) and is ignored otherwise.
    """
    cfg = base_config(base, modality)
    if getattr(cfg, "modality", modality) != modality:
        raise EvalError(f"config is for {cfg.modality!r} but the corpus is {modality!r}")
    if fast:
        data = cfg.model_dump()
        for name, preset in FAST_PRESET.items():
            section = getattr(cfg, name, None)
            if section is None:
                continue
            keys = _section_keys(section)
            data[name] = {**data[name], **{k: v for k, v in preset.items() if k in keys}}
        cfg = type(cfg).model_validate(data)
    if max_minutes is not None and has_wall_clock_budget(cfg):
        cfg = cfg.model_copy(
            update={"training": cfg.training.model_copy(update={"max_minutes": max_minutes})}
        )
    return cfg


def budget_of(cfg: Any) -> dict[str, Any]:
    """The budget fields of the config's ``[training]`` section (epochs, minutes, steps...)."""
    words = ("epoch", "minute", "step", "iter", "patience", "seed", "batch")
    return {k: v for k, v in cfg.training.model_dump().items() if any(w in k for w in words)}


def config_for_training(cfg: Any, train_obs: Any, protect: Sequence[str]) -> Any:
    """Fix the validation studies of one training run (never a ``protect`` study)."""
    t = cfg.training
    keys = _section_keys(t)
    if "validation_studies" not in keys or getattr(t, "validation_split", "study") == "sample":
        return cfg
    present = set(train_obs["study"].astype(str))
    fraction = getattr(t, "validation_fraction", 0.0)
    if t.validation_studies is not None:
        val = [s for s in t.validation_studies if s in present and s not in protect]
    elif fraction > 0:
        from opengem.train.data import choose_validation_studies

        pool = train_obs[~train_obs["study"].astype(str).isin(list(protect))]
        val = choose_validation_studies(pool, fraction, t.seed) if len(pool) else []
    else:
        val = []
    return cfg.model_copy(update={"training": t.model_copy(update={"validation_studies": val})})


def was_truncated(result: Any, cfg: Any) -> bool:
    """Whether the wall-clock safety stop ended a training (not its epoch budget)."""
    flag = getattr(result, "truncated", None)
    if flag is not None:
        return bool(flag)
    cap = getattr(cfg.training, "max_minutes", None)
    seconds = getattr(result, "wall_seconds", getattr(result, "seconds", None))
    epochs = getattr(result, "epochs", None)
    max_epochs = getattr(cfg.training, "max_epochs", None)
    if cap is None or seconds is None:
        return False
    stopped_early = epochs is None or max_epochs is None or epochs < max_epochs
    return bool(seconds >= 0.98 * cap * 60.0 and stopped_early)


# --------------------------------------------------------------------------- models


class TrainedModel:
    """A trained bundle served from a temporary models directory, queried as a user would."""

    def __init__(self, bundle: Any, modality: str) -> None:
        from opengem.engine import ModelRegistry, save_bundle

        self.modality = modality
        self._dir = Path(tempfile.mkdtemp(prefix="opengem-eval-"))
        save_bundle(bundle, self._dir / f"gem-1-{modality}")
        self.registry = ModelRegistry(self._dir)

    def model_id(self, task: str | None) -> str:
        return f"gem-1-{self.modality}" + (f"_{task}" if task else "")

    def run(self, query: dict[str, Any], task: str | None) -> Any:
        from opengem.client.embedded import run_query

        return run_query(query, self.model_id(task), self.registry)

    def check(self, query: dict[str, Any], task: str | None) -> None:
        self.registry.validate(self.model_id(task), query, max_problems=None)

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


def train_bundle_model(
    cfg: Any, log: Log
) -> Callable[[CorpusView, np.ndarray, Sequence[str], str], tuple[Any, TrainingRecord, np.ndarray]]:
    """The default :data:`Trainer`: :func:`opengem.train.fit.train_bundle` with ``cfg``."""

    def trainer(
        view: CorpusView, rows: np.ndarray, protect: Sequence[str], label: str
    ) -> tuple[TrainedModel, TrainingRecord, np.ndarray]:
        from opengem.train.fit import train_bundle

        rows = np.sort(np.asarray(rows, dtype=np.intp))
        sub = view.subset(rows)
        run_cfg = config_for_training(cfg, sub.obs, protect)
        val = sorted(getattr(run_cfg.training, "validation_studies", None) or [])
        budget = budget_of(run_cfg)
        log(
            f"  training on {len(rows):,} samples of {len(set(view.studies[rows]))} studies "
            f"(validation: {', '.join(val) or 'none'}; budget {budget})"
        )
        start = time.perf_counter()
        try:
            result = train_bundle(sub, run_cfg, None, progress=False, store_latents=False)
        except Exception as exc:  # a failed training is an evaluation error, not a traceback
            raise EvalError(f"training failed ({label}): {type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - start
        record = TrainingRecord(
            label=label,
            n_train_samples=len(rows),
            n_train_studies=len(set(view.studies[rows])),
            validation_studies=val,
            budget=budget,
            epochs=getattr(result, "epochs", None),
            best_epoch=getattr(result, "best_epoch", None),
            wall_seconds=float(getattr(result, "wall_seconds", seconds)),
            truncated=was_truncated(result, run_cfg),
        )
        log(
            f"  trained in {seconds:.1f} s, {record.epochs} epochs"
            + (" (TRUNCATED by the wall-clock safety stop)" if record.truncated else "")
        )
        fitted = rows[~np.isin(view.studies[rows], val)]
        return TrainedModel(result.bundle, view.modality), record, fitted

    return trainer

"""Typed results of an evaluation: one :class:`UnitResult` per held-out unit.

A unit result holds the model's metrics, each baseline's (the same metrics, same
data) and diagnostics (e.g. the model with no perturbation sent). Undefined
metrics are NaN in memory, ``null`` in ``metrics.json`` and "undefined" in text;
:func:`summarise` averages over the units where a metric is defined and says how
many those are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from opengem.eval.training import TrainingRecord

__all__ = [
    "ProtocolResult",
    "UnitResult",
    "clean",
    "direction",
    "fmt",
    "summarise",
    "toughest",
    "verdicts",
]

Metrics = dict[str, float]

#: metrics where lower is better; classifier AUC is best at 0.5
LOWER_IS_BETTER = {
    "energy_distance",
    "ece",
    "mae_lfc_top100",
    "diversity_gap",
    "fields_predicted_constant",
}
CLOSER_TO_HALF = {"classifier_auc"}
#: descriptive metrics without a better direction (compared through another metric)
DESCRIPTIVE = {"diversity": "compare it with the real conditions' through diversity_gap"}
CLOSER_TO_ONE = {"magnitude_ratio_top100", "cf_magnitude_ratio_top100", "spread_ratio"}


def direction(metric: str) -> str:
    """``higher``, ``lower``, ``half`` (best at 0.5) or ``one`` (best at 1)."""
    leaf = metric.rsplit(":", 1)[-1]
    if leaf in CLOSER_TO_HALF:
        return "half"
    if leaf in CLOSER_TO_ONE:
        return "one"
    if leaf in LOWER_IS_BETTER or leaf.endswith("ece") or leaf.endswith("error"):
        return "lower"
    return "higher"


def fmt(value: Any) -> str:
    """A metric for text: 3 decimals, "undefined" for NaN / None."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "undefined"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


@dataclass
class UnitResult:
    """One held-out unit: the model and every baseline on the same samples."""

    name: str
    study: str
    n_samples: int
    model: Metrics
    baselines: dict[str, Metrics]
    diagnostics: dict[str, Metrics] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # why the model could not be scored (its metrics undefined)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"unit": self.name, "study": self.study, "n_samples": self.n_samples}
        out.update(self.info)
        out["model"] = self.model
        out["baselines"] = self.baselines
        if self.diagnostics:
            out["diagnostics"] = self.diagnostics
        if self.notes:
            out["notes"] = self.notes
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class ProtocolResult:
    """What a protocol returns: its units, trainings, details and figure data."""

    protocol: str
    units: list[UnitResult]
    trainings: list[TrainingRecord]
    details: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    inference_seconds: float = 0.0
    inference_samples: int = 0


def _finite(values: Sequence[float | None]) -> np.ndarray:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    return arr[np.isfinite(arr)]


def _stat(values: Sequence[float | None], how: str) -> float:
    arr = _finite(values)
    if not arr.size:
        return float("nan")
    return float(arr.mean() if how == "mean" else np.median(arr))


def _baseline_of(u: UnitResult, name: str) -> Metrics | None:
    return u.baselines.get(name)


def _diagnostic_of(u: UnitResult, name: str) -> Metrics | None:
    return u.diagnostics.get(name)


def _rows(units: Sequence[UnitResult]) -> dict[str, Callable[[UnitResult], Metrics | None]]:
    getters: dict[str, Callable[[UnitResult], Metrics | None]] = {"model": lambda u: u.model}
    for u in units:
        for b in u.baselines:
            getters.setdefault(f"baselines/{b}", partial(_baseline_of, name=b))
        for d in u.diagnostics:
            getters.setdefault(f"diagnostics/{d}", partial(_diagnostic_of, name=d))
    return getters


def summarise(units: Sequence[UnitResult]) -> dict[str, Any]:
    """Means (and medians) over units of every metric of the model, baselines, diagnostics.

    ``n_defined`` counts, per model metric, the units where it is defined;
    ``undefined`` lists the model metrics undefined on every unit.
    """
    out: dict[str, Any] = {"n_units": len(units)}
    medians: dict[str, Any] = {}
    for name, get in _rows(units).items():
        keys: list[str] = []
        for u in units:
            keys += [k for k in get(u) or {} if k not in keys]
        mean = {k: _stat([(get(u) or {}).get(k) for u in units], "mean") for k in keys}
        median = {k: _stat([(get(u) or {}).get(k) for u in units], "median") for k in keys}
        if name == "model":
            out["model"] = mean
            medians["model"] = median
            out["n_defined"] = {
                k: int(_finite([(u.model or {}).get(k) for u in units]).size) for k in keys
            }
            out["undefined"] = [k for k in keys if out["n_defined"][k] == 0]
        else:
            group, sub = name.split("/", 1)
            out.setdefault(group, {})[sub] = mean
            medians.setdefault(group, {})[sub] = median
    out.setdefault("baselines", {})
    out.setdefault("model", {})
    out["median"] = medians
    out["paired"] = _paired(units)
    return out


def _paired(units: Sequence[UnitResult]) -> dict[str, dict[str, dict[str, float | int]]]:
    """Per baseline and model metric: the model and the baseline on the units where both
    are defined (``n``; mean and median of each), so a baseline that applies to a few
    units is compared with the model on those units only."""
    out: dict[str, dict[str, dict[str, float | int]]] = {}
    names = sorted({b for u in units for b in u.baselines})
    for b in names:
        rows: dict[str, dict[str, float | int]] = {}
        metrics = {k for u in units for k in (u.baselines.get(b) or {})}
        for k in sorted(metrics):
            pairs: list[tuple[float, float]] = []
            for u in units:
                mv, bv = u.model.get(k), (u.baselines.get(b) or {}).get(k)
                if mv is not None and bv is not None and math.isfinite(mv) and math.isfinite(bv):
                    pairs.append((mv, bv))
            if not pairs:
                continue
            arr = np.asarray(pairs, dtype=np.float64)
            rows[k] = {
                "n": len(pairs),
                "model": float(arr[:, 0].mean()),
                "baseline": float(arr[:, 1].mean()),
                "model_median": float(np.median(arr[:, 0])),
                "baseline_median": float(np.median(arr[:, 1])),
            }
        out[b] = rows
    return out


def toughest(
    metric: str, paired: dict[str, dict[str, dict[str, Any]]], median: bool = False
) -> tuple[str, dict[str, Any]] | None:
    """The baseline the model compares worst with on ``metric`` (paired units), if any."""
    how = direction(metric)
    m_key, b_key = ("model_median", "baseline_median") if median else ("model", "baseline")

    def gap(row: dict[str, Any]) -> float:
        m, b = float(row[m_key]), float(row[b_key])
        if how == "lower":
            return m - b
        if how == "half":
            return abs(m - 0.5) - abs(b - 0.5)
        if how == "one":
            return abs(m - 1.0) - abs(b - 1.0)
        return b - m

    found = [(name, rows[metric]) for name, rows in paired.items() if metric in rows]
    if not found:
        return None
    return max(found, key=lambda x: (gap(x[1]), x[1]["n"]))


def _better(a: float, b: float, how: str) -> bool:
    if how == "lower":
        return a < b
    if how == "half":
        return abs(a - 0.5) < abs(b - 0.5)
    if how == "one":
        return abs(a - 1.0) < abs(b - 1.0)
    return a > b


HOW = {
    "lower": "lower is better",
    "half": "0.5 is best",
    "one": "1 is best",
    "higher": "higher is better",
}


def verdicts(units: Sequence[UnitResult], summary: dict[str, Any]) -> dict[str, str]:
    """One plain-English sentence per model metric: the model against its toughest baseline.

    Each baseline is compared with the model on the units where both are defined
    (a baseline that applies to a few units is not set against the model's mean
    over all of them); the toughest is the one the model compares worst with.
    """
    out: dict[str, str] = {}
    for metric, value in summary["model"].items():
        if metric.rsplit(":", 1)[-1] in DESCRIPTIVE:
            out[metric] = f"{metric}: the model scores {fmt(value)} (descriptive: " + (
                DESCRIPTIVE[metric.rsplit(":", 1)[-1]] + ")."
            )
            continue
        how = direction(metric)
        rivals = {
            name: vals[metric]
            for name, vals in summary["baselines"].items()
            if metric in vals and math.isfinite(vals[metric])
        }
        if not math.isfinite(value):
            if rivals:
                best = next(iter(rivals))
                for name, v in rivals.items():
                    if _better(v, rivals[best], how):
                        best = name
                out[metric] = (
                    f"{metric}: undefined for the model on every unit; the strongest baseline, "
                    f"{best}, scores {rivals[best]:.3f} ({HOW[how]})."
                )
            else:
                out[metric] = f"{metric}: undefined for the model on every unit."
            continue
        if not rivals:
            out[metric] = (
                f"{metric}: the model scores {value:.3f} ({HOW[how]}); no baseline reports it."
            )
            continue
        pick = toughest(metric, summary.get("paired") or _paired(units))
        if pick is None:
            out[metric] = (
                f"{metric}: the model scores {value:.3f} ({HOW[how]}); no baseline shares "
                "a unit with it."
            )
            continue
        best, row = pick
        mv, bv, n = float(row["model"]), float(row["baseline"]), int(row["n"])
        wins = 0
        for u in units:
            mu = u.model.get(metric)
            bu = u.baselines.get(best, {}).get(metric)
            if mu is None or bu is None or not (math.isfinite(mu) and math.isfinite(bu)):
                continue
            wins += _better(mu, bu, how)
        if math.isclose(mv, bv, rel_tol=1e-9, abs_tol=1e-9):
            word = "ties with"
        elif _better(mv, bv, how):
            word = "beats"
        else:
            word = "loses to"
        defined = int(summary.get("n_defined", {}).get(metric, n))
        where = (
            f"on the {n} units both are defined (the model's mean over its {defined}: {value:.3f})"
            if n < defined
            else f"over {n} units"
        )
        out[metric] = (
            f"{metric}: the model ({mv:.3f}) {word} the toughest baseline, {best} "
            f"({bv:.3f}; {HOW[how]}) {where}, better on {wins} of {n} units."
        )
    return out


def clean(value: Any) -> Any:
    """JSON-safe: floats rounded to 6 digits, NaN/inf -> None, numpy scalars unwrapped."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return clean(value.tolist())
    if isinstance(value, np.str_):
        return str(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        v = float(value)
        return None if not math.isfinite(v) else round(v, 6)
    return value

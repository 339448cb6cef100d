"""The evaluation protocols of ``docs/evaluation.md``, model and baselines from one run.

- :func:`held_out_context`: reference conditioning on a context whose perturbed
  samples were never seen (baselines: no change, additive shift, train mean);
- :func:`held_out_study`: metadata prediction (baseline: logistic regression on
  PCA) and generation from metadata (baseline: condition mean) for whole studies
  left out of training;
- :func:`seen_condition`: generation of conditions seen in training, compared with
  held-out replicates (baseline: condition mean with negative-binomial noise).

:func:`run_protocol` runs one and writes ``metrics.json`` and ``report.html``
(with PNG figures) into an output folder. Expression is compared as log1p(CPM)
over the genes the unit's study measured.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from opengem.contract import FIELDS, PERTURBATION_FIELDS, LatentGroup
from opengem.contract.fields import GENE_TARGETING_TYPES
from opengem.eval import baselines as bl
from opengem.eval import metrics as m
from opengem.eval.experiments import find_experiments, perturbation_key
from opengem.eval.runner import (
    CorpusView,
    EvalError,
    Log,
    TrainedModel,
    eval_config,
    fast_rows,
    train_model,
)
from opengem.train.config import TrainConfig

__all__ = [
    "DEFAULT_HELD_OUT_STUDIES",
    "PROTOCOLS",
    "held_out_context",
    "held_out_study",
    "run_protocol",
    "seen_condition",
    "summarise",
    "verdicts",
]

#: tissue studies held out whole by default (held-out-study protocol), in fold order
DEFAULT_HELD_OUT_STUDIES = (
    "emtab513",
    "emtab3716",
    "gtex_bladder_yarn",
    "marioni2008_kidney_liver",
    "gse147507_covid_lung",
    "srp029880_colon",
    "srp021193_heart",
    "tcga_chol",
)
#: metadata fields that describe a condition (not the batch): generation keys
CONDITION_FIELDS = tuple(f for f, spec in FIELDS.items() if spec.group is not LatentGroup.TECHNICAL)
#: metrics where lower is better; classifier AUC is best at 0.5
LOWER_IS_BETTER = {"on_target_error", "energy_distance", "ece", "mae_lfc_top100"}
CLOSER_TO_HALF = {"classifier_auc"}
SEED = 0


def _direction(metric: str) -> str:
    leaf = metric.rsplit(":", 1)[-1]
    if leaf in CLOSER_TO_HALF or metric in CLOSER_TO_HALF:
        return "half"
    if leaf in LOWER_IS_BETTER or leaf.endswith("ece") or leaf.endswith("error"):
        return "lower"
    return "higher"


def _clean(value: Any) -> Any:
    """JSON-safe: floats rounded, NaN/inf -> None, numpy scalars unwrapped."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        v = float(value)
        return None if not math.isfinite(v) else round(v, 6)
    return value


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


# --------------------------------------------------------------------------- unit metrics


def perturbation_metrics(
    pred: np.ndarray,
    real: np.ndarray,
    refs: np.ndarray,
    controls: np.ndarray,
    target: int | None = None,
) -> dict[str, float]:
    """Metrics of one predictor on one held-out context (log-CPM, measured genes).

    ``pred``/``real``/``refs``: predicted perturbed, real perturbed and matched
    reference rows (paired); ``controls``: every control of the context (DEG
    selection); ``target``: column of the targeted gene for gene-targeting
    perturbations.
    """
    true_lfc = real.mean(axis=0) - refs.mean(axis=0)
    pred_lfc = pred.mean(axis=0) - refs.mean(axis=0)
    top100 = m.top_degs(controls, real, 100)
    top20 = top100[:20]
    expressed = (controls.mean(axis=0) > 1.0) | (real.mean(axis=0) > 1.0)
    out = {
        "pearson_delta_top20": m.pearson_delta(pred_lfc, true_lfc, top20),
        "pearson_delta_top100": m.pearson_delta(pred_lfc, true_lfc, top100),
        "pearson_delta_expressed": m.pearson_delta(pred_lfc, true_lfc, expressed),
        "direction_accuracy_top100": m.direction_accuracy(pred_lfc, true_lfc, top100),
        "r2_all": m.r2_of_means(pred.mean(axis=0), real.mean(axis=0)),
        "r2_top100": m.r2_of_means(pred.mean(axis=0), real.mean(axis=0), top100),
        "mae_lfc_top100": float(np.mean(np.abs(pred_lfc[top100] - true_lfc[top100])))
        if len(top100)
        else float("nan"),
    }
    if target is not None:
        out["on_target_error"] = m.on_target_error(pred_lfc, true_lfc, target)
    return out


def generation_metrics(
    gen_means: np.ndarray,
    real_means: np.ndarray,
    gen_samples: np.ndarray,
    real_samples: np.ndarray,
    ceiling: float,
) -> dict[str, float]:
    """Metrics of generated conditions against real ones (log-CPM, measured genes).

    ``gen_means``/``real_means``: one row per condition (generated by mean
    estimation / real replicate means); ``gen_samples``/``real_samples``: pooled
    samples of the unit with the same condition composition (sample generation).
    The SD correlation, classifier AUC and energy distance use the pooled sets.
    """
    sw = m.samplewise_pearson(gen_means, real_means)
    return {
        "samplewise_pearson": sw,
        "samplewise_pearson_ceiling_ratio": sw / ceiling if ceiling and ceiling > 0 else np.nan,
        "genewise_pearson_weighted": m.genewise_pearson_weighted(gen_means, real_means),
        "sd_correlation": m.sd_correlation(gen_samples, real_samples),
        "classifier_auc": m.classifier_auc(real_samples, gen_samples, seed=SEED),
        "energy_distance": m.energy_distance(real_samples, gen_samples, seed=SEED),
    }


# --------------------------------------------------------------------------- summaries


def summarise(units: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over units of every metric of the model and of each baseline."""

    def means(getter: Callable[[dict[str, Any]], dict[str, float] | None]) -> dict[str, float]:
        keys: list[str] = []
        for u in units:
            for k in getter(u) or {}:
                if k not in keys:
                    keys.append(k)
        return {k: _nanmean([(getter(u) or {}).get(k, np.nan) for u in units]) for k in keys}

    names: list[str] = []
    for u in units:
        for b in u["baselines"]:
            if b not in names:
                names.append(b)
    return {
        "n_units": len(units),
        "model": means(lambda u: u["model"]),
        "baselines": {b: means(lambda u, b=b: u["baselines"].get(b)) for b in names},
    }


def _better(a: float, b: float, direction: str) -> bool:
    if direction == "lower":
        return a < b
    if direction == "half":
        return abs(a - 0.5) < abs(b - 0.5)
    return a > b


def verdicts(units: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, str]:
    """One plain-English sentence per metric: the model against the strongest baseline."""
    out: dict[str, str] = {}
    for metric, value in summary["model"].items():
        direction = _direction(metric)
        rivals = {
            name: vals[metric]
            for name, vals in summary["baselines"].items()
            if metric in vals and math.isfinite(vals[metric])
        }
        how = {"lower": "lower is better", "half": "0.5 is best", "higher": "higher is better"}[
            direction
        ]
        if not rivals:
            out[metric] = (
                f"{metric}: the model scores {value:.3f} ({how}); no baseline reports this metric."
            )
            continue
        best = next(iter(rivals))
        for name, v in rivals.items():
            if _better(v, rivals[best], direction):
                best = name
        bv = rivals[best]
        if not math.isfinite(value):
            out[metric] = (
                f"{metric}: the model's value is undefined; the strongest baseline, {best}, "
                f"scores {bv:.3f}."
            )
            continue
        wins = n = 0
        for u in units:
            mu = u["model"].get(metric)
            bu = u["baselines"].get(best, {}).get(metric)
            if mu is None or bu is None or not (math.isfinite(mu) and math.isfinite(bu)):
                continue
            n += 1
            wins += _better(mu, bu, direction)
        if math.isclose(value, bv, rel_tol=1e-9, abs_tol=1e-9):
            word = "ties with"
        elif _better(value, bv, direction):
            word = "beats"
        else:
            word = "loses to"
        out[metric] = (
            f"{metric}: the model ({value:.3f}) {word} the strongest baseline, {best} "
            f"({bv:.3f}; {how}), better on {wins} of {n} units."
        )
    return out


# --------------------------------------------------------------------------- protocol 1


def _pert_metadata(view: CorpusView, row: int) -> dict[str, str]:
    return view.record(row, PERTURBATION_FIELDS)


def held_out_context(
    view: CorpusView,
    cfg: TrainConfig,
    *,
    studies: Sequence[str] | None,
    fast: bool,
    log: Log,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Protocol 1: hold out the perturbed samples of one context, predict them from controls.

    One model per rotation ``k`` holds out the ``k``-th unit of every experiment at
    once (units of different experiments are independent), so the number of
    trainings is the largest number of units of one experiment.
    """
    experiments = find_experiments(view.obs, studies)
    if not experiments:
        raise EvalError(
            "no held-out-context experiment (a perturbation with controls in two or more "
            "contexts of one study) in the corpus" + (f" among {list(studies)}" if studies else "")
        )
    n_rot = max(len(e.units) for e in experiments)
    n_units = sum(len(e.units) for e in experiments)
    log(
        f"held-out-context: {len(experiments)} experiments, {n_units} units, "
        f"{n_rot} trainings (rotation k holds out the k-th unit of every experiment)"
    )
    pkeys = perturbation_key(view.obs).to_numpy()
    all_rows = np.arange(view.obs.shape[0])
    units_out: list[dict[str, Any]] = []
    figures: dict[str, Any] = {"units": []}
    trainings = []
    genes_space = None
    for k in range(n_rot):
        batch = [(e, e.units[k]) for e in experiments if k < len(e.units)]
        held = np.unique(np.concatenate([u.held_out for _, u in batch]))
        train_rows = np.setdiff1d(all_rows, held)
        unit_studies = sorted({e.study for e in experiments})
        if fast:
            train_rows = fast_rows(view, train_rows, unit_studies)
        log(f"[{k + 1}/{n_rot}] holding out {', '.join(u.name for _, u in batch)}")
        model, run_cfg, fitted = train_model(view, train_rows, cfg, unit_studies, log)
        trainings.append(
            {
                "rotation": k,
                "held_out_units": [u.name for _, u in batch],
                "n_train_samples": len(train_rows),
                "validation_studies": run_cfg.training.validation_studies,
                "seconds": round(model.seconds, 1),
                "epochs": model.result.epochs,
            }
        )
        fitted_set = set(fitted.tolist())
        with model:
            for e, u in batch:
                start = time.perf_counter()
                genes = view.genes_of(u.study)
                query = {
                    "inputs": [
                        {
                            "counts": view.counts([ref])[0].astype(np.int64).tolist(),
                            "metadata": _pert_metadata(view, int(p)),
                            "num_samples": 1,
                        }
                        for p, ref in zip(u.perturbed, u.references, strict=True)
                    ],
                    "conditioning": ["biological", "technical"],
                    "sampling_strategy": "mean estimation",
                    "deterministic_latents": True,
                    "seed": SEED,
                }
                result = model.run(query, "reference-conditioning")
                pred = m.log_cpm(result.counts[:, genes].astype(np.float64))
                real = view.lcpm(u.perturbed, u.study)
                refs = view.lcpm(u.references, u.study)
                ctrls = view.lcpm(u.controls, u.study)
                notes: dict[str, str] = {}
                # additive shift: mean logFC of the same perturbation in the training contexts
                others = [o for o in e.units if o is not u]
                same = [o for o in others if set(o.perturbation_keys) & set(u.perturbation_keys)]
                if not same and others:
                    notes["additive_shift"] = (
                        "no training context has this perturbation; mean logFC of the "
                        "experiment's other units"
                    )
                    same = others
                lfcs = [
                    view.lcpm(o.perturbed, u.study).mean(axis=0)
                    - view.lcpm(o.controls, u.study).mean(axis=0)
                    for o in same
                ]
                additive = bl.additive_shift(refs, lfcs)
                # train mean: training samples with the same perturbation metadata
                tm_rows = [
                    r
                    for r in np.flatnonzero(np.isin(pkeys, u.perturbation_keys))
                    if r in fitted_set
                ]
                if not tm_rows:
                    tm_rows = [int(r) for o in others for r in o.perturbed if r in fitted_set]
                    notes["train_mean"] = (
                        "no training sample has this perturbation; mean of the experiment's "
                        "other units' perturbed samples"
                    )
                tmean = bl.train_mean(view.lcpm(tm_rows, u.study), view.measured(tm_rows, u.study))
                train_mean_pred = np.tile(tmean, (len(u.perturbed), 1))
                first = view.record(int(u.perturbed[0]), PERTURBATION_FIELDS)
                target = None
                if first.get("perturbation_type") in GENE_TARGETING_TYPES:
                    from opengem.ontology.genes import default_gene_space

                    genes_space = genes_space or default_gene_space()
                    where = genes_space.index_of(first.get("perturbation_ontology_id", ""))
                    hit = np.flatnonzero(genes == where) if where is not None else []
                    target = int(hit[0]) if len(hit) else None
                preds = {
                    "no_change": bl.no_change(refs),
                    "additive_shift": additive,
                    "train_mean": train_mean_pred,
                }
                unit = {
                    "unit": u.name,
                    "study": u.study,
                    "experiment": e.name,
                    "context": u.context,
                    "rotation": k,
                    "n_samples": len(u.perturbed),
                    "n_controls": len(u.controls),
                    "n_genes_measured": len(genes),
                    "perturbation": first,
                    "model": perturbation_metrics(pred, real, refs, ctrls, target),
                    "baselines": {
                        name: perturbation_metrics(p, real, refs, ctrls, target)
                        for name, p in preds.items()
                    },
                }
                if notes:
                    unit["baseline_notes"] = notes
                units_out.append(unit)
                top = m.top_degs(ctrls, real, 100)
                figures["units"].append(
                    {
                        "name": u.name,
                        "true_lfc": (real.mean(0) - refs.mean(0))[top],
                        "pred_lfc": {
                            "model": (pred.mean(0) - refs.mean(0))[top],
                            **{
                                n: (p.mean(0) - refs.mean(0))[top]
                                for n, p in preds.items()
                                if n != "no_change"
                            },
                        },
                        "real": {"control": ctrls, "perturbed": real},
                        "generated": {"perturbed": pred},
                        "real_mean": real.mean(0),
                        "gen_mean": {
                            "model": pred.mean(0),
                            "additive_shift": additive.mean(0),
                            "train_mean": tmean,
                        },
                    }
                )
                pd_ = unit["model"]["pearson_delta_top100"]
                log(
                    f"  {u.name}: Pearson delta top-100 model {pd_:.3f}, additive shift "
                    f"{unit['baselines']['additive_shift']['pearson_delta_top100']:.3f} "
                    f"({time.perf_counter() - start:.1f} s)"
                )
            inference = (model.inference_seconds, model.inference_samples)
        trainings[-1]["inference_seconds"] = round(inference[0], 2)
        trainings[-1]["inference_samples"] = inference[1]
    extra = {
        "n_experiments": len(experiments),
        "experiments": [
            {"name": e.name, "study": e.study, "units": [u.name for u in e.units], "note": e.note}
            for e in experiments
        ],
        "trainings": trainings,
        "n_trainings_note": (
            f"one model per rotation k holds out the k-th unit of every experiment at once "
            f"(units of different experiments are independent): {n_rot} trainings = the largest "
            f"number of units of one experiment, for {n_units} units"
        ),
        "n_trainings": n_rot,
    }
    return units_out, extra, figures


# --------------------------------------------------------------------------- shared generation


def _condition_groups(
    view: CorpusView, rows: np.ndarray, fields: Sequence[str]
) -> list[np.ndarray]:
    """Rows grouped by identical values of ``fields`` (order of first appearance)."""
    table = view.obs.iloc[rows].reindex(columns=list(fields)).astype(str)
    table = table.replace({"nan": "", "None": ""})
    keys = table.apply(lambda r: "|".join(r), axis=1).to_numpy()
    groups: dict[str, list[int]] = {}
    for r, k in zip(rows, keys, strict=True):
        groups.setdefault(k, []).append(int(r))
    return [np.asarray(g, dtype=np.intp) for g in groups.values()]


def _generate(
    model: TrainedModel,
    records: list[dict[str, str]],
    n_per_condition: Sequence[int],
    genes: np.ndarray,
    library: float,
) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """Model means (mean estimation) and samples (sample generation) for conditions."""
    usable, dropped = model.usable_metadata(records)
    means = model.run(
        {
            "inputs": [{"metadata": r, "num_samples": 1} for r in usable],
            "sampling_strategy": "mean estimation",
            "deterministic_latents": True,
            "total_count": int(max(library, 1)),
            "seed": SEED,
        },
        None,
    )
    samples = model.run(
        {
            "inputs": [
                {"metadata": r, "num_samples": int(n)}
                for r, n in zip(usable, n_per_condition, strict=True)
            ],
            "sampling_strategy": "sample generation",
            "total_count": int(max(library, 1)),
            "seed": SEED,
        },
        None,
    )
    gen_means = m.log_cpm(means.counts[:, genes].astype(np.float64))
    gen_samples = m.log_cpm(samples.counts[:, genes].astype(np.float64))
    return gen_means, gen_samples, dropped


def _nb_baseline(
    view: CorpusView,
    study: str,
    match_rows: list[np.ndarray],
    n_per_condition: Sequence[int],
    genes: np.ndarray,
    library: float,
    dispersion_groups: list[np.ndarray],
    rng: np.random.Generator,
    fallback_rows: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Condition-mean means and NB samples for conditions (matching training rows given)."""
    groups = [view.counts(g)[:, genes] for g in dispersion_groups if len(g)]
    phi = bl.estimate_dispersion(groups) if groups else 0.1
    # genes no matching sample measured fall back to every training sample that did
    wide = view.counts(fallback_rows)[:, genes]
    wide_measured = view.measured(fallback_rows, study)
    wide_lcpm = bl.train_mean(m.log_cpm(wide), wide_measured)
    lib = wide.sum(axis=1, keepdims=True)
    wide_prop = bl.train_mean(wide / np.where(lib > 0, lib, 1.0), wide_measured)
    means, samples = [], []
    for rows, n in zip(match_rows, n_per_condition, strict=True):
        counts = view.counts(rows)[:, genes]
        measured = view.measured(rows, study)
        means.append(bl.condition_mean(counts, measured, wide_lcpm))
        draws = bl.condition_mean_samples(counts, int(n), library, rng, phi, measured, wide_prop)
        samples.append(m.log_cpm(draws.astype(np.float64)))
    return np.vstack(means), np.vstack(samples)


def _ceiling(view: CorpusView, groups: list[np.ndarray], study: str) -> float:
    values = [
        m.replicate_ceiling(view.lcpm(g, study), seed=SEED, n_repeats=5)
        for g in groups
        if len(g) >= 2
    ]
    return _nanmean(values)


# --------------------------------------------------------------------------- protocol 2


#: condition-mean back-off: fields a training sample must share, most specific first
BACKOFF = (
    CONDITION_FIELDS,
    (
        "tissue_ontology_id",
        "cell_type_ontology_id",
        "cell_line_ontology_id",
        "disease_ontology_id",
        "sample_type",
        "perturbation_type",
        "perturbation_ontology_id",
    ),
    ("tissue_ontology_id", "cell_type_ontology_id", "cell_line_ontology_id", "disease_ontology_id"),
    ("tissue_ontology_id", "cell_type_ontology_id", "cell_line_ontology_id"),
    ("tissue_ontology_id",),
    ("cell_type_ontology_id",),
    ("sample_type",),
    (),
)


def _match_training(
    view: CorpusView, record: dict[str, str], train_rows: np.ndarray
) -> tuple[np.ndarray, int]:
    """Training rows sharing the condition's metadata, backing off to fewer fields.

    Returns the rows and the back-off level (0 = every condition field matches).
    Fields the condition leaves unset must be unset in the match too.
    """
    for level, fields in enumerate(BACKOFF):
        ok = np.ones(len(train_rows), dtype=bool)
        for f in fields:
            ok &= view.text(f).to_numpy()[train_rows] == record.get(f, "")
        if level > 0 and fields and not any(record.get(f) for f in fields):
            continue
        if ok.any():
            return train_rows[ok], level
    return train_rows, len(BACKOFF) - 1


def _metadata_scores(
    true: Sequence[str], classes: list[str], probs: np.ndarray
) -> tuple[dict[str, float], int, dict[str, np.ndarray]]:
    """Accuracy, balanced accuracy, macro-F1 and ECE on the samples whose truth is a class."""
    index = {c: i for i, c in enumerate(classes)}
    keep = np.array([t in index for t in true], dtype=bool)
    n = int(keep.sum())
    if n == 0:
        return {}, 0, {}
    y = np.array([index[t] for t, k in zip(true, keep, strict=True) if k])
    p = probs[keep]
    pred = p.argmax(axis=1)
    scores = {
        "accuracy": m.accuracy(y, pred),
        "balanced_accuracy": m.balanced_accuracy(y, pred),
        "macro_f1": m.macro_f1(y, pred),
        "ece": m.expected_calibration_error(p, y),
    }
    return scores, n, {"confidence": p.max(axis=1), "correct": pred == y}


def _folds(candidates: list[str], n_folds: int) -> list[list[str]]:
    return [candidates[i::n_folds] for i in range(n_folds)]


def held_out_study(
    view: CorpusView,
    cfg: TrainConfig,
    *,
    studies: Sequence[str] | None,
    fast: bool,
    log: Log,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Protocol 2: whole studies out of training; predict their metadata, generate them."""
    present = view.study_list()
    val = set(cfg.training.validation_studies or [])
    if studies:
        unknown = sorted(set(studies) - set(present))
        if unknown:
            raise EvalError(f"--study {unknown} not in the corpus; studies: {present}")
        candidates = [s for s in present if s in studies]
    else:
        candidates = [s for s in DEFAULT_HELD_OUT_STUDIES if s in present and s not in val]
        if not candidates:
            candidates = [s for s in present if s not in val]
    n_folds = max(1, min(3, math.ceil(len(candidates) / 2)))
    if len(candidates) == len(present):
        n_folds = max(n_folds, 2)
    folds = _folds(candidates, n_folds)
    if not candidates or any(len(f) >= len(present) for f in folds):
        raise EvalError("held-out-study needs at least one study left to train on")
    log(
        f"held-out-study: {len(candidates)} studies in {n_folds} training(s): "
        + "; ".join(", ".join(f) for f in folds)
    )
    all_rows = np.arange(view.obs.shape[0])
    units: list[dict[str, Any]] = []
    figures: dict[str, Any] = {"units": [], "calibration": {"model": [], "logistic_pca": []}}
    trainings = []
    rng = np.random.default_rng(SEED)
    for k, fold in enumerate(folds):
        held = np.flatnonzero(np.isin(view.studies, fold))
        train_rows = np.setdiff1d(all_rows, held)
        if fast:
            train_rows = fast_rows(view, train_rows, fold)
        log(f"[{k + 1}/{n_folds}] holding out {', '.join(fold)}")
        model, run_cfg, fitted = train_model(view, train_rows, cfg, [], log)
        trainings.append(
            {
                "fold": k,
                "held_out_studies": fold,
                "n_train_samples": len(train_rows),
                "validation_studies": run_cfg.training.validation_studies,
                "seconds": round(model.seconds, 1),
                "epochs": model.result.epochs,
            }
        )
        with model:
            for study in fold:
                start = time.perf_counter()
                rows = np.flatnonzero(view.studies == study)
                genes = view.genes_of(study)
                counts = view.counts(rows)
                # ---- metadata prediction: the model
                probs: list[dict[str, dict[str, float]]] = []
                for s in range(0, len(rows), 500):
                    res = model.run(
                        {
                            "inputs": [
                                {"counts": c.astype(np.int64).tolist()} for c in counts[s : s + 500]
                            ],
                            "seed": SEED,
                        },
                        "predict-metadata",
                    )
                    probs.extend(res.classifier_probs)
                train_l = view.lcpm(fitted, study)
                test_l = m.log_cpm(counts[:, genes])
                model_md: dict[str, float] = {}
                lr_md: dict[str, float] = {}
                scorable: dict[str, int] = {}
                for field in probs[0] if probs else {}:
                    classes = list(probs[0][field])
                    p = np.array([[pr[field][c] for c in classes] for pr in probs])
                    true = view.text(field).to_numpy()[rows].tolist()
                    scores, n, calib = _metadata_scores(true, classes, p)
                    scorable[field] = n
                    if n == 0:
                        continue
                    # the baseline on the same training samples
                    y_train = view.text(field).to_numpy()[fitted]
                    has = y_train != ""
                    lr = bl.LogisticPCA().fit(train_l[has], y_train[has].tolist())
                    lr_p = lr.predict_proba(test_l)
                    lr_scores, _, lr_calib = _metadata_scores(true, list(lr.classes_), lr_p)
                    for name, v in scores.items():
                        model_md[f"{field}:{name}"] = v
                    for name, v in lr_scores.items():
                        lr_md[f"{field}:{name}"] = v
                    figures["calibration"]["model"].append(calib)
                    figures["calibration"]["logistic_pca"].append(lr_calib)
                for name in ("accuracy", "balanced_accuracy", "macro_f1", "ece"):
                    for target, source in ((model_md, dict(model_md)), (lr_md, dict(lr_md))):
                        vals = [v for k_, v in source.items() if k_.endswith(f":{name}")]
                        if vals:
                            target[f"metadata_{name}"] = _nanmean(vals)
                # ---- generation from metadata
                groups = _condition_groups(view, rows, CONDITION_FIELDS)
                records = [
                    {k_: v for k_, v in view.record(int(g[0])).items() if k_ != "study"}
                    for g in groups
                ]
                sizes = [len(g) for g in groups]
                library = float(np.median(counts[:, genes].sum(axis=1)))
                gen_means, gen_samples, dropped = _generate(model, records, sizes, genes, library)
                real_means = np.vstack([view.lcpm(g, study).mean(axis=0) for g in groups])
                real_samples = np.vstack([view.lcpm(g, study) for g in groups])
                matches = [_match_training(view, r, fitted) for r in records]
                disp_groups = [
                    g for mr, _ in matches for g in _condition_groups(view, mr, tuple(FIELDS))
                ]
                cm_means, cm_samples = _nb_baseline(
                    view,
                    study,
                    [mr for mr, _ in matches],
                    sizes,
                    genes,
                    library,
                    disp_groups,
                    rng,
                    fitted,
                )
                ceiling = _ceiling(view, groups, study)
                model_gen = generation_metrics(
                    gen_means, real_means, gen_samples, real_samples, ceiling
                )
                cm_gen = generation_metrics(cm_means, real_means, cm_samples, real_samples, ceiling)
                unit = {
                    "unit": study,
                    "study": study,
                    "fold": k,
                    "n_samples": len(rows),
                    "n_conditions": len(groups),
                    "n_genes_measured": len(genes),
                    "scorable": scorable,
                    "replicate_ceiling": ceiling,
                    "generation_fields_dropped": sorted({f for d in dropped for f in d}),
                    "condition_mean_backoff_levels": [lvl for _, lvl in matches],
                    "model": {**model_md, **model_gen},
                    "baselines": {"logistic_pca": lr_md, "condition_mean": cm_gen},
                }
                units.append(unit)
                figures["units"].append(
                    {
                        "name": study,
                        "real": {"real": real_samples},
                        "generated": {"model": gen_samples},
                        "condition_labels": np.repeat(np.arange(len(groups)), sizes),
                        "real_mean": real_means.mean(0),
                        "real_sd": real_samples.std(0),
                        "gen_mean": {
                            "model": gen_means.mean(0),
                            "condition_mean": cm_means.mean(0),
                        },
                        "gen_sd": {
                            "model": gen_samples.std(0),
                            "condition_mean": cm_samples.std(0),
                        },
                    }
                )
                acc = unit["model"].get("metadata_accuracy", float("nan"))
                lr_acc = lr_md.get("metadata_accuracy", float("nan"))
                log(
                    f"  {study}: metadata accuracy model {acc:.3f} vs logistic PCA {lr_acc:.3f} "
                    f"({sum(1 for v in scorable.values() if v)} scorable fields); generation "
                    f"sample-wise r model {model_gen['samplewise_pearson']:.3f} vs condition mean "
                    f"{cm_gen['samplewise_pearson']:.3f} ({time.perf_counter() - start:.1f} s)"
                )
            trainings[-1]["inference_seconds"] = round(model.inference_seconds, 2)
            trainings[-1]["inference_samples"] = model.inference_samples
    extra = {
        "held_out_studies": candidates,
        "folds": folds,
        "trainings": trainings,
        "n_trainings": n_folds,
        "n_trainings_note": (
            f"{len(candidates)} studies held out in {n_folds} disjoint folds, one training each"
        ),
        "metadata_note": (
            "metadata metrics are per field ('field:metric') on the samples whose true value is "
            "a training class ('scorable'), and their mean over scorable fields ('metadata_*'); "
            "generation compares conditions (identical non-technical metadata) of the held-out "
            "study; the condition-mean baseline backs off to fewer matching fields when no "
            "training sample matches (level 0 = exact)"
        ),
    }
    return units, extra, figures


# --------------------------------------------------------------------------- protocol 3


def seen_condition(
    view: CorpusView,
    cfg: TrainConfig,
    *,
    studies: Sequence[str] | None,
    fast: bool,
    log: Log,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Protocol 3: a random third of the replicates of conditions with >= 3 replicates."""
    present = view.study_list()
    if studies:
        unknown = sorted(set(studies) - set(present))
        if unknown:
            raise EvalError(f"--study {unknown} not in the corpus; studies: {present}")
    val = set(cfg.training.validation_studies or [])
    eligible = [s for s in present if (not studies or s in studies) and s not in val]
    all_rows = np.arange(view.obs.shape[0])
    rows_elig = np.flatnonzero(np.isin(view.studies, eligible))
    conditions = [g for g in _condition_groups(view, rows_elig, tuple(FIELDS)) if len(g) >= 3]
    if not conditions:
        raise EvalError("no condition with 3 or more replicates among the selected studies")
    rng = np.random.default_rng(SEED)
    held_by_condition = []
    for g in conditions:
        k = max(1, len(g) // 3)
        held_by_condition.append(np.sort(rng.choice(g, size=k, replace=False)))
    held = np.concatenate(held_by_condition)
    train_rows = np.setdiff1d(all_rows, held)
    unit_studies = sorted({view.studies[g[0]] for g in conditions})
    if fast:
        train_rows = fast_rows(view, train_rows, unit_studies)
    log(
        f"seen-condition: {len(conditions)} conditions with >= 3 replicates in "
        f"{len(unit_studies)} studies; {len(held)} replicates held out; 1 training"
    )
    if val & set(present):
        log(f"  (validation studies {sorted(val)} are not trained on, so not evaluated)")
    model, run_cfg, fitted = train_model(view, train_rows, cfg, unit_studies, log)
    fitted_set = set(fitted.tolist())
    units: list[dict[str, Any]] = []
    figures: dict[str, Any] = {"units": []}
    with model:
        for study in unit_studies:
            start = time.perf_counter()
            idx = [i for i, g in enumerate(conditions) if view.studies[g[0]] == study]
            genes = view.genes_of(study)
            groups = [conditions[i] for i in idx]
            held_g = [held_by_condition[i] for i in idx]
            train_g = [
                np.array([r for r in g if r in fitted_set and r not in h], dtype=np.intp)
                for g, h in zip(groups, held_g, strict=True)
            ]
            ok = [i for i, t in enumerate(train_g) if len(t)]
            if not ok:
                continue
            groups = [groups[i] for i in ok]
            held_g = [held_g[i] for i in ok]
            train_g = [train_g[i] for i in ok]
            records = [view.record(int(g[0])) for g in groups]
            sizes = [len(h) for h in held_g]
            held_rows = np.concatenate(held_g)
            library = float(np.median(view.counts(held_rows)[:, genes].sum(axis=1)))
            gen_means, gen_samples, dropped = _generate(model, records, sizes, genes, library)
            real_means = np.vstack([view.lcpm(h, study).mean(axis=0) for h in held_g])
            real_samples = np.vstack([view.lcpm(h, study) for h in held_g])
            cm_means, cm_samples = _nb_baseline(
                view, study, train_g, sizes, genes, library, train_g, rng, fitted
            )
            ceiling = _ceiling(view, groups, study)
            model_gen = generation_metrics(
                gen_means, real_means, gen_samples, real_samples, ceiling
            )
            cm_gen = generation_metrics(cm_means, real_means, cm_samples, real_samples, ceiling)
            units.append(
                {
                    "unit": study,
                    "study": study,
                    "n_samples": len(held_rows),
                    "n_conditions": len(groups),
                    "n_genes_measured": len(genes),
                    "replicate_ceiling": ceiling,
                    "generation_fields_dropped": sorted({f for d in dropped for f in d}),
                    "model": model_gen,
                    "baselines": {"condition_mean": cm_gen},
                }
            )
            figures["units"].append(
                {
                    "name": study,
                    "real": {"held-out": real_samples},
                    "generated": {"model": gen_samples},
                    "condition_labels": np.repeat(np.arange(len(groups)), sizes),
                    "real_mean": real_means.mean(0),
                    "real_sd": real_samples.std(0),
                    "gen_mean": {"model": gen_means.mean(0), "condition_mean": cm_means.mean(0)},
                    "gen_sd": {"model": gen_samples.std(0), "condition_mean": cm_samples.std(0)},
                }
            )
            log(
                f"  {study}: {len(groups)} conditions, sample-wise r model "
                f"{model_gen['samplewise_pearson']:.3f} vs condition mean "
                f"{cm_gen['samplewise_pearson']:.3f} (ceiling {ceiling:.3f}; "
                f"{time.perf_counter() - start:.1f} s)"
            )
        inference = (model.inference_seconds, model.inference_samples)
    extra = {
        "n_conditions": len(conditions),
        "n_held_out_replicates": len(held),
        "trainings": [
            {
                "n_train_samples": len(train_rows),
                "validation_studies": run_cfg.training.validation_studies,
                "seconds": round(model.seconds, 1),
                "epochs": model.result.epochs,
                "inference_seconds": round(inference[0], 2),
                "inference_samples": inference[1],
            }
        ],
        "n_trainings": 1,
        "n_trainings_note": "one training without the held-out replicates of every condition",
        "generation_note": (
            "a condition = samples with identical metadata (every field, study included) with "
            ">= 3 replicates; a seeded third (at least one) held out. Units are studies. "
            "Sample-wise Pearson compares per-condition means (model: mean estimation); SD "
            "correlation, classifier AUC and energy distance compare the unit's pooled held-out "
            "replicates with as many generated samples per condition (sample generation, at the "
            "held-out samples' median library size). The replicate ceiling is the sample-wise "
            "Pearson between two disjoint halves of all real replicates of a condition."
        ),
    }
    return units, extra, figures


# --------------------------------------------------------------------------- runner

PROTOCOLS = {
    "held-out-context": held_out_context,
    "held-out-study": held_out_study,
    "seen-condition": seen_condition,
}


def run_protocol(
    protocol: str,
    corpus: Path | str | Any,
    out: Path | str,
    *,
    config: TrainConfig | None = None,
    fast: bool = False,
    max_minutes: float | None = None,
    studies: Sequence[str] | None = None,
    command: str | None = None,
    log: Log | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Run one protocol end to end; write ``metrics.json`` (and ``report.html`` + PNGs).

    Parameters
    ----------
    protocol
        ``held-out-context``, ``held-out-study`` or ``seen-condition``.
    corpus
        Path of a corpus ``.h5ad`` (its ``manifest.json`` gives the checksum) or an AnnData.
    out
        Output folder.
    config
        Training config (default: the config defaults for the corpus modality).
    fast
        Tiny model, few epochs, at most :data:`~opengem.eval.runner.FAST_MAX_TRAIN`
        training samples.
    max_minutes
        Wall-time cap per training.
    studies
        Restrict units (held-out-study: the studies held out) to these studies.
    command
        The command line recorded in metrics.json.
    log
        Progress lines (default: stderr).

    Returns
    -------
    dict
        The content of ``metrics.json``.
    """
    if protocol not in PROTOCOLS:
        raise EvalError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")

    def _stderr(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log = log or _stderr
    if command is None:
        args = [
            repr(protocol),
            repr(str(corpus) if isinstance(corpus, str | Path) else "<AnnData>"),
        ]
        args += [f"out={str(out)!r}", f"fast={fast}", f"max_minutes={max_minutes}"]
        args += [f"studies={list(studies) if studies else None}"]
        command = f"opengem.eval.protocols.run_protocol({', '.join(args)})"
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    view = CorpusView.load(corpus)
    cfg = eval_config(config, view.modality, fast, max_minutes)
    log(
        f"{protocol} on {view.path or 'an in-memory corpus'} ({view.obs.shape[0]:,} samples, "
        f"{len(view.study_list())} studies){' --fast' if fast else ''}"
    )
    units, extra, figures = PROTOCOLS[protocol](
        view, cfg, studies=list(studies) if studies else None, fast=fast, log=log
    )
    if not units:
        raise EvalError(f"{protocol}: no unit could be evaluated")
    summary = summarise(units)
    trainings = extra.get("trainings", [])
    train_s = [t["seconds"] for t in trainings]
    inf_s = sum(t.get("inference_seconds", 0.0) for t in trainings)
    inf_n = sum(t.get("inference_samples", 0) for t in trainings)
    total = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    metrics: dict[str, Any] = {
        "protocol": protocol,
        "corpus": str(view.path) if view.path else None,
        "corpus_checksum": view.checksum(),
        "command": command,
        "modality": view.modality,
        "fast": fast,
        "studies": list(studies) if studies else None,
        "config": cfg.to_dict(),
        "n_trainings": extra.pop("n_trainings"),
        **extra,
        "units": units,
        "summary": summary,
        "timings": {
            "total_seconds": round(total, 1),
            "training_seconds": train_s,
            "training_seconds_total": round(sum(train_s), 1),
            "inference_seconds": round(inf_s, 2),
            "inference_samples": inf_n,
            "inference_samples_per_second": round(inf_n / inf_s, 1) if inf_s > 0 else None,
            "peak_rss_mb": round(rss, 1),
        },
        "verdict": verdicts(units, summary),
    }
    metrics = _clean(metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    if report:
        from opengem.eval.report import write_report

        write_report(metrics, figures, out)
    log(f"{protocol}: {len(units)} units -> {out / 'metrics.json'} ({total:.0f} s)")
    return metrics


def load_train_config(path: Path | str | None) -> TrainConfig | None:
    """A training config file, or None."""
    if path is None:
        return None
    from opengem.train import load_config

    return load_config(Path(path))

"""Scoring one unit: perturbation, generation and metadata-prediction metrics.

Every predictor of a unit (the model, each baseline, each diagnostic) is scored by
the same function on the same real samples, so their rows are comparable.

Perturbation (:func:`perturbation_scores`), log-CPM over the study's genes:

- against the real reference: Pearson Δ (top-20 / top-100 DEGs / expressed genes),
  direction accuracy, R² of means, MAE of logFC, error at the targeted gene(s);
- counterfactual (``cf_``): the predictor's own effect, predicted(perturbation) −
  predicted(no perturbation) from the same references, against the true effect:
  Pearson Δ, direction accuracy, magnitude ratio (``||pred|| / ||true||`` over the
  top-100 DEGs), on-target error. A baseline's no-perturbation prediction is the
  reference itself.

Generation (:func:`generation_scores`): sample-wise Pearson of condition means (and
its ratio to the replicate ceiling), variance-weighted gene-wise Pearson, per-gene SD
correlation, classifier AUC, energy distance, diversity (mean correlation between
condition means, of as many generated samples as real ones; its gap to the real
one), replicate spread ratio.

Metadata (:func:`metadata_field_scores`): every held-out sample with a truth is
scored; an ontology prediction is right when it is the truth, an ancestor or a
descendant (exact-match accuracy separately); truths no training class can reach
are listed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from opengem.contract import FIELDS
from opengem.contract.fields import FieldKind
from opengem.eval import metrics as m

__all__ = [
    "FieldScores",
    "generation_scores",
    "metadata_field_scores",
    "perturbation_scores",
]

SEED = 0


# --------------------------------------------------------------------------- perturbation

#: differences below this (log-CPM) are floating-point noise of a renormalised profile
NOISE = 1e-9


def _denoise(lfc: np.ndarray) -> np.ndarray:
    """Round floating-point noise to 0, so an unchanged profile has no effect at all."""
    return np.where(np.abs(lfc) < NOISE, 0.0, lfc)


def perturbation_scores(
    pred: np.ndarray,
    real: np.ndarray,
    refs: np.ndarray,
    controls: np.ndarray,
    none: np.ndarray | None = None,
    targets: Sequence[int] = (),
    counterfactual: bool = True,
    truth_base: np.ndarray | None = None,
    deg_genes: np.ndarray | None = None,
    center: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, float]:
    """Metrics of one predictor on one unit (log-CPM over the measured genes).

    Parameters
    ----------
    pred, real, refs
        Predicted perturbed, real perturbed and matched reference rows (paired).
    controls
        Every control of the context (DEG selection).
    none
        The predictor's prediction with no perturbation from the same references
        (default: the references themselves).
    targets
        Columns of the targeted genes (gene-targeting perturbations).
    counterfactual
        Whether to add the ``cf_`` metrics.
    truth_base
        Rows the true effect is measured against (default ``refs``): the context's
        controls when ``real`` holds every perturbed sample, not only the scored ones.
        Predicted logFCs (not the counterfactual ones) are then measured against them
        too, so that a few scored references' sampling noise (a gene without a read in
        100 shallow cells) counts for no predictor.
    deg_genes
        Genes the top DEGs may be chosen from (default: every gene passing the
        log-CPM filter of :func:`~opengem.eval.metrics.top_degs`).
    center
        The profile of a set of rows, every logFC being a difference of two profiles
        (default: the mean of the rows). Pseudobulk pools are profiled as the log of
        their mean CPM: a mean of their logs is pulled down for genes with few reads
        per pool, by more for smaller pools, so that perturbed pools of 20 cells
        against control pools of 200 would show "effects" that are only pool size,
        and a smooth prediction would differ from its own noisy references.
    """
    prof = (lambda x: x.mean(axis=0)) if center is None else center
    p_pred, p_real = prof(pred), prof(real)
    p_refs = prof(refs)
    base = p_refs if truth_base is None else prof(truth_base)
    true_lfc = p_real - base
    # against the base of the truth: a predictor is judged by where its output lands,
    # whether it kept its references' sampling noise, smoothed it or re-drew them
    pred_lfc = _denoise(p_pred - base)
    top100 = m.top_degs(controls, real, 100, genes=deg_genes)
    top20 = top100[:20]
    expressed = (controls.mean(axis=0) > 1.0) | (real.mean(axis=0) > 1.0)
    out = {
        "pearson_delta_top20": m.pearson_delta(pred_lfc, true_lfc, top20),
        "pearson_delta_top100": m.pearson_delta(pred_lfc, true_lfc, top100),
        "pearson_delta_expressed": m.pearson_delta(pred_lfc, true_lfc, expressed),
        "direction_accuracy_top100": m.direction_accuracy(pred_lfc, true_lfc, top100),
        "r2_all": m.r2_of_means(p_pred, p_real),
        "r2_top100": m.r2_of_means(p_pred, p_real, top100),
        "mae_lfc_top100": float(np.mean(np.abs(pred_lfc[top100] - true_lfc[top100])))
        if len(top100)
        else float("nan"),
    }
    if targets:
        out["on_target_error"] = float(
            np.mean([m.on_target_error(pred_lfc, true_lfc, t) for t in targets])
        )
    if counterfactual:
        effect = _denoise(p_pred - (p_refs if none is None else prof(none)))
        out |= {
            "cf_pearson_delta_top20": m.pearson_delta(effect, true_lfc, top20),
            "cf_pearson_delta_top100": m.pearson_delta(effect, true_lfc, top100),
            "cf_pearson_delta_expressed": m.pearson_delta(effect, true_lfc, expressed),
            "cf_direction_accuracy_top100": m.direction_accuracy(effect, true_lfc, top100),
            "cf_magnitude_ratio_top100": m.magnitude_ratio(effect, true_lfc, top100),
        }
        if targets:
            out["cf_on_target_error"] = float(
                np.mean([m.on_target_error(effect, true_lfc, t) for t in targets])
            )
    return out


# --------------------------------------------------------------------------- generation


def generation_scores(
    gen_means: np.ndarray,
    real_means: np.ndarray,
    gen_groups: Sequence[np.ndarray],
    real_groups: Sequence[np.ndarray],
    ceiling: float,
    drawn_means: np.ndarray | None = None,
) -> dict[str, float]:
    """Metrics of generated conditions against real ones (log-CPM, measured genes).

    ``gen_means``/``real_means``: one row per condition; ``gen_groups`` /
    ``real_groups``: the samples of each condition (generated / real);
    ``drawn_means``: the mean of each condition's generated samples, as many as its
    real ones (default ``gen_means``). Diversity is measured on them: a real mean of
    a few shallow cells carries their sampling noise, which lowers the correlation
    between conditions; the generated means it is compared with carry as much only
    when averaged over as many drawn samples.
    """
    gen_samples = np.vstack(gen_groups)
    real_samples = np.vstack(real_groups)
    sw = m.samplewise_pearson(gen_means, real_means)
    diversity = m.between_condition_correlation(gen_means if drawn_means is None else drawn_means)
    real_diversity = m.between_condition_correlation(real_means)
    real_spread = m.replicate_spread(real_groups)
    return {
        "samplewise_pearson": sw,
        "samplewise_pearson_ceiling_ratio": sw / ceiling if ceiling and ceiling > 0 else np.nan,
        "genewise_pearson_weighted": m.genewise_pearson_weighted(gen_means, real_means),
        "sd_correlation": m.sd_correlation(gen_samples, real_samples),
        "classifier_auc": m.classifier_auc(real_samples, gen_samples, seed=SEED),
        "energy_distance": m.energy_distance(real_samples, gen_samples, seed=SEED),
        "diversity": diversity,
        "diversity_gap": abs(diversity - real_diversity),
        "spread_ratio": m.replicate_spread(gen_groups) / real_spread
        if real_spread and real_spread > 0
        else np.nan,
    }


# --------------------------------------------------------------------------- metadata


def is_ontology_field(name: str) -> bool:
    spec = FIELDS.get(name)
    return spec is not None and spec.kind is FieldKind.ONTOLOGY


def related(truth: str, pred: str) -> bool:
    """Whether a prediction is the truth, one of its ancestors or one of its descendants."""
    from opengem.ontology.describe import term_ancestors

    if pred == truth:
        return True
    return pred in term_ancestors(truth) or truth in term_ancestors(pred)


@dataclass
class FieldScores:
    """Metadata-prediction scores of one field on one held-out set."""

    metrics: dict[str, float]
    n_scored: int
    unreachable: dict[str, int] = field(default_factory=dict)
    constant_prediction: bool = False
    predictions: list[str] = field(default_factory=list)
    confidence: np.ndarray = field(default_factory=lambda: np.zeros(0))
    correct: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


def metadata_field_scores(
    name: str, truth: Sequence[str], classes: Sequence[str], probs: np.ndarray
) -> FieldScores:
    """Score one field's predictions (``probs``: samples x ``classes``) against ``truth``.

    Samples without a truth ("") are not scored. For ontology fields, a prediction
    that is an ancestor or descendant of the truth counts as right (``accuracy``,
    and as the truth's class in balanced accuracy, macro-F1 and ECE);
    ``accuracy_exact`` needs the exact term. Truths that no class equals, contains
    or refines are *unreachable*: scored (as wrong), and listed.
    """
    truth_arr = np.asarray(list(truth), dtype=object)
    keep = truth_arr != ""
    if not keep.any() or not len(classes):
        return FieldScores({}, 0)
    t = truth_arr[keep].astype(str)
    p = np.asarray(probs, dtype=np.float64)[keep]
    pred = np.asarray([classes[i] for i in p.argmax(axis=1)], dtype=object).astype(str)
    ontology = is_ontology_field(name)
    exact = pred == t
    if ontology:
        ok = np.array([related(a, b) for a, b in zip(t, pred, strict=True)])
    else:
        ok = exact
    credited = np.where(ok, t, pred)
    unreachable: dict[str, int] = {}
    for value in sorted(set(t)):
        if value in classes:
            continue
        if ontology and any(related(value, c) for c in classes):
            continue
        unreachable[value] = int(np.sum(t == value))
    confidence = p.max(axis=1)
    metrics = {
        "accuracy": float(ok.mean()),
        "accuracy_exact": float(exact.mean()),
        "balanced_accuracy": m.balanced_accuracy(t, credited),
        "macro_f1": m.macro_f1(t, credited),
        "ece": m.binned_calibration_error(confidence, ok.astype(np.float64)),
    }
    return FieldScores(
        metrics=metrics,
        n_scored=int(keep.sum()),
        unreachable=unreachable,
        constant_prediction=len(set(t)) > 1 and len(set(pred)) == 1,
        predictions=pred.tolist(),
        confidence=confidence,
        correct=ok,
    )

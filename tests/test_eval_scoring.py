"""Unit scoring with known answers: counterfactual, diversity and ontology-aware metadata."""

from __future__ import annotations

import math

import numpy as np

from opengem.eval.metrics import (
    between_condition_correlation,
    magnitude_ratio,
    pseudobulk,
    pseudobulk_mean,
    replicate_spread,
)
from opengem.eval.results import UnitResult, fmt, summarise, verdicts
from opengem.eval.scoring import generation_scores, metadata_field_scores, perturbation_scores
from opengem.ontology.describe import term_ancestors

LUNG = "UBERON:0002048"


def test_counterfactual_of_a_model_that_ignores_the_perturbation() -> None:
    rng = np.random.default_rng(0)
    refs = rng.uniform(0, 8, (4, 300))
    true_effect = np.zeros(300)
    true_effect[:30] = 2.0
    real = refs + true_effect + rng.normal(0, 0.1, (4, 300))
    # the model redraws the reference closer to the real perturbed sample, but the same
    # with and without the perturbation: its own effect is zero
    pred = none = 0.5 * refs + 0.5 * real
    scores = perturbation_scores(pred, real, refs, refs, none)
    assert scores["pearson_delta_top100"] > 0.9  # rewarded for the redraw
    assert math.isnan(scores["cf_pearson_delta_top100"])  # no effect of its own
    assert scores["cf_magnitude_ratio_top100"] == 0.0
    # a model whose effect is the true one, half-sized
    half = perturbation_scores(refs + true_effect / 2, real, refs, refs, refs)
    assert half["cf_pearson_delta_top100"] > 0.9
    assert abs(half["cf_magnitude_ratio_top100"] - 0.5) < 0.05


def _cells(rng: np.random.Generator, cpm: np.ndarray, n: int, reads: int) -> np.ndarray:
    """log1p(CPM) of ``n`` shallow cells drawn from a population's mean CPM."""
    counts = rng.poisson(cpm[None, :] / 1e6 * reads, (n, len(cpm))).astype(float)
    return np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e6)


def test_pseudobulk_pools_of_different_sizes_show_no_effect_that_is_not_there() -> None:
    rng = np.random.default_rng(1)
    cpm = rng.lognormal(3.0, 1.5, 400)
    cpm = cpm / cpm.sum() * 1e6
    pools = 5
    # 100 perturbed cells against 1,000 controls of the same population (no effect)
    perturbed = pseudobulk(_cells(rng, cpm, 100, 500), pools)
    controls = pseudobulk(_cells(rng, cpm, 1000, 500), pools)
    refs = pseudobulk(_cells(rng, cpm, 100, 500), pools)
    kw = {"truth_base": controls, "deg_genes": np.arange(400)}
    # the mean of pool logs: small pools read lower for low genes; a smooth predictor of
    # the population (the truth here) is "wrong" at every one of them
    smooth = np.log1p(cpm)[None, :].repeat(pools, 0)
    naive = perturbation_scores(smooth, perturbed, refs, controls, smooth, **kw)
    prof = perturbation_scores(
        smooth, perturbed, refs, controls, smooth, center=pseudobulk_mean, **kw
    )
    assert naive["mae_lfc_top100"] > 1.8 * prof["mae_lfc_top100"]
    true_lfc = pseudobulk_mean(perturbed) - pseudobulk_mean(controls)
    naive_lfc = perturbed.mean(0) - controls.mean(0)
    assert np.mean(naive_lfc) < -0.2 < np.mean(true_lfc)  # pool size read as an effect


def test_magnitude_diversity_and_spread() -> None:
    assert magnitude_ratio([2.0, -2.0], [1.0, -1.0]) == 2.0
    assert math.isnan(magnitude_ratio([1.0, 1.0], [0.0, 0.0]))
    profile = np.arange(50.0)
    assert between_condition_correlation(np.vstack([profile] * 4)) == 1.0
    rng = np.random.default_rng(1)
    assert between_condition_correlation(rng.normal(size=(5, 200))) < 0.2
    assert math.isnan(between_condition_correlation(profile[None, :]))
    assert replicate_spread([np.zeros((3, 10)), np.ones((1, 10))]) == 0.0


def test_diversity_of_a_perfect_generator_matches_noisy_real_means() -> None:
    """Real condition means of a few noisy samples correlate less than the conditions'
    true profiles do: a generator drawing exactly the real distribution matches the real
    diversity when its own drawn samples are averaged alike, not with its exact means."""
    rng = np.random.default_rng(0)
    shared = rng.normal(5.0, 2.0, 300)
    truth = shared + rng.normal(0.0, 0.5, (4, 300))  # four conditions

    def draws() -> list[np.ndarray]:
        return [t + rng.normal(0.0, 1.5, (3, 300)) for t in truth]

    real, gen = draws(), draws()
    real_means = np.vstack([g.mean(0) for g in real])
    drawn = np.vstack([g.mean(0) for g in gen])
    smooth = generation_scores(truth, real_means, gen, real, 1.0)
    matched = generation_scores(truth, real_means, gen, real, 1.0, drawn)
    assert smooth["diversity_gap"] > 0.1
    assert matched["diversity_gap"] < 0.03
    assert matched["samplewise_pearson"] == smooth["samplewise_pearson"]  # exact means


def test_ontology_aware_metadata_scores() -> None:
    parent = term_ancestors(LUNG)[0]
    truth = [LUNG, LUNG, "UBERON:0002107", "UBERON:0000955", ""]
    classes = [parent, "UBERON:0002107"]
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.5, 0.5]])
    s = metadata_field_scores("tissue_ontology_id", truth, classes, probs)
    assert s.n_scored == 4  # the sample without a truth is not scored
    # lung predicted as its parent counts as right; the brain is no class's relative
    assert s.metrics["accuracy"] == 0.75 and s.metrics["accuracy_exact"] == 0.25
    assert s.unreachable == {"UBERON:0000955": 1}
    assert not s.constant_prediction
    # a non-ontology field needs the exact value; one class for every sample is flagged
    sex = metadata_field_scores("sex", ["male", "female"], ["female", "male"], np.eye(2)[[0, 0]])
    assert sex.metrics["accuracy"] == 0.5 and sex.constant_prediction
    assert sex.metrics["balanced_accuracy"] == 0.5


def test_undefined_is_said_not_printed_as_nan() -> None:
    units = [
        UnitResult("u", "s", 2, {"pearson_delta_top100": float("nan")}, {"b": {}}),
    ]
    summary = summarise(units)
    assert summary["undefined"] == ["pearson_delta_top100"]
    assert "nan" not in verdicts(units, summary)["pearson_delta_top100"]
    assert fmt(float("nan")) == "undefined" and fmt(None) == "undefined"

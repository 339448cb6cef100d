"""Evaluation metrics on inputs whose answers are known in advance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from opengem.eval import (
    accuracy,
    balanced_accuracy,
    classifier_auc,
    direction_accuracy,
    energy_distance,
    expected_calibration_error,
    genewise_pearson_weighted,
    log_cpm,
    macro_f1,
    on_target_error,
    pearson,
    pearson_delta,
    r2_of_means,
    replicate_ceiling,
    roc_auc,
    samplewise_pearson,
    sd_correlation,
    top_degs,
)

# ---------------------------------------------------------------------- log-CPM


def test_log_cpm_values_and_zero_rows() -> None:
    counts = np.array([[0, 0, 0], [1, 3, 0], [5, 5, 10]])
    out = log_cpm(counts)
    assert out.shape == (3, 3)
    np.testing.assert_array_equal(out[0], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(out[1], np.log1p([250_000.0, 750_000.0, 0.0]))
    np.testing.assert_allclose(out[2], np.log1p([250_000.0, 250_000.0, 500_000.0]))
    # CPM of every non-empty sample sums to one million.
    np.testing.assert_allclose(np.expm1(out[1:]).sum(axis=1), [1e6, 1e6])
    assert not np.any(np.isnan(out))


def test_log_cpm_one_sample_and_negative_counts() -> None:
    np.testing.assert_allclose(log_cpm([2, 2]), np.log1p([5e5, 5e5]))
    np.testing.assert_array_equal(log_cpm([0, 0]), [0.0, 0.0])
    with pytest.raises(ValueError):
        log_cpm([[1, -1]])


# ---------------------------------------------------------------------- top DEGs


def _planted_experiment() -> tuple[np.ndarray, np.ndarray, list[int]]:
    rng = np.random.default_rng(7)
    n_genes = 100
    base = rng.uniform(2.0, 8.0, n_genes)
    base[50] = 0.0  # lowly expressed gene, below the log-CPM filter on both sides
    shift = np.zeros(n_genes)
    planted = [3, 17, 42, 77, 90]
    shift[planted] = [2.0, -2.0, 2.5, -3.0, 1.5]
    shift[50] = 0.9
    control = base + rng.normal(0.0, 0.1, (4, n_genes))
    perturbed = base + shift + rng.normal(0.0, 0.1, (4, n_genes))
    return control, perturbed, planted


def test_top_degs_finds_planted_genes() -> None:
    control, perturbed, planted = _planted_experiment()
    top = top_degs(control, perturbed, k=5)
    assert top.dtype.kind == "i"
    assert sorted(top.tolist()) == planted
    # The strongest planted effect comes first under |mean difference| (2 replicates).
    assert top_degs(control[:2], perturbed[:2], k=1).tolist() == [77]


def test_top_degs_expression_filter_and_gene_mask() -> None:
    control, perturbed, planted = _planted_experiment()
    # Gene 50 changes a lot relative to its noise but is below min_mean on both sides.
    assert 50 not in top_degs(control, perturbed, k=20).tolist()
    assert 50 in top_degs(control, perturbed, k=6, min_mean=0.5).tolist()
    # A gene the study did not measure is never chosen.
    measured = np.ones(control.shape[1], dtype=bool)
    measured[42] = False
    top = top_degs(control, perturbed, k=5, genes=measured)
    assert 42 not in top.tolist()
    assert set(planted) - {42} <= set(top.tolist())
    # k larger than the eligible genes returns them all, no more.
    eligible = ((control.mean(0) > 7.0) | (perturbed.mean(0) > 7.0)).sum()
    assert len(top_degs(control, perturbed, k=1000, min_mean=7.0)) == eligible


def test_top_degs_uses_welch_t_with_three_replicates() -> None:
    # Gene 0: large mean shift (2) but very noisy perturbed replicates.
    # Gene 1: small mean shift (1) with tiny noise.
    control = np.array([[5.0, 5.0], [5.0, 5.1], [5.0, 4.9]])
    perturbed = np.array([[9.0, 6.0], [5.0, 6.1], [7.0, 5.9]])
    assert top_degs(control, perturbed, k=2).tolist() == [1, 0]  # Welch t ranking
    assert top_degs(control[:2], perturbed[:2], k=2).tolist() == [0, 1]  # |mean diff|


# ---------------------------------------------------------------------- perturbation


def test_pearson_delta_perfect_flipped_and_undefined() -> None:
    rng = np.random.default_rng(0)
    true = rng.normal(size=50)
    assert pearson_delta(true, true) == pytest.approx(1.0)
    assert pearson_delta(2.0 * true + 1.0, true) == pytest.approx(1.0)
    assert pearson_delta(-true, true) == pytest.approx(-1.0)
    assert math.isnan(pearson_delta(np.zeros(50), true))  # no-change baseline
    assert math.isnan(pearson_delta(true[:1], true[:1]))


def test_pearson_delta_gene_selection() -> None:
    rng = np.random.default_rng(1)
    true = rng.normal(size=40)
    pred = true.copy()
    pred[20:] = rng.normal(size=20)  # wrong outside the first 20 genes
    mask = np.arange(40) < 20
    assert pearson_delta(pred, true, genes=mask) == pytest.approx(1.0)
    assert pearson_delta(pred, true, genes=np.arange(20)) == pytest.approx(1.0)
    assert pearson_delta(pred, true) < 0.95
    # Known value: r of [1,2,3] with [1,3,2] is 0.5.
    r = pearson_delta([1.0, 2.0, 3.0, 9.0], [1.0, 3.0, 2.0, 0.0], genes=[0, 1, 2])
    assert r == pytest.approx(0.5)


def test_pearson_matches_scipy() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=30), rng.normal(size=30)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])


def test_direction_accuracy() -> None:
    rng = np.random.default_rng(3)
    true = rng.normal(size=100)
    assert direction_accuracy(true, true) == 1.0
    assert direction_accuracy(-true, true) == 0.0
    assert pearson_delta(-true, true) == pytest.approx(-1.0)
    # True zeros are excluded; a predicted zero for a changing gene is wrong.
    assert direction_accuracy([1.0, 1.0, 5.0, 3.0], [1.0, -1.0, 0.0, 2.0]) == pytest.approx(2 / 3)
    assert direction_accuracy([0.0, 1.0], [1.0, 1.0]) == pytest.approx(0.5)
    assert direction_accuracy([1.0, -1.0, 1.0], [1.0, 1.0, 1.0], genes=[0, 2]) == 1.0
    assert math.isnan(direction_accuracy([1.0, 2.0], [0.0, 0.0]))


def test_r2_of_means() -> None:
    rng = np.random.default_rng(4)
    true = rng.uniform(0, 10, 200)
    assert r2_of_means(true, true) == pytest.approx(1.0)
    assert r2_of_means(3.0 * true - 2.0, true) == pytest.approx(1.0)
    assert r2_of_means([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(0.25)
    mask = np.zeros(200, dtype=bool)
    mask[:3] = True
    pred = rng.uniform(0, 10, 200)
    pred[:3] = true[:3]
    assert r2_of_means(pred, true, genes=mask) == pytest.approx(1.0)
    assert r2_of_means(pred, true) < 0.2


def test_on_target_error() -> None:
    assert on_target_error([0.0, -2.0, 1.0], [0.0, -3.5, 1.0], 1) == pytest.approx(1.5)
    assert on_target_error([0.0, -2.0, 1.0], [0.0, -2.0, 4.0], 1) == 0.0


# ---------------------------------------------------------------------- generation


def test_samplewise_pearson() -> None:
    rng = np.random.default_rng(5)
    real = rng.normal(size=(4, 30))
    assert samplewise_pearson(real, real) == pytest.approx(1.0)
    flipped = real.copy()
    flipped[2:] = -flipped[2:]
    assert samplewise_pearson(flipped, real) == pytest.approx(0.0)  # (1 + 1 - 1 - 1) / 4
    assert samplewise_pearson(real[0], real[0] * 2 + 1) == pytest.approx(1.0)
    assert samplewise_pearson(-real[0], real[0]) == pytest.approx(-1.0)


def test_genewise_pearson_weighted_hand_computed() -> None:
    # 3 conditions x 2 genes. Gene 0: r = +1, weight var([0,1,2]) = 2/3;
    # gene 1: r = -1, weight var([0,2,4]) = 8/3  ->  (2/3 - 8/3) / (10/3) = -0.6.
    real = np.array([[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]])
    pred = np.array([[0.0, 4.0], [1.0, 2.0], [2.0, 0.0]])
    assert genewise_pearson_weighted(pred, real) == pytest.approx(-0.6)
    assert genewise_pearson_weighted(pred, real, real.var(axis=0)) == pytest.approx(-0.6)
    assert genewise_pearson_weighted(pred, real, np.array([1.0, 1.0])) == pytest.approx(0.0)
    assert genewise_pearson_weighted(real, real) == pytest.approx(1.0)
    # A constant prediction for a varying gene counts as r = 0: (2/3) / (10/3) = 0.2.
    flat = pred.copy()
    flat[:, 1] = 1.0
    assert genewise_pearson_weighted(flat, real) == pytest.approx(0.2)
    assert genewise_pearson_weighted(pred, real, genes=[0]) == pytest.approx(1.0)
    assert math.isnan(genewise_pearson_weighted(pred[:1], real[:1]))


def test_sd_correlation() -> None:
    rng = np.random.default_rng(6)
    real = rng.normal(size=(20, 40)) * rng.uniform(0.1, 3.0, 40)
    assert sd_correlation(real, real) == pytest.approx(1.0)
    assert sd_correlation(2.0 * real + 5.0, real) == pytest.approx(1.0)
    # Per-gene SDs [1, 2, 3] vs [1, 3, 2] -> r = 0.5 (two samples, SD = |diff| / sqrt 2).
    pred = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    realsd = np.array([[0.0, 0.0, 0.0], [1.0, 3.0, 2.0]])
    assert sd_correlation(pred, realsd) == pytest.approx(0.5)
    assert math.isnan(sd_correlation(real[:1], real))


def test_roc_auc_known_values() -> None:
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75


def test_classifier_auc_identical_vs_separated() -> None:
    rng = np.random.default_rng(8)
    real = rng.normal(size=(200, 50))
    same = rng.normal(size=(200, 50))
    shifted = rng.normal(size=(200, 50)) + 0.5
    null_auc = classifier_auc(real, same)
    assert abs(null_auc - 0.5) < 0.1
    assert classifier_auc(real, shifted) > 0.95
    # Deterministic for a seed.
    assert classifier_auc(real, same, seed=3) == classifier_auc(real, same, seed=3)


def test_classifier_auc_small_samples() -> None:
    rng = np.random.default_rng(9)
    real = rng.normal(size=(5, 100))
    generated = rng.normal(size=(5, 100)) + 1.0
    auc = classifier_auc(real, generated)
    assert auc > 0.9
    assert 0.0 <= classifier_auc(real, rng.normal(size=(3, 100)), seed=1) <= 1.0
    assert math.isnan(classifier_auc(real[:1], generated))


def test_energy_distance() -> None:
    rng = np.random.default_rng(10)
    a = rng.normal(size=(60, 30))
    assert energy_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    d_small = energy_distance(a, a + 0.5)
    d_large = energy_distance(a, a + 2.0)
    assert 0.0 < d_small < d_large
    assert energy_distance(a + 2.0, a) == pytest.approx(d_large)
    # Hand-computed in 1-D: A = {0, 1}, B = {3}: 2 * 2.5 - 0.5 - 0 = 4.5.
    assert energy_distance([[0.0], [1.0]], [[3.0]], n_components=None) == pytest.approx(4.5)
    assert energy_distance([[0.0], [1.0]], [[3.0]]) == pytest.approx(4.5)
    # scipy's 1-D energy distance is the square root of this one.
    u, v = rng.normal(size=25), rng.normal(1.0, 2.0, size=35)
    expected = stats.energy_distance(u, v) ** 2
    assert energy_distance(u[:, None], v[:, None]) == pytest.approx(expected)


def test_replicate_ceiling() -> None:
    rng = np.random.default_rng(11)
    profile = rng.uniform(0, 10, 80)
    assert replicate_ceiling(np.tile(profile, (6, 1))) == pytest.approx(1.0)
    noisy = profile + rng.normal(0.0, 3.0, (6, 80))
    ceiling = replicate_ceiling(noisy, seed=4)
    assert 0.3 < ceiling < 0.99
    assert replicate_ceiling(noisy, seed=4) == ceiling
    assert replicate_ceiling(profile + rng.normal(0.0, 0.3, (6, 80))) > ceiling
    assert math.isnan(replicate_ceiling(profile[None, :]))


# ---------------------------------------------------------------------- metadata prediction

Y_TRUE = ["a", "a", "a", "b", "b", "c"]
Y_PRED = ["a", "a", "b", "b", "c", "c"]


def test_accuracy() -> None:
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 6)
    assert accuracy(Y_TRUE, Y_TRUE) == 1.0


def test_balanced_accuracy_hand_computed() -> None:
    # Recalls: a 2/3, b 1/2, c 1/1.
    assert balanced_accuracy(Y_TRUE, Y_PRED) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # Only classes present in y_true count.
    assert balanced_accuracy(["a", "a"], ["a", "z"]) == pytest.approx(0.5)


def test_macro_f1_hand_computed() -> None:
    # a: tp 2, fp 0, fn 1 -> 0.8; b: tp 1, fp 1, fn 1 -> 0.5; c: tp 1, fp 1, fn 0 -> 2/3.
    assert macro_f1(Y_TRUE, Y_PRED) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert macro_f1(Y_TRUE, Y_TRUE) == 1.0
    # A label only predicted counts with F1 = 0: a -> 2/3, z -> 0.
    assert macro_f1(["a", "a"], ["a", "z"]) == pytest.approx(1 / 3)
    assert macro_f1([0, 1, 1], [0, 1, 1]) == 1.0


def test_expected_calibration_error() -> None:
    # One-hot, always correct: perfectly calibrated.
    y = np.array([0, 2, 1, 2])
    assert expected_calibration_error(np.eye(3)[y], y) == 0.0
    # Confidence 0.7 with 7 of 10 correct: calibrated.
    probs = np.tile([0.7, 0.3], (10, 1))
    assert expected_calibration_error(probs, [0] * 7 + [1] * 3) == pytest.approx(0.0)
    # Hand-computed: bins (0.8, 0.9]: acc 1, conf 0.9; (0.7, 0.8]: acc 0, conf 0.8;
    # (0.5, 0.6]: acc 1, conf 0.575  ->  0.1/4 + 0.8/4 + 0.425 * 2/4 = 0.4375.
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45]])
    y = np.array([0, 1, 0, 0])
    assert expected_calibration_error(probs, y) == pytest.approx(0.4375)
    # Two bins: all in (0.5, 1]: |3/4 - 0.7125| = 0.0375.
    assert expected_calibration_error(probs, y, n_bins=2) == pytest.approx(0.0375)
    # Bins are closed on the right: 0.8 and 0.75 share (0.7, 0.8]: |1/2 - 0.775| = 0.275.
    edge = np.array([[0.8, 0.2], [0.25, 0.75], [0.3, 0.7]])
    assert expected_calibration_error(edge[:2], [0, 0]) == pytest.approx(0.275)
    # 0.7 (correct) falls alone in (0.6, 0.7]: 0.275 * 2/3 + |1 - 0.7| * 1/3.
    assert expected_calibration_error(edge, [0, 0, 1]) == pytest.approx((0.55 + 0.3) / 3)
    # Always wrong at confidence 1: ECE 1.
    assert expected_calibration_error(np.eye(2)[[0, 1]], [1, 0]) == pytest.approx(1.0)

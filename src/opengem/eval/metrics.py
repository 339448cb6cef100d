"""Evaluation metrics of the opengem protocol (``docs/evaluation.md``).

Pure numpy / scipy functions on arrays. Matrices are ``samples x genes`` (or
``conditions x genes``); vectors are per gene. Expression is compared in
log-CPM space, ``log1p(counts / library * 1e6)`` (:func:`log_cpm`).

Genes a study did not measure are excluded with the optional ``genes``
argument, accepted by every metric that works over genes: either a boolean
mask over the gene axis or an array of integer gene indices (for example the
output of :func:`top_degs`).

Undefined values (a correlation with a constant input, a metric over zero
genes or too few samples) are returned as ``nan``, never raised, so that a
report can show them as such.

The two-sample classifier and the energy distance work in a PCA space fitted
on the union of both sample sets; PCA and the L2-penalised logistic
regression are implemented here (numpy SVD, scipy trust-region Newton), so the module
needs no scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, spatial, stats

__all__ = [
    "accuracy",
    "balanced_accuracy",
    "between_condition_correlation",
    "binned_calibration_error",
    "classifier_auc",
    "direction_accuracy",
    "energy_distance",
    "expected_calibration_error",
    "genewise_pearson_weighted",
    "log_cpm",
    "macro_f1",
    "magnitude_ratio",
    "masked_mean",
    "on_target_error",
    "pearson",
    "pearson_delta",
    "pseudobulk",
    "pseudobulk_mean",
    "r2_of_means",
    "replicate_ceiling",
    "replicate_spread",
    "roc_auc",
    "samplewise_pearson",
    "sd_correlation",
    "top_degs",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]
GeneSelection = ArrayLike | None


# --------------------------------------------------------------------------- helpers


def _as_float(x: ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


def _as_matrix(x: ArrayLike, name: str) -> FloatArray:
    """A ``samples x genes`` float matrix; a 1-D input is one sample."""
    arr = _as_float(x)
    if arr.ndim == 1:
        arr = arr[np.newaxis, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D (samples x genes), got {arr.ndim}-D")
    return arr


def _gene_index(genes: GeneSelection, n_genes: int) -> IntArray | None:
    """Normalise a gene selection (boolean mask or indices) to integer indices."""
    if genes is None:
        return None
    sel = np.asarray(genes)
    if sel.dtype == np.bool_:
        if sel.shape != (n_genes,):
            raise ValueError(f"gene mask has shape {sel.shape}, expected ({n_genes},)")
        return np.flatnonzero(sel)
    if sel.size == 0:
        return np.zeros(0, dtype=np.intp)
    if not np.issubdtype(sel.dtype, np.integer):
        raise TypeError("genes must be a boolean mask or an array of integer indices")
    idx = sel.astype(np.intp).ravel()
    if idx.min() < -n_genes or idx.max() >= n_genes:
        raise IndexError(f"gene index out of range for {n_genes} genes")
    return idx


def _select(x: FloatArray, genes: GeneSelection) -> FloatArray:
    """Select genes along the last axis."""
    idx = _gene_index(genes, x.shape[-1])
    return x if idx is None else x[..., idx]


def _check_same_shape(a: FloatArray, b: FloatArray, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape, got {a.shape} and {b.shape}")


def _check_same_genes(a: FloatArray, b: FloatArray, names: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names} must have the same genes, got {a.shape[1]} and {b.shape[1]}")


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson correlation of two vectors.

    Parameters
    ----------
    x, y : array_like, shape (n,)
        Paired values.

    Returns
    -------
    float
        The correlation in ``[-1, 1]``; ``nan`` when it is undefined (fewer
        than two values, either vector constant) or an input is not finite.
    """
    xv = _as_float(x).ravel()
    yv = _as_float(y).ravel()
    if xv.shape != yv.shape:
        raise ValueError(f"x and y must have the same length, got {xv.size} and {yv.size}")
    if xv.size < 2 or not (np.all(np.isfinite(xv)) and np.all(np.isfinite(yv))):
        return float("nan")
    if np.ptp(xv) == 0 or np.ptp(yv) == 0:
        return float("nan")
    xc = xv - xv.mean()
    yc = yv - yv.mean()
    denom = np.sqrt(np.dot(xc, xc) * np.dot(yc, yc))
    if denom == 0 or not np.isfinite(denom):
        return float("nan")
    return float(np.clip(np.dot(xc, yc) / denom, -1.0, 1.0))


def _rowwise_pearson(a: FloatArray, b: FloatArray) -> FloatArray:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    ac = a - a.mean(axis=1, keepdims=True)
    bc = b - b.mean(axis=1, keepdims=True)
    num = np.einsum("ij,ij->i", ac, bc)
    den = np.sqrt(np.einsum("ij,ij->i", ac, ac) * np.einsum("ij,ij->i", bc, bc))
    constant = (np.ptp(a, axis=1) == 0) | (np.ptp(b, axis=1) == 0) | (den == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.clip(num / np.where(constant, 1.0, den), -1.0, 1.0)
    r[constant] = np.nan
    if a.shape[1] < 2:
        r[:] = np.nan
    return r


def _pca_scores(x: FloatArray, n_components: int | None) -> FloatArray:
    """Scores of the rows of ``x`` on its top principal components (centred SVD).

    ``n_components`` is capped at ``min(n_samples - 1, n_genes)``; ``None``
    keeps the centred data as is. Signs are fixed (largest loading positive)
    so the result does not depend on the LAPACK build.
    """
    xc = x - x.mean(axis=0, keepdims=True)
    if n_components is None:
        return xc
    k = min(int(n_components), x.shape[0] - 1, x.shape[1])
    if k < 1:
        return np.zeros((x.shape[0], 0))
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    u, s, vt = u[:, :k], s[:k], vt[:k]
    signs = np.sign(vt[np.arange(k), np.argmax(np.abs(vt), axis=1)])
    signs[signs == 0] = 1.0
    return (u * s) * signs


# --------------------------------------------------------------------------- expression space


def masked_mean(rows: ArrayLike, measured: ArrayLike | None = None) -> FloatArray:
    """Column means of ``rows``; with ``measured`` (bool, same shape) over the rows that
    measured each gene (0 where none did)."""
    x = _as_matrix(rows, "rows")
    if measured is None:
        return x.mean(axis=0)
    m = np.asarray(measured, dtype=bool)
    n = m.sum(axis=0)
    return np.where(n > 0, np.where(m, x, 0.0).sum(axis=0) / np.maximum(n, 1), 0.0)


def pseudobulk_mean(lcpm: ArrayLike, measured: ArrayLike | None = None) -> FloatArray:
    """The pseudobulk profile of rows of log-CPM: ``log1p`` of their mean CPM.

    A single cell's log1p(CPM) is mostly 0 or a large value; the mean of those logs is
    no expression level, the log of the mean CPM is (each cell weighs the same).
    With ``measured`` (bool, same shape) a gene's mean is over the rows that measured
    it (0 when none did).
    """
    return np.log1p(masked_mean(np.expm1(np.clip(_as_matrix(lcpm, "lcpm"), 0.0, None)), measured))


def pseudobulk(lcpm: ArrayLike, n_pools: int = 5) -> FloatArray:
    """Pseudo-replicates: rows of log-CPM pooled into ``n_pools`` pseudobulk profiles.

    Row ``i`` goes to pool ``i % n_pools`` (so paired inputs, such as references and
    the predictions made from them, are pooled alike); each pool is
    :func:`pseudobulk_mean` of its rows. Fewer rows than pools: one pool per row.
    """
    x = _as_matrix(lcpm, "lcpm")
    k = max(1, min(int(n_pools), x.shape[0]))
    pools = np.arange(x.shape[0]) % k
    return np.vstack([pseudobulk_mean(x[pools == j]) for j in range(k)])


def log_cpm(counts: ArrayLike) -> FloatArray:
    """Log counts per million, ``log1p(counts / library * 1e6)``.

    Parameters
    ----------
    counts : array_like, shape (n_samples, n_genes) or (n_genes,)
        Non-negative counts; rows are samples, the library size of a row is its
        sum.

    Returns
    -------
    ndarray of float64, same shape as ``counts``
        Log-CPM values; rows whose library size is zero stay 0.
    """
    x = _as_float(counts)
    if x.ndim not in (1, 2):
        raise ValueError(f"counts must be 1-D or 2-D, got {x.ndim}-D")
    if np.any(x < 0):
        raise ValueError("counts must be non-negative")
    lib = x.sum(axis=-1, keepdims=True)
    safe = np.where(lib > 0, lib, 1.0)
    return np.where(lib > 0, np.log1p(x / safe * 1e6), 0.0)


def top_degs(
    control: ArrayLike,
    perturbed: ArrayLike,
    k: int,
    min_mean: float = 1.0,
    genes: GeneSelection = None,
) -> IntArray:
    """Indices of the top-``k`` differentially expressed genes of a real experiment.

    A gene is eligible when its mean log-CPM exceeds ``min_mean`` in the
    control or in the perturbed samples (and, with ``genes``, when it was
    measured). Eligible genes are ranked by ``|Welch t|`` when both sides have
    at least 3 replicates, otherwise by ``|mean(perturbed) - mean(control)|``.
    Ties in ``|t|`` (including a zero-variance gene, whose ``|t|`` is infinite
    when its means differ) are broken by ``|mean difference|``, then by index.

    Parameters
    ----------
    control, perturbed : array_like, shape (n_control, n_genes), (n_perturbed, n_genes)
        Log-CPM expression (see :func:`log_cpm`); a 1-D input is one replicate.
    k : int
        Number of genes to return.
    min_mean : float, default 1.0
        Expression filter on the mean log-CPM of either side.
    genes : array_like of bool or int, optional
        Genes that may be chosen (mask or indices), e.g. the measured genes.

    Returns
    -------
    ndarray of intp, shape (min(k, n_eligible),)
        Gene indices (into the full gene axis), strongest first.
    """
    if k < 0:
        raise ValueError("k must be non-negative")
    c = _as_matrix(control, "control")
    p = _as_matrix(perturbed, "perturbed")
    _check_same_genes(c, p, "control and perturbed")
    n_genes = c.shape[1]
    mean_c, mean_p = c.mean(axis=0), p.mean(axis=0)
    diff = mean_p - mean_c
    eligible = (mean_c > min_mean) | (mean_p > min_mean)
    idx = _gene_index(genes, n_genes)
    if idx is not None:
        measured = np.zeros(n_genes, dtype=bool)
        measured[idx] = True
        eligible &= measured
    eligible &= np.isfinite(diff)
    abs_diff = np.abs(diff)
    if c.shape[0] >= 3 and p.shape[0] >= 3:
        se = np.sqrt(c.var(axis=0, ddof=1) / c.shape[0] + p.var(axis=0, ddof=1) / p.shape[0])
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(se > 0, abs_diff / np.where(se > 0, se, 1.0), np.inf)
        score[abs_diff == 0] = 0.0
    else:
        score = abs_diff
    cand = np.flatnonzero(eligible)
    # lexsort: last key is primary; descending score, descending |diff|, ascending index.
    order = np.lexsort((cand, -abs_diff[cand], -score[cand]))
    return cand[order[:k]].astype(np.intp)


# --------------------------------------------------------------------------- perturbation


def pearson_delta(pred_lfc: ArrayLike, true_lfc: ArrayLike, genes: GeneSelection = None) -> float:
    """Pearson Δ: correlation of predicted with true log fold changes.

    Parameters
    ----------
    pred_lfc, true_lfc : array_like, shape (n_genes,)
        Predicted and true logFC (perturbed minus control, in log-CPM).
    genes : array_like of bool or int, optional
        Genes to use, e.g. the top-100 DEGs (:func:`top_degs`) or the
        expressed, measured genes; all genes when omitted.

    Returns
    -------
    float
        Pearson correlation; ``nan`` when undefined (constant input, < 2 genes).
    """
    pred, true = _as_float(pred_lfc), _as_float(true_lfc)
    _check_same_shape(pred, true, "pred_lfc and true_lfc")
    return pearson(_select(pred, genes), _select(true, genes))


def direction_accuracy(
    pred_lfc: ArrayLike, true_lfc: ArrayLike, genes: GeneSelection = None
) -> float:
    """Fraction of genes whose predicted logFC has the sign of the true logFC.

    Genes with a true logFC of exactly 0 are excluded; a predicted logFC of 0
    for a gene that changes counts as wrong.

    Parameters
    ----------
    pred_lfc, true_lfc : array_like, shape (n_genes,)
        Predicted and true logFC.
    genes : array_like of bool or int, optional
        Genes to use (the protocol uses the top-100 DEGs); all when omitted.

    Returns
    -------
    float
        Accuracy in ``[0, 1]``; ``nan`` when no gene with a non-zero true logFC
        is selected.
    """
    pred, true = _as_float(pred_lfc), _as_float(true_lfc)
    _check_same_shape(pred, true, "pred_lfc and true_lfc")
    pred, true = _select(pred, genes), _select(true, genes)
    keep = (true != 0) & np.isfinite(true)
    if not np.any(keep):
        return float("nan")
    return float(np.mean(np.sign(pred[keep]) == np.sign(true[keep])))


def r2_of_means(pred_mean: ArrayLike, true_mean: ArrayLike, genes: GeneSelection = None) -> float:
    """R² of mean expression, scGen convention: squared Pearson of the mean vectors.

    Parameters
    ----------
    pred_mean, true_mean : array_like, shape (n_genes,)
        Mean log-CPM of the predicted and the real perturbed samples.
    genes : array_like of bool or int, optional
        Genes to use (all genes, or the top-100 DEGs).

    Returns
    -------
    float
        ``pearson(pred_mean, true_mean) ** 2``; ``nan`` when undefined.
    """
    pred, true = _as_float(pred_mean), _as_float(true_mean)
    _check_same_shape(pred, true, "pred_mean and true_mean")
    r = pearson(_select(pred, genes), _select(true, genes))
    return r * r


def magnitude_ratio(pred_lfc: ArrayLike, true_lfc: ArrayLike, genes: GeneSelection = None) -> float:
    """Size of the predicted effect relative to the true one: ``||pred|| / ||true||`` (L2).

    Parameters
    ----------
    pred_lfc, true_lfc : array_like, shape (n_genes,)
        Predicted and true logFC.
    genes : array_like of bool or int, optional
        Genes to use (the protocol uses the top-100 DEGs).

    Returns
    -------
    float
        1 for an effect of the right size, 0 for no predicted effect; ``nan`` when
        the true effect is zero on the selected genes.
    """
    pred, true = _as_float(pred_lfc), _as_float(true_lfc)
    _check_same_shape(pred, true, "pred_lfc and true_lfc")
    pred, true = _select(pred, genes), _select(true, genes)
    keep = np.isfinite(pred) & np.isfinite(true)
    denom = float(np.linalg.norm(true[keep]))
    if denom == 0 or not np.any(keep):
        return float("nan")
    return float(np.linalg.norm(pred[keep]) / denom)


def on_target_error(pred_lfc: ArrayLike, true_lfc: ArrayLike, gene_index: int) -> float:
    """Absolute error of the predicted logFC at the perturbed gene itself.

    Parameters
    ----------
    pred_lfc, true_lfc : array_like, shape (n_genes,)
        Predicted and true logFC.
    gene_index : int
        Index of the targeted gene (knock-down, knock-out, over-expression).

    Returns
    -------
    float
        ``|pred_lfc[gene_index] - true_lfc[gene_index]|``.
    """
    pred, true = _as_float(pred_lfc), _as_float(true_lfc)
    _check_same_shape(pred, true, "pred_lfc and true_lfc")
    if pred.ndim != 1:
        raise ValueError("pred_lfc and true_lfc must be 1-D")
    return float(abs(pred[int(gene_index)] - true[int(gene_index)]))


# --------------------------------------------------------------------------- generation


def samplewise_pearson(pred: ArrayLike, real: ArrayLike, genes: GeneSelection = None) -> float:
    """Sample-wise Pearson: correlation across genes of paired samples, averaged.

    Parameters
    ----------
    pred, real : array_like, shape (n, n_genes) or (n_genes,)
        Paired rows (row ``i`` of ``pred`` is compared with row ``i`` of
        ``real``), typically generated and real condition means in log-CPM. 1-D
        inputs are one pair (e.g. the means of one condition).
    genes : array_like of bool or int, optional
        Genes to use.

    Returns
    -------
    float
        Mean over pairs of the per-pair Pearson correlation; pairs whose
        correlation is undefined (a constant row) are left out, ``nan`` when all
        are.
    """
    p, r = _as_float(pred), _as_float(real)
    _check_same_shape(p, r, "pred and real")
    p, r = _select(_as_matrix(p, "pred"), genes), _select(_as_matrix(r, "real"), genes)
    if p.shape[0] == 0:
        return float("nan")
    corr = _rowwise_pearson(p, r)
    if np.all(np.isnan(corr)):
        return float("nan")
    return float(np.nanmean(corr))


def genewise_pearson_weighted(
    pred_mean: ArrayLike,
    real_mean: ArrayLike,
    real_var: ArrayLike | None = None,
    genes: GeneSelection = None,
) -> float:
    """Gene-wise Pearson across conditions, averaged with gene-variance weights.

    For ``conditions x genes`` matrices ``P`` (predicted) and ``R`` (real
    condition means), the metric is::

        sum_g w_g * r_g / sum_g w_g,   r_g = pearson(P[:, g], R[:, g]),
        w_g = var_c(R[:, g])  (population variance across conditions)

    so genes that vary between conditions dominate and flat genes, whose
    correlation is mostly noise, count little. A gene whose real means vary
    but whose predicted means are constant has an undefined correlation and
    counts as ``r_g = 0`` (the prediction carries no information on it); a
    gene with ``w_g = 0`` does not count.

    Parameters
    ----------
    pred_mean, real_mean : array_like, shape (n_conditions, n_genes)
        Predicted and real per-condition mean log-CPM.
    real_var : array_like, shape (n_genes,), optional
        Weights to use instead of the variance of ``real_mean`` across
        conditions (must be non-negative).
    genes : array_like of bool or int, optional
        Genes to use.

    Returns
    -------
    float
        Weighted mean correlation in ``[-1, 1]``; ``nan`` with fewer than two
        conditions or when all weights are zero.
    """
    p, r = _as_float(pred_mean), _as_float(real_mean)
    _check_same_shape(p, r, "pred_mean and real_mean")
    if p.ndim != 2:
        raise ValueError("pred_mean and real_mean must be 2-D (conditions x genes)")
    if real_var is None:
        w = r.var(axis=0)
    else:
        w = _as_float(real_var)
        if w.shape != (r.shape[1],):
            raise ValueError(f"real_var must have shape ({r.shape[1]},), got {w.shape}")
        if np.any(w < 0):
            raise ValueError("real_var must be non-negative")
    p, r, w = _select(p, genes), _select(r, genes), _select(w, genes)
    if p.shape[0] < 2 or p.shape[1] == 0:
        return float("nan")
    corr = _rowwise_pearson(p.T, r.T)
    corr = np.where(np.isnan(corr), 0.0, corr)
    w = np.where(np.isfinite(w), w, 0.0)
    total = w.sum()
    if total <= 0:
        return float("nan")
    return float(np.dot(w, corr) / total)


def between_condition_correlation(means: ArrayLike, genes: GeneSelection = None) -> float:
    """Mean Pearson correlation between the profiles of different conditions (diversity).

    Compared between generated and real condition means: a generator that
    collapses every condition onto one profile scores 1, however diverse the
    real conditions are.

    Parameters
    ----------
    means : array_like, shape (n_conditions, n_genes)
        Per-condition mean log-CPM.
    genes : array_like of bool or int, optional
        Genes to use.

    Returns
    -------
    float
        Mean of the off-diagonal correlations; ``nan`` with fewer than two
        conditions (pairs with a constant profile are left out).
    """
    x = _select(_as_matrix(means, "means"), genes)
    n = x.shape[0]
    if n < 2:
        return float("nan")
    values = [pearson(x[i], x[j]) for i in range(n) for j in range(i + 1, n)]
    arr = np.asarray(values)
    if np.all(np.isnan(arr)):
        # identical constant profiles are collapsed by definition
        return 1.0 if np.allclose(x, x[0]) else float("nan")
    return float(np.nanmean(arr))


def replicate_spread(groups: Sequence[ArrayLike], genes: GeneSelection = None) -> float:
    """Between-replicate spread: mean per-gene SD within conditions, averaged over conditions.

    Parameters
    ----------
    groups : sequence of array_like, each shape (n_i, n_genes)
        Samples of each condition (log-CPM); conditions with one sample are skipped.
    genes : array_like of bool or int, optional
        Genes to use.

    Returns
    -------
    float
        ``nan`` when no condition has two samples.
    """
    values = []
    for g in groups:
        x = _select(_as_matrix(g, "group"), genes)
        if x.shape[0] >= 2:
            values.append(float(x.std(axis=0, ddof=1).mean()))
    return float(np.mean(values)) if values else float("nan")


def sd_correlation(pred: ArrayLike, real: ArrayLike, genes: GeneSelection = None) -> float:
    """Pearson correlation of per-gene standard deviations of generated and real samples.

    Parameters
    ----------
    pred, real : array_like, shape (n_pred, n_genes), (n_real, n_genes)
        Generated and real samples (log-CPM) of one condition; sample counts
        may differ.
    genes : array_like of bool or int, optional
        Genes to use.

    Returns
    -------
    float
        ``pearson(sd(pred), sd(real))`` with ``ddof=1``; ``nan`` with fewer
        than two samples on a side or constant SDs.
    """
    p, r = _as_matrix(pred, "pred"), _as_matrix(real, "real")
    _check_same_genes(p, r, "pred and real")
    if p.shape[0] < 2 or r.shape[0] < 2:
        return float("nan")
    p, r = _select(p, genes), _select(r, genes)
    return pearson(p.std(axis=0, ddof=1), r.std(axis=0, ddof=1))


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half).

    Parameters
    ----------
    scores : array_like, shape (n,)
        Higher means more likely positive.
    labels : array_like of bool or {0, 1}, shape (n,)

    Returns
    -------
    float
        AUC in ``[0, 1]``; ``nan`` unless both classes are present.
    """
    s = _as_float(scores).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _fit_logistic(x: FloatArray, y: FloatArray, c: float) -> FloatArray:
    """L2-penalised logistic regression (unpenalised intercept); returns ``[b, w...]``.

    Minimises ``c * sum(log-loss) + 0.5 * ||w||²`` (scikit-learn's convention)
    by trust-region Newton steps from zero (exact Hessian; the problem is small,
    ``n_components + 1`` parameters), which is fast and deterministic.
    """
    xb = np.hstack([np.ones((x.shape[0], 1)), x])
    penalty = np.ones(xb.shape[1])
    penalty[0] = 0.0

    def loss(theta: FloatArray) -> tuple[float, FloatArray]:
        z = xb @ theta
        val = c * float(np.sum(np.logaddexp(0.0, z) - y * z))
        val += 0.5 * float(np.dot(penalty * theta, theta))
        grad = c * (xb.T @ (_sigmoid(z) - y)) + penalty * theta
        return val, grad

    def hess(theta: FloatArray) -> FloatArray:
        prob = _sigmoid(xb @ theta)
        h: FloatArray = c * ((xb * (prob * (1.0 - prob))[:, np.newaxis]).T @ xb)
        return h + np.diag(penalty)

    res = optimize.minimize(
        loss,
        np.zeros(xb.shape[1]),
        jac=True,
        hess=hess,
        method="trust-exact",
        options={"maxiter": 200},
    )
    return np.asarray(res.x, dtype=np.float64)


def _sigmoid(z: FloatArray) -> FloatArray:
    out: FloatArray = np.exp(-np.logaddexp(0.0, -z))
    return out


def _stratified_folds(y: NDArray[np.bool_], n_splits: int, rng: np.random.Generator) -> IntArray:
    """Fold id of each sample: each class shuffled and dealt round-robin into folds."""
    fold = np.empty(y.size, dtype=np.intp)
    offset = 0
    for cls in (True, False):
        members = rng.permutation(np.flatnonzero(y == cls))
        fold[members] = (np.arange(members.size) + offset) % n_splits
        offset += members.size
    return fold


def classifier_auc(
    real: ArrayLike,
    generated: ArrayLike,
    n_components: int = 20,
    seed: int = 0,
    n_splits: int = 5,
    c: float = 1.0,
    genes: GeneSelection = None,
) -> float:
    """Two-sample classifier AUC: can a classifier tell generated from real samples?

    Both sets are projected on the top ``n_components`` principal components of
    their union (labels are not used, so this leaks nothing); an L2 logistic
    regression (``c`` as scikit-learn's ``C``) on the unscaled PC scores is
    trained with stratified ``k``-fold cross-validation and the AUC is computed
    once on the pooled out-of-fold decision values. The scores are deliberately
    not standardised: with the PCA fitted on the union, a minor component can
    carry almost only the held-out samples, and rescaling it to unit variance on
    the training fold makes small-sample AUCs collapse far below 0.5.

    ``k = min(n_splits, n_real, n_generated)``, so every test fold holds at
    least one sample of each set (5 vs 5 gives 5 folds of 1 + 1). Folds are
    drawn with ``seed``; everything else is deterministic.

    Parameters
    ----------
    real, generated : array_like, shape (n_real, n_genes), (n_generated, n_genes)
        Samples in log-CPM.
    n_components : int, default 20
        PCA dimension, capped at ``min(n_total - 1, n_genes)``.
    seed : int, default 0
        Seed of the fold assignment.
    n_splits : int, default 5
        Maximum number of folds.
    c : float, default 1.0
        Inverse L2 penalty strength.
    genes : array_like of bool or int, optional
        Genes to use.

    Returns
    -------
    float
        AUC: about 0.5 when the two sets come from one distribution (below 0.5
        is chance too), near 1 when they are separable; ``nan`` when a set has
        fewer than two samples.
    """
    a, b = _as_matrix(real, "real"), _as_matrix(generated, "generated")
    _check_same_genes(a, b, "real and generated")
    a, b = _select(a, genes), _select(b, genes)
    if a.shape[0] < 2 or b.shape[0] < 2 or a.shape[1] == 0:
        return float("nan")
    x = _pca_scores(np.vstack([a, b]), n_components)
    y = np.concatenate([np.zeros(a.shape[0], dtype=bool), np.ones(b.shape[0], dtype=bool)])
    k = min(int(n_splits), a.shape[0], b.shape[0])
    fold = _stratified_folds(y, k, np.random.default_rng(seed))
    decision = np.empty(y.size)
    for f in range(k):
        test = fold == f
        train = ~test
        mu = x[train].mean(axis=0)
        theta = _fit_logistic(x[train] - mu, y[train].astype(np.float64), c)
        decision[test] = theta[0] + (x[test] - mu) @ theta[1:]
    return roc_auc(decision, y)


def energy_distance(
    a: ArrayLike,
    b: ArrayLike,
    n_components: int | None = 20,
    seed: int = 0,
    max_samples: int = 2000,
    genes: GeneSelection = None,
) -> float:
    """Energy distance between two sample sets in a shared PCA space.

    Székely's (squared) energy distance with V-statistics (self-pairs
    included), which is exactly 0 for identical sets and non-negative::

        E = 2 mean|X - Y| - mean|X - X'| - mean|Y - Y'|

    with Euclidean norms on the top ``n_components`` principal components of
    the union of both sets (``None``: the centred gene space itself).
    ``scipy.stats.energy_distance`` (1-D) returns ``sqrt(E)``.

    Parameters
    ----------
    a, b : array_like, shape (n_a, n_genes), (n_b, n_genes)
        Samples in log-CPM.
    n_components : int or None, default 20
        PCA dimension, capped at ``min(n_total - 1, n_genes)``.
    seed : int, default 0
        Seed of the subsampling applied to a set larger than ``max_samples``
        (pairwise distances are quadratic in memory).
    max_samples : int, default 2000
        Largest set size used as is.
    genes : array_like of bool or int, optional
        Genes to use.

    Returns
    -------
    float
        ``E >= 0``; ``nan`` when a set is empty.
    """
    x, y = _as_matrix(a, "a"), _as_matrix(b, "b")
    _check_same_genes(x, y, "a and b")
    x, y = _select(x, genes), _select(y, genes)
    if x.shape[0] == 0 or y.shape[0] == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    if x.shape[0] > max_samples:
        x = x[np.sort(rng.choice(x.shape[0], max_samples, replace=False))]
    if y.shape[0] > max_samples:
        y = y[np.sort(rng.choice(y.shape[0], max_samples, replace=False))]
    z = _pca_scores(np.vstack([x, y]), n_components)
    zx, zy = z[: x.shape[0]], z[x.shape[0] :]
    if z.shape[1] == 0:
        return 0.0
    cross = spatial.distance.cdist(zx, zy).mean()
    within_x = spatial.distance.cdist(zx, zx).mean()
    within_y = spatial.distance.cdist(zy, zy).mean()
    value = 2.0 * cross - within_x - within_y
    scale = max(cross, within_x, within_y, 1.0)
    return float(0.0 if value < 1e-12 * scale else value)


def replicate_ceiling(
    real: ArrayLike, seed: int = 0, n_repeats: int = 1, genes: GeneSelection = None
) -> float:
    """Replicate ceiling: Pearson between the means of two disjoint halves of real replicates.

    The replicates are shuffled with ``seed`` and split into halves of
    ``n // 2`` and ``n - n // 2`` samples; the result is
    :func:`samplewise_pearson` of the two half means, averaged over
    ``n_repeats`` random splits.

    Parameters
    ----------
    real : array_like, shape (n_replicates, n_genes)
        Real replicates of one condition (log-CPM).
    seed : int, default 0
        Seed of the splits.
    n_repeats : int, default 1
        Number of random splits averaged.
    genes : array_like of bool or int, optional
        Genes to use.

    Returns
    -------
    float
        The ceiling; ``nan`` with fewer than two replicates.
    """
    x = _select(_as_matrix(real, "real"), genes)
    n = x.shape[0]
    if n < 2 or n_repeats < 1:
        return float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_repeats):
        perm = rng.permutation(n)
        half_a, half_b = perm[: n // 2], perm[n // 2 :]
        values.append(samplewise_pearson(x[half_a].mean(axis=0), x[half_b].mean(axis=0)))
    arr = np.asarray(values)
    return float("nan") if np.all(np.isnan(arr)) else float(np.nanmean(arr))


# --------------------------------------------------------------------------- metadata prediction


def _labels(y: ArrayLike | Sequence[Any]) -> NDArray[Any]:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError("labels must be 1-D")
    return arr


def _paired_labels(
    y_true: ArrayLike | Sequence[Any], y_pred: ArrayLike | Sequence[Any]
) -> tuple[NDArray[Any], NDArray[Any]]:
    t, p = _labels(y_true), _labels(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same length, got {t.size} and {p.size}")
    return t, p


def accuracy(y_true: ArrayLike | Sequence[Any], y_pred: ArrayLike | Sequence[Any]) -> float:
    """Fraction of exactly matching labels.

    Parameters
    ----------
    y_true, y_pred : array_like, shape (n,)
        True and predicted labels (any comparable values, e.g. ontology ids).

    Returns
    -------
    float
        Accuracy in ``[0, 1]``; ``nan`` for empty input.
    """
    t, p = _paired_labels(y_true, y_pred)
    if t.size == 0:
        return float("nan")
    return float(np.mean(t == p))


def balanced_accuracy(
    y_true: ArrayLike | Sequence[Any], y_pred: ArrayLike | Sequence[Any]
) -> float:
    """Mean per-class recall over the classes present in ``y_true``.

    Parameters
    ----------
    y_true, y_pred : array_like, shape (n,)
        True and predicted labels.

    Returns
    -------
    float
        Balanced accuracy in ``[0, 1]``; ``nan`` for empty input.
    """
    t, p = _paired_labels(y_true, y_pred)
    if t.size == 0:
        return float("nan")
    recalls = [float(np.mean(p[t == cls] == cls)) for cls in np.unique(t)]
    return float(np.mean(recalls))


def macro_f1(y_true: ArrayLike | Sequence[Any], y_pred: ArrayLike | Sequence[Any]) -> float:
    """Unweighted mean F1 over the labels present in ``y_true`` or ``y_pred``.

    A label that is never predicted, or predicted but never true, has F1 = 0
    (scikit-learn's ``zero_division=0``).

    Parameters
    ----------
    y_true, y_pred : array_like, shape (n,)
        True and predicted labels.

    Returns
    -------
    float
        Macro-F1 in ``[0, 1]``; ``nan`` for empty input.
    """
    t, p = _paired_labels(y_true, y_pred)
    if t.size == 0:
        return float("nan")
    scores = []
    for cls in np.unique(np.concatenate([t, p])):
        tp = int(np.sum((t == cls) & (p == cls)))
        fp = int(np.sum((t != cls) & (p == cls)))
        fn = int(np.sum((t == cls) & (p != cls)))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def expected_calibration_error(
    probs: ArrayLike, y_true_index: ArrayLike, n_bins: int = 10
) -> float:
    """Expected calibration error of the top-class confidence.

    The confidence of a sample is its largest probability and its prediction
    the arg-max class. Samples fall into ``n_bins`` equal-width bins
    ``(i / n_bins, (i + 1) / n_bins]`` (a confidence of 0 goes to the first),
    and::

        ECE = sum_b (n_b / n) * |accuracy_b - mean confidence_b|

    Parameters
    ----------
    probs : array_like, shape (n, n_classes)
        Predicted class probabilities (rows should sum to 1).
    y_true_index : array_like of int, shape (n,)
        Index of the true class of each sample.
    n_bins : int, default 10
        Number of confidence bins.

    Returns
    -------
    float
        ECE in ``[0, 1]``; ``nan`` for empty input.
    """
    pr = _as_float(probs)
    if pr.ndim != 2:
        raise ValueError("probs must be 2-D (samples x classes)")
    yt = np.asarray(y_true_index).astype(np.intp).ravel()
    if yt.size != pr.shape[0]:
        raise ValueError(f"y_true_index has {yt.size} entries for {pr.shape[0]} rows of probs")
    if n_bins < 1:
        raise ValueError("n_bins must be positive")
    correct = (pr.argmax(axis=1) == yt).astype(np.float64)
    return binned_calibration_error(pr.max(axis=1), correct, n_bins)


def binned_calibration_error(confidence: ArrayLike, correct: ArrayLike, n_bins: int = 10) -> float:
    """ECE from each sample's confidence and whether it was right (1.0 / 0.0).

    The binning of :func:`expected_calibration_error`, for callers that decide
    themselves what counts as right (e.g. an ontology ancestor of the truth).
    ``nan`` for empty input.
    """
    conf = _as_float(confidence).ravel()
    ok = _as_float(correct).ravel()
    if conf.size == 0:
        return float("nan")
    edges = np.arange(1, n_bins) / n_bins  # i / n_bins, correctly rounded
    bins = np.searchsorted(edges, conf, side="left")
    ece = 0.0
    for b in np.unique(bins):
        sel = bins == b
        ece += sel.sum() / conf.size * abs(ok[sel].mean() - conf[sel].mean())
    return float(ece)

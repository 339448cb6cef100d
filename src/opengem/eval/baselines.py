"""Baselines of the evaluation protocol (``docs/evaluation.md``), always reported beside the model.

Perturbation baselines work in log-CPM space (rows = samples, columns = the genes
a study measured):

- :func:`no_change`: the reference itself;
- :func:`additive_shift`: the reference plus the mean logFC of the perturbation
  across the training contexts;
- :func:`train_mean`: the mean of the training samples with that perturbation;
- :func:`on_target_only`: the reference with only the targeted genes moved (gene
  targets: the type's mean on-target change);
- :func:`sum_of_effects`: the reference plus the sum of single effects (combinations).

Every predicted profile is renormalised (:func:`renormalise`) the way a model's
counts are when they are turned into log-CPM, so a model that returns a baseline's
profile scores exactly as that baseline.

Generation baselines:

- :func:`condition_mean`: the mean log-CPM of the training samples matching the
  metadata, and :func:`condition_mean_samples`: negative-binomial draws around
  the matching samples' mean expression (per-gene dispersion from
  :func:`estimate_dispersion`).

Metadata prediction baseline:

- :class:`LogisticPCA`: multinomial L2 logistic regression on standardised PCA
  scores of log-CPM (numpy SVD + scipy L-BFGS; no scikit-learn needed).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, special

from opengem.eval.metrics import log_cpm, masked_mean

FloatArray = NDArray[np.float64]

__all__ = [
    "LogisticPCA",
    "additive_shift",
    "condition_mean",
    "condition_mean_samples",
    "estimate_dispersion",
    "no_change",
    "on_target_only",
    "renormalise",
    "sum_of_effects",
    "train_mean",
]


# --------------------------------------------------------------------------- perturbation


def no_change(reference: ArrayLike) -> FloatArray:
    """The *no change* prediction: each perturbed sample is predicted as its reference.

    Parameters
    ----------
    reference : array_like, shape (n, n_genes)
        Log-CPM of the matched control of each perturbed sample.

    Returns
    -------
    ndarray, shape (n, n_genes)
        A copy of ``reference``.
    """
    return np.array(reference, dtype=np.float64, copy=True)


def additive_shift(reference: ArrayLike, training_lfcs: Sequence[ArrayLike]) -> FloatArray:
    """Reference plus the mean logFC of the perturbation across the training contexts.

    Parameters
    ----------
    reference : array_like, shape (n, n_genes)
        Log-CPM of the matched controls.
    training_lfcs : sequence of array_like, each shape (n_genes,)
        The logFC (mean perturbed minus mean control, log-CPM) of the same
        perturbation in each training context. NaN entries (genes a context did
        not measure) are ignored gene by gene.

    Returns
    -------
    ndarray, shape (n, n_genes)
        ``reference + mean(training_lfcs)``; the reference itself (no shift)
        when no training context is given.
    """
    ref = np.asarray(reference, dtype=np.float64)
    if len(training_lfcs) == 0:
        return ref.copy()
    stacked = np.vstack([np.asarray(x, dtype=np.float64) for x in training_lfcs])
    with warnings.catch_warnings():  # genes no context measured: NaN, then no shift
        warnings.simplefilter("ignore", RuntimeWarning)
        shift = np.nanmean(np.where(np.isfinite(stacked), stacked, np.nan), axis=0)
    shift = np.where(np.isfinite(shift), shift, 0.0)
    return ref + shift


def renormalise(lcpm: ArrayLike) -> FloatArray:
    """A predicted log-CPM profile as a composition: clipped at 0, CPM re-summed to 1e6.

    ``log_cpm(expm1(max(x, 0)))``: what the profile becomes when it is written as
    counts and read back, as every model output is.
    """
    x = np.clip(np.asarray(lcpm, dtype=np.float64), 0.0, None)
    return log_cpm(np.expm1(x))


def sum_of_effects(reference: ArrayLike, effects: Sequence[ArrayLike]) -> FloatArray:
    """Reference plus the sum of several effects (the "sum of singles" of a combination).

    NaN entries of an effect (genes its context did not measure) count as 0.
    """
    ref = np.asarray(reference, dtype=np.float64)
    total = np.zeros(ref.shape[-1])
    for e in effects:
        e = np.asarray(e, dtype=np.float64)
        total += np.where(np.isfinite(e), e, 0.0)
    return ref + total


def on_target_only(reference: ArrayLike, targets: Sequence[int], change: float) -> FloatArray:
    """Reference with only the targeted genes moved by ``change`` (log-CPM)."""
    out = np.array(reference, dtype=np.float64, copy=True)
    for t in targets:
        out[..., int(t)] += change
    return out


def train_mean(training_perturbed: ArrayLike, measured: ArrayLike | None = None) -> FloatArray:
    """Mean log-CPM of all training samples with the perturbation.

    Parameters
    ----------
    training_perturbed : array_like, shape (n_train, n_genes)
        Log-CPM of the training samples carrying the perturbation (any context).
    measured : array_like of bool, shape (n_train, n_genes), optional
        Whether each sample's study measured each gene; a gene's mean is taken
        over the samples that measured it (0 when none did).

    Returns
    -------
    ndarray, shape (n_genes,)
    """
    x = np.asarray(training_perturbed, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError("training_perturbed must be a non-empty samples x genes matrix")
    return masked_mean(x, measured)


# --------------------------------------------------------------------------- generation


def condition_mean(
    training_counts: ArrayLike,
    measured: ArrayLike | None = None,
    fallback: ArrayLike | None = None,
) -> FloatArray:
    """Mean log-CPM of the training samples that match a condition's metadata.

    Parameters
    ----------
    training_counts : array_like, shape (n_match, n_genes)
        Raw counts of the matching training samples (genes already restricted
        to those the evaluated study measured).
    measured : array_like of bool, shape (n_match, n_genes), optional
        Whether each sample's study measured each gene; a gene's mean is taken
        over the samples that measured it.
    fallback : array_like, shape (n_genes,), optional
        Log-CPM used for genes that no matching sample measured (e.g. the mean
        of a wider set of training samples); 0 when not given.

    Returns
    -------
    ndarray, shape (n_genes,)
    """
    x = np.asarray(training_counts, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError("training_counts must be a non-empty samples x genes matrix")
    mean = train_mean(log_cpm(x), measured)
    if measured is not None and fallback is not None:
        covered = np.asarray(measured, dtype=bool).any(axis=0)
        mean = np.where(covered, mean, np.asarray(fallback, dtype=np.float64))
    return mean


def estimate_dispersion(
    groups: Sequence[ArrayLike], default: float = 0.1, max_dispersion: float = 10.0
) -> FloatArray:
    """Per-gene negative-binomial dispersion ``phi`` (``var = mu + phi mu²``) by moments.

    Counts of each group (replicates of one condition) are first scaled to the
    group's median library size; the within-group excess variance is pooled
    over groups with at least two samples::

        phi_g = sum_groups (var_g - mean_g) / sum_groups mean_g²

    clipped to ``[1e-4, max_dispersion]``. Genes without information (never
    expressed, or no group with two samples) get the median of the others, or
    ``default``.

    Parameters
    ----------
    groups : sequence of array_like, each shape (n_i, n_genes)
        Raw counts of replicate groups.
    default : float
        Dispersion used when nothing can be estimated.
    max_dispersion : float
        Upper clip.

    Returns
    -------
    ndarray, shape (n_genes,)
    """
    num: FloatArray | None = None
    den: FloatArray | None = None
    n_genes = None
    for g in groups:
        x = np.asarray(g, dtype=np.float64)
        n_genes = x.shape[1]
        if x.shape[0] < 2:
            continue
        lib = x.sum(axis=1, keepdims=True)
        if np.any(lib <= 0):
            x = x[lib[:, 0] > 0]
            lib = lib[lib[:, 0] > 0]
            if x.shape[0] < 2:
                continue
        scaled = x / lib * np.median(lib)
        mean = scaled.mean(axis=0)
        var = scaled.var(axis=0, ddof=1)
        num = (var - mean) if num is None else num + (var - mean)
        den = mean**2 if den is None else den + mean**2
    if n_genes is None:
        raise ValueError("no groups given")
    if num is None or den is None:
        return np.full(n_genes, default)
    informative = den > 0
    phi = np.full(n_genes, np.nan)
    phi[informative] = num[informative] / den[informative]
    phi = np.clip(phi, 1e-4, max_dispersion)
    fill = float(np.nanmedian(phi)) if np.any(np.isfinite(phi)) else default
    return np.where(np.isfinite(phi), phi, fill)


def condition_mean_samples(
    training_counts: ArrayLike,
    n: int,
    library: float | ArrayLike,
    rng: np.random.Generator,
    dispersion: float | ArrayLike = 0.1,
    measured: ArrayLike | None = None,
    fallback: ArrayLike | None = None,
) -> NDArray[np.int64]:
    """Condition mean with negative-binomial noise: samples for the *sample generation* task.

    The mean expression profile is the average of the matching training
    samples' proportions (counts / library); each sample draws
    ``NB(mean = profile * library, dispersion)`` through the gamma-Poisson
    mixture, as the model's decoder does.

    Parameters
    ----------
    training_counts : array_like, shape (n_match, n_genes)
        Raw counts of the matching training samples.
    n : int
        Number of samples to draw.
    library : float or array_like of shape (n,)
        Library size of each drawn sample.
    rng : numpy.random.Generator
        Source of randomness.
    dispersion : float or array_like of shape (n_genes,)
        NB dispersion ``phi`` (``var = mu + phi mu²``), e.g. from :func:`estimate_dispersion`.
    measured : array_like of bool, shape (n_match, n_genes), optional
        Whether each sample's study measured each gene; a gene's proportion is
        averaged over the samples that measured it, and the profile renormalised.
    fallback : array_like, shape (n_genes,), optional
        Expression proportions used for genes no matching sample measured.

    Returns
    -------
    ndarray of int64, shape (n, n_genes)
    """
    x = np.asarray(training_counts, dtype=np.float64)
    lib = x.sum(axis=1, keepdims=True)
    profile = train_mean(x / np.where(lib > 0, lib, 1.0), measured)
    if measured is not None and fallback is not None:
        covered = np.asarray(measured, dtype=bool).any(axis=0)
        profile = np.where(covered, profile, np.asarray(fallback, dtype=np.float64))
    profile = profile / profile.sum() if profile.sum() > 0 else profile
    libs = np.broadcast_to(np.asarray(library, dtype=np.float64), (n,))
    mu = libs[:, None] * profile[None, :]
    phi = np.broadcast_to(np.asarray(dispersion, dtype=np.float64), (x.shape[1],))
    theta = 1.0 / np.maximum(phi, 1e-8)
    rate = rng.gamma(shape=theta, scale=np.where(mu > 0, mu / theta, 0.0))
    return rng.poisson(rate).astype(np.int64)


# --------------------------------------------------------------------------- metadata


def _softmax(z: FloatArray) -> FloatArray:
    return np.exp(z - special.logsumexp(z, axis=1, keepdims=True))


class LogisticPCA:
    """Multinomial logistic regression on PCA of log-CPM: the metadata-prediction baseline.

    Fitting: the ``n_top_genes`` most variable genes of the training log-CPM are
    centred and projected on their top ``n_components`` principal components;
    the scores are standardised and an L2-penalised multinomial logistic
    regression (``c`` as scikit-learn's ``C``; intercepts unpenalised) is fitted
    by L-BFGS. Prediction applies the same projection.

    Parameters
    ----------
    n_components : int
        PCA dimension (capped by the data).
    n_top_genes : int
        Genes kept by training variance before the PCA.
    c : float
        Inverse L2 strength.
    """

    def __init__(self, n_components: int = 50, n_top_genes: int = 2000, c: float = 1.0) -> None:
        self.n_components = n_components
        self.n_top_genes = n_top_genes
        self.c = c
        self.classes_: list[Any] = []

    def _project(self, x: FloatArray) -> FloatArray:
        z = (x[:, self.genes_] - self.center_) @ self.components_.T
        return (z - self.score_mean_) / self.score_std_

    def fit(self, x: ArrayLike, y: Sequence[Any]) -> LogisticPCA:
        """Fit on log-CPM rows ``x`` with labels ``y`` (any hashable values)."""
        xv = np.asarray(x, dtype=np.float64)
        labels = np.asarray(y)
        if xv.shape[0] != labels.shape[0]:
            raise ValueError("x and y must have the same number of rows")
        self.classes_ = sorted(set(labels.tolist()))
        var = xv.var(axis=0)
        k = min(self.n_top_genes, xv.shape[1])
        self.genes_ = np.sort(np.argsort(-var, kind="stable")[:k])
        sub = xv[:, self.genes_]
        self.center_ = sub.mean(axis=0)
        n_comp = max(1, min(self.n_components, xv.shape[0] - 1, k))
        _, _, vt = np.linalg.svd(sub - self.center_, full_matrices=False)
        self.components_ = vt[:n_comp]
        scores = (sub - self.center_) @ self.components_.T
        self.score_mean_ = scores.mean(axis=0)
        self.score_std_ = np.where(scores.std(axis=0) > 0, scores.std(axis=0), 1.0)
        z = (scores - self.score_mean_) / self.score_std_
        n_classes = len(self.classes_)
        index = {c: i for i, c in enumerate(self.classes_)}
        target = np.zeros((z.shape[0], n_classes))
        target[np.arange(z.shape[0]), [index[v] for v in labels.tolist()]] = 1.0
        if n_classes < 2:
            self.coef_ = np.zeros((z.shape[1], n_classes))
            self.intercept_ = np.zeros(n_classes)
            return self
        d = z.shape[1]

        def loss(theta: FloatArray) -> tuple[float, FloatArray]:
            w = theta[: d * n_classes].reshape(d, n_classes)
            b = theta[d * n_classes :]
            logits = z @ w + b
            lse = special.logsumexp(logits, axis=1)
            val = self.c * float(np.sum(lse - np.sum(target * logits, axis=1)))
            val += 0.5 * float(np.sum(w * w))
            p = np.exp(logits - lse[:, None]) - target
            gw = self.c * (z.T @ p) + w
            gb = self.c * p.sum(axis=0)
            return val, np.concatenate([gw.ravel(), gb])

        res = optimize.minimize(
            loss,
            np.zeros(d * n_classes + n_classes),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 500},
        )
        self.coef_ = res.x[: d * n_classes].reshape(d, n_classes)
        self.intercept_ = res.x[d * n_classes :]
        return self

    def predict_proba(self, x: ArrayLike) -> FloatArray:
        """Class probabilities, columns in :attr:`classes_` order."""
        z = self._project(np.asarray(x, dtype=np.float64))
        if len(self.classes_) < 2:
            return np.ones((z.shape[0], len(self.classes_)))
        return _softmax(z @ self.coef_ + self.intercept_)

    def predict(self, x: ArrayLike) -> list[Any]:
        """Most probable class of each row."""
        probs = self.predict_proba(x)
        return [self.classes_[i] for i in probs.argmax(axis=1)]

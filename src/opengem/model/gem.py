"""The GEM model: a structured, three-group latent model of log-expression.

Expression lives in ``y = log1p(CPM)`` over the 20,120-gene space (CPM of a study
that measured a gene panel is rescaled to the share of the transcriptome those
genes hold, so panels and whole transcriptomes share one scale). A sample is

    y = m(metadata) + W_bio z_bio + W_tech z_tech + Δ(perturbations | context) + ε

- ``m(metadata)`` (the prior mean): ridge regression on the metadata's tokens
  (ontology terms with their ancestors, enums, study, age) plus a one-hot of the
  full biological condition, so a seen condition reproduces its mean, an unseen
  combination composes its fields' effects and an unseen child term falls back
  to its ancestors' (stored low-rank);
- ``W_bio z_bio``: within-condition (replicate) variation, probabilistic PCA of
  the residuals around condition means; ``W_tech z_tech``: between-study (batch)
  variation, PCA of the study effects; ``ε``: per-gene residual noise (bulk: a
  seen study's own per-gene noise, moderated toward the pooled one, and its spread;
  single cells: negative-binomial counts around the profile, each gene with its own
  overdispersion);
- ``Δ``: the perturbation effect, learned from matched controls. Every
  (perturbation, context) of the corpus with controls is a *unit* whose effect is
  mean(perturbed) − mean(matched control). A reference receives the units of its
  perturbation weighted by how much the reference resembles each unit's
  controls (a kernel whose width is chosen by leave-one-context-out
  cross-validation; an infinitely wide kernel is the additive shift); doses and
  times interpolate piecewise-linearly in log dose between trained ones;
  combinations add their components (scaled by a factor fitted on the corpus's
  combinations); generation from metadata that names a context (its study and
  biological fields) where the perturbation was measured uses that context's
  units only (a seen condition is its measured effect, not a blend of other
  cell lines' or cell types'); an unseen perturbation of a known type gets its type's mean
  effect shrunk by a cross-validated factor plus, for gene targets, the type's
  on-target change at the target gene.

Metadata prediction is a separate discriminative path: class- and study-balanced
multinomial logistic regression on PCA scores plus each field's most
discriminative genes, temperature-calibrated on held-out studies (each weighing the same).

Everything here is numpy; the arrays are stored in the bundle's safetensors file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from opengem.contract.fields import PERTURBATION_FIELDS
from opengem.model.perturbations import (
    CONTEXT_FIELDS,
    Perturbation,
    combination_key,
    context_fields,
    perturbations_of,
)
from opengem.model.vocab import UNKNOWN, Vocabulary, numeric_value

FloatArray = np.ndarray
#: minimum expected count at which a zero says "this gene was not measured"
_PANEL_EXPECTED = 20.0
#: share of such zeros above which a sample is read as a gene panel
_PANEL_ZERO_SHARE = 0.3
#: reads at which a reference's level term is half on (:meth:`GEMModel.level_weight`)
LEVEL_READS = 1e5


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and penalties. Stored in the bundle; equal configs give equal models."""

    n_genes: int
    latent_biological: int = 16
    latent_technical: int = 8
    latent_perturbation: int = 16
    mean_rank: int = 512
    ridge_terms: float = 0.3
    ridge_condition: float = 1.0
    ridge_study: float = 3.0
    imputation_rounds: int = 3
    reference_prior_counts: float = 2000.0
    n_top_genes: int = 2000
    n_components: int = 50
    n_field_genes: int = 20
    #: at least this many of a head's own genes per class of its field (0: n_field_genes)
    field_genes_per_class: int = 0
    classifier_c: float = 1.0
    classifier_iterations: int = 300
    max_residual_rows: int = 2000
    #: how a group of samples is averaged into a condition mean, a context mean and a
    #: perturbation effect: "log" = mean of log1p(CPM) (bulk: deep samples, where the
    #: two agree); "linear" = log1p of the mean CPM (single cells: a shallow cell's
    #: log1p(CPM) is mostly 0 or a large value, and the mean of those logs is no
    #: expression level; expected counts need the log of the mean, as pseudobulk does)
    mean_space: str = "log"
    #: sample weights of the metadata heads: "study_class" (each study × class weighs
    #: the same, then each class), "class" (each class weighs the same), "none"
    classifier_balance: str = "study_class"


@dataclass
class Unit:
    """One perturbation (or combination) in one context, with its matched controls."""

    key: str  # combination key
    context: int  # index into contexts
    perturbations: list[dict[str, Any]]
    n_perturbed: int
    n_control: int

    @property
    def single(self) -> bool:
        return len(self.perturbations) == 1

    @property
    def log_dose(self) -> float | None:
        d = self.perturbations[0].get("dose") if self.single else None
        return None if d is None or d <= 0 else math.log10(d)

    @property
    def log_time(self) -> float | None:
        t = self.perturbations[0].get("time") if self.single else None
        return None if t is None or t <= 0 else math.log10(t)


@dataclass
class Classifier:
    """One field's head: classes, selected genes, weights and calibration temperature."""

    classes: list[str]
    genes: np.ndarray  # gene indices of the field's own features
    gene_mean: np.ndarray
    gene_std: np.ndarray
    weight: np.ndarray  # (n_components + n_genes, n_classes)
    bias: np.ndarray
    temperature: float = 1.0


@dataclass
class GEMModel:
    """A fitted model: arrays plus the small structures that index them."""

    config: ModelConfig
    vocab: Vocabulary
    # ---- expression scale
    ref_fraction: np.ndarray  # (G,) mean expression share in whole-transcriptome samples
    hvg: np.ndarray  # (H,) gene indices for similarity and classification
    # ---- prior mean
    columns: list[tuple[str, str]]  # feature columns: (kind, name)
    column_scale: np.ndarray  # (P,)
    gene_mean: np.ndarray  # (G,) intercept
    coef_u: np.ndarray  # (P, r)
    coef_v: np.ndarray  # (r, G)
    # ---- variation
    w_bio: np.ndarray  # (k_bio, G)
    w_tech: np.ndarray  # (k_tech, G)
    noise_sd: np.ndarray  # (G,)
    w_pert: np.ndarray  # (k_pert, G): basis of perturbation effects (for latents)
    # ---- perturbation effects
    contexts: list[str]
    context_mean: np.ndarray  # (C, G) control mean (log space)
    context_mask: np.ndarray  # (C, G) bool: genes measured
    units: list[Unit]
    unit_effect: np.ndarray  # (U, G)
    unit_mask: np.ndarray  # (U, G) bool
    kernel_width: float  # inf = additive shift
    combination_scale: float
    type_effect: dict[str, np.ndarray]  # type -> (G,) mean effect of that type
    type_shrink: dict[str, float]
    on_target: dict[str, float]  # type -> log change at the target gene
    # ---- metadata prediction
    pca_center: np.ndarray  # (H,)
    pca_components: np.ndarray  # (K, H)
    score_std: np.ndarray  # (K,)
    classifiers: dict[str, Classifier]
    # ---- stored training samples (condition-on-sample-ids)
    sample_records: list[dict[str, str]] = field(default_factory=list)
    sample_record_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    sample_z_bio: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    sample_z_tech: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    facts: dict[str, Any] = field(default_factory=dict)
    #: a seen perturbation's effect in a new sample moves with how far the sample's own
    #: level lies from the training contexts' control level: Δ + slope·(y − y_ctx). 0 =
    #: additive shift; -1 = the perturbed level of the training contexts (chosen with the
    #: kernel width by leave-one-context-out cross-validation)
    level_slope: float = 0.0
    #: (G,) a low quantile over whole-transcriptome studies of each gene's mean share:
    #: the share a gene holds in nearly every study (what a zero contradicts); empty in
    #: older bundles (then ``ref_fraction``)
    floor_fraction: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: mean residual variance of a variable gene outside the PCA (panel projections)
    pca_noise: float = 0.0
    #: per training study, its within-condition variation over the pooled one (beyond
    #: counting noise): samples generated in a seen study vary as much as its own do
    study_spread: dict[str, float] = field(default_factory=dict)
    #: per training study with a spread: its own per-gene residual noise SD, moderated
    #: toward ``noise_sd`` (replaces ``noise_sd * sqrt(spread)`` when generating in it)
    study_noise_sd: dict[str, np.ndarray] = field(default_factory=dict)
    #: (G,) single-cell models: each gene's negative-binomial overdispersion φ of cells
    #: around their condition's mean (``var = μ + φ μ²``), what "sample generation"
    #: draws cells with; empty for bulk models (Poisson counts around a noisy profile)
    cell_dispersion: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: per training study of a single-cell model: its own cells' overdispersion,
    #: moderated toward ``cell_dispersion`` (cells generated in that study use it)
    study_cell_dispersion: dict[str, np.ndarray] = field(default_factory=dict)
    #: single-cell models: the SD of a cell's log library within its condition (cells of
    #: one condition differ in depth: capture, size); "sample generation" from metadata
    #: draws each cell's depth log-normally around the asked total with it
    cell_library_sd: float = 0.0
    #: per training study of a single-cell model: its own cells' library SD
    study_cell_library_sd: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._column_index = {c: i for i, c in enumerate(self.columns)}
        self._units_by_key: dict[str, list[int]] = {}
        for i, u in enumerate(self.units):
            self._units_by_key.setdefault(u.key, []).append(i)
        self._single_keys = {u.key for u in self.units if u.single}
        self._ctx_hvg = self.standardise(
            self.context_mean[:, self.hvg], self.context_mask[:, self.hvg]
        )
        self._context_fields = [context_fields(k) for k in self.contexts]

    # ------------------------------------------------------------------ expression scale
    @property
    def n_genes(self) -> int:
        return int(self.config.n_genes)

    def measured(self, counts: np.ndarray) -> np.ndarray:
        """Which genes each row measured: all, unless the zeros say it is a gene panel.

        A zero where the model expects ≥ 20 counts even at the gene's low share
        (``floor_fraction``: what it holds in nearly every study, so a tissue-specific
        gene absent from this tissue does not count) is very unlikely in a whole
        transcriptome; when more than 30% of such genes are zero the sample is read
        as a panel and its zero genes as unmeasured.
        """
        counts = np.atleast_2d(counts)
        lib = counts.sum(axis=1, keepdims=True)
        floor = self.floor_fraction if self.floor_fraction.size else self.ref_fraction
        expected = lib * floor[None, :] >= _PANEL_EXPECTED
        zero = counts == 0
        n_expected = expected.sum(axis=1)
        share = np.where(
            n_expected > 0, (zero & expected).sum(axis=1) / np.maximum(n_expected, 1), 0
        )
        panel = share > _PANEL_ZERO_SHARE
        mask = np.ones(counts.shape, dtype=bool)
        mask[panel] = ~zero[panel]
        return mask

    def log_expression(self, counts: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """``log1p(CPM)`` with panel CPM rescaled to the share of the genes measured."""
        counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
        if mask is None:
            mask = self.measured(counts)
        lib = np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
        share = (mask * self.ref_fraction[None, :]).sum(axis=1, keepdims=True)
        share = np.clip(share, 1e-6, 1.0)
        return np.log1p(counts / lib * share * 1e6)

    @staticmethod
    def expected_counts(
        y: np.ndarray, library: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Expected counts of log-expression rows at the given library sizes.

        ``out`` (float64, ``y``'s shape, C-contiguous; may be ``y`` itself) receives the
        result: every step runs in place there, with the same operations in the same
        order (so the same bits) as without it.
        """
        cpm = np.clip(y, 0.0, 30.0, out=out)
        np.expm1(cpm, out=cpm)
        total = cpm.sum(axis=1, keepdims=True)
        np.maximum(total, 1e-12, out=total)
        np.divide(cpm, total, out=cpm)
        cpm *= np.asarray(library, dtype=np.float64).reshape(-1, 1)
        return cpm

    # --------------------------------------------------------------------- prior mean
    def feature_rows(self, records: Sequence[Mapping[str, str]]) -> np.ndarray:
        """Scaled feature rows (ridge design) of metadata records."""
        from opengem.model.perturbations import COVARIATE_FIELDS, context_key, covariate_columns
        from opengem.ontology.describe import term_ancestors

        out = np.zeros((len(records), len(self.columns)), dtype=np.float64)
        for i, r in enumerate(records):
            for name, fv in self.vocab.fields.items():
                if name in PERTURBATION_FIELDS or not r.get(name):
                    continue
                for t in fv.token_indices(r.get(name), term_ancestors):
                    j = self._column_index.get(("token", f"{name}={fv.tokens[t]}"))
                    if j is not None:
                        out[i, j] = 1.0
            j = self._column_index.get(("condition", context_key(r)))
            if j is not None:
                out[i, j] = 1.0
            for name in COVARIATE_FIELDS:
                value, _ = numeric_value(name, r.get(name))
                log_column, known_column = covariate_columns(name)
                j = self._column_index.get(log_column)
                if j is not None and value is not None:
                    scale = self.vocab.numeric[name]
                    out[i, j] = (math.log1p(max(value, 0.0)) - scale.mean) / (scale.std or 1.0)
                    out[i, self._column_index[known_column]] = 1.0
        return out * self.column_scale[None, :]

    def prior_mean(self, records: Sequence[Mapping[str, str]]) -> np.ndarray:
        """The unperturbed mean log-expression of each record's condition."""
        phi = self.feature_rows(records)
        return self.gene_mean[None, :] + (phi @ self.coef_u) @ self.coef_v

    # --------------------------------------------------------------- perturbation effects
    @staticmethod
    def standardise(y: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Rows z-scored over their measured genes (unmeasured -> 0)."""
        y = np.where(mask, y, np.nan)
        mean = np.nanmean(y, axis=1, keepdims=True)
        sd = np.nanstd(y, axis=1, keepdims=True)
        return np.nan_to_num((y - mean) / np.where(sd > 0, sd, 1.0))

    def context_similarity(self, y: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Correlation of each row with every context's control mean (HVGs; rows × C)."""
        if not len(self.contexts):
            return np.zeros((len(y), 0))
        a = self.standardise(y[:, self.hvg], mask[:, self.hvg])
        both = mask[:, self.hvg].astype(np.float64) @ self.context_mask[:, self.hvg].T.astype(
            np.float64
        )
        return (a @ self._ctx_hvg.T) / np.maximum(both, 1.0)

    def _kernel(self, sim: np.ndarray) -> np.ndarray:
        if not np.isfinite(self.kernel_width) or sim.size == 0:
            return np.ones_like(sim)
        return np.exp((sim - sim.max()) / self.kernel_width)

    def _interpolate(self, rows: list[int], pert: Perturbation) -> tuple[np.ndarray, np.ndarray]:
        """Effect of one context's units at the requested dose and time."""
        units = [self.units[i] for i in rows]
        times = sorted({u.log_time for u in units if u.log_time is not None})
        if times:
            want = pert.time
            if want is None or want <= 0:  # the best-sampled time
                counts: dict[float, int] = {}
                for u in units:
                    if u.log_time is not None:
                        counts[u.log_time] = counts.get(u.log_time, 0) + 1
                t = max(counts, key=lambda k: (counts[k], -k))
            else:
                t = min(times, key=lambda k: abs(k - math.log10(want)))
            units_t = [r for r, u in zip(rows, units, strict=True) if u.log_time in (t, None)]
            rows = units_t or rows
        dosed = [(self.units[i].log_dose, i) for i in rows if self.units[i].log_dose is not None]
        mask: np.ndarray = np.asarray(self.unit_mask[rows].all(axis=0))
        if not dosed or pert.log_dose is None:
            if dosed and pert.log_dose is None:
                # no dose asked: the median trained dose
                dosed.sort()
                i = dosed[len(dosed) // 2][1]
                return self.unit_effect[i], self.unit_mask[i]
            return self.unit_effect[rows].mean(axis=0), mask
        dosed.sort()
        xs = np.array([d for d, _ in dosed])
        effects = self.unit_effect[[i for _, i in dosed]]
        x = pert.log_dose
        if x <= xs[0]:  # below the lowest trained dose: toward no effect, linearly in dose
            frac = 10 ** (x - xs[0])
            return effects[0] * frac, mask
        if x >= xs[-1]:
            return effects[-1], mask
        j = int(np.searchsorted(xs, x))
        w = (x - xs[j - 1]) / (xs[j] - xs[j - 1]) if xs[j] > xs[j - 1] else 1.0
        return (1 - w) * effects[j - 1] + w * effects[j], mask

    def _across_contexts(
        self,
        rows: list[int],
        sim: np.ndarray,
        per_context: Callable[[list[int]], tuple[np.ndarray, np.ndarray]],
        y: np.ndarray | None = None,
        level_weight: float = 1.0,
        within: frozenset[int] = frozenset(),
    ) -> np.ndarray:
        """Kernel-weighted mean over contexts of each context's effect (gene by gene,
        over the contexts that measured the gene), plus ``level_slope`` (times
        ``level_weight``) times how far the sample ``y`` lies from those contexts'
        control means (weighted alike). Contexts in ``within`` only, where any of
        them measured the perturbation."""
        by_context: dict[int, list[int]] = {}
        for i in rows:
            by_context.setdefault(self.units[i].context, []).append(i)
        if within and not within.isdisjoint(by_context):
            by_context = {c: r for c, r in by_context.items() if c in within}
        ctxs = sorted(by_context)
        weights = self._kernel(sim[ctxs]) if sim.size else np.ones(len(ctxs))
        total, wsum = np.zeros(self.n_genes), np.zeros(self.n_genes)
        base = np.zeros(self.n_genes)
        for w, c in zip(weights, ctxs, strict=True):
            eff, mask = per_context(by_context[c])
            total += w * np.where(mask, eff, 0.0)
            base += w * np.where(mask, self.context_mean[c], 0.0)
            wsum += w * mask
        seen = wsum > 0
        out = np.where(seen, total / np.maximum(wsum, 1e-12), 0.0)
        if y is not None and self.level_slope:
            base = base / np.maximum(wsum, 1e-12)
            out = out + np.where(seen, self.level_slope * level_weight * (y - base), 0.0)
        return out

    def _single_effect(
        self,
        pert: Perturbation,
        sim: np.ndarray,
        gene_index: Callable[[str], int | None],
        y: np.ndarray | None = None,
        level_weight: float = 1.0,
        within: frozenset[int] = frozenset(),
    ) -> tuple[np.ndarray, bool]:
        rows = [i for i in self._units_by_key.get(pert.key, []) if self.units[i].single]
        if rows:
            return self._across_contexts(
                rows, sim, lambda mine: self._interpolate(mine, pert), y, level_weight, within
            ), True
        # unseen: the type's mean effect, shrunk, and the on-target change for gene targets
        effect = self.type_effect.get(pert.type)
        out = (
            np.zeros(self.n_genes)
            if effect is None
            else self.type_shrink.get(pert.type, 0.0) * effect.astype(np.float64)
        )
        if pert.targets_gene:
            g = gene_index(pert.id)
            if g is not None:
                out = out.copy()
                out[g] = self.on_target.get(pert.type, 0.0)
        return out, False

    def effect(
        self,
        perts: Sequence[Perturbation],
        sim: np.ndarray,
        gene_index: Callable[[str], int | None],
        y: np.ndarray | None = None,
        level_weight: float = 1.0,
        within: frozenset[int] = frozenset(),
    ) -> tuple[np.ndarray, bool]:
        """Δ (log space) of a perturbation list for a sample with context similarities ``sim``
        (and log expression ``y``, for the level term of a seen single perturbation, on
        as far as ``level_weight`` says: :meth:`level_weight`). ``within``: the training
        contexts the sample is known to belong to (:meth:`contexts_of`); a perturbation
        measured in any of them takes its effect from those only.

        Returns the effect and whether every component (or the combination) was seen.
        """
        if not perts:
            return np.zeros(self.n_genes), True
        key = combination_key(perts)
        if len(perts) > 1 and key in self._units_by_key:  # the combination itself was measured

            def pooled(mine: list[int]) -> tuple[np.ndarray, np.ndarray]:
                return self.unit_effect[mine].mean(0), np.asarray(self.unit_mask[mine].all(0))

            return self._across_contexts(self._units_by_key[key], sim, pooled, within=within), True
        parts = [
            self._single_effect(
                p, sim, gene_index, y if len(perts) == 1 else None, level_weight, within
            )
            for p in perts
        ]
        total = np.sum([p[0] for p in parts], axis=0)
        if len(parts) > 1:
            total = total * self.combination_scale
        return total, all(p[1] for p in parts)

    def contexts_of(self, record: Mapping[str, str]) -> frozenset[int]:
        """The training contexts a record names: those whose study and biological
        fields agree with every one of them the record gives (empty when it gives none,
        or none agrees)."""
        given = {f: v for f in ("study", *CONTEXT_FIELDS) if (v := record.get(f))}
        if not given:
            return frozenset()
        return frozenset(
            i
            for i, fields in enumerate(self._context_fields)
            if all(fields.get(f) == v for f, v in given.items())
        )

    @staticmethod
    def level_weight(library: float) -> float:
        """How far a reference's own level drives the level term: ``library /
        (library + LEVEL_READS)`` (a deep bulk sample ~1; a shallow cell ~0, its
        log1p(CPM) being 0 or a large value, no level to scale an effect by)."""
        return float(library / (library + LEVEL_READS))

    def context_prior(self, sim: np.ndarray) -> np.ndarray:
        """Kernel-weighted control mean of the training contexts (a shallow sample's prior)."""
        if sim.size == 0:
            return self.gene_mean.astype(np.float64)
        w = np.exp((sim - sim.max()) / 0.02)
        m = self.context_mask.astype(np.float64)
        num = (w[:, None] * m * self.context_mean).sum(axis=0)
        den = (w[:, None] * m).sum(axis=0)
        return np.where(den > 0, num / np.maximum(den, 1e-12), self.gene_mean)

    # ------------------------------------------------------------------ latents
    def project(self, residual: np.ndarray, basis: np.ndarray) -> np.ndarray:
        """Least-squares coordinates of residual rows on a basis (rows of ``basis``)."""
        if basis.shape[0] == 0:
            return np.zeros((residual.shape[0], 0))
        gram = basis @ basis.T + 1e-6 * np.eye(basis.shape[0])
        return np.linalg.solve(gram, basis @ residual.T).T

    # ------------------------------------------------------------------ classification
    def pca_scores(self, yh: np.ndarray, mh: np.ndarray) -> np.ndarray:
        """Standardised PCA scores of rows over the variable genes (``yh``, mask ``mh``).

        A row that measured every variable gene is projected; a gene panel gets the
        probabilistic-PCA posterior mean from the genes it measured, so its missing
        genes neither pull its scores toward the centre nor stand in as zeros.
        """
        comps, sd = self.pca_components, self.score_std
        x = np.where(mh, yh - self.pca_center[None, :], 0.0)
        raw = x @ comps.T
        partial = np.flatnonzero(~mh.all(axis=1))
        if len(partial):
            noise = self.pca_noise if self.pca_noise > 0 else 1e-3 * float(np.mean(sd**2))
            ridge = np.diag(noise / np.maximum(sd**2, 1e-12))
            for i in partial:
                cm = comps[:, mh[i]]
                raw[i] = np.linalg.solve(cm @ cm.T + ridge, cm @ x[i, mh[i]])
        return raw / sd

    def classifier_features(self, y: np.ndarray, mask: np.ndarray, name: str) -> np.ndarray:
        clf = self.classifiers[name]
        scores = self.pca_scores(y[:, self.hvg], mask[:, self.hvg])
        g = clf.genes
        own = np.where(mask[:, g], y[:, g], clf.gene_mean[None, :])
        own = (own - clf.gene_mean) / clf.gene_std
        return np.concatenate([scores, own], axis=1)

    def classify(self, y: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """Calibrated class probabilities per field (rows × classes)."""
        out = {}
        for name, clf in self.classifiers.items():
            z = self.classifier_features(y, mask, name) @ clf.weight + clf.bias
            z = z / clf.temperature
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            out[name] = p / p.sum(axis=1, keepdims=True)
        return out

    # ---------------------------------------------------------------- persistence
    def arrays(self) -> dict[str, np.ndarray]:
        """Every array, by name (for safetensors)."""
        a: dict[str, np.ndarray] = {
            "ref_fraction": self.ref_fraction,
            "floor_fraction": self.floor_fraction,
            "hvg": self.hvg.astype(np.int32),
            "column_scale": self.column_scale,
            "gene_mean": self.gene_mean,
            "coef_u": self.coef_u,
            "coef_v": self.coef_v,
            "w_bio": self.w_bio,
            "w_tech": self.w_tech,
            "noise_sd": self.noise_sd,
            "w_pert": self.w_pert,
            "context_mean": self.context_mean,
            "context_mask": np.packbits(self.context_mask, axis=1),
            "unit_effect": self.unit_effect,
            "unit_mask": np.packbits(self.unit_mask, axis=1),
            "pca_center": self.pca_center,
            "pca_components": self.pca_components,
            "score_std": self.score_std,
            "sample_record_index": self.sample_record_index.astype(np.int32),
            "sample_z_bio": self.sample_z_bio,
            "sample_z_tech": self.sample_z_tech,
        }
        for t, v in self.type_effect.items():
            a[f"type_effect.{t}"] = v
        if self.cell_dispersion.size:
            a["cell_dispersion"] = self.cell_dispersion
        for name, per_study in (
            ("study_cell_dispersion", self.study_cell_dispersion),
            ("study_noise_sd", self.study_noise_sd),
        ):
            if per_study:  # one row per study, in the order bundle.json names them
                a[name] = np.stack([per_study[s] for s in sorted(per_study)])
        for f, c in self.classifiers.items():
            a[f"clf.{f}.genes"] = c.genes.astype(np.int32)
            a[f"clf.{f}.gene_mean"] = c.gene_mean
            a[f"clf.{f}.gene_std"] = c.gene_std
            a[f"clf.{f}.weight"] = c.weight
            a[f"clf.{f}.bias"] = c.bias
        return a

    def structure(self) -> dict[str, Any]:
        """Everything that is not an array (for bundle.json)."""
        extra: dict[str, Any] = {}
        if self.study_cell_dispersion:  # single-cell models only
            extra["study_dispersion_studies"] = sorted(self.study_cell_dispersion)
        return extra | {
            "config": asdict(self.config),
            "columns": [list(c) for c in self.columns],
            "contexts": self.contexts,
            "units": [asdict(u) for u in self.units],
            "kernel_width": None if not np.isfinite(self.kernel_width) else self.kernel_width,
            "combination_scale": self.combination_scale,
            "level_slope": self.level_slope,
            "pca_noise": self.pca_noise,
            "study_spread": self.study_spread,
            "study_noise_studies": sorted(self.study_noise_sd),
            "cell_library_sd": self.cell_library_sd,
            "study_cell_library_sd": self.study_cell_library_sd,
            "type_shrink": self.type_shrink,
            "on_target": self.on_target,
            "classifiers": {
                f: {"classes": c.classes, "temperature": c.temperature}
                for f, c in self.classifiers.items()
            },
            "sample_records": self.sample_records,
            "facts": self.facts,
        }

    @classmethod
    def from_parts(
        cls, structure: Mapping[str, Any], arrays: Mapping[str, np.ndarray], vocab: Vocabulary
    ) -> GEMModel:
        def f32(name: str) -> np.ndarray:
            return np.asarray(arrays[name], dtype=np.float32)

        def f64(name: str) -> np.ndarray:
            return np.asarray(arrays[name], dtype=np.float64)

        def per_study(name: str, studies_key: str) -> dict[str, np.ndarray]:
            """Rows of a per-study array, by the study names bundle.json lists."""
            names = structure.get(studies_key, [])
            return {str(s): f64(name)[i] for i, s in enumerate(names)}

        config = ModelConfig(**structure["config"])
        n = config.n_genes
        classifiers = {
            f: Classifier(
                list(spec["classes"]),
                np.asarray(arrays[f"clf.{f}.genes"], dtype=np.int64),
                f64(f"clf.{f}.gene_mean"),
                f64(f"clf.{f}.gene_std"),
                f64(f"clf.{f}.weight"),
                f64(f"clf.{f}.bias"),
                float(spec["temperature"]),
            )
            for f, spec in structure["classifiers"].items()
        }
        width = structure.get("kernel_width")
        return cls(
            config=config,
            vocab=vocab,
            ref_fraction=f64("ref_fraction"),
            hvg=np.asarray(arrays["hvg"], dtype=np.int64),
            columns=[(str(a), str(b)) for a, b in structure["columns"]],
            column_scale=f64("column_scale"),
            gene_mean=f64("gene_mean"),
            coef_u=f64("coef_u"),
            coef_v=f64("coef_v"),
            w_bio=f64("w_bio"),
            w_tech=f64("w_tech"),
            noise_sd=f64("noise_sd"),
            w_pert=f64("w_pert"),
            contexts=list(structure["contexts"]),
            context_mean=f64("context_mean"),
            context_mask=np.unpackbits(arrays["context_mask"], axis=1, count=n).astype(bool),
            units=[Unit(**u) for u in structure["units"]],
            unit_effect=f32("unit_effect"),
            unit_mask=np.unpackbits(arrays["unit_mask"], axis=1, count=n).astype(bool),
            kernel_width=math.inf if width is None else float(width),
            combination_scale=float(structure["combination_scale"]),
            level_slope=float(structure.get("level_slope", 0.0)),
            pca_noise=float(structure.get("pca_noise", 0.0)),
            study_spread={str(k): float(v) for k, v in structure.get("study_spread", {}).items()},
            study_noise_sd=per_study("study_noise_sd", "study_noise_studies"),
            floor_fraction=f64("floor_fraction") if "floor_fraction" in arrays else np.zeros(0),
            cell_dispersion=f64("cell_dispersion") if "cell_dispersion" in arrays else np.zeros(0),
            study_cell_dispersion=per_study("study_cell_dispersion", "study_dispersion_studies"),
            cell_library_sd=float(structure.get("cell_library_sd", 0.0)),
            study_cell_library_sd={
                str(k): float(v) for k, v in structure.get("study_cell_library_sd", {}).items()
            },
            type_effect={
                k.split(".", 1)[1]: f32(k) for k in arrays if k.startswith("type_effect.")
            },
            type_shrink={k: float(v) for k, v in structure["type_shrink"].items()},
            on_target={k: float(v) for k, v in structure["on_target"].items()},
            pca_center=f64("pca_center"),
            pca_components=f64("pca_components"),
            score_std=f64("score_std"),
            classifiers=classifiers,
            sample_records=[dict(r) for r in structure.get("sample_records", [])],
            sample_record_index=np.asarray(arrays["sample_record_index"], dtype=np.int64),
            sample_z_bio=f32("sample_z_bio"),
            sample_z_tech=f32("sample_z_tech"),
            facts=dict(structure.get("facts", {})),
        )


def perturbation_list(record: Mapping[str, str]) -> tuple[Perturbation, ...]:
    """Parsed perturbations of a record (re-exported for the engine)."""
    return perturbations_of(record)


__all__ = ["UNKNOWN", "Classifier", "GEMModel", "ModelConfig", "Unit", "perturbation_list"]

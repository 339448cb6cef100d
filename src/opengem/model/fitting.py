"""Fitting a :class:`~opengem.model.gem.GEMModel` to a corpus (numpy / scipy).

Every component has an exact or convex fit, so a config and corpus give one
model, in seconds to minutes on a CPU, with no epochs to cap:

1. expression scale: the mean expression share of each gene in whole-transcriptome
   studies (to put gene panels on the same scale) and the highly variable genes;
2. perturbation units: mean(perturbed) − mean(matched control) per perturbation
   and context (matched within a declared ``match_group`` when the card has one);
   the kernel width over contexts and the level slope (how far an effect follows the
   new context's own level) by leave-one-context-out cross-validation; type
   means with a leave-one-perturbation-out shrinkage; on-target changes per type;
   the combination factor;
3. prior mean: weighted ridge regression of condition means (perturbed samples
   moved back to their control by their own unit's effect), unmeasured genes
   imputed by EM rounds, compressed to low rank;
4. variation: probabilistic PCA of within-condition residuals (biological) and of
   the study effects (technical);
5. metadata heads: study- and class-balanced multinomial logistic regression
   (L-BFGS) on PCA scores + each field's top discriminative genes (at least
   ``field_genes_per_class`` per class of the field), with a temperature fitted on
   held-out studies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy import optimize, special

from opengem.contract import FIELDS, PERTURBATION_FIELDS
from opengem.model.gem import Classifier, GEMModel, ModelConfig, Unit
from opengem.model.perturbations import (
    CONTEXT_FIELDS,
    COVARIATE_FIELDS,
    Perturbation,
    combination_key,
    context_key,
    covariate_columns,
    perturbations_of,
    without_perturbation,
)
from opengem.model.vocab import Vocabulary

Log = Callable[[str], None]
KERNEL_GRID = (math.inf, 0.2, 0.1, 0.05, 0.02, 0.01)
LEVEL_GRID = (0.0, -0.1, -0.2, -0.3, -0.5)
DEFAULT_ON_TARGET = {"crispr": -1.0, "shrna": -1.0, "sirna": -1.0, "overexpression": 1.5}
#: fields a metadata head is not trained for (identity of a study is not a sample property)
_NOT_PREDICTED = ("study",)


def _quiet(message: str) -> None:
    pass


def _dense_mean(y: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
    return np.asarray(y[rows].mean(axis=0)).ravel()


def _linear(y: sp.csr_matrix) -> sp.csr_matrix:
    """CPM (share-scaled) from ``y = log1p(CPM)``, same sparsity."""
    out = y.copy()
    out.data = np.expm1(out.data)
    return out


def _group_mean(
    y: sp.csr_matrix, linear: sp.csr_matrix | None
) -> Callable[[np.ndarray], np.ndarray]:
    """``rows -> mean expression``: mean of log1p(CPM), or with ``linear`` (the CPM
    matrix) log1p of the mean CPM (``ModelConfig.mean_space``)."""
    if linear is None:
        return lambda rows: _dense_mean(y, rows)
    return lambda rows: np.log1p(_dense_mean(linear, rows))


def _record_key(record: Mapping[str, str]) -> str:
    """A record as one string (fields sorted): ``"k=v\tk=v"``."""
    return "\t".join(f"{k}={v}" for k, v in sorted(record.items()))


def _top_pearson(a: np.ndarray, b: np.ndarray, n: int = 100) -> float:
    top = np.argsort(-np.abs(b))[:n]
    x, y = a[top], b[top]
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


class _Corpus:
    """The arrays of a corpus that fitting needs."""

    def __init__(
        self,
        counts: sp.spmatrix,
        records: Sequence[dict[str, str]],
        studies: Sequence[str],
        study_masks: dict[str, np.ndarray],
        match_groups: Sequence[str] | None,
    ) -> None:
        self.x = sp.csr_matrix(counts, dtype=np.float64)
        self.records = [dict(r) for r in records]
        self.studies = np.asarray(studies, dtype=object)
        self.study_masks = study_masks
        self.match = np.asarray(match_groups if match_groups is not None else [""] * len(records))
        self.n, self.g = self.x.shape
        self.library = np.asarray(self.x.sum(axis=1)).ravel()
        names = sorted(set(self.studies.tolist()))
        self.study_index = np.array([names.index(s) for s in self.studies])
        self.mask_matrix = np.stack([study_masks[s] for s in names])  # (studies, G) bool
        # share of studies measuring each gene (each study counts once)
        self.study_coverage = self.mask_matrix.mean(axis=0)

    def masks(self, rows: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        """(len(rows), G or len(cols)) bool: the genes each row's study measured."""
        m = self.mask_matrix if cols is None else self.mask_matrix[:, cols]
        return m[self.study_index[rows]]


#: the quantile over whole-transcriptome studies of a gene's share that a zero must
#: contradict for the panel test (:meth:`GEMModel.measured`)
FLOOR_QUANTILE = 0.1


def _reference_fraction(c: _Corpus) -> tuple[np.ndarray, np.ndarray]:
    """Each gene's mean expression share over whole-transcriptome studies, and its
    low (:data:`FLOOR_QUANTILE`) quantile over those studies' means."""
    measured = {s: int(m.sum()) for s, m in c.study_masks.items() if s in set(c.studies)}
    top = max(measured.values())
    full = [s for s, k in measured.items() if k >= 0.6 * top]
    parts = []
    for s in full:
        rows = np.flatnonzero(c.studies == s)
        frac = sp.diags(1.0 / np.maximum(c.library[rows], 1.0)) @ c.x[rows]
        parts.append(np.asarray(frac.mean(axis=0)).ravel())
    ref = np.mean(parts, axis=0)
    floor = np.quantile(np.array(parts), FLOOR_QUANTILE, axis=0)
    # genes no whole-transcriptome study measured: the share they hold where measured
    return np.maximum(ref, 0.0) / max(ref.sum(), 1e-12), np.maximum(floor, 0.0)


def _row_scale(c: _Corpus, ref: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Per row, the factor from counts to share-scaled CPM (a panel's CPM rescaled to the
    share of the transcriptome its study's genes hold)."""
    rows = np.arange(c.n) if rows is None else rows
    share = np.array([float(ref[c.study_masks[s]].sum()) for s in c.studies[rows]])
    return np.clip(share, 1e-6, 1.0) * 1e6 / np.maximum(c.library[rows], 1.0)


def _log_expression(c: _Corpus, ref: np.ndarray) -> sp.csr_matrix:
    y = sp.diags(_row_scale(c, ref)) @ c.x
    y = sp.csr_matrix(y)
    y.data = np.log1p(y.data)
    return y


def _gene_moments(c: _Corpus, y: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per gene over the samples that measured it: mean, variance, number of samples."""
    s1 = np.zeros(c.g)
    s2 = np.zeros(c.g)
    n = np.zeros(c.g)
    for s in np.unique(c.studies):
        rows = np.flatnonzero(c.studies == s)
        m = c.study_masks[s]
        sub = y[rows]
        s1 += np.asarray(sub.sum(axis=0)).ravel() * m
        s2 += np.asarray(sub.multiply(sub).sum(axis=0)).ravel() * m
        n += len(rows) * m
    mean = s1 / np.maximum(n, 1)
    var = s2 / np.maximum(n, 1) - mean**2
    return mean, np.maximum(var, 0.0), n


# ---------------------------------------------------------------------------- units


def _units(
    c: _Corpus, mean: Callable[[np.ndarray], np.ndarray]
) -> tuple[list[str], np.ndarray, np.ndarray, list[Unit], np.ndarray, np.ndarray, np.ndarray]:
    """Contexts with controls, their control means, and the perturbation units in them.

    ``mean(rows)`` is the mean expression of a group of samples (see
    :func:`_group_mean`).
    """
    perts = [perturbations_of(r) for r in c.records]
    ctx_of = [context_key(without_perturbation(r)) for r in c.records]
    by_ctx: dict[str, list[int]] = {}
    for i, k in enumerate(ctx_of):
        by_ctx.setdefault(k, []).append(i)
    contexts: list[str] = []
    ctx_means, ctx_masks = [], []
    units: list[Unit] = []
    effects, masks = [], []
    unit_of_sample = np.full(c.n, -1, dtype=np.int64)
    for key in sorted(by_ctx):
        rows = np.array(by_ctx[key])
        ctrl = rows[[not perts[i] for i in rows]]
        treated = rows[[bool(perts[i]) for i in rows]]
        if len(ctrl) == 0 or len(treated) == 0:
            continue
        ci = len(contexts)
        contexts.append(key)
        mask = c.study_masks[c.studies[rows[0]]]
        ctrl_mean = mean(ctrl)
        ctx_means.append(ctrl_mean)
        ctx_masks.append(mask)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i in treated:
            p = perts[i]
            groups.setdefault(
                (
                    combination_key(p),
                    tuple((q.dose, q.time) for q in sorted(p, key=lambda q: q.key)),
                ),
                [],
            ).append(int(i))
        for (ckey, _), members in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
            members_a = np.array(members)
            diffs = []
            for m in sorted(set(c.match[members_a]) - {""}):
                mc = ctrl[c.match[ctrl] == m]
                mp = members_a[c.match[members_a] == m]
                if len(mc) and len(mp):
                    diffs.append(mean(mp) - mean(mc))
            effect = np.mean(diffs, axis=0) if diffs else mean(members_a) - ctrl_mean
            p0 = sorted(perts[members[0]], key=lambda q: q.key)
            unit = Unit(
                key=ckey,
                context=ci,
                perturbations=[
                    {
                        "id": q.id,
                        "type": q.type,
                        "dose": q.dose,
                        "dose_unit": q.dose_unit,
                        "time": q.time,
                    }
                    for q in p0
                ],
                n_perturbed=len(members),
                n_control=len(ctrl),
            )
            unit_of_sample[members_a] = len(units)
            units.append(unit)
            effects.append(np.where(mask, effect, 0.0))
            masks.append(mask)
    g = c.g
    return (
        contexts,
        np.array(ctx_means).reshape(-1, g),
        np.array(ctx_masks, dtype=bool).reshape(-1, g),
        units,
        np.array(effects).reshape(-1, g),
        np.array(masks, dtype=bool).reshape(-1, g),
        unit_of_sample,
    )


def _context_similarity(ctx_mean: np.ndarray, ctx_mask: np.ndarray, hvg: np.ndarray) -> np.ndarray:
    """Correlation between contexts' control means (the same measure a reference gets)."""
    if len(ctx_mean) == 0:
        return np.zeros((0, 0))
    a = GEMModel.standardise(ctx_mean[:, hvg], ctx_mask[:, hvg])
    both = ctx_mask[:, hvg].astype(float) @ ctx_mask[:, hvg].T.astype(float)
    return (a @ a.T) / np.maximum(both, 1.0)


def _closest_dose(units: list[Unit], rows: list[int], target: Unit) -> int:
    def dist(i: int) -> float:
        a, b = units[i].log_dose, target.log_dose
        ta, tb = units[i].log_time, target.log_time
        d = 0.0 if a is None or b is None else abs(a - b)
        t = 0.0 if ta is None or tb is None else abs(ta - tb)
        return d + t

    return min(rows, key=dist)


def _choose_kernel(
    units: list[Unit],
    effects: np.ndarray,
    masks: np.ndarray,
    sim: np.ndarray,
    ctx_mean: np.ndarray,
    log: Log,
) -> tuple[float, float, dict[str, float]]:
    """Kernel width and level slope maximising leave-one-context-out Pearson (top-100
    genes of each unit): each unit predicted from the other contexts' units of its
    perturbation, with the level term on its own context's control mean."""
    by_key: dict[str, dict[int, list[int]]] = {}
    for i, u in enumerate(units):
        if u.single:
            by_key.setdefault(u.key, {}).setdefault(u.context, []).append(i)
    cases = []
    for per_ctx in by_key.values():
        if len(per_ctx) < 2:
            continue
        for ctx, rows in per_ctx.items():
            for i in rows:
                others = [
                    (c2, _closest_dose(units, r2, units[i]))
                    for c2, r2 in per_ctx.items()
                    if c2 != ctx
                ]
                cases.append((i, others))
    scores: dict[str, float] = {}
    if not cases:
        return math.inf, 0.0, scores
    best, best_slope, best_score = math.inf, 0.0, -np.inf
    for width in KERNEL_GRID:
        parts = []
        for i, others in cases:
            s = np.array([sim[units[i].context, c2] for c2, _ in others])
            w = np.ones_like(s) if not np.isfinite(width) else np.exp((s - s.max()) / width)
            rows = [j for _, j in others]
            m = masks[rows]
            den = (w[:, None] * m).sum(axis=0)
            safe = np.maximum(den, 1e-12)
            pred = np.where(den > 0, (w[:, None] * m * effects[rows]).sum(axis=0) / safe, 0.0)
            ctxs = [c2 for c2, _ in others]
            base = (w[:, None] * m * ctx_mean[ctxs]).sum(axis=0) / safe
            gap = np.where(den > 0, ctx_mean[units[i].context] - base, 0.0)
            keep = masks[i] & (den > 0)
            parts.append((pred[keep], gap[keep], effects[i][keep]))
        for slope in LEVEL_GRID:
            score = float(np.mean([_top_pearson(p + slope * g, e) for p, g, e in parts]))
            label = "inf" if not np.isfinite(width) else f"{width:g}"
            scores[f"{label}/{slope:g}"] = round(score, 4)
            if score > best_score + 1e-4:
                best, best_slope, best_score = width, slope, score
    log(
        f"  kernel over contexts: width {best:g}, level slope {best_slope:g} "
        f"(held-out-context Pearson {best_score:.3f} vs additive "
        f"{scores.get('inf/0', float('nan')):.3f}; {len(cases)} held-out units)"
    )
    return best, best_slope, scores


def _type_statistics(
    units: list[Unit],
    effects: np.ndarray,
    masks: np.ndarray,
    gene_index: Callable[[str], int | None],
) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, float]]:
    by_type: dict[str, dict[str, list[int]]] = {}
    for i, u in enumerate(units):
        if u.single:
            by_type.setdefault(u.perturbations[0]["type"], {}).setdefault(u.key, []).append(i)
    type_effect, shrink, on_target = {}, {}, {}
    for t, keys in sorted(by_type.items()):
        key_means = {}
        for k, rows in keys.items():
            m = masks[rows]
            num = (m * effects[rows]).sum(axis=0)
            key_means[k] = (num / np.maximum(m.sum(axis=0), 1), m.any(axis=0))
        stack = np.array([v[0] for v in key_means.values()])
        present = np.array([v[1] for v in key_means.values()])
        type_effect[t] = (stack.sum(axis=0) / np.maximum(present.sum(axis=0), 1)).astype(np.float32)
        if len(key_means) >= 2:
            num = den = 0.0
            total = stack.sum(axis=0)
            count = present.sum(axis=0)
            for j in range(len(stack)):
                other = (total - stack[j]) / np.maximum(count - present[j], 1)
                keep = present[j]
                num += float(other[keep] @ stack[j][keep])
                den += float(other[keep] @ other[keep])
            shrink[t] = float(np.clip(num / den, 0.0, 1.0)) if den > 0 else 0.0
        else:
            shrink[t] = 0.25
        if t in DEFAULT_ON_TARGET:
            changes = []
            for rows in keys.values():
                g = gene_index(units[rows[0]].perturbations[0]["id"])
                if g is not None and masks[rows[0], g]:
                    changes.append(float(np.mean([effects[r, g] for r in rows])))
            on_target[t] = float(np.median(changes)) if changes else DEFAULT_ON_TARGET[t]
    for t, v in DEFAULT_ON_TARGET.items():
        on_target.setdefault(t, v)
    return type_effect, shrink, on_target


def _combination_scale(units: list[Unit], effects: np.ndarray, masks: np.ndarray) -> float:
    single = {(u.context, u.key): i for i, u in enumerate(units) if u.single}
    num = den = 0.0
    for i, u in enumerate(units):
        if u.single:
            continue
        parts = [single.get((u.context, f"{p['type']}:{p['id']}")) for p in u.perturbations]
        rows = [p for p in parts if p is not None]
        if len(rows) < len(parts):
            continue
        total = effects[rows].sum(axis=0)
        keep = masks[i]
        num += float(total[keep] @ effects[i][keep])
        den += float(total[keep] @ total[keep])
    return float(np.clip(num / den, 0.2, 1.5)) if den > 0 else 1.0


# ---------------------------------------------------------------------- prior mean


def _design(
    records: Sequence[dict[str, str]], vocab: Vocabulary, config: ModelConfig
) -> tuple[list[tuple[str, str]], np.ndarray]:
    columns: list[tuple[str, str]] = []
    scale: list[float] = []
    for name, fv in vocab.fields.items():
        if name in PERTURBATION_FIELDS or not fv.classes:
            continue
        lam = config.ridge_study if name == "study" else config.ridge_terms
        for t in fv.tokens[1:]:
            columns.append(("token", f"{name}={t}"))
            scale.append(1.0 / math.sqrt(lam))
    for key in sorted({context_key(r) for r in records}):
        columns.append(("condition", key))
        scale.append(1.0 / math.sqrt(config.ridge_condition))
    for name in COVARIATE_FIELDS:
        if vocab.fields.get(name) is None and any(r.get(name) for r in records):
            columns += covariate_columns(name)
            scale += [1.0 / math.sqrt(config.ridge_terms)] * 2
    return columns, np.array(scale)


#: a study's spread (relative to the pooled) is estimated from at least this many samples,
#: and kept within these bounds
SPREAD_MIN_SAMPLES = 3
SPREAD_BOUNDS = (0.1, 10.0)


def _study_spread(
    studies: np.ndarray,
    resid: np.ndarray,
    counting: np.ndarray,
    masks: np.ndarray,
    group_sizes: np.ndarray,
) -> dict[str, float]:
    """Per study: the mean per-gene within-condition variance of its samples beyond
    counting noise, over that of all samples (1 = as variable as the pool); residuals
    around a mean of ``n`` samples scaled by ``n / (n - 1)``."""
    n_genes = np.maximum(masks.sum(axis=1), 1)
    unbiased = group_sizes / np.maximum(group_sizes - 1, 1)
    beyond = unbiased * (resid**2).sum(axis=1) - counting.sum(axis=1)
    beyond = np.maximum(beyond / n_genes, 0.0)
    pooled = float(beyond.mean())
    if pooled <= 0:
        return {}
    out = {}
    for s in sorted(set(studies.tolist())):
        rows = studies == s
        if rows.sum() >= SPREAD_MIN_SAMPLES:
            out[str(s)] = float(np.clip(beyond[rows].mean() / pooled, *SPREAD_BOUNDS))
    return out


#: prior degrees of freedom of a study's per-gene noise variance: moderated toward the
#: pooled one (scaled by the study's spread) as limma moderates gene variances
NOISE_PRIOR_DOF = 4.0


def _study_noise(
    model: GEMModel,
    studies: np.ndarray,
    groups: np.ndarray,
    resid: np.ndarray,
    counting: np.ndarray,
    masks: np.ndarray,
    group_sizes: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per study with a spread: its own per-gene residual noise SD (beyond counting
    noise and the biological latents, scaled by its spread), moderated toward the
    pooled ``noise_sd``: (d0 * pooled + dof * own) / (d0 + dof) with d0 =
    :data:`NOISE_PRIOR_DOF` and dof = its samples minus its conditions, per gene
    over the samples that measured it. A study whose genes vary more than the pool's
    in some genes and less in others generates replicates that do the same."""
    bio = (model.w_bio**2).sum(axis=0)
    pooled_noise = model.noise_sd**2
    unbiased = group_sizes / np.maximum(group_sizes - 1, 1)
    out: dict[str, np.ndarray] = {}
    for name, spread in model.study_spread.items():
        rows = studies == name
        m = masks[rows]
        n_g = m.sum(axis=0)
        n_groups = len(set(groups[rows].tolist()))
        beyond = (unbiased[rows, None] * resid[rows] ** 2 - counting[rows]).sum(axis=0)
        own_total = beyond / np.maximum(n_g, 1)
        dof = np.maximum(n_g * (1.0 - n_groups / max(int(rows.sum()), 1)), 0.0)
        prior_total = spread * (pooled_noise + bio)
        total = (NOISE_PRIOR_DOF * prior_total + dof * own_total) / (NOISE_PRIOR_DOF + dof)
        # its own level too: held at the spread's, generated replicates of most studies
        # varied less than real ones (seen-condition, at the real depth on their genes)
        out[name] = np.sqrt(np.maximum(total - spread * bio, 0.0))
    return out


#: cells a group (study + full metadata) needs to inform the cells' dispersion; the
#: weight (in units of squared expected counts) of the prior toward the median
#: dispersion; the bounds a gene's dispersion is kept within
DISPERSION_MIN_CELLS = 10
DISPERSION_PRIOR = 50.0
DISPERSION_BOUNDS = (0.0, 50.0)


def _cell_groups(c: _Corpus) -> list[np.ndarray]:
    """Rows of each group of cells (study + full metadata, perturbation included) of at
    least :data:`DISPERSION_MIN_CELLS` cells: what cells vary around."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(c.records):
        groups.setdefault(f"{c.studies[i]}\t{_record_key(r)}", []).append(i)
    return [np.asarray(m) for m in groups.values() if len(m) >= DISPERSION_MIN_CELLS]


def _cell_dispersion(c: _Corpus) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per gene, the negative-binomial overdispersion φ of single cells around their
    group's mean (``var = μ + φ μ²``; φ = 0 is Poisson): pooled method of moments over
    the groups (study + full metadata, perturbation included) of at least
    :data:`DISPERSION_MIN_CELLS` cells, each cell's mean being its library times the
    group's share of the gene, ``φ = Σ [n/(n-1) (x - μ)² - μ] / Σ μ²``; a gene with
    few reads is pulled toward the median of the well-read genes
    (:data:`DISPERSION_PRIOR`). Genes a group's study did not measure have no reads
    there and add nothing. Also per study with such groups: its own φ, pulled the same
    way toward the pooled one (cells generated in a seen study vary as its cells do).
    What "sample generation" draws single cells with."""
    num: dict[str, np.ndarray] = {}
    den: dict[str, np.ndarray] = {}
    for rows in _cell_groups(c):
        n = len(rows)
        x, lib = c.x[rows], c.library[rows]
        l1, l2 = float(lib.sum()), float((lib**2).sum())
        if l1 <= 0:
            continue
        share = np.asarray(x.sum(axis=0)).ravel() / l1
        s2 = np.asarray(x.multiply(x).sum(axis=0)).ravel()
        sxl = np.asarray(x.T @ lib).ravel()
        squares = s2 - 2.0 * share * sxl + share**2 * l2  # Σ (x - l·share)²
        study = str(c.studies[rows[0]])
        num.setdefault(study, np.zeros(c.g))
        den.setdefault(study, np.zeros(c.g))
        num[study] += n / (n - 1) * squares - share * l1
        den[study] += share**2 * l2
    if not num:
        return np.zeros(c.g), {}
    total_num = np.sum([num[s] for s in sorted(num)], axis=0)
    total_den = np.sum([den[s] for s in sorted(den)], axis=0)
    informed = total_den >= DISPERSION_PRIOR
    if not informed.any():
        return np.zeros(c.g), {}

    def moderated(num: np.ndarray, den: np.ndarray, prior: float | np.ndarray) -> np.ndarray:
        return np.clip(
            (np.maximum(num, 0.0) + DISPERSION_PRIOR * prior) / (den + DISPERSION_PRIOR),
            *DISPERSION_BOUNDS,
        )

    raw = np.maximum(total_num[informed], 0.0) / total_den[informed]
    pooled = moderated(total_num, total_den, float(np.median(raw)))
    return pooled, {s: moderated(num[s], den[s], pooled) for s in sorted(num)}


def _cell_library_sd(c: _Corpus) -> tuple[float, dict[str, float]]:
    """The SD of single cells' log library around their group's mean log library (the
    groups of :func:`_cell_groups`), pooled over every group and per study: what the
    overdispersion φ, fitted with each cell's own library, leaves out, and what
    "sample generation" draws."""
    ss: dict[str, float] = {}
    dof: dict[str, int] = {}
    for rows in _cell_groups(c):
        log_lib = np.log(np.maximum(c.library[rows], 1.0))
        study = str(c.studies[rows[0]])
        ss[study] = ss.get(study, 0.0) + float(((log_lib - log_lib.mean()) ** 2).sum())
        dof[study] = dof.get(study, 0) + len(rows) - 1
    if not ss:
        return 0.0, {}
    pooled = math.sqrt(sum(ss.values()) / sum(dof.values()))
    return pooled, {s: math.sqrt(ss[s] / dof[s]) for s in sorted(ss)}


def _top_components(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` singular values and right singular vectors of a wide matrix (via its Gram)."""
    gram = x @ x.T
    evals, evecs = np.linalg.eigh(gram)
    order = np.argsort(-evals)[: max(0, min(k, len(evals)))]
    sv = np.sqrt(np.maximum(evals[order], 0.0))
    keep = sv > 1e-9 * max(float(sv.max()) if len(sv) else 0.0, 1e-300)
    sv, vecs = sv[keep], evecs[:, order][:, keep]
    vt = (vecs.T @ x) / sv[:, None]
    # a fixed sign per component (eigh leaves it free)
    vt *= np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])[:, None]
    return sv, vt


def _ridge(
    phi: np.ndarray, y: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted ridge with unpenalised intercept (features pre-scaled; penalty 1).

    Returns the intercept and the coefficients as the exact product ``a @ yc`` of a
    (features × groups) matrix and the centred group targets (groups × genes): the
    coefficients lie in the span of the targets, so this stores them without loss in
    (features + genes) × groups numbers.
    """
    wn = w / w.sum()
    phi_bar = wn @ phi
    y_bar = wn @ y
    pc = phi - phi_bar
    yc = y - y_bar
    gram = pc.T @ (w[:, None] * pc) + np.eye(phi.shape[1])
    a = np.linalg.solve(gram, pc.T * w[None, :])
    return y_bar - (phi_bar @ a) @ yc, a, yc


# ----------------------------------------------------------------------- classifiers


def _fit_softmax(
    z: np.ndarray, y: np.ndarray, w: np.ndarray, n_classes: int, c: float, iterations: int
) -> tuple[np.ndarray, np.ndarray]:
    d = z.shape[1]
    target = np.zeros((len(y), n_classes))
    target[np.arange(len(y)), y] = 1.0

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        wm = theta[: d * n_classes].reshape(d, n_classes)
        b = theta[d * n_classes :]
        logits = z @ wm + b
        lse = special.logsumexp(logits, axis=1)
        val = c * float(w @ (lse - (target * logits).sum(axis=1))) + 0.5 * float((wm * wm).sum())
        p = (np.exp(logits - lse[:, None]) - target) * w[:, None]
        return val, np.concatenate([(c * (z.T @ p) + wm).ravel(), c * p.sum(axis=0)])

    res = optimize.minimize(
        loss,
        np.zeros(d * n_classes + n_classes),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": iterations},
    )
    return res.x[: d * n_classes].reshape(d, n_classes), res.x[d * n_classes :]


def _head_weights(y: np.ndarray, studies: np.ndarray, balance: str) -> np.ndarray:
    """Sample weights of a metadata head (``ModelConfig.classifier_balance``)."""
    if balance == "none":
        return np.ones(len(y))
    if balance == "class":
        return _balanced_weights(y, np.zeros(len(y), dtype=np.int64))
    return _balanced_weights(y, studies)


def _balanced_weights(y: np.ndarray, studies: np.ndarray) -> np.ndarray:
    keys = [f"{s}\t{v}" for s, v in zip(studies, y, strict=True)]
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    w = np.array([1.0 / counts[k] for k in keys])
    # each class then weighs the same in total
    per_class: dict[int, float] = {}
    for v, wi in zip(y, w, strict=True):
        per_class[int(v)] = per_class.get(int(v), 0.0) + wi
    w = np.array([wi / per_class[int(v)] for v, wi in zip(y, w, strict=True)])
    return w * len(w) / w.sum()


def _top_genes(
    y: np.ndarray, labels: np.ndarray, w: np.ndarray, candidates: np.ndarray, k: int
) -> np.ndarray:
    """The ``k`` candidate genes with the largest weighted between/within-class F ratio."""
    x = y[:, candidates]
    total = np.average(x, axis=0, weights=w)
    between = np.zeros(x.shape[1])
    within = np.zeros(x.shape[1])
    for v in np.unique(labels):
        sel = labels == v
        wv = w[sel]
        mv = np.average(x[sel], axis=0, weights=wv)
        between += wv.sum() * (mv - total) ** 2
        within += (wv[:, None] * (x[sel] - mv) ** 2).sum(axis=0)
    f = between / np.maximum(within, 1e-9)
    return np.sort(candidates[np.argsort(-f, kind="stable")[:k]])


# -------------------------------------------------------------------------- the fit


def fit_model(
    counts: sp.spmatrix,
    records: Sequence[dict[str, str]],
    studies: Sequence[str],
    study_masks: dict[str, np.ndarray],
    vocab: Vocabulary,
    config: ModelConfig,
    *,
    gene_index: Callable[[str], int | None],
    match_groups: Sequence[str] | None = None,
    seed: int = 0,
    store_samples: bool = True,
    log: Log = _quiet,
) -> GEMModel:
    """Fit every component of the model (see the module docstring)."""
    rng = np.random.default_rng(seed)
    c = _Corpus(counts, records, studies, study_masks, match_groups)
    ref, floor = _reference_fraction(c)
    y = _log_expression(c, ref)
    gmean, gvar, _ = _gene_moments(c, y)
    common = c.study_coverage >= 0.5
    k_hvg = min(config.n_top_genes, int(common.sum()))
    hvg = np.sort(np.flatnonzero(common)[np.argsort(-gvar[common], kind="stable")[:k_hvg]])
    log(f"  {c.n:,} samples, {len(set(c.studies))} studies, {k_hvg} variable genes")

    # ---- perturbation units
    if config.mean_space not in ("log", "linear"):
        raise ValueError(f"mean_space {config.mean_space!r}: expected 'log' or 'linear'")
    linear = _linear(y) if config.mean_space == "linear" else None
    contexts, ctx_mean, ctx_mask, units, effects, emasks, unit_of_sample = _units(
        c, _group_mean(y, linear)
    )
    sim = _context_similarity(ctx_mean, ctx_mask, hvg)
    width, slope, kernel_scores = _choose_kernel(units, effects, emasks, sim, ctx_mean, log)
    type_effect, type_shrink, on_target = _type_statistics(units, effects, emasks, gene_index)
    combo = _combination_scale(units, effects, emasks)
    log(f"  {len(units)} perturbation units in {len(contexts)} contexts; combination x{combo:.2f}")

    # ---- prior mean: group means of control-adjusted samples
    adj_records = []
    for i, r in enumerate(c.records):
        adj_records.append(without_perturbation(r) if unit_of_sample[i] >= 0 else dict(r))
    group_key = [f"{c.studies[i]}\t{_record_key(r)}" for i, r in enumerate(adj_records)]
    keys = sorted(set(group_key))
    gidx = {k: j for j, k in enumerate(keys)}
    member = np.array([gidx[k] for k in group_key])
    m = len(keys)
    ind = sp.csr_matrix((np.ones(c.n), (member, np.arange(c.n))), shape=(m, c.n))
    sizes = np.asarray(ind.sum(axis=1)).ravel()
    # condition means with perturbed samples moved back by their unit's effect: the
    # mean of log1p(CPM) (residuals are taken around it) and, in linear mean space,
    # log1p of the mean CPM (the prior's target; ``offset`` is the difference)
    shift = np.zeros((m, c.g))
    if len(units):
        shift_rows = np.flatnonzero(unit_of_sample >= 0)
        adj = sp.csr_matrix(
            (np.ones(len(shift_rows)), (member[shift_rows], unit_of_sample[shift_rows])),
            shape=(m, len(units)),
        )
        shift = (adj @ effects) / sizes[:, None]
    gmeans = np.asarray((ind @ y).todense()) / sizes[:, None] - shift
    offset = None
    if linear is not None:
        offset = gmeans - (np.log1p(np.asarray((ind @ linear).todense()) / sizes[:, None]) - shift)
    del shift
    first = np.array([np.flatnonzero(member == j)[0] for j in range(m)])
    gmask = c.masks(first)
    group_records = [adj_records[i] for i in first]
    columns, scale = _design(group_records, vocab, config)
    model = _skeleton(config, vocab, ref, hvg, columns, scale, c.g)
    model.floor_fraction = floor
    phi = model.feature_rows(group_records)
    observed = gmeans if offset is None else gmeans - offset
    target = np.where(gmask, observed, gmean[None, :])
    for _ in range(max(1, config.imputation_rounds)):
        intercept, a, yc = _ridge(phi, target, sizes.astype(np.float64))
        fitted = intercept[None, :] + (phi @ a) @ yc
        target = np.where(gmask, observed, fitted)
    del observed, target
    model.gene_mean = intercept
    if m <= config.mean_rank:  # exact
        model.coef_u, model.coef_v = a, yc
        rank, energy = m, 1.0
    else:  # more condition groups than the size budget allows: the top components
        coef = a @ yc
        sv, vt = _top_components(coef, config.mean_rank)
        rank = len(sv)
        energy = float((sv**2).sum() / max(float((coef**2).sum()), 1e-12))
        model.coef_u, model.coef_v = coef @ vt.T, vt
    log(f"  prior mean: {m} condition groups, {len(columns)} features, rank {rank} ({energy:.4f})")

    # ---- variation: within-condition residuals (biological), study effects (technical)
    multi = np.flatnonzero(sizes[member] >= 2)
    if len(multi) > config.max_residual_rows:
        multi = np.sort(rng.choice(multi, config.max_residual_rows, replace=False))
    if len(multi) >= 3:
        rows_y = np.asarray(y[multi].todense())
        if len(units):
            sel = unit_of_sample[multi] >= 0
            rows_y[sel] -= effects[unit_of_sample[multi][sel]]
        resid = np.where(c.masks(multi), rows_y - gmeans[member[multi]], 0.0)
        dof = max(len(multi) - len(set(member[multi])), 1)
        sv, vt_r = _top_components(resid, config.latent_biological)
        model.w_bio = vt_r * (sv / math.sqrt(dof))[:, None]
        counted = np.maximum(c.masks(multi).sum(axis=0), 1)
        var = (resid**2).sum(axis=0) / np.maximum(counted * dof / len(multi), 1)
        # the residuals hold the counting noise of each sample's depth, which "sample
        # generation" draws again as Poisson counts: only the rest is expression noise.
        # Poisson variance of log1p(s·k), k ~ Poisson(λ), at cpm = s·λ: s·cpm / (1+cpm)²
        s_row = _row_scale(c, ref, multi)
        cpm = np.expm1(np.clip(gmeans[member[multi]], 0.0, 30.0))
        counting = np.where(c.masks(multi), s_row[:, None] * cpm / (1.0 + cpm) ** 2, 0.0)
        counting_rows = counting
        counting = counting.sum(axis=0) / counted
        del cpm
        model.noise_sd = np.sqrt(np.maximum(var - (model.w_bio**2).sum(axis=0) - counting, 0.0))
        if config.mean_space == "log":  # (a cell's residual is mostly its counting noise,
            # which the Poisson approximation does not remove well enough to leave a
            # study's spread; single-cell models draw no replicate noise either)
            model.study_spread = _study_spread(
                c.studies[multi], resid, counting_rows, c.masks(multi), sizes[member[multi]]
            )
            model.study_noise_sd = _study_noise(
                model,
                c.studies[multi],
                member[multi],
                resid,
                counting_rows,
                c.masks(multi),
                sizes[member[multi]],
            )
        del counting_rows
    if config.mean_space == "linear":  # single cells are drawn negative-binomial
        model.cell_dispersion, model.study_cell_dispersion = _cell_dispersion(c)
        model.cell_library_sd, model.study_cell_library_sd = _cell_library_sd(c)
    if len(multi) < 3:
        model.w_bio = np.zeros((0, c.g))
        model.noise_sd = np.zeros(c.g)
    study_cols = [j for j, (kind, name) in enumerate(columns) if name.startswith("study=")]
    if len(study_cols) >= 2:
        eff = scale[study_cols, None] * (a[study_cols] @ yc)
        eff = eff - eff.mean(axis=0)
        st, vt_t = _top_components(eff, config.latent_technical)
        model.w_tech = vt_t * (st / math.sqrt(len(study_cols)))[:, None]
    else:
        model.w_tech = np.zeros((0, c.g))
    if len(units):
        _, model.w_pert = _top_components(effects, config.latent_perturbation)
    else:
        model.w_pert = np.zeros((0, c.g))

    # ---- perturbation components into the model
    model.contexts = contexts
    model.context_mean = ctx_mean
    model.context_mask = ctx_mask
    model.units = units
    model.unit_effect = effects.astype(np.float32)
    model.unit_mask = emasks
    model.kernel_width = width
    model.level_slope = slope
    model.combination_scale = combo
    model.type_effect = type_effect
    model.type_shrink = type_shrink
    model.on_target = on_target

    # ---- metadata heads
    _fit_classifiers(model, c, gvar, rng, log)

    # ---- stored samples
    if store_samples:
        uniq: dict[str, int] = {}
        rec_index = np.zeros(c.n, dtype=np.int64)
        for i, r in enumerate(adj_records):
            key = _record_key(r)
            rec_index[i] = uniq.setdefault(key, len(uniq))
        order = sorted(uniq, key=uniq.get)  # type: ignore[arg-type]
        recs = [dict(kv.split("=", 1) for kv in k.split("\t") if kv) for k in order]
        model.sample_records = recs
        model.sample_record_index = rec_index
        zb = np.zeros((c.n, model.w_bio.shape[0]), dtype=np.float32)
        zt = np.zeros((c.n, model.w_tech.shape[0]), dtype=np.float32)
        prior = model.prior_mean(recs)
        for start in range(0, c.n, 2048):
            rows = np.arange(start, min(c.n, start + 2048))
            block = np.asarray(y[rows].todense())
            if len(units):
                sel = unit_of_sample[rows] >= 0
                block[sel] -= effects[unit_of_sample[rows][sel]]
            centre = prior[rec_index[rows]]
            if offset is not None:  # residuals around the mean of the logs
                centre = centre + offset[member[rows]]
            resid = np.where(c.masks(rows), block - centre, 0.0)
            zt[rows] = model.project(resid, model.w_tech)
            zb[rows] = model.project(resid - zt[rows] @ model.w_tech, model.w_bio)
        model.sample_z_bio = zb
        model.sample_z_tech = zt
    model.facts = {
        "kernel_cv": kernel_scores,
        "n_units": len(units),
        "n_contexts": len(contexts),
        "prior_mean_rank_energy": round(energy, 6),
        "context_fields": list(CONTEXT_FIELDS),
    }
    model.__post_init__()
    return model


def _skeleton(
    config: ModelConfig,
    vocab: Vocabulary,
    ref: np.ndarray,
    hvg: np.ndarray,
    columns: list[tuple[str, str]],
    scale: np.ndarray,
    g: int,
) -> GEMModel:
    z = np.zeros((0, g))
    return GEMModel(
        config=config, vocab=vocab, ref_fraction=ref, hvg=hvg, columns=columns,
        column_scale=scale, gene_mean=np.zeros(g), coef_u=np.zeros((len(columns), 0)),
        coef_v=np.zeros((0, g)), w_bio=z, w_tech=z, noise_sd=np.zeros(g), w_pert=z,
        contexts=[], context_mean=z, context_mask=np.zeros((0, g), bool), units=[],
        unit_effect=z.astype(np.float32), unit_mask=np.zeros((0, g), bool),
        kernel_width=math.inf, combination_scale=1.0, type_effect={}, type_shrink={},
        on_target={}, pca_center=np.zeros(len(hvg)), pca_components=np.zeros((0, len(hvg))),
        score_std=np.ones(0), classifiers={},
    )  # fmt: skip


class _QueryView:
    """Training samples as a query brings them: counts only, no study gene mask.

    A query's unmeasured genes are zeros unless :meth:`GEMModel.measured` reads the
    sample as a gene panel, and its CPM is scaled by what that mask says. The heads
    are trained on exactly these features (with the same fills), so a study's
    unmeasured genes look the same in training and at prediction.
    """

    def __init__(self, model: GEMModel, c: _Corpus) -> None:
        self.x = c.x
        self.scale = np.zeros(c.n)
        self.panel = np.zeros(c.n, dtype=bool)
        for start in range(0, c.n, 1024):
            rows = np.arange(start, min(c.n, start + 1024))
            dense = self.x[rows].toarray()
            mask = model.measured(dense)
            self.panel[rows] = ~mask.all(axis=1)
            share = np.clip((mask * model.ref_fraction[None, :]).sum(axis=1), 1e-6, 1.0)
            self.scale[rows] = share * 1e6 / np.maximum(dense.sum(axis=1), 1.0)

    def values(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log1p(CPM) (float64) and the measured mask of ``rows`` x ``cols``."""
        x = self.x[rows][:, cols].toarray()
        y = np.log1p(x * self.scale[rows, None])
        mask = np.where(self.panel[rows, None], x > 0, True)
        return y, mask


def _fit_classifiers(
    model: GEMModel,
    c: _Corpus,
    gvar: np.ndarray,
    rng: np.random.Generator,
    log: Log,
) -> None:
    cfg = model.config
    hvg = model.hvg
    q = _QueryView(model, c)
    all_rows = np.arange(c.n)
    yh, mh = q.values(all_rows, hvg)
    center = (yh * mh).sum(axis=0) / np.maximum(mh.sum(axis=0), 1)
    xh = np.where(mh, yh, center[None, :]) - center[None, :]
    k = int(min(cfg.n_components, xh.shape[0] - 1, xh.shape[1]))
    cov = xh.T @ xh / max(len(xh) - 1, 1)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(-evals)[:k]
    comps = evecs[:, order].T
    # a fixed sign per component (eigh leaves it free)
    comps *= np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])[:, None]
    scores = xh @ comps.T
    del xh
    sd = scores.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    model.pca_center = center
    model.pca_components = comps
    model.score_std = sd
    model.pca_noise = float(max(np.trace(cov) - evals[order].sum(), 0.0) / max(len(hvg), 1))
    # panels as a query's are scored: from the genes they measured
    z_pca = model.pca_scores(yh, mh)
    del yh, mh
    # candidate genes of the heads: the most variable of the genes most studies measured
    cover = np.flatnonzero(c.study_coverage >= 0.5)
    common = np.sort(cover[np.argsort(-gvar[cover], kind="stable")[: 4 * len(hvg)]])
    classifiers: dict[str, Classifier] = {}
    for name, fv in model.vocab.fields.items():
        if name in _NOT_PREDICTED or len(fv.classes) < 2 or FIELDS[name].is_quantity:
            continue
        pos = {v: i for i, v in enumerate(fv.classes)}
        labels = np.array([pos.get(r.get(name, ""), -1) for r in c.records])
        rows = np.flatnonzero(labels >= 0)
        if len(rows) < 4 or len(set(labels[rows])) < 2:
            continue
        w = _head_weights(labels[rows], c.studies[rows], cfg.classifier_balance)
        sub = rows
        if len(sub) > 5000:
            sub = np.sort(rng.choice(rows, 5000, replace=False))
        ysub, msub = q.values(sub, common)
        fill = (ysub * msub).sum(axis=0) / np.maximum(msub.sum(axis=0), 1)
        genes = _top_genes(
            np.where(msub, ysub, fill[None, :]),
            labels[sub],
            _head_weights(labels[sub], c.studies[sub], cfg.classifier_balance),
            np.arange(len(common)),
            max(cfg.n_field_genes, cfg.field_genes_per_class * len(fv.classes)),
        )
        fill = fill[genes]
        genes = common[genes]
        yg, mg = q.values(rows, genes)
        yg = np.where(mg, yg, fill[None, :])
        gm = fill  # what a query's unmeasured genes are filled with, as here
        gs = yg.std(axis=0)
        gs = np.where(gs > 1e-6, gs, 1.0)
        feats = np.concatenate([z_pca[rows], (yg - gm) / gs], axis=1)
        fit_rows = np.arange(len(rows))
        if len(rows) > 10000:  # a seeded subsample (the weights keep every study and class)
            fit_rows = np.sort(rng.choice(len(rows), 10000, replace=False))
            w = _head_weights(
                labels[rows][fit_rows], c.studies[rows][fit_rows], cfg.classifier_balance
            )
        weight, bias = _fit_softmax(
            feats[fit_rows],
            labels[rows][fit_rows],
            w,
            len(fv.classes),
            cfg.classifier_c,
            cfg.classifier_iterations,
        )
        temperature = _temperature(feats, labels[rows], c.studies[rows], len(fv.classes), cfg, rng)
        classifiers[name] = Classifier(list(fv.classes), genes, gm, gs, weight, bias, temperature)
    model.classifiers = classifiers
    log(f"  metadata heads: {', '.join(sorted(classifiers))}")


def _temperature(
    feats: np.ndarray,
    labels: np.ndarray,
    studies: np.ndarray,
    n_classes: int,
    cfg: ModelConfig,
    rng: np.random.Generator,
) -> float:
    """Softmax temperature minimising the NLL of held-out studies (3 study folds), each
    held-out study weighing the same (as in the heads' own weights: a large study's
    errors, or its ease, do not set the confidence for every other study)."""
    uniq = sorted(set(studies.tolist()))
    if len(uniq) < 3:
        return 1.0
    folds = np.array_split(rng.permutation(uniq), 3)
    logits, truth, weights = [], [], []
    for fold in folds:
        test = np.isin(studies, fold)
        train = ~test
        if len(set(labels[train])) < 2:
            continue
        cap = np.flatnonzero(train)
        if len(cap) > 5000:
            cap = np.sort(rng.choice(cap, 5000, replace=False))
        w = _head_weights(labels[cap], studies[cap], cfg.classifier_balance)
        wm, b = _fit_softmax(feats[cap], labels[cap], w, n_classes, cfg.classifier_c, 100)
        seen = test & np.isin(labels, labels[cap])
        if seen.any():
            logits.append(feats[seen] @ wm + b)
            truth.append(labels[seen])
            _, inverse, counts = np.unique(studies[seen], return_inverse=True, return_counts=True)
            weights.append(1.0 / counts[inverse])
    if not logits:
        return 1.0
    z = np.concatenate(logits)
    t_true = np.concatenate(truth)
    wt = np.concatenate(weights)
    wt = wt / wt.sum()
    best, best_nll = 1.0, np.inf
    for t in np.exp(np.linspace(np.log(0.5), np.log(20.0), 25)):
        lz = z / t
        nll = float(np.sum(wt * (special.logsumexp(lz, axis=1) - lz[np.arange(len(lz)), t_true])))
        if nll < best_nll:
            best, best_nll = float(t), nll
    return best


__all__ = ["Perturbation", "fit_model"]

"""Generation units: conditions of a study, the condition-mean baseline, the ceiling.

A *condition* is a set of samples with identical metadata over some fields. The
condition-mean baseline averages the training samples matching a condition
(backing off to fewer fields when none matches) and draws negative-binomial
samples around them; the replicate ceiling is the agreement between two disjoint
halves of a condition's real replicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from opengem.contract import ENTITY_FIELDS, FIELDS, PERTURBATION_FIELDS, FieldKind, LatentGroup
from opengem.eval import baselines as bl
from opengem.eval import metrics as m
from opengem.eval.corpus import CONTROLLED_CONTEXT_FIELDS, CorpusView
from opengem.eval.querying import ModelClient
from opengem.eval.results import UnitResult
from opengem.eval.scoring import SEED, generation_scores

__all__ = ["CONDITION_FIELDS", "GenerationUnit", "condition_groups", "score_generation"]

#: metadata fields that describe a condition (not the batch): generation keys
CONDITION_FIELDS = tuple(f for f, spec in FIELDS.items() if spec.group is not LatentGroup.TECHNICAL)

#: condition-mean back-off: fields a training sample must share, most specific first
#: (every condition field; the controlled context and what the perturbation is; the
#: ontology context; then hand-picked coarser levels)
BACKOFF = (
    CONDITION_FIELDS,
    (*CONTROLLED_CONTEXT_FIELDS, *(f for f in ENTITY_FIELDS if f in PERTURBATION_FIELDS)),
    tuple(f for f in CONTROLLED_CONTEXT_FIELDS if FIELDS[f].kind is FieldKind.ONTOLOGY),
    ("tissue_ontology_id", "cell_type_ontology_id", "cell_line_ontology_id"),
    ("tissue_ontology_id",),
    ("cell_type_ontology_id",),
    ("sample_type",),
    (),
)


def condition_groups(view: CorpusView, rows: np.ndarray, fields: Sequence[str]) -> list[np.ndarray]:
    """Rows grouped by identical values of ``fields`` (order of first appearance)."""
    keys = np.full(len(rows), "", dtype=object)
    for f in fields:
        keys = keys + "\x1f" + view.values(f)[rows].astype(object)
    groups: dict[str, list[int]] = {}
    for r, k in zip(rows, keys, strict=True):
        groups.setdefault(str(k), []).append(int(r))
    return [np.asarray(g, dtype=np.intp) for g in groups.values()]


def match_training(
    view: CorpusView, record: dict[str, str], train_rows: np.ndarray
) -> tuple[np.ndarray, int]:
    """Training rows sharing the condition's metadata, backing off to fewer fields.

    Returns the rows and the back-off level (0 = every condition field matches).
    Fields the condition leaves unset must be unset in the match too.
    """
    for level, fields in enumerate(BACKOFF):
        if level > 0 and fields and not any(record.get(f) for f in fields):
            continue
        ok = np.ones(len(train_rows), dtype=bool)
        for f in fields:
            ok &= view.values(f)[train_rows] == record.get(f, "")
        if ok.any():
            return train_rows[ok], level
    return train_rows, len(BACKOFF) - 1


def _ceiling_rows(view: CorpusView, lcpm: np.ndarray) -> np.ndarray:
    """Rows whose half-means estimate the ceiling: cells as many small pseudobulks."""
    if not view.pooled:
        return lcpm
    return m.pseudobulk(lcpm, max(2, min(len(lcpm) // 5, 40)))


def replicate_ceiling(view: CorpusView, groups: list[np.ndarray], study: str) -> float:
    values = [
        m.replicate_ceiling(_ceiling_rows(view, view.lcpm(g, study)), seed=SEED, n_repeats=5)
        for g in groups
        if len(g) >= 2
    ]
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


@dataclass
class GenerationUnit:
    """Conditions of one study to generate: their metadata, real samples, training matches."""

    name: str
    study: str
    records: list[dict[str, str]]
    real: list[np.ndarray]  # real rows of each condition
    matches: list[np.ndarray]  # training rows of the condition-mean baseline
    ceiling_groups: list[np.ndarray]  # rows for the replicate ceiling
    info: dict[str, object] = field(default_factory=dict)


def _nb_baseline(
    view: CorpusView,
    unit: GenerationUnit,
    sizes: Sequence[int],
    genes: np.ndarray,
    library: float,
    rng: np.random.Generator,
    fitted: np.ndarray,
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Condition-mean means, NB samples per condition (as compared: pooled for cells)
    and the mean of each condition's samples."""
    groups = [view.counts(g)[:, genes] for g in unit.matches if len(g)]
    phi = bl.estimate_dispersion(groups) if groups else 0.1
    wide = view.counts(fitted)[:, genes]
    wide_measured = view.measured(fitted, unit.study)
    wide_lcpm = bl.train_mean(m.log_cpm(wide), wide_measured)
    lib = wide.sum(axis=1, keepdims=True)
    wide_prop = bl.train_mean(wide / np.where(lib > 0, lib, 1.0), wide_measured)
    means, samples, drawn = [], [], []
    for rows, n in zip(unit.matches, sizes, strict=True):
        counts = view.counts(rows)[:, genes]
        measured = view.measured(rows, unit.study)
        if view.pooled:
            means.append(view.mean_of(m.log_cpm(counts), measured))
        else:
            means.append(bl.condition_mean(counts, measured, wide_lcpm))
        draws = bl.condition_mean_samples(counts, int(n), library, rng, phi, measured, wide_prop)
        lcpm = m.log_cpm(draws.astype(np.float64))
        samples.append(view.replicates(lcpm))
        drawn.append(view.mean_of(lcpm))
    return np.vstack(means), samples, np.vstack(drawn)


def score_generation(
    client: ModelClient,
    view: CorpusView,
    unit: GenerationUnit,
    fitted: np.ndarray,
    rng: np.random.Generator,
) -> tuple[UnitResult, dict[str, object]]:
    """The model and the condition-mean baseline on one generation unit."""
    genes = view.genes_of(unit.study)
    sizes = [len(g) for g in unit.real]
    real_rows = np.concatenate(unit.real)
    library = float(np.median(view.counts(real_rows)[:, genes].sum(axis=1)))
    gen_means, gen_samples, dropped = client.generate(unit.records, sizes, genes, library)
    gen_split = np.split(gen_samples, np.cumsum(sizes)[:-1])
    gen_groups = [view.replicates(g) for g in gen_split]
    gen_drawn = np.vstack([view.mean_of(g) for g in gen_split])
    gen_samples = np.vstack(gen_groups)
    real_groups = [view.lcpm(g, unit.study) for g in unit.real]
    real_means = np.vstack([view.mean_of(g) for g in real_groups])
    real_groups = [view.replicates(g) for g in real_groups]
    cm_means, cm_groups, cm_drawn = _nb_baseline(view, unit, sizes, genes, library, rng, fitted)
    ceiling = replicate_ceiling(view, unit.ceiling_groups, unit.study)
    model = generation_scores(gen_means, real_means, gen_groups, real_groups, ceiling, gen_drawn)
    cm = generation_scores(cm_means, real_means, cm_groups, real_groups, ceiling, cm_drawn)
    result = UnitResult(
        name=unit.name,
        study=unit.study,
        n_samples=len(real_rows),
        model=model,
        baselines={"condition_mean": cm},
        info={
            **unit.info,
            "n_conditions": len(unit.records),
            "n_genes_measured": len(genes),
            "replicate_ceiling": ceiling,
            "real_diversity": m.between_condition_correlation(real_means),
            "generation_fields_dropped": sorted({f for d in dropped for f in d}),
        },
    )
    real_samples = np.vstack(real_groups)
    figure = {
        "name": unit.name,
        "real": {"real": real_samples},
        "generated": {"model": gen_samples},
        "condition_labels": np.repeat(np.arange(len(sizes)), [len(g) for g in gen_groups]),
        "real_mean": real_means.mean(0),
        "real_sd": real_samples.std(0),
        "gen_mean": {"model": gen_means.mean(0), "condition_mean": cm_means.mean(0)},
        "gen_sd": {"model": gen_samples.std(0), "condition_mean": np.vstack(cm_groups).std(0)},
        "diversity": {
            "real": real_means,
            "model": gen_drawn,
        },
    }
    return result, figure

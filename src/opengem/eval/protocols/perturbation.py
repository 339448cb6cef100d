"""Scoring perturbation units: the model (with and without the perturbation) and baselines.

Single cells are compared as pseudobulk pseudo-replicates
(:meth:`~opengem.eval.corpus.CorpusView.replicates`): a cell's log1p(CPM) is no
expression level, the mean CPM of many cells is. Each unit's perturbed samples are
predicted from their matched controls with
``conditioning`` = biological + technical, once with the perturbation and once with
none (empty metadata = control). The model's row carries the counterfactual
metrics; the diagnostic row ``no_perturbation_sent`` scores the no-perturbation
prediction itself: a metric on which it matches the model measures the
reconstruction of the reference, not the effect.

Baselines (:data:`BASELINES`) are functions of the unit, its references and the
training effects; each returns a log-CPM prediction (renormalised like model
output) or ``None`` with a reason when it does not apply.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from opengem.contract import PERTURBATION_FIELDS, QueryError
from opengem.eval import baselines as bl
from opengem.eval.corpus import CorpusView, perturbation_parts
from opengem.eval.effects import EffectTable
from opengem.eval.metrics import top_degs
from opengem.eval.protocols.base import ProtocolContext
from opengem.eval.querying import ModelClient
from opengem.eval.results import UnitResult
from opengem.eval.scoring import perturbation_scores
from opengem.eval.units import Cell, PerturbationUnit, target_genes, unit_of

__all__ = [
    "BASELINES",
    "BaselineInput",
    "Rotation",
    "score_perturbation_units",
    "score_rotations",
]


@dataclass
class BaselineInput:
    """What a baseline sees of a unit."""

    view: CorpusView
    unit: PerturbationUnit
    refs: np.ndarray  # log-CPM of the matched references
    genes: np.ndarray  # the study's measured genes
    targets: list[int]
    table: EffectTable


Prediction = tuple[np.ndarray | None, str | None]

#: cells behind a single-cell unit's true effect (a seeded subsample of larger sets)
TRUTH_CELLS = 2000
#: reads a gene needs on one side of a single-cell unit (at the depth of the shallower
#: side) to be one of its top DEGs
MIN_DEG_READS = 20


def _capped(rows: np.ndarray) -> np.ndarray:
    if len(rows) <= TRUTH_CELLS:
        return rows
    return np.sort(np.random.default_rng(0).choice(rows, TRUTH_CELLS, replace=False))


Baseline = Callable[[BaselineInput], Prediction]


def _additive(x: BaselineInput, scope: str, fallback: str | None = None) -> Prediction:
    cells = x.table.select(x.unit, scope)
    note = None
    if not cells and fallback:
        cells = x.table.select(x.unit, fallback)
        note = f"no training context has this perturbation ({scope}); used scope {fallback!r}"
    if not cells:
        return None, f"no training cell in scope {scope!r}"
    return bl.additive_shift(x.refs, x.table.effects(cells, x.genes)), note


def no_change(x: BaselineInput) -> Prediction:
    return bl.no_change(x.refs), None


def additive_shift(x: BaselineInput) -> Prediction:
    """Reference + mean logFC of the perturbation in the study's other training contexts."""
    return _additive(x, "study", "study-any")


def additive_in_sample(x: BaselineInput) -> Prediction:
    """Reference + mean logFC of the perturbation in every training context (own included)."""
    return _additive(x, "in-sample")


def cross_study_additive(x: BaselineInput) -> Prediction:
    """Reference + mean logFC of the same perturbation (type and id) in other studies."""
    return _additive(x, "cross-study")


def type_mean(x: BaselineInput) -> Prediction:
    """Reference + mean logFC of the other perturbations of the same type."""
    return _additive(x, "type")


def on_target_only(x: BaselineInput) -> Prediction:
    """Reference with only the target gene moved by the type's mean on-target logFC."""
    if not x.targets:
        return None, "not a gene-targeting perturbation (or its gene is not measured)"
    changes = []
    for cell in x.table.select(x.unit, "type"):
        own = target_genes(cell.perturbation, np.arange(x.view.n_genes))
        effect = x.table.effect(cell)
        changes += [effect[t] for t in own if np.isfinite(effect[t])]
    if not changes:
        return None, "no training perturbation of this type with a measured target"
    return bl.on_target_only(x.refs, x.targets, float(np.mean(changes))), None


def sum_of_singles(x: BaselineInput) -> Prediction:
    """Reference + the sum of the single perturbations' mean effects (same study)."""
    parts = perturbation_parts(x.unit.cell.perturbation)
    if len(parts) < 2:
        return None, "not a combination"
    effects = []
    for part in parts:
        cells = x.table.single(x.unit.study, part)
        same = [c for c in cells if c.context == x.unit.cell.context] or cells
        if not same:
            return (
                None,
                f"single perturbation {part.get('perturbation_ontology_id')} not in training",
            )
        effects.append(bl.additive_shift(np.zeros(len(x.genes)), x.table.effects(same, x.genes)))
    return bl.sum_of_effects(x.refs, effects), None


def train_mean(x: BaselineInput) -> Prediction:
    """Mean of the training samples with the same perturbation (any context)."""
    rows = [r for c in x.table.select(x.unit, "same-key") for r in c.perturbed]
    note = None
    if not rows:
        rows = [r for c in x.table.select(x.unit, "study-any") for r in c.perturbed]
        note = "no training sample has this perturbation; mean of the study's other perturbed"
    if not rows:
        return None, "no training sample to average"
    rows = sorted(set(rows))
    mean = x.view.mean_of(x.view.lcpm(rows, x.unit.study), x.view.measured(rows, x.unit.study))
    return np.tile(mean, (len(x.refs), 1)), note


BASELINES: dict[str, Baseline] = {
    "no_change": no_change,
    "additive_shift": additive_shift,
    "additive_in_sample": additive_in_sample,
    "cross_study_additive": cross_study_additive,
    "type_mean": type_mean,
    "on_target_only": on_target_only,
    "sum_of_singles": sum_of_singles,
    "train_mean": train_mean,
}


def score_perturbation_units(
    client: ModelClient,
    view: CorpusView,
    units: Sequence[PerturbationUnit],
    table: EffectTable,
    baselines: Sequence[str],
    info: Callable[[PerturbationUnit], dict[str, object]] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[UnitResult], list[dict[str, object]]]:
    """Score every unit: the model's row, the no-perturbation diagnostic and the baselines."""
    results, figures = [], []
    for u in units:
        genes = view.genes_of(u.study)
        # cells are compared as pseudobulk pseudo-replicates, paired with their references;
        # their true effect is that of every perturbed cell (at most TRUTH_CELLS) against
        # every control, not only of the scored subsample (whose top genes are its noise),
        # and their DEGs are genes with enough reads to have an effect, not a few counts
        refs = view.replicates(view.lcpm(u.references, u.study))
        deg_genes: np.ndarray | None = None
        if view.pooled:
            perturbed, controls = _capped(u.cell.perturbed), _capped(u.controls)
            real = view.replicates(view.lcpm(perturbed, u.study))
            ctrls = view.replicates(view.lcpm(controls, u.study))
            truth_base: np.ndarray | None = ctrls
            reads = [view.counts(r)[:, genes].sum(axis=0) for r in (perturbed, controls)]
            depth = min(float(r.sum()) for r in reads)  # reads at the shallower side's depth
            scaled = np.maximum(*[r / max(float(r.sum()), 1.0) * depth for r in reads])
            deg_genes = np.flatnonzero(scaled >= MIN_DEG_READS)
        else:
            real = view.lcpm(u.scored, u.study)
            ctrls = view.lcpm(u.controls, u.study)
            truth_base = None
        targets = target_genes(u.cell.perturbation, genes)
        profile = view.mean_of  # a set of rows' profile: their mean, or cells' pseudobulk
        scores = partial(
            perturbation_scores, truth_base=truth_base, deg_genes=deg_genes, center=profile
        )
        error = None
        pred: np.ndarray | None
        none: np.ndarray | None
        try:
            metadata = [view.record(int(r), PERTURBATION_FIELDS) for r in u.scored]
            pred = view.replicates(client.from_references(view, u.references, metadata, genes))
            none = view.replicates(
                client.from_references(view, u.references, [{}] * len(u.scored), genes)
            )
            model = scores(pred, real, refs, ctrls, none, targets)
            diagnostics = {
                "no_perturbation_sent": scores(
                    none, real, refs, ctrls, targets=targets, counterfactual=False
                )
            }
        except QueryError as exc:
            error = f"the model cannot take this unit's query: {exc}"
            pred = none = None
            template = perturbation_scores(refs, real, refs, ctrls, None, targets)  # keys only
            model = {k: float("nan") for k in template}
            diagnostics = {}
        x = BaselineInput(view, u, refs, genes, targets, table)
        rows: dict[str, dict[str, float]] = {}
        notes: dict[str, str] = {}
        preds: dict[str, np.ndarray] = {}
        for name in baselines:
            p, note = BASELINES[name](x)
            if note:
                notes[name] = note
            if p is None:
                continue
            p = bl.renormalise(p)
            preds[name] = p
            rows[name] = scores(p, real, refs, ctrls, None, targets)
        result = UnitResult(
            name=u.name,
            study=u.study,
            n_samples=len(u.scored),
            model=model,
            baselines=rows,
            diagnostics=diagnostics,
            info={
                "context": u.cell.context,
                "group": u.group,
                "perturbation": u.cell.perturbation,
                "n_controls": len(u.controls),
                "n_genes_measured": len(genes),
                **(info(u) if info else {}),
            },
            notes=notes,
            error=error,
        )
        results.append(result)
        top = top_degs(ctrls, real, 100, genes=deg_genes)
        base_mean = profile(refs if truth_base is None else truth_base)  # as scored
        means = {n: profile(p) for n, p in preds.items() if n != "no_change"}
        if pred is not None:
            means["model"] = profile(pred)
        pred_lfc = {n: (v - base_mean)[top] for n, v in means.items() if n != "model"}
        if pred is not None and none is not None:
            pred_lfc = {"model": (means["model"] - profile(none))[top], **pred_lfc}
        real_mean = profile(real)
        figures.append(
            {
                "name": u.name,
                "true_lfc": (real_mean - base_mean)[top],
                "pred_lfc": pred_lfc,
                "real": {"control": ctrls, "perturbed": real},
                "generated": {} if pred is None else {"perturbed": pred},
                "real_mean": real_mean,
                "gen_mean": {n: means[n] for n in means if n != "model"}
                | ({} if pred is None else {"model": means["model"]}),
            }
        )
        best = max(
            (n for n in rows if n != "no_change"),
            key=lambda n: np.nan_to_num(rows[n]["pearson_delta_top100"], nan=-2.0),
            default=None,
        )
        log(
            f"  {u.name}: cf Pearson Δ top-100 model {model['cf_pearson_delta_top100']:.3f}"
            + (f", {best} {rows[best]['pearson_delta_top100']:.3f}" if best else "")
            + (f" [{error}]" if error else "")
        )
    return results, figures


@dataclass
class Rotation:
    """One training of a perturbation protocol and the units scored after it."""

    held: np.ndarray  # rows left out of the training
    focus: list[str]  # studies a ``--fast`` training subset is built around
    held_out: list[str]  # what is held out, as recorded with the training
    cells: list[tuple[str, Cell]] = field(default_factory=list)  # (unit group, cell)
    label: str | None = None  # the training's label (default ``"rotation k"``)


def score_rotations(
    ctx: ProtocolContext,
    cells: Sequence[Cell],
    rotations: Sequence[Rotation],
    baselines: Sequence[str],
    info: Callable[[PerturbationUnit, int], dict[str, object]] | None = None,
) -> tuple[list[UnitResult], list[dict[str, object]]]:
    """Train once per rotation (everything but its held rows) and score its units.

    The baselines see the training effects of ``cells`` restricted to the rows each
    model was fitted on; ``info(unit, k)`` adds to the info of a unit of rotation ``k``.
    """
    view = ctx.view
    all_rows = np.arange(view.obs.shape[0])
    units: list[UnitResult] = []
    figures: list[dict[str, object]] = []
    for k, rot in enumerate(rotations):
        label = rot.label if rot.label is not None else f"rotation {k}"
        with ctx.trained(np.setdiff1d(all_rows, rot.held), rot.focus, label, rot.held_out) as (
            client,
            fitted,
        ):
            table = EffectTable(view, cells, fitted)
            todo = [unit_of(c, group=g, max_scored=ctx.max_scored) for g, c in rot.cells]
            unit_info = None if info is None else (lambda u, k=k: info(u, k))
            res, figs = score_perturbation_units(
                client, view, todo, table, baselines, unit_info, ctx.log
            )
            units += res
            figures += figs
    return units, figures

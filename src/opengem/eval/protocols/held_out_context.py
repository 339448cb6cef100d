"""Held-out context: a perturbation seen in other contexts, predicted in a new one.

An *experiment* is a perturbation with controls in two or more contexts of one
study (donors, genotypes, cell types, shRNA constructs; curated studies count their
whole perturbed set as one experiment). Rotation ``k`` holds out the perturbed
samples of the ``k``-th context of every experiment at once (units of different
experiments are independent) and keeps every control in training, so the number of
trainings is the largest number of contexts of one experiment. Each held-out sample
is predicted from its matched control. Baselines: no change, additive shift (the
study's other contexts), train mean.
"""

from __future__ import annotations

import numpy as np

from opengem.eval.corpus import EvalError
from opengem.eval.effects import EffectTable
from opengem.eval.protocols.base import ProtocolContext
from opengem.eval.protocols.perturbation import score_perturbation_units
from opengem.eval.results import ProtocolResult
from opengem.eval.units import Cell, perturbation_cells, unit_of

NAME = "held-out-context"
BASELINES = ("no_change", "additive_shift", "train_mean")


def experiments_of(cells: list[Cell]) -> dict[str, list[Cell]]:
    """Cells grouped into experiments (study + perturbation), those with >= 2 contexts."""
    groups: dict[str, list[Cell]] = {}
    for c in cells:
        if c.is_combination:
            continue
        groups.setdefault(f"{c.study}::{c.key}", []).append(c)
    return {k: sorted(v, key=lambda c: c.context) for k, v in sorted(groups.items()) if len(v) >= 2}


def run(ctx: ProtocolContext) -> ProtocolResult:
    view = ctx.view
    ctx.check_studies()
    cells = perturbation_cells(view)
    experiments = experiments_of([c for c in cells if not ctx.studies or c.study in ctx.studies])
    if not experiments:
        raise EvalError(
            "no held-out-context experiment (a perturbation with controls in two or more "
            "contexts of one study) in the corpus"
            + (f" among {ctx.studies}" if ctx.studies else "")
        )
    n_rot = max(len(v) for v in experiments.values())
    if ctx.max_rotations:
        n_rot = min(n_rot, ctx.max_rotations)
    n_units = sum(min(len(v), n_rot) for v in experiments.values())
    ctx.log(f"{NAME}: {len(experiments)} experiments, {n_units} units, {n_rot} trainings")
    focus = sorted({c.study for v in experiments.values() for c in v})
    all_rows = np.arange(view.obs.shape[0])
    units, figures = [], []
    for k in range(n_rot):
        batch = [(name, v[k]) for name, v in experiments.items() if k < len(v)]
        held = np.unique(np.concatenate([c.held_out for _, c in batch]))
        with ctx.trained(
            np.setdiff1d(all_rows, held), focus, f"rotation {k}", [c.name for _, c in batch]
        ) as (client, fitted):
            table = EffectTable(view, cells, fitted)
            todo = [unit_of(c, group=name, max_scored=ctx.max_scored) for name, c in batch]
            res, figs = score_perturbation_units(
                client, view, todo, table, BASELINES, lambda u, k=k: {"rotation": k}, ctx.log
            )
            units += res
            figures += figs
    return ProtocolResult(
        NAME,
        units,
        ctx.trainings,
        details={
            "n_experiments": len(experiments),
            "experiments": [
                {"name": name, "units": [c.name for c in v], "note": v[0].note}
                for name, v in experiments.items()
            ],
            "n_trainings_note": (
                f"rotation k holds out the k-th context of every experiment at once: {n_rot} "
                f"trainings for {n_units} units"
            ),
        },
        figures={"units": figures},
    )

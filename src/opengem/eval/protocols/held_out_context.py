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
from opengem.eval.protocols.base import ProtocolContext
from opengem.eval.protocols.perturbation import Rotation, score_rotations
from opengem.eval.results import ProtocolResult
from opengem.eval.units import Cell, perturbation_cells

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
    experiments = experiments_of([c for c in cells if ctx.selects(c.study)])
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
    rotations = []
    for k in range(n_rot):
        batch = [(name, v[k]) for name, v in experiments.items() if k < len(v)]
        held = np.unique(np.concatenate([c.held_out for _, c in batch]))
        rotations.append(Rotation(held, focus, [c.name for _, c in batch], batch))
    units, figures = score_rotations(ctx, cells, rotations, BASELINES, lambda u, k: {"rotation": k})
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

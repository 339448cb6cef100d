"""Combinations: pairs of perturbations whose single perturbations are in training.

Every cell whose perturbation combines several (``"A|B"``, e.g. the Norman CRISPRa
pairs) is held out (one training holds out every combination; the singles stay)
and predicted from its matched controls with the combined perturbation. Baselines:
no change and the sum of the single effects (same study, same context when it has
them).
"""

from __future__ import annotations

import numpy as np

from opengem.eval.corpus import EvalError
from opengem.eval.protocols.base import ProtocolContext
from opengem.eval.protocols.perturbation import Rotation, score_rotations
from opengem.eval.results import ProtocolResult
from opengem.eval.units import perturbation_cells

NAME = "combinations"
BASELINES = ("no_change", "sum_of_singles")


def run(ctx: ProtocolContext) -> ProtocolResult:
    view = ctx.view
    ctx.check_studies()
    cells = perturbation_cells(view)
    combos = [c for c in cells if c.is_combination and ctx.selects(c.study)]
    if not combos:
        raise EvalError(f"{NAME}: no combined perturbation (ids joined by '|') in the corpus")
    held = np.unique(np.concatenate([c.held_out for c in combos]))
    focus = sorted({c.study for c in combos})
    ctx.log(f"{NAME}: {len(combos)} combination units, 1 training")
    rotation = Rotation(
        held=held,
        focus=focus,
        held_out=[c.name for c in combos],
        cells=[("", c) for c in combos],
        label="combinations held out",
    )
    results, figures = score_rotations(ctx, cells, [rotation], BASELINES)
    return ProtocolResult(
        NAME,
        results,
        ctx.trainings,
        details={"n_trainings_note": "one training without any combination"},
        figures={"units": figures},
    )

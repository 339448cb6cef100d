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
from opengem.eval.effects import EffectTable
from opengem.eval.protocols.base import ProtocolContext
from opengem.eval.protocols.perturbation import score_perturbation_units
from opengem.eval.results import ProtocolResult
from opengem.eval.units import perturbation_cells, unit_of

NAME = "combinations"
BASELINES = ("no_change", "sum_of_singles")


def run(ctx: ProtocolContext) -> ProtocolResult:
    view = ctx.view
    ctx.check_studies()
    cells = perturbation_cells(view)
    combos = [c for c in cells if c.is_combination and (not ctx.studies or c.study in ctx.studies)]
    if not combos:
        raise EvalError(f"{NAME}: no combined perturbation (ids joined by '|') in the corpus")
    held = np.unique(np.concatenate([c.held_out for c in combos]))
    focus = sorted({c.study for c in combos})
    ctx.log(f"{NAME}: {len(combos)} combination units, 1 training")
    with ctx.trained(
        np.setdiff1d(np.arange(view.obs.shape[0]), held),
        focus,
        "combinations held out",
        [c.name for c in combos],
    ) as (client, fitted):
        table = EffectTable(view, cells, fitted)
        units = [unit_of(c, max_scored=ctx.max_scored) for c in combos]
        results, figures = score_perturbation_units(
            client, view, units, table, BASELINES, None, ctx.log
        )
    return ProtocolResult(
        NAME,
        results,
        ctx.trainings,
        details={"n_trainings_note": "one training without any combination"},
        figures={"units": figures},
    )

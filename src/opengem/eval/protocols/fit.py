"""Fit: the training units themselves, after training on everything (in-sample).

The first check after any training: every perturbation cell with at least two
perturbed and two control samples is predicted from its matched controls by a model
that saw them all. A model that cannot reproduce its training perturbations (the
counterfactual metrics: Pearson Δ and magnitude of predicted(perturbation) −
predicted(no perturbation)) cannot transfer them. Baselines: no change and the
in-sample additive shift (the perturbation's mean effect over every training
context, its own included).
"""

from __future__ import annotations

import numpy as np

from opengem.eval.corpus import EvalError
from opengem.eval.effects import EffectTable
from opengem.eval.protocols.base import ProtocolContext
from opengem.eval.protocols.perturbation import score_perturbation_units
from opengem.eval.results import ProtocolResult
from opengem.eval.units import perturbation_cells, restrict_cells, unit_of

NAME = "fit"
BASELINES = ("no_change", "additive_in_sample")
MIN_SAMPLES = 2


def run(ctx: ProtocolContext) -> ProtocolResult:
    view = ctx.view
    ctx.check_studies()
    cells = perturbation_cells(view)
    chosen = [c for c in cells if ctx.selects(c.study)]
    focus = sorted({c.study for c in chosen})
    with ctx.trained(np.arange(view.obs.shape[0]), focus, "all data", []) as (client, fitted):
        units = [
            unit_of(c, max_scored=ctx.max_scored)
            for c in restrict_cells(chosen, fitted, view.obs.shape[0], MIN_SAMPLES)
        ]
        if not units:
            raise EvalError(
                f"{NAME}: no perturbation with >= {MIN_SAMPLES} perturbed and control samples "
                "in one context among the training data"
            )
        ctx.log(f"{NAME}: {len(units)} in-sample units")
        table = EffectTable(view, cells, fitted)
        results, figures = score_perturbation_units(
            client, view, units, table, BASELINES, None, ctx.log
        )
    return ProtocolResult(
        NAME,
        results,
        ctx.trainings,
        details={
            "n_trainings_note": "one training on every sample (in-sample: these are not "
            "held-out numbers)",
            "min_samples_per_side": MIN_SAMPLES,
        },
        figures={"units": figures},
    )

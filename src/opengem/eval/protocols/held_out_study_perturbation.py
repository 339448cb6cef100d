"""Held-out study (perturbation): a perturbation seen in one study, predicted in another.

A perturbation (type and id, dose and time aside) present in two or more studies:
its perturbed samples in one study are held out (that study's controls stay in
training) and predicted from their matched controls; the model has seen the
perturbation only in the other studies' contexts. Rotation ``k`` holds out, for
every such perturbation, its ``k``-th study. Baselines: no change, the cross-study
additive shift (the perturbation's mean effect in the other studies), train mean.
"""

from __future__ import annotations

import numpy as np

from opengem.eval.corpus import EvalError
from opengem.eval.protocols.base import ProtocolContext
from opengem.eval.protocols.perturbation import Rotation, score_rotations
from opengem.eval.results import ProtocolResult
from opengem.eval.units import Cell, perturbation_cells

NAME = "held-out-study-perturbation"
BASELINES = ("no_change", "cross_study_additive", "train_mean")


def shared_perturbations(cells: list[Cell]) -> dict[str, dict[str, list[Cell]]]:
    """identity -> study -> cells, for perturbations present in two or more studies."""
    by: dict[str, dict[str, list[Cell]]] = {}
    for c in cells:
        if (
            c.is_combination
            or c.perturbation.get("perturbation_type") in ("", "control")
            or not c.perturbation.get("perturbation_ontology_id")
        ):
            continue
        by.setdefault(c.identity, {}).setdefault(c.study, []).append(c)
    return {k: dict(sorted(v.items())) for k, v in sorted(by.items()) if len(v) >= 2}


def run(ctx: ProtocolContext) -> ProtocolResult:
    view = ctx.view
    ctx.check_studies()
    cells = perturbation_cells(view)
    shared = shared_perturbations(cells)
    plan: list[list[tuple[str, str, list[Cell]]]] = []
    for ident, studies in shared.items():
        for k, (study, cs) in enumerate(studies.items()):
            if not ctx.selects(study):
                continue
            while len(plan) <= k:
                plan.append([])
            plan[k].append((ident, study, cs))
    plan = [p for p in plan if p]
    if ctx.max_rotations:
        plan = plan[: ctx.max_rotations]
    if not plan:
        raise EvalError(
            f"{NAME}: no perturbation (type and id) is present in two or more studies"
            + (f" with one of {ctx.studies}" if ctx.studies else "")
        )
    n_units = sum(len(cs) for p in plan for _, _, cs in p)
    ctx.log(f"{NAME}: {len(shared)} shared perturbations, {n_units} units, {len(plan)} trainings")
    rotations = [
        Rotation(
            held=np.unique(np.concatenate([c.held_out for _, _, cs in batch for c in cs])),
            focus=sorted({s for ident, _, _ in batch for s in shared[ident]}),
            held_out=[f"{ident} in {study}" for ident, study, _ in batch],
            cells=[(ident, c) for ident, _, cs in batch for c in cs],
        )
        for batch in plan
    ]
    units, figures = score_rotations(
        ctx,
        cells,
        rotations,
        BASELINES,
        lambda u, k: {"rotation": k, "seen_in_studies": sorted(set(shared[u.group]) - {u.study})},
    )
    return ProtocolResult(
        NAME,
        units,
        ctx.trainings,
        details={
            "shared_perturbations": {k: sorted(v) for k, v in shared.items()},
            "n_trainings_note": f"rotation k holds out every shared perturbation's k-th study: "
            f"{len(plan)} trainings for {n_units} units",
        },
        figures={"units": figures},
    )

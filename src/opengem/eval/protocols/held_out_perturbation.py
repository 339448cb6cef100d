"""Held-out perturbation: an unseen perturbation of a seen type, in a seen context.

For every perturbation type with two or more perturbations (compounds, gene
targets, pathogens...), one perturbation is left out of training everywhere (every
sample carrying it, combinations included); its contexts' controls stay in
training. Rotation ``k`` leaves out the ``k``-th perturbation of every type, so
single-context studies (one cell line, several treatments) give units too.
Baselines: no change, the mean effect of the type's other perturbations, and for
gene targets the on-target-only change (the type's mean change at its target).
"""

from __future__ import annotations

import numpy as np

from opengem.eval.corpus import EvalError, perturbation_parts
from opengem.eval.protocols.base import ProtocolContext
from opengem.eval.protocols.perturbation import Rotation, score_rotations
from opengem.eval.results import ProtocolResult
from opengem.eval.units import Cell, identity_of, perturbation_cells

NAME = "held-out-perturbation"
BASELINES = ("no_change", "type_mean", "on_target_only")
#: perturbations left out per type by default (rotations)
DEFAULT_ROTATIONS = 3


def perturbations_by_type(cells: list[Cell]) -> dict[str, list[str]]:
    """type -> its perturbation identities (sorted), for types with two or more."""
    by: dict[str, set[str]] = {}
    for c in cells:
        ptype = c.perturbation.get("perturbation_type", "")
        if (
            c.is_combination
            or ptype in ("", "control")
            or not c.perturbation.get("perturbation_ontology_id")
        ):
            continue
        by.setdefault(ptype, set()).add(c.identity)
    return {t: sorted(v) for t, v in sorted(by.items()) if len(v) >= 2}


def rows_with(view, identity: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Every row whose perturbation (or one part of a combination) is ``identity``."""
    keys = view.pkeys
    out = []
    for key in sorted(set(keys)):
        rows = np.flatnonzero(keys == key)
        parts = perturbation_parts(view.record(int(rows[0])))
        if any(identity_of(p) == identity for p in parts):
            out.append(rows)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.intp)


def run(ctx: ProtocolContext) -> ProtocolResult:
    view = ctx.view
    ctx.check_studies()
    cells = perturbation_cells(view)
    chosen = [c for c in cells if ctx.selects(c.study)]
    types = perturbations_by_type(cells)
    n_rot = ctx.max_rotations or DEFAULT_ROTATIONS
    plan: list[list[tuple[str, list[Cell]]]] = []
    for _, idents in types.items():
        candidates = [i for i in idents if any(c.identity == i for c in chosen)]
        for k, ident in enumerate(candidates[:n_rot]):
            while len(plan) <= k:
                plan.append([])
            plan[k].append((ident, [c for c in chosen if c.identity == ident]))
    if not plan:
        raise EvalError(f"{NAME}: no perturbation type with two or more perturbations")
    n_units = sum(len(cs) for p in plan for _, cs in p)
    ctx.log(f"{NAME}: {len(types)} types, {n_units} units, {len(plan)} trainings")
    rotations = [
        Rotation(
            held=np.unique(np.concatenate([rows_with(view, ident) for ident, _ in batch])),
            focus=sorted({c.study for _, cs in batch for c in cs}),
            held_out=[i for i, _ in batch],
            cells=[(ident, c) for ident, cs in batch for c in cs],
        )
        for batch in plan
    ]
    units, figures = score_rotations(ctx, cells, rotations, BASELINES, lambda u, k: {"rotation": k})
    return ProtocolResult(
        NAME,
        units,
        ctx.trainings,
        details={
            "perturbations_by_type": types,
            "n_trainings_note": f"rotation k leaves out the k-th perturbation of every type "
            f"(at most {n_rot}): {len(plan)} trainings for {n_units} units",
        },
        figures={"units": figures},
    )

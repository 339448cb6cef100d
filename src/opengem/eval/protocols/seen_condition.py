"""Seen condition: generation of conditions present in training, against held-out replicates.

A condition = samples with identical metadata (every field, study included) with at
least 3 replicates; a seeded third of its replicates (at least one) is held out of
the one training. Units are studies. The replicate ceiling is the agreement between
two disjoint halves of all real replicates of a condition. Baseline: the condition
mean of the training replicates, with negative-binomial noise for samples.
"""

from __future__ import annotations

import numpy as np

from opengem.contract import FIELDS
from opengem.eval.corpus import EvalError
from opengem.eval.generation import GenerationUnit, condition_groups, score_generation
from opengem.eval.protocols.base import ProtocolContext
from opengem.eval.results import ProtocolResult

NAME = "seen-condition"
#: held-out cells per condition (single-cell: a seeded subsample)
MAX_HELD_CELLS = 50


def run(ctx: ProtocolContext) -> ProtocolResult:
    view = ctx.view
    eligible = ctx.selected_studies()
    rows_elig = np.flatnonzero(np.isin(view.studies, eligible))
    conditions = [g for g in condition_groups(view, rows_elig, tuple(FIELDS)) if len(g) >= 3]
    if not conditions:
        raise EvalError("no condition with 3 or more replicates among the selected studies")
    rng = np.random.default_rng(0)
    held_by_condition = []
    for g in conditions:
        k = max(1, len(g) // 3)
        if view.modality == "sc":
            k = min(k, MAX_HELD_CELLS)
        held_by_condition.append(np.sort(rng.choice(g, size=k, replace=False)))
    held = np.concatenate(held_by_condition)
    train_rows = np.setdiff1d(np.arange(view.obs.shape[0]), held)
    unit_studies = sorted({view.studies[g[0]] for g in conditions})
    ctx.log(
        f"{NAME}: {len(conditions)} conditions in {len(unit_studies)} studies; "
        f"{len(held)} replicates held out; 1 training"
    )
    units, figures = [], []
    with ctx.trained(train_rows, unit_studies, "replicates held out", []) as (client, fitted):
        inside = np.zeros(view.obs.shape[0], dtype=bool)
        inside[fitted] = True
        for study in unit_studies:
            idx = [i for i, g in enumerate(conditions) if view.studies[g[0]] == study]
            # each condition's training replicates the model was fitted on
            trained = {
                i: conditions[i][
                    inside[conditions[i]] & ~np.isin(conditions[i], held_by_condition[i])
                ]
                for i in idx
            }
            keep = [i for i in idx if len(trained[i])]
            if not keep:
                continue
            train_g = [trained[i] for i in keep]
            unit = GenerationUnit(
                name=study,
                study=study,
                records=[view.record(int(conditions[i][0])) for i in keep],
                real=[held_by_condition[i] for i in keep],
                matches=train_g,
                ceiling_groups=[conditions[i] for i in keep],
            )
            result, figure = score_generation(client, view, unit, fitted, rng)
            units.append(result)
            figures.append(figure)
            ctx.log(
                f"  {study}: {len(keep)} conditions, sample-wise r model "
                f"{result.model['samplewise_pearson']:.3f} vs condition mean "
                f"{result.baselines['condition_mean']['samplewise_pearson']:.3f}; diversity "
                f"{result.model['diversity']:.3f} (real {result.info['real_diversity']:.3f})"
            )
    return ProtocolResult(
        NAME,
        units,
        ctx.trainings,
        details={
            "n_conditions": len(conditions),
            "n_held_out_replicates": len(held),
            "n_trainings_note": "one training without the held-out replicates of every condition",
        },
        figures={"units": figures},
    )

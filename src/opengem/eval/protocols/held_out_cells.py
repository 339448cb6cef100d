"""Held-out cells (single-cell): metadata, cell type above all, of cells never trained on.

A seeded third of the cells of every study (stratified by cell type) is held out of
one training; their metadata is predicted from their counts (every field, cell type
the headline), against logistic regression on PCA fitted on the training cells.
Units are studies.
"""

from __future__ import annotations

import numpy as np

from opengem.eval.corpus import EvalError
from opengem.eval.metadata import score_metadata
from opengem.eval.protocols.base import ProtocolContext
from opengem.eval.results import ProtocolResult, UnitResult

NAME = "held-out-cells"
#: held-out cells scored per study (seeded subsample)
MAX_CELLS = 600


def run(ctx: ProtocolContext) -> ProtocolResult:
    view = ctx.view
    studies = ctx.selected_studies()
    if not studies:
        raise EvalError(f"{NAME}: no study selected")
    rng = np.random.default_rng(0)
    cell_type = view.values("cell_type_ontology_id")
    held_by_study = {}
    cap = MAX_CELLS // 4 if ctx.fast else MAX_CELLS
    for s in studies:
        rows = np.flatnonzero(view.studies == s)
        picked = []
        for ct in sorted(set(cell_type[rows])):
            members = rows[cell_type[rows] == ct]
            k = len(members) // 3
            if k:
                picked.append(rng.choice(members, size=k, replace=False))
        if picked:
            held = np.sort(np.concatenate(picked))
            if len(held) > cap:
                held = np.sort(rng.choice(held, cap, replace=False))
            held_by_study[s] = held
    if not held_by_study:
        raise EvalError(f"{NAME}: no study has enough cells to hold a third out")
    held_all = np.concatenate(list(held_by_study.values()))
    train_rows = np.setdiff1d(np.arange(view.obs.shape[0]), held_all)
    ctx.log(f"{NAME}: {len(held_all)} held-out cells in {len(held_by_study)} studies; 1 training")
    units = []
    calibration: dict[str, list] = {"model": [], "logistic_pca": []}
    with ctx.trained(train_rows, list(held_by_study), "cells held out", []) as (client, fitted):
        for study, rows in held_by_study.items():
            model_md, lr_all, info, calib = score_metadata(client, view, rows, fitted, study)
            lr_md = lr_all["logistic_pca"]
            for side in calibration:
                calibration[side] += calib[side]
            units.append(
                UnitResult(
                    name=study,
                    study=study,
                    n_samples=len(rows),
                    model=model_md,
                    baselines={"logistic_pca": lr_md},
                    info={"metadata": info},
                )
            )
            ctx.log(
                f"  {study}: cell type macro-F1 model "
                f"{model_md.get('cell_type_ontology_id:macro_f1', float('nan')):.3f} vs logistic "
                f"PCA {lr_md.get('cell_type_ontology_id:macro_f1', float('nan')):.3f}"
            )
    return ProtocolResult(
        NAME,
        units,
        ctx.trainings,
        details={"n_trainings_note": "one training without a third of every study's cells"},
        figures={"units": [], "calibration": calibration},
    )

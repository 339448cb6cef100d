"""Held-out study: whole studies left out; predict their metadata, generate their conditions.

The held-out studies are split into disjoint folds (one training each). Metadata:
every sample of a held-out study, every field the model predicts, against logistic
regression on PCA fitted on the same training samples (:mod:`opengem.eval.metadata`).
Generation: each condition of the study (identical non-technical metadata) is
generated from its metadata, against the condition mean of matching training
samples (:mod:`opengem.eval.generation`).
"""

from __future__ import annotations

import math

import numpy as np

from opengem.eval.corpus import EvalError
from opengem.eval.generation import (
    CONDITION_FIELDS,
    GenerationUnit,
    condition_groups,
    match_training,
    score_generation,
)
from opengem.eval.metadata import score_metadata
from opengem.eval.protocols.base import ProtocolContext
from opengem.eval.results import ProtocolResult

NAME = "held-out-study"
#: tissue studies held out whole by default, in fold order (bulk)
DEFAULT_HELD_OUT_STUDIES = (
    "emtab513",
    "emtab3716",
    "gtex_bladder_yarn",
    "marioni2008_kidney_liver",
    "gse147507_covid_lung",
    "srp029880_colon",
    "srp021193_heart",
    "tcga_chol",
)


def run(ctx: ProtocolContext) -> ProtocolResult:
    view = ctx.view
    ctx.check_studies()
    present = view.study_list()
    if ctx.studies:
        candidates = [s for s in present if s in ctx.studies]
    else:
        candidates = [s for s in DEFAULT_HELD_OUT_STUDIES if s in present] or present
    n_folds = max(1, min(3, math.ceil(len(candidates) / 2)))
    if len(candidates) == len(present):
        n_folds = max(n_folds, 2)
    folds = [candidates[i::n_folds] for i in range(n_folds)]
    if not candidates or any(len(f) >= len(present) for f in folds):
        raise EvalError(f"{NAME} needs at least one study left to train on")
    ctx.log(f"{NAME}: {len(candidates)} studies in {n_folds} trainings")
    all_rows = np.arange(view.obs.shape[0])
    units = []
    figures: dict[str, list] = {"units": [], "calibration_model": [], "calibration_lr": []}
    rng = np.random.default_rng(0)
    for k, fold in enumerate(folds):
        held = np.flatnonzero(np.isin(view.studies, fold))
        with ctx.trained(np.setdiff1d(all_rows, held), fold, f"fold {k}", fold, protect=[]) as (
            client,
            fitted,
        ):
            fixed: dict = {}  # the fold's logistic_pca_fixed classifiers
            for study in fold:
                rows = np.flatnonzero(view.studies == study)
                model_md, md_baselines, md_info, calib = score_metadata(
                    client, view, rows, fitted, study, fixed=fixed
                )
                lr_md = md_baselines["logistic_pca"]
                figures["calibration_model"] += calib["model"]
                figures["calibration_lr"] += calib["logistic_pca"]
                groups = condition_groups(view, rows, CONDITION_FIELDS)
                records = [
                    {f: v for f, v in view.record(int(g[0])).items() if f != "study"}
                    for g in groups
                ]
                matches = [match_training(view, r, fitted) for r in records]
                unit = GenerationUnit(
                    name=study,
                    study=study,
                    records=records,
                    real=groups,
                    matches=[mr for mr, _ in matches],
                    ceiling_groups=groups,
                    info={"fold": k, "condition_mean_backoff_levels": [lv for _, lv in matches]},
                )
                result, figure = score_generation(client, view, unit, fitted, rng)
                result.model |= model_md
                result.baselines |= md_baselines
                result.info["metadata"] = md_info
                units.append(result)
                figures["units"].append(figure)
                ctx.log(
                    f"  {study}: metadata accuracy model "
                    f"{model_md.get('metadata_accuracy', float('nan')):.3f} vs logistic PCA "
                    f"{lr_md.get('metadata_accuracy', float('nan')):.3f}; sample-wise r model "
                    f"{result.model['samplewise_pearson']:.3f} vs condition mean "
                    f"{result.baselines['condition_mean']['samplewise_pearson']:.3f}"
                )
    return ProtocolResult(
        NAME,
        units,
        ctx.trainings,
        details={
            "held_out_studies": candidates,
            "folds": folds,
            "n_trainings_note": f"{len(candidates)} studies held out in {n_folds} disjoint "
            "folds, one training each",
            "metadata_note": (
                "every held-out sample with a truth is scored, per field ('field:metric'); an "
                "ontology prediction is right when it is the truth, an ancestor or a descendant "
                "(accuracy_exact: the exact term); truths no training class reaches are listed "
                "under metadata.unreachable; the headline 'metadata_*' averages the informative "
                "fields (>= 2 classes in training), trivial ones are listed; fields predicted "
                "constant within a study whose truth varies are listed under "
                "metadata.constant_prediction"
            ),
        },
        figures={
            "units": figures["units"],
            "calibration": {
                "model": figures["calibration_model"],
                "logistic_pca": figures["calibration_lr"],
            },
        },
    )

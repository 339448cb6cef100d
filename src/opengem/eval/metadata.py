"""Metadata prediction of held-out samples: the model and logistic regression on PCA.

For each field the model predicts, every held-out sample with a truth is scored
(:func:`opengem.eval.scoring.metadata_field_scores`). The baseline
``logistic_pca`` is refitted for each scored study on the genes that study measured
(what a user with that one dataset would do); ``logistic_pca_fixed`` (on request) is
fitted once per training on every gene and predicts from the counts alone, as a
classifier shipped before the query is seen must. The headline
``metadata_<metric>`` averages the *informative* fields only: a field constant in
the training data (fewer than two classes) is trivial and listed, not averaged;
``study`` is never scored (a held-out study is not a class by design).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from opengem.eval import baselines as bl
from opengem.eval import metrics as m
from opengem.eval.corpus import CorpusView
from opengem.eval.querying import ModelClient
from opengem.eval.scoring import metadata_field_scores

__all__ = ["HEADLINE", "score_metadata"]

HEADLINE = ("accuracy", "accuracy_exact", "balanced_accuracy", "macro_f1", "ece")
NOT_SCORED = ("study",)
#: logistic regression is fitted on at most this many training samples (seeded)
MAX_BASELINE_TRAIN = 4000


def _headline(per_field: dict[str, dict[str, float]], fields: Sequence[str]) -> dict[str, float]:
    out = {}
    for name in HEADLINE:
        vals = [per_field[f][name] for f in fields if name in per_field.get(f, {})]
        arr = np.asarray(vals, dtype=np.float64)
        arr = arr[np.isfinite(arr)]
        out[f"metadata_{name}"] = float(arr.mean()) if arr.size else float("nan")
    return out


def score_metadata(
    client: ModelClient,
    view: CorpusView,
    rows: np.ndarray,
    fitted: np.ndarray,
    study: str,
    fields: Sequence[str] | None = None,
    fixed: dict[str, Any] | None = None,
) -> tuple[
    dict[str, float], dict[str, dict[str, float]], dict[str, Any], dict[str, list[dict[str, Any]]]
]:
    """Model and baseline metadata metrics of ``rows`` (genes of ``study``).

    Returns the model's metrics, each baseline's (``field:metric`` and headline
    ``metadata_metric``; ``logistic_pca``, plus ``logistic_pca_fixed`` when
    ``fixed`` is given: a dict, one per training, caching its fitted classifiers),
    unit info (scored counts, trivial fields, unreachable truths, fields predicted
    constant) and calibration figure data.
    """
    genes = view.genes_of(study)
    counts = view.counts(rows)
    probs = client.predict_metadata(counts)
    model_fields = [f for f in (probs[0] if probs else {}) if f not in NOT_SCORED]
    if fields is not None:
        model_fields = [f for f in model_fields if f in fields]
    train = fitted
    if len(train) > MAX_BASELINE_TRAIN:
        rng = np.random.default_rng(0)
        train = np.sort(rng.choice(train, MAX_BASELINE_TRAIN, replace=False))
    train_l = view.lcpm(train, study)
    test_l = m.log_cpm(counts[:, genes])
    model_md: dict[str, dict[str, float]] = {}
    lr_md: dict[str, dict[str, float]] = {}
    fixed_md: dict[str, dict[str, float]] = {}
    info: dict[str, Any] = {
        "scored": {},
        "trivial_fields": [],
        "unreachable": {},
        "constant_prediction": {"model": [], "logistic_pca": []},
    }
    if fixed is not None:
        info["constant_prediction"]["logistic_pca_fixed"] = []
    calibration: dict[str, list[dict[str, Any]]] = {"model": [], "logistic_pca": []}
    for f in model_fields:
        truth = view.values(f)[rows].tolist()
        y_train = view.values(f)[fitted]
        train_classes = sorted(set(y_train[y_train != ""].tolist()))
        classes = list(probs[0][f])
        p = np.array([[pr[f].get(c, 0.0) for c in classes] for pr in probs])
        scores = metadata_field_scores(f, truth, classes, p)
        info["scored"][f] = scores.n_scored
        if scores.n_scored == 0:
            continue
        if len(train_classes) < 2:
            info["trivial_fields"].append(f)
        if scores.unreachable:
            info["unreachable"][f] = scores.unreachable
        model_md[f] = scores.metrics
        if scores.constant_prediction:
            info["constant_prediction"]["model"].append(f)
        calibration["model"].append({"confidence": scores.confidence, "correct": scores.correct})
        has = view.values(f)[train] != ""
        if len(set(view.values(f)[train][has].tolist())) >= 1 and has.sum() >= 2:
            lr = bl.LogisticPCA().fit(train_l[has], view.values(f)[train][has].tolist())
            lr_scores = metadata_field_scores(f, truth, list(lr.classes_), lr.predict_proba(test_l))
            lr_md[f] = lr_scores.metrics
            if lr_scores.constant_prediction:
                info["constant_prediction"]["logistic_pca"].append(f)
            calibration["logistic_pca"].append(
                {"confidence": lr_scores.confidence, "correct": lr_scores.correct}
            )
            if fixed is not None:
                if f not in fixed:
                    if "__lcpm__" not in fixed:
                        fixed["__lcpm__"] = m.log_cpm(view.counts(train))
                    fixed[f] = bl.LogisticPCA().fit(
                        fixed["__lcpm__"][has], view.values(f)[train][has].tolist()
                    )
                lr_all = fixed[f]
                fixed_scores = metadata_field_scores(
                    f, truth, list(lr_all.classes_), lr_all.predict_proba(m.log_cpm(counts))
                )
                fixed_md[f] = fixed_scores.metrics
                if fixed_scores.constant_prediction:
                    info["constant_prediction"]["logistic_pca_fixed"].append(f)
    informative = [f for f in model_md if f not in info["trivial_fields"]]
    info["informative_fields"] = informative
    model_flat = {f"{f}:{k}": v for f, s in model_md.items() for k, v in s.items()}
    lr_flat = {f"{f}:{k}": v for f, s in lr_md.items() for k, v in s.items()}
    model_flat |= _headline(model_md, informative)
    lr_flat |= _headline(lr_md, informative)
    model_flat["fields_predicted_constant"] = float(len(info["constant_prediction"]["model"]))
    lr_flat["fields_predicted_constant"] = float(len(info["constant_prediction"]["logistic_pca"]))
    baselines = {"logistic_pca": lr_flat}
    if fixed is not None:
        fixed_flat = {f"{f}:{k}": v for f, s in fixed_md.items() for k, v in s.items()}
        fixed_flat |= _headline(fixed_md, informative)
        fixed_flat["fields_predicted_constant"] = float(
            len(info["constant_prediction"]["logistic_pca_fixed"])
        )
        baselines["logistic_pca_fixed"] = fixed_flat
    return model_flat, baselines, info, calibration

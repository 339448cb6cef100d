"""Evaluation of opengem models: the protocol in ``docs/evaluation.md``.

- :mod:`opengem.eval.metrics`: the metrics (re-exported here);
- :mod:`opengem.eval.baselines`: no change, additive shift, train mean, condition
  mean (+ NB noise), logistic regression on PCA;
- :mod:`opengem.eval.experiments`: held-out-context experiments and their units;
- :mod:`opengem.eval.protocols`: the three protocols and :func:`run_protocol`
  (``opengem eval``), writing ``metrics.json`` and ``report.html``
  (:mod:`opengem.eval.report`).
"""

from __future__ import annotations

from opengem.eval.metrics import (
    accuracy,
    balanced_accuracy,
    classifier_auc,
    direction_accuracy,
    energy_distance,
    expected_calibration_error,
    genewise_pearson_weighted,
    log_cpm,
    macro_f1,
    on_target_error,
    pearson,
    pearson_delta,
    r2_of_means,
    replicate_ceiling,
    roc_auc,
    samplewise_pearson,
    sd_correlation,
    top_degs,
)

__all__ = [
    "accuracy",
    "balanced_accuracy",
    "classifier_auc",
    "direction_accuracy",
    "energy_distance",
    "expected_calibration_error",
    "genewise_pearson_weighted",
    "log_cpm",
    "macro_f1",
    "on_target_error",
    "pearson",
    "pearson_delta",
    "r2_of_means",
    "replicate_ceiling",
    "roc_auc",
    "samplewise_pearson",
    "sd_correlation",
    "top_degs",
]

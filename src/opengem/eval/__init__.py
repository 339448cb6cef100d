"""Evaluation of opengem models: the metrics of the protocol in ``docs/evaluation.md``."""

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

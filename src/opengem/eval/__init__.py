"""Evaluation of opengem models: the protocols of ``docs/evaluation.md``.

Shared pieces:

- :mod:`~opengem.eval.corpus`: the corpus view (log-CPM per study, perturbation keys);
- :mod:`~opengem.eval.units`: perturbation cells and units (matched controls);
- :mod:`~opengem.eval.training`: fixed budgets, the :class:`QueryableModel` interface,
  the default trainer;
- :mod:`~opengem.eval.querying`: the queries a protocol sends (the public contract);
- :mod:`~opengem.eval.baselines`, :mod:`~opengem.eval.effects`: the baselines;
- :mod:`~opengem.eval.metrics`, :mod:`~opengem.eval.scoring`: metrics and unit scoring;
- :mod:`~opengem.eval.generation`, :mod:`~opengem.eval.metadata`: generation and
  metadata-prediction units;
- :mod:`~opengem.eval.results`: typed unit results, summaries, verdicts;
- :mod:`~opengem.eval.report`: ``report.html`` and figures.

One module per protocol in :mod:`opengem.eval.protocols`; :func:`run_protocol` and
:func:`run_all` (``opengem eval``, ``opengem eval --all``) in :mod:`~opengem.eval.run`.
"""

from __future__ import annotations

from opengem.eval.corpus import EvalError
from opengem.eval.metrics import (
    accuracy,
    balanced_accuracy,
    between_condition_correlation,
    classifier_auc,
    direction_accuracy,
    energy_distance,
    expected_calibration_error,
    genewise_pearson_weighted,
    log_cpm,
    macro_f1,
    magnitude_ratio,
    on_target_error,
    pearson,
    pearson_delta,
    r2_of_means,
    replicate_ceiling,
    replicate_spread,
    roc_auc,
    samplewise_pearson,
    sd_correlation,
    top_degs,
)
from opengem.eval.training import QueryableModel


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    # the runners import the protocols (and through them the model code) only when used
    if name in ("run_protocol", "run_all"):
        from opengem.eval import run

        return getattr(run, name)
    raise AttributeError(name)


__all__ = [
    "EvalError",
    "QueryableModel",
    "accuracy",
    "balanced_accuracy",
    "between_condition_correlation",
    "classifier_auc",
    "direction_accuracy",
    "energy_distance",
    "expected_calibration_error",
    "genewise_pearson_weighted",
    "log_cpm",
    "macro_f1",
    "magnitude_ratio",
    "on_target_error",
    "pearson",
    "pearson_delta",
    "r2_of_means",
    "replicate_ceiling",
    "replicate_spread",
    "roc_auc",
    "run_all",
    "run_protocol",
    "samplewise_pearson",
    "sd_correlation",
    "top_degs",
]

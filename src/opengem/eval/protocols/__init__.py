"""The evaluation protocols of ``docs/evaluation.md``, one module each.

Each module has a ``NAME`` and a ``run(ctx) -> ProtocolResult``; :data:`PROTOCOLS`
maps names to them and :data:`ALL` lists what ``opengem eval --all`` runs per
modality.
"""

from __future__ import annotations

from collections.abc import Callable

from opengem.eval.protocols import (
    combinations,
    fit,
    held_out_cells,
    held_out_context,
    held_out_perturbation,
    held_out_study,
    held_out_study_perturbation,
    seen_condition,
)
from opengem.eval.protocols.base import ProtocolContext
from opengem.eval.results import ProtocolResult

__all__ = ["ALL", "PROTOCOLS", "ProtocolContext"]

PROTOCOLS: dict[str, Callable[[ProtocolContext], ProtocolResult]] = {
    m.NAME: m.run
    for m in (
        fit,
        held_out_context,
        held_out_study_perturbation,
        held_out_perturbation,
        combinations,
        held_out_study,
        seen_condition,
        held_out_cells,
    )
}

#: what ``--all`` runs, per modality, in report order
ALL = {
    "bulk": (
        "fit",
        "held-out-context",
        "held-out-study-perturbation",
        "held-out-perturbation",
        "combinations",
        "held-out-study",
        "seen-condition",
    ),
    "sc": (
        "fit",
        "held-out-context",
        "held-out-study-perturbation",
        "held-out-perturbation",
        "combinations",
        "held-out-cells",
        "seen-condition",
    ),
}

"""Model ids: one parser gives each id's family, modality and task."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from opengem.contract.errors import UnknownModelError


class Modality(StrEnum):
    BULK = "bulk"
    SC = "sc"


class Task(StrEnum):
    BASELINE = "baseline"
    REFERENCE_CONDITIONING = "reference-conditioning"
    PREDICT_METADATA = "predict-metadata"
    CONDITION_ON_SAMPLE_IDS = "condition-on-sample-ids"


FAMILY = "gem-1"
_MODALITY_SLUG = {Modality.BULK: "bulk", Modality.SC: "sc"}
_MODALITY_WORDS = {Modality.BULK: "bulk RNA-seq", Modality.SC: "single-cell RNA-seq"}
_TASK_WORDS = {
    Task.BASELINE: "generates {m} expression from metadata",
    Task.REFERENCE_CONDITIONING: "re-generates a reference {m} sample under a new perturbation",
    Task.PREDICT_METADATA: "predicts metadata (tissue, cell type, disease, sex…) from {m} counts",
    Task.CONDITION_ON_SAMPLE_IDS: "re-generates a stored training {m} sample (by sample id) "
    "under a new perturbation",
}


@dataclass(frozen=True)
class ModelSpec:
    """What a model id means."""

    model_id: str
    family: str
    modality: Modality
    task: Task

    @property
    def base_model_id(self) -> str:
        """The id of the baseline model that shares this model's weights (``gem-1-bulk``)."""
        return f"{self.family}-{_MODALITY_SLUG[self.modality]}"

    @property
    def description(self) -> str:
        return _TASK_WORDS[self.task].format(m=_MODALITY_WORDS[self.modality])

    def to_dict(self) -> dict[str, str]:
        return {
            "model_id": self.model_id,
            "name": self.model_id,
            "family": self.family,
            "modality": self.modality.value,
            "task": self.task.value,
            "description": self.description,
        }


def _make(modality: Modality, task: Task) -> ModelSpec:
    base = f"{FAMILY}-{_MODALITY_SLUG[modality]}"
    model_id = base if task is Task.BASELINE else f"{base}_{task.value}"
    return ModelSpec(model_id, FAMILY, modality, task)


#: Every model id opengem serves, in the order ``list_models`` shows them.
MODEL_SPECS: dict[str, ModelSpec] = {
    s.model_id: s
    for s in (
        _make(Modality.BULK, Task.BASELINE),
        _make(Modality.SC, Task.BASELINE),
        _make(Modality.BULK, Task.REFERENCE_CONDITIONING),
        _make(Modality.SC, Task.REFERENCE_CONDITIONING),
        _make(Modality.BULK, Task.PREDICT_METADATA),
        _make(Modality.SC, Task.PREDICT_METADATA),
        _make(Modality.BULK, Task.CONDITION_ON_SAMPLE_IDS),
    )
}
MODEL_IDS: tuple[str, ...] = tuple(MODEL_SPECS)


def parse_model_id(model_id: object) -> ModelSpec:
    """The spec of a model id.

    Raises
    ------
    UnknownModelError
        For anything that is not one of :data:`MODEL_IDS` (the message lists them).
    """
    if isinstance(model_id, str) and model_id in MODEL_SPECS:
        return MODEL_SPECS[model_id]
    raise UnknownModelError(model_id, MODEL_IDS)


def list_models() -> dict[str, list[dict[str, str]]]:
    """``{"models": [{"model_id", "name", "family", "modality", "task", "description"}, …]}``."""
    return {"models": [s.to_dict() for s in MODEL_SPECS.values()]}

"""Normalised queries: what :func:`opengem.validate_query` hands to the engine.

These pydantic models describe a query *after* validation and legacy
normalisation: canonical metadata strings, counts as an int64 numpy vector,
defaults filled in (``total_count`` from the modality, ``conditioning``
biological + technical). The lenient wire format users send (legacy ``mode``,
``{"counts": {"counts": [...]}}``, ``conditioning`` as a string, whole-number
floats) is handled by the validator, which reports every problem at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from opengem.contract.fields import LatentGroup
from opengem.contract.models import Modality, Task

SamplingStrategy = Literal["sample generation", "mean estimation"]


@dataclass(frozen=True)
class Strategy:
    """A sampling strategy: what it draws, and which modalities offer it."""

    name: str
    modalities: tuple[Modality, ...]
    description: str


#: every sampling strategy (the contract, the predictor and ``opengem fields`` read it)
STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "sample generation",
            (Modality.BULK, Modality.SC),
            "replicate-like samples: latent and residual noise with Poisson counts (bulk); "
            "cells with negative-binomial counts (single-cell, beyond GEM-1)",
        ),
        Strategy(
            "mean estimation",
            (Modality.BULK, Modality.SC),
            "the expected counts, rounded (keeping each sample's total)",
        ),
    )
}
SAMPLING_STRATEGIES: tuple[str, ...] = tuple(STRATEGIES)
DEFAULT_TOTAL_COUNT = {Modality.BULK: 10_000_000, Modality.SC: 10_000}
DEFAULT_CONDITIONING = (LatentGroup.BIOLOGICAL, LatentGroup.TECHNICAL)

#: Counts travel as int64 numpy vectors inside opengem and as JSON lists outside.
CountVector = Annotated[
    np.ndarray, PlainSerializer(lambda a: a.tolist(), return_type=list[int], when_used="json")
]
#: Canonical field -> value; a combination of perturbations holds its components joined
#: by ``"|"`` (:data:`opengem.contract.fields.PERTURBATION_SEP`) in aligned order.
Metadata = dict[str, str]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class BaselineInput(_Model):
    metadata: Metadata = Field(default_factory=dict)
    num_samples: int = Field(ge=1)


class ReferenceInput(_Model):
    counts: CountVector
    metadata: Metadata = Field(default_factory=dict)
    num_samples: int = Field(ge=1)


class CountsInput(_Model):
    counts: CountVector


class SampleIdsInput(_Model):
    sample_ids: list[str] = Field(min_length=1)
    metadata: Metadata = Field(default_factory=dict)
    num_samples: int = Field(ge=1)


class _Query(_Model):
    model_id: str
    modality: Modality
    task: Task
    seed: int | None = None
    source: Any = None


class _ExpressionQuery(_Query):
    sampling_strategy: SamplingStrategy
    total_count: int = Field(ge=1)
    deterministic_latents: bool = False


class BaselineQuery(_ExpressionQuery):
    inputs: list[BaselineInput] = Field(min_length=1)


class ReferenceQuery(_ExpressionQuery):
    inputs: list[ReferenceInput] = Field(min_length=1)
    conditioning: list[LatentGroup] = Field(default_factory=lambda: list(DEFAULT_CONDITIONING))
    fixed_total_count: bool = False


class SampleIdsQuery(_ExpressionQuery):
    inputs: list[SampleIdsInput] = Field(min_length=1)
    conditioning: list[LatentGroup] = Field(default_factory=lambda: list(DEFAULT_CONDITIONING))
    fixed_total_count: bool = False


class PredictMetadataQuery(_Query):
    inputs: list[CountsInput] = Field(min_length=1)


Query = BaselineQuery | ReferenceQuery | SampleIdsQuery | PredictMetadataQuery

QUERY_TYPES: dict[Task, type[_Query]] = {
    Task.BASELINE: BaselineQuery,
    Task.REFERENCE_CONDITIONING: ReferenceQuery,
    Task.CONDITION_ON_SAMPLE_IDS: SampleIdsQuery,
    Task.PREDICT_METADATA: PredictMetadataQuery,
}

"""JSON Schema of the query body each model takes, derived from the contract's tables.

The validation engine (:mod:`opengem.contract.validate`) is the authority: it
checks vocabularies, ontologies, counts against the gene space and every rule that
is policy; these schemas describe the same keys, types and ranges for tools that
read OpenAPI (documentation, client generators, fuzzers). Everything here is read
from the tables validation uses (:data:`~opengem.contract.validate.TOP_LEVEL_KEYS`,
:data:`~opengem.contract.validate.INPUT_KEYS`, the field registry, the sampling
strategies, the latent groups), so a key added there appears here.
"""

from __future__ import annotations

from typing import Any

from opengem.contract.fields import FIELDS, PERTURBATION_FIELDS, FieldKind, LatentGroup
from opengem.contract.models import MODEL_SPECS, ModelSpec, Task
from opengem.contract.query import STRATEGIES
from opengem.contract.validate import FIELD_ALIASES, INPUT_KEYS, MAX_COUNT, TOP_LEVEL_KEYS

__all__ = ["query_schema", "schema_name"]

_INTEGER: dict[str, Any] = {"type": "integer"}


def _metadata(fields: tuple[str, ...]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for name in fields:
        spec = FIELDS[name]
        value: dict[str, Any] = {"description": spec.description}
        if spec.kind is FieldKind.ENUM:
            value["type"] = ["string", "null"]
            value["examples"] = list(spec.values)
        elif spec.kind is FieldKind.QUANTITY:
            value["type"] = ["string", "number", "null"]
        else:
            value["type"] = ["string", "null"]
        if name in PERTURBATION_FIELDS:  # a combination: aligned lists (or "|"-joined)
            value = {
                "description": spec.description,
                "anyOf": [
                    {k: v for k, v in value.items() if k != "description"},
                    {"type": "array", "items": {"type": ["string", "number", "null"]}},
                ],
            }
        if spec.example:
            value["example"] = spec.example
        props[name] = value
    aliases = {a: props[f] for a, f in FIELD_ALIASES.items() if f in props}
    return {
        "type": "object",
        "description": "Metadata of the samples to generate; unset fields may be "
        "omitted, '' or null. Short names (" + ", ".join(sorted(aliases)) + ") are "
        "accepted for the fields they name.",
        "properties": props | aliases,
        "additionalProperties": False,
    }


def _input(task: Task) -> dict[str, Any]:
    keys = INPUT_KEYS[task]
    fields = tuple(FIELDS) if task is Task.BASELINE else PERTURBATION_FIELDS
    known: dict[str, Any] = {
        "metadata": _metadata(fields),
        "num_samples": {**_INTEGER, "minimum": 1, "description": "samples to generate"},
        "counts": {
            "type": "array",
            "description": "raw counts of one sample, in the model's gene order "
            "(GET /api/models/{model_id}/vocab, opengem genes)",
            "items": {**_INTEGER, "minimum": 0, "maximum": MAX_COUNT},
            "minItems": 1,
        },
        "sample_ids": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "description": "training samples whose latents are averaged into one reference",
        },
        "sample_id": {"type": "string", "description": "one training sample (legacy form)"},
    }
    required = [k for k in ("counts", "num_samples") if k in keys]
    return {
        "type": "object",
        "properties": {k: known[k] for k in keys},
        "required": required,
        "additionalProperties": False,
    }


def query_schema(spec: ModelSpec | str) -> dict[str, Any]:
    """The JSON Schema of a query body for a model (a :class:`ModelSpec` or its id)."""
    if isinstance(spec, str):
        spec = MODEL_SPECS[spec]
    strategies = [s.name for s in STRATEGIES.values() if spec.modality in s.modalities]
    known: dict[str, Any] = {
        "inputs": {"type": "array", "items": _input(spec.task), "minItems": 1},
        "seed": {"type": ["integer", "null"], "description": "seed of every random draw"},
        "source": {"description": "free-form caller tag, echoed"},
        "sampling_strategy": {"type": "string", "enum": strategies},
        "total_count": {**_INTEGER, "minimum": 1, "description": "library size per sample"},
        "deterministic_latents": {"type": "boolean"},
        "conditioning": {
            "type": "array",
            "items": {"type": "string", "enum": [g.value for g in LatentGroup]},
            "description": "latent groups kept from the reference (the others redrawn)",
        },
        "fixed_total_count": {
            "type": "boolean",
            "description": "output library total_count (else the reference's own)",
        },
    }
    legacy = {
        "mode": {"type": "string", "deprecated": True},
        "modality": {"type": "string", "deprecated": True},
        "return_classifier_probs": {"type": "boolean", "deprecated": True},
    }
    return {
        "title": schema_name(spec),
        "type": "object",
        "description": f"A query to {spec.model_id} ({spec.description})",
        "properties": {k: known[k] for k in TOP_LEVEL_KEYS[spec.task]} | legacy,
        "required": ["inputs"],
        "additionalProperties": False,
    }


def schema_name(spec: ModelSpec | str) -> str:
    """The OpenAPI component name of a model's query schema."""
    model_id = spec if isinstance(spec, str) else spec.model_id
    return "Query_" + model_id.replace("-", "_")

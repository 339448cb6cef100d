"""Validating and running one query against a model (shared by the API and the workers)."""

from __future__ import annotations

from typing import Any

from opengem.settings import QueryLimits


def validate_for_model(registry: Any, model_id: str, query: Any, limits: QueryLimits) -> Any:
    """Validate ``query`` against the vocabulary of the model serving ``model_id``.

    Returns the normalised query. Raises ``UnknownModelError``, ``QueryError``, or
    ``BundleError`` when the model has no bundle on this server.
    """
    return registry.validate(model_id, query, limits)


def sample_count(normalised: Any) -> int:
    """Samples a normalised query generates (one per input for metadata prediction)."""
    return int(sum(getattr(i, "num_samples", 1) for i in normalised.inputs))


def run(registry: Any, model_id: str, query: Any, limits: QueryLimits) -> Any:
    """Validate and run; returns an ``ExpressionResult`` or ``MetadataResult``."""
    normalised = validate_for_model(registry, model_id, query, limits)
    return registry.predictor(model_id).predict(normalised)

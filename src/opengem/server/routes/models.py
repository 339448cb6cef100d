"""The models served: the list, an example query per model, a model's vocabulary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from starlette.exceptions import HTTPException

from opengem.contract import (
    MODEL_SPECS,
    UnknownModelError,
    get_example_query,
    list_models,
    parse_model_id,
)
from opengem.server.routes.common import AUTH, Key, ModelId, error_response
from opengem.server.state import ServerState, State

if TYPE_CHECKING:
    from opengem.contract.models import ModelSpec
    from opengem.engine.predictor import Predictor

router = APIRouter(tags=["models"])


def spec_or_404(model_id: str) -> ModelSpec:
    try:
        return parse_model_id(model_id)
    except UnknownModelError as exc:
        raise HTTPException(404, str(exc)) from None


def predictor_or_503(state: ServerState, model_id: str) -> Predictor:
    from opengem.engine.bundle import BundleError

    try:
        return state.registry.predictor(model_id)
    except BundleError as exc:
        raise HTTPException(503, f"{model_id} is not available on this server: {exc}") from None


@router.get("/api/models", responses=AUTH)
def models(key: Key, state: State) -> dict[str, Any]:
    """Every model id served, with whether its bundle is present and loaded."""
    loaded = state.loaded_models()
    registry = state.registry
    out = []
    for entry in list_models()["models"]:
        spec = MODEL_SPECS[entry["model_id"]]
        out.append(
            {
                **entry,
                "available": registry.available(spec.model_id),
                "loaded": spec.base_model_id in loaded,
            }
        )
    return {"models": out}


@router.get(
    "/api/models/{model_id}/example-query",
    responses={**AUTH, **error_response(404, "Unknown model id")},
)
def example_query(model_id: ModelId, key: Key) -> dict[str, Any]:
    """A valid query for the model, as ``{"example_query": {...}}``."""
    spec_or_404(model_id)
    return get_example_query(model_id)


@router.get(
    "/api/models/{model_id}/vocab",
    responses={
        **AUTH,
        **error_response(404, "Unknown model id"),
        **error_response(503, "Model not installed"),
    },
)
def vocab(model_id: ModelId, key: Key, state: State) -> dict[str, Any]:
    """Per metadata field, the values the model was trained on (value → label)."""
    spec_or_404(model_id)
    predictor = predictor_or_503(state, model_id)
    v = predictor.vocab
    return {
        "model_id": model_id,
        "model_version": predictor.bundle.model_version,
        "fields": {name: v.values(name) for name in v.fields},
    }

"""The OpenAPI document with one predict operation per model, each with its own body.

FastAPI documents ``POST /api/models/{model_id}/predict`` once, with one body for
every model. A query's keys depend on the model (a baseline query has metadata
inputs, reference conditioning counts and ``conditioning``, metadata prediction
counts only), so the document lists ``/api/models/<id>/predict`` for every model id
instead, each with that model's schema (:func:`opengem.contract.schema.query_schema`)
and its documented example (``GET /api/models/<id>/example-query``). The route
itself is unchanged: one handler serves every id.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI

from opengem.contract import MODEL_SPECS, get_example_query
from opengem.contract.schema import query_schema, schema_name

PREDICT_TEMPLATE = "/api/models/{model_id}/predict"


def per_model_paths(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with the predict template replaced by one path per model id."""
    paths = document.get("paths", {})
    template = paths.pop(PREDICT_TEMPLATE, None)
    if template is None or "post" not in template:
        return document
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    operation = template["post"]
    for model_id, spec in MODEL_SPECS.items():
        name = schema_name(spec)
        schemas[name] = query_schema(spec)
        op = copy.deepcopy(operation)
        op["operationId"] = f"predict_{model_id.replace('-', '_')}"
        op["summary"] = f"Run a query on {model_id}"
        op["description"] = (f"{spec.description}. " + (op.get("description") or "")).strip()
        op["parameters"] = [p for p in op.get("parameters", []) if p.get("name") != "model_id"]
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": f"#/components/schemas/{name}"},
                    "example": get_example_query(model_id)["example_query"],
                }
            },
        }
        paths[f"/api/models/{model_id}/predict"] = {"post": op}
    return document


def install(app: FastAPI) -> None:
    """Serve :func:`per_model_paths` of the app's generated document (built once)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = per_model_paths(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

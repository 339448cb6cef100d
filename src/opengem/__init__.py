"""opengem: open, self-hostable generative gene-expression models.

The top level mirrors the pysynthbio client, so ``import opengem as pysynthbio``
runs code written for the GEM-1 API: :func:`list_models`, :func:`get_example_query`,
:func:`predict_query` (embedded by default; on a server when ``api_base_url`` or
``SYNTHESIZE_API_BASE_URL`` is set) and pysynthbio's exception classes, plus
:func:`validate_query`, :func:`to_anndata` and :func:`load_bundle`. Torch and the
models load on first use, not on import.
"""

from typing import Any

from opengem.contract import (
    MODEL_IDS,
    Problem,
    QueryError,
    UnknownModelError,
    validate_query,
)

__version__ = "0.1.0"

_LAZY = {
    "predict_query": "opengem.client.api",
    "get_example_query": "opengem.client.api",
    "list_models": "opengem.client.api",
    "SynthesizeAPIError": "opengem.client.errors",
    "AuthenticationError": "opengem.client.errors",
    "NotFoundError": "opengem.client.errors",
    "ValidationError": "opengem.client.errors",
    "to_anndata": "opengem.client.embedded",
    "load_bundle": "opengem.engine.bundle",
    "BundleError": "opengem.engine.bundle",
    "ModelRegistry": "opengem.engine.registry",
}

__all__ = [
    "MODEL_IDS",
    "AuthenticationError",
    "BundleError",
    "ModelRegistry",
    "NotFoundError",
    "Problem",
    "QueryError",
    "SynthesizeAPIError",
    "UnknownModelError",
    "ValidationError",
    "__version__",
    "get_example_query",
    "list_models",
    "load_bundle",
    "predict_query",
    "to_anndata",
    "validate_query",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'opengem' has no attribute {name!r}")

"""opengem: open, self-hostable generative gene-expression models.

The top level mirrors the pysynthbio client, so ``import opengem as pysynthbio``
runs code written for the GEM-1 API: :func:`list_models`, :func:`get_example_query`,
:func:`predict_query`, plus :func:`validate_query`, :func:`to_anndata` and
:func:`load_bundle`. Torch and the models load on first use, not on import.
"""

from typing import Any

from opengem.contract import (
    MODEL_IDS,
    Problem,
    QueryError,
    UnknownModelError,
    get_example_query,
    list_models,
    validate_query,
)

__version__ = "0.1.0"

_LAZY = {
    "predict_query": "opengem.client.embedded",
    "to_anndata": "opengem.client.embedded",
    "load_bundle": "opengem.engine.bundle",
    "BundleError": "opengem.engine.bundle",
    "ModelRegistry": "opengem.engine.registry",
}

__all__ = [
    "MODEL_IDS",
    "BundleError",
    "ModelRegistry",
    "Problem",
    "QueryError",
    "UnknownModelError",
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

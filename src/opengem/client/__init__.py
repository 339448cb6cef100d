"""pysynthbio-compatible client functions: embedded by default, remote when configured.

Imported lazily so that ``import opengem`` does not load torch.
"""

from typing import Any

_LAZY = {
    "predict_query": "opengem.client.api",
    "get_example_query": "opengem.client.api",
    "list_models": "opengem.client.api",
    "run_query": "opengem.client.embedded",
    "to_anndata": "opengem.client.embedded",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'opengem.client' has no attribute {name!r}")

"""opengem: open, self-hostable generative gene-expression models.

The top level mirrors the pysynthbio client, so ``import opengem as pysynthbio``
runs code written for the GEM-1 API: :func:`list_models`,
:func:`get_example_query`, plus :func:`validate_query` and :class:`QueryError`.
"""

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

__all__ = [
    "MODEL_IDS",
    "Problem",
    "QueryError",
    "UnknownModelError",
    "__version__",
    "get_example_query",
    "list_models",
    "validate_query",
]

"""The query contract: model ids, metadata fields, query models, validation, examples.

Pure Python and pydantic: no torch, no HTTP. Everything that decides whether a
query is valid lives here, so the embedded API, the CLI and the server agree.
"""

from opengem.contract.errors import Problem, QueryError, UnknownModelError
from opengem.contract.examples import get_example_query, reference_counts
from opengem.contract.fields import (
    ENTITY_FIELDS,
    FIELDS,
    MATCHED_CONTEXT_FIELDS,
    PERTURBATION_FIELDS,
    PERTURBATION_SEP,
    PERTURBATION_TYPE_SPECS,
    QUANTITY_FIELDS,
    FieldKind,
    FieldSpec,
    IdSpace,
    LatentGroup,
    PerturbationTypeSpec,
    fields_of,
    quantity_value,
)
from opengem.contract.models import (
    MODEL_IDS,
    MODEL_SPECS,
    Modality,
    ModelSpec,
    Task,
    list_models,
    parse_model_id,
)
from opengem.contract.quantities import Quantity, QuantityError, parse_age, parse_quantity
from opengem.contract.query import (
    BaselineQuery,
    PredictMetadataQuery,
    Query,
    ReferenceQuery,
    SampleIdsQuery,
)
from opengem.contract.validate import Vocabulary, validate_metadata, validate_query

__all__ = [
    "ENTITY_FIELDS",
    "FIELDS",
    "MATCHED_CONTEXT_FIELDS",
    "MODEL_IDS",
    "MODEL_SPECS",
    "PERTURBATION_FIELDS",
    "PERTURBATION_SEP",
    "PERTURBATION_TYPE_SPECS",
    "QUANTITY_FIELDS",
    "BaselineQuery",
    "FieldKind",
    "FieldSpec",
    "IdSpace",
    "LatentGroup",
    "Modality",
    "ModelSpec",
    "PerturbationTypeSpec",
    "PredictMetadataQuery",
    "Problem",
    "Quantity",
    "QuantityError",
    "Query",
    "QueryError",
    "ReferenceQuery",
    "SampleIdsQuery",
    "Task",
    "UnknownModelError",
    "Vocabulary",
    "fields_of",
    "get_example_query",
    "list_models",
    "parse_age",
    "parse_model_id",
    "parse_quantity",
    "quantity_value",
    "reference_counts",
    "validate_metadata",
    "validate_query",
]

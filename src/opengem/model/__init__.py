"""The GEM model, pure torch: metadata vocabularies, the module, its loss."""

from opengem.model.module import GROUPS, GEMModule, LossOutput, ModelConfig, nb_log_likelihood
from opengem.model.vocab import (
    CATEGORICAL_FIELDS,
    NUMERIC_FIELDS,
    UNKNOWN,
    FieldVocab,
    NumericScale,
    Vocabulary,
)

__all__ = [
    "CATEGORICAL_FIELDS",
    "GROUPS",
    "NUMERIC_FIELDS",
    "UNKNOWN",
    "FieldVocab",
    "GEMModule",
    "LossOutput",
    "ModelConfig",
    "NumericScale",
    "Vocabulary",
    "nb_log_likelihood",
]

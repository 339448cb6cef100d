"""The GEM model (numpy): metadata vocabularies, perturbations, the model and its fit."""

from opengem.model.gem import GEMModel, ModelConfig, Unit
from opengem.model.perturbations import SEP, Perturbation, perturbations_of
from opengem.model.vocab import (
    CATEGORICAL_FIELDS,
    NUMERIC_FIELDS,
    UNKNOWN,
    FieldVocab,
    NumericScale,
    Vocabulary,
)

#: the three latent groups, in output order
GROUPS = ("biological", "technical", "perturbation")

__all__ = [
    "CATEGORICAL_FIELDS",
    "GROUPS",
    "NUMERIC_FIELDS",
    "SEP",
    "UNKNOWN",
    "FieldVocab",
    "GEMModel",
    "ModelConfig",
    "NumericScale",
    "Perturbation",
    "Unit",
    "Vocabulary",
    "perturbations_of",
]

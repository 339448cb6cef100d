"""Training configuration, read from TOML (``configs/bulk.toml``, ``configs/sc.toml``)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from opengem.model import ModelConfig
from opengem.tomlfiles import read_toml_model


class ModelSection(BaseModel):
    """Sizes and penalties of the model (see :class:`opengem.model.ModelConfig`)."""

    model_config = ConfigDict(extra="forbid")
    latent_biological: int = Field(16, ge=0)
    latent_technical: int = Field(8, ge=0)
    latent_perturbation: int = Field(16, ge=0)
    mean_rank: int = Field(512, ge=1)
    ridge_terms: float = Field(0.3, gt=0)
    ridge_condition: float = Field(1.0, gt=0)
    ridge_study: float = Field(3.0, gt=0)
    imputation_rounds: int = Field(3, ge=1)
    reference_prior_counts: float = Field(2000.0, ge=0)
    n_top_genes: int = Field(2000, ge=10)
    n_components: int = Field(50, ge=1)
    n_field_genes: int = Field(20, ge=0)
    field_genes_per_class: int = Field(0, ge=0)
    classifier_c: float = Field(1.0, gt=0)
    classifier_iterations: int = Field(300, ge=1)
    max_residual_rows: int = Field(2000, ge=10)
    mean_space: str = Field("log", pattern="^(log|linear)$")
    classifier_balance: str = Field("study_class", pattern="^(study_class|class|none)$")


class TrainingSection(BaseModel):
    """The fit is exact or convex (no epochs): a seed for subsampling, the validation split."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    validation_split: str = Field("study", pattern="^(study|sample)$")
    validation_studies: list[str] | None = None
    validation_fraction: float = Field(0.0, ge=0, lt=1)
    backed: bool = False


class TrainConfig(BaseModel):
    """``[model]`` sizes and penalties, ``[training]`` seed and validation split."""

    model_config = ConfigDict(extra="forbid")
    modality: str = Field(pattern="^(bulk|sc)$")
    model: ModelSection = Field(default_factory=ModelSection)
    training: TrainingSection = Field(default_factory=TrainingSection)

    def model_config_for(self, n_genes: int) -> ModelConfig:
        return ModelConfig(n_genes=n_genes, **self.model.model_dump())

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def load_config(path: Path) -> TrainConfig:
    """Parse a training config; errors name the file and the key."""
    return read_toml_model(path, TrainConfig, "training config")


__all__ = ["ModelConfig", "TrainConfig", "asdict", "load_config"]

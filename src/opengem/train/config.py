"""Training configuration, read from TOML (``configs/bulk.toml``, ``configs/sc.toml``)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from opengem.model import ModelConfig
from opengem.tomlfiles import read_toml_model


class ModelSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(128, ge=8)
    latent_biological: int = Field(32, ge=1)
    latent_technical: int = Field(8, ge=1)
    latent_perturbation: int = Field(16, ge=1)
    embedding: int = Field(16, ge=1)
    prior_hidden: int = Field(64, ge=4)
    dropout: float = Field(0.1, ge=0, lt=1)
    kl_weight: float = Field(1.0, ge=0)
    classifier_weight: float = Field(1.0, ge=0)
    prior_reconstruction_weight: float = Field(0.5, ge=0)


class TrainingSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    max_epochs: int = Field(200, ge=1)
    max_minutes: float = Field(14.0, gt=0)
    batch_size: int = Field(64, ge=2)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    kl_warmup_epochs: int = Field(10, ge=0)
    patience: int = Field(10, ge=1)
    validation_split: str = Field("study", pattern="^(study|sample)$")
    validation_studies: list[str] | None = None
    validation_fraction: float = Field(0.15, ge=0, lt=1)
    devices: int | str = 1
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    backed: bool = False


class TrainConfig(BaseModel):
    """``[model]`` widths and loss weights, ``[training]`` optimisation and data split."""

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

"""Model bundles: a directory with ``weights.safetensors`` and ``bundle.json``.

``bundle.json`` carries what is needed to use the weights safely: format
version, gene order, vocabularies with labels, model and training config,
training provenance (studies, sample counts, corpus checksum), validation
metrics, and the sample ids whose posterior latent means are stored in the
weights file (``latents.<group>``) for condition-on-sample-ids. Loading checks
the format version and the gene order. Large matrices are stored as float16
(the bundle budget is 25 MB) and computed in float32.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from opengem.model import GROUPS, GEMModule, ModelConfig, Vocabulary
from opengem.ontology.genes import GeneSpace, default_gene_space

FORMAT_VERSION = 1
WEIGHTS, MANIFEST = "weights.safetensors", "bundle.json"
_FP16_MIN_SIZE = 4096  # tensors with more elements are stored as float16


class BundleError(ValueError):
    """A bundle that cannot be used: says which file, which check, and what to do."""


@dataclass
class Bundle:
    """A trained model with everything needed to serve it."""

    module: GEMModule
    vocab: Vocabulary
    modality: str
    gene_ids: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    latent_sample_ids: list[str] = field(default_factory=list)
    latents: dict[str, np.ndarray] = field(default_factory=dict)  # group -> (n, dim)
    path: Path | None = None

    @property
    def model_version(self) -> str:
        return str(self.info.get("model_version", f"opengem-{self.modality}"))


def save_bundle(bundle: Bundle, directory: Path) -> Path:
    """Write a bundle atomically (a temporary directory renamed into place)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    tensors: dict[str, torch.Tensor] = {}
    for name, value in bundle.module.state_dict().items():
        value = value.detach().cpu().contiguous()
        if value.is_floating_point() and value.numel() >= _FP16_MIN_SIZE:
            value = value.to(torch.float16)
        tensors[f"module.{name}"] = value
    for group, matrix in bundle.latents.items():
        tensors[f"latents.{group}"] = torch.as_tensor(matrix, dtype=torch.float16).contiguous()
    save_file(tensors, str(tmp / WEIGHTS))
    manifest = {
        "format_version": FORMAT_VERSION,
        "modality": bundle.modality,
        "gene_order": bundle.gene_ids,
        "model_config": asdict(bundle.module.config),
        "vocabulary": bundle.vocab.to_json(),
        "latent_sample_ids": bundle.latent_sample_ids,
        **bundle.info,
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old")
        if old.exists():
            _rmtree(old)
        os.replace(directory, old)
        os.replace(tmp, directory)
        _rmtree(old)
    else:
        os.replace(tmp, directory)
    return directory


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def load_bundle(directory: Path | str, gene_space: GeneSpace | None = None) -> Bundle:
    """Load and check a bundle.

    Raises
    ------
    BundleError
        Missing files, another format version, or a gene order that differs from
        opengem's gene space.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    manifest_path, weights_path = directory / MANIFEST, directory / WEIGHTS
    if not manifest_path.is_file() or not weights_path.is_file():
        raise BundleError(f"{directory} is not a model bundle (needs {MANIFEST} and {WEIGHTS})")
    manifest = json.loads(manifest_path.read_text())
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: format_version {version!r}; this opengem reads "
            f"version {FORMAT_VERSION} (retrain or upgrade opengem)"
        )
    genes = gene_space or default_gene_space()
    if manifest["gene_order"] != list(genes.gene_ids):
        raise BundleError(
            f"{manifest_path}: gene order differs from opengem's gene space "
            f"({genes.release}, {len(genes)} genes); retrain the bundle"
        )
    vocab = Vocabulary.from_json(manifest["vocabulary"])
    config = ModelConfig(**manifest["model_config"])
    module = GEMModule(config, vocab)
    tensors = load_file(str(weights_path))
    state = {
        k.removeprefix("module."): v.to(torch.float32) if v.is_floating_point() else v
        for k, v in tensors.items()
        if k.startswith("module.")
    }
    module.load_state_dict(state)
    module.eval()
    latents = {
        g.value: tensors[f"latents.{g.value}"].to(torch.float32).numpy()
        for g in GROUPS
        if f"latents.{g.value}" in tensors
    }
    reserved = {
        "format_version",
        "modality",
        "gene_order",
        "model_config",
        "vocabulary",
        "latent_sample_ids",
    }
    info = {k: v for k, v in manifest.items() if k not in reserved}
    return Bundle(
        module,
        vocab,
        manifest["modality"],
        list(manifest["gene_order"]),
        info,
        list(manifest.get("latent_sample_ids", [])),
        latents,
        directory,
    )

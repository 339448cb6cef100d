"""Model bundles: a directory with ``weights.safetensors`` and ``bundle.json``.

``bundle.json`` carries what is needed to use the arrays safely: format
version, gene order, vocabularies with labels, the model's structure (feature
columns, contexts, perturbation units, classifier classes) and config, training
provenance (studies, sample counts, corpus checksum), validation metrics, and
the sample ids stored for condition-on-sample-ids. Loading checks the format
version and the gene order. Large float arrays are stored as float16 (the
bundle budget is 25 MB), the perturbation effects and context means as int8
with a per-row scale, and everything is computed in float64.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from opengem.model import GEMModel, Vocabulary
from opengem.ontology.genes import GeneSpace, default_gene_space

FORMAT_VERSION = 2
WEIGHTS, MANIFEST = "weights.safetensors", "bundle.json"
_FP16_MIN_SIZE = 4096  # float arrays with more elements are stored as float16
#: row-quantised to int8 (values within a row share one scale)
_INT8 = ("unit_effect", "context_mean")
#: expression shares (down to ~1e-8: float16 would flush them toward zero), float32
_FLOAT32 = ("ref_fraction", "floor_fraction")


class BundleError(ValueError):
    """A bundle that cannot be used: says which file, which check, and what to do."""


@dataclass
class Bundle:
    """A trained model with everything needed to serve it."""

    model: GEMModel
    modality: str
    gene_ids: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    latent_sample_ids: list[str] = field(default_factory=list)
    latent_library_sizes: list[float] = field(default_factory=list)
    path: Path | None = None

    @property
    def vocab(self) -> Vocabulary:
        return self.model.vocab

    @property
    def model_version(self) -> str:
        return str(self.info.get("model_version", f"opengem-{self.modality}"))


def _encode_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        value = np.ascontiguousarray(value)
        if name in _INT8 and value.size:
            scale = np.abs(value).max(axis=1) / 127.0
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            out[f"{name}.q"] = np.rint(value / scale[:, None]).astype(np.int8)
            out[f"{name}.scale"] = scale
        elif value.dtype.kind == "f":
            small = value.size < _FP16_MIN_SIZE or name in _FLOAT32
            dtype = np.float32 if small else np.float16
            out[name] = value.astype(dtype)
        else:
            out[name] = value
    return out


def _decode_arrays(stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, value in stored.items():
        if name.endswith(".q"):
            base = name[:-2]
            out[base] = value.astype(np.float32) * stored[f"{base}.scale"][:, None]
        elif name.endswith(".scale") and f"{name[:-6]}.q" in stored:
            continue
        else:
            out[name] = value
    for name in _INT8:  # empty arrays are stored plain
        out.setdefault(name, stored.get(name, np.zeros((0, 0), np.float32)))
    return out


def save_bundle(bundle: Bundle, directory: Path) -> Path:
    """Write a bundle atomically (a temporary directory renamed into place)."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    arrays = _encode_arrays(bundle.model.arrays())
    arrays["latent_library_sizes"] = np.asarray(bundle.latent_library_sizes, dtype=np.float64)
    save_file(arrays, str(tmp / WEIGHTS))
    manifest = {
        "format_version": FORMAT_VERSION,
        "modality": bundle.modality,
        "gene_order": bundle.gene_ids,
        "model": bundle.model.structure(),
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
    from safetensors.numpy import load_file

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
    arrays = _decode_arrays(load_file(str(weights_path)))
    model = GEMModel.from_parts(manifest["model"], arrays, vocab)
    reserved = {
        "format_version",
        "modality",
        "gene_order",
        "model",
        "vocabulary",
        "latent_sample_ids",
    }
    info = {k: v for k, v in manifest.items() if k not in reserved}
    return Bundle(
        model,
        manifest["modality"],
        list(manifest["gene_order"]),
        info,
        list(manifest.get("latent_sample_ids", [])),
        arrays.get("latent_library_sizes", np.zeros(0)).astype(np.float64).tolist(),
        directory,
    )

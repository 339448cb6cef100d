"""Results held as numpy arrays, rendered on demand: JSON dict, JSON bytes, DataFrames, AnnData.

The JSON layout is compat-spec §4: ``{"outputs": [...], "gene_order": [...],
"model_version": ...}``. Nothing here loops over numbers in Python: lists come
from ``ndarray.tolist()`` and JSON bytes from orjson's native numpy support.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd

GROUP_NAMES = ("biological", "technical", "perturbation")


def latents_frame(latents: dict[str, np.ndarray]) -> pd.DataFrame:
    """pysynthbio's latents frame: a column per group, each cell a list of floats."""
    return pd.DataFrame(
        {g: latents[g].astype(np.float64).tolist() for g in GROUP_NAMES if g in latents}
    )


@dataclass
class ExpressionResult:
    """Generated expression: one row per output sample, in input order."""

    counts: np.ndarray  # (n, genes) int64
    metadata: list[dict[str, str]]
    latents: dict[str, np.ndarray]  # group -> (n, dim) float32
    gene_order: list[str]
    model_version: str
    request_type: str = "baseline"  # or "reference_conditioned"

    def __len__(self) -> int:
        return int(self.counts.shape[0])

    def _outputs(self, counts: Any, latents: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {
                "counts": counts[i],
                "metadata": dict(self.metadata[i]),
                "latents": {g: latents[g][i] for g in GROUP_NAMES if g in latents},
            }
            for i in range(len(self))
        ]

    def to_json(self) -> dict[str, Any]:
        """The result JSON as Python objects (what ``raw_response=True`` returns)."""
        counts = self.counts.tolist()
        latents = {g: v.astype(np.float64).tolist() for g, v in self.latents.items()}
        return {
            "outputs": self._outputs(counts, latents),
            "gene_order": list(self.gene_order),
            "model_version": self.model_version,
        }

    def to_json_bytes(self) -> bytes:
        """The result JSON, encoded straight from the arrays."""
        payload = {
            "outputs": self._outputs(self.counts, self.latents),
            "gene_order": self.gene_order,
            "model_version": self.model_version,
        }
        return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)

    def to_frames(self) -> dict[str, pd.DataFrame]:
        """pysynthbio's return value: ``expression`` (int64), ``metadata``, ``latents``."""
        expression = pd.DataFrame(
            self.counts.astype(np.int64, copy=False), columns=pd.Index(self.gene_order)
        )
        latents = latents_frame(self.latents)
        return {
            "metadata": pd.DataFrame(self.metadata),
            "expression": expression,
            "latents": latents,
        }


@dataclass
class MetadataResult:
    """Metadata predicted from counts: one output per input."""

    metadata: list[dict[str, str]]
    classifier_probs: list[dict[str, dict[str, float]]]
    latents: dict[str, np.ndarray]
    decoder_counts: np.ndarray  # (n, genes) int64
    gene_order: list[str]
    model_version: str
    request_type: str = field(default="predict_metadata")

    def __len__(self) -> int:
        return len(self.metadata)

    def _outputs(self, counts: Any, latents: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {
                "metadata": dict(self.metadata[i]),
                "classifier_probs": self.classifier_probs[i],
                "latents": {g: latents[g][i] for g in GROUP_NAMES if g in latents},
                "decoder_sample": {"counts": counts[i]},
            }
            for i in range(len(self))
        ]

    def to_json(self) -> dict[str, Any]:
        latents = {g: v.astype(np.float64).tolist() for g, v in self.latents.items()}
        return {
            "outputs": self._outputs(self.decoder_counts.tolist(), latents),
            "gene_order": list(self.gene_order),
            "model_version": self.model_version,
        }

    def to_json_bytes(self) -> bytes:
        payload = {
            "outputs": self._outputs(self.decoder_counts, self.latents),
            "gene_order": self.gene_order,
            "model_version": self.model_version,
        }
        return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)

    def to_frames(self) -> dict[str, pd.DataFrame]:
        """pysynthbio 4.1: ``metadata``, ``latents``, ``classifier_probs``, ``expression``."""
        latents = latents_frame(self.latents)
        return {
            "metadata": pd.DataFrame(self.metadata),
            "latents": latents,
            "classifier_probs": pd.DataFrame(self.classifier_probs),
            "expression": pd.DataFrame(
                self.decoder_counts.astype(np.int64, copy=False), columns=pd.Index(self.gene_order)
            ),
        }


Result = ExpressionResult | MetadataResult

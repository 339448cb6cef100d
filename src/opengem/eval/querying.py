"""Querying a model the way a user does, and turning results into log-CPM.

:class:`ModelClient` wraps a :class:`~opengem.eval.training.QueryableModel` and counts
inference time and samples; the functions build the protocol's queries
(reference conditioning with and without a perturbation, generation from
metadata, metadata prediction) and return arrays over one study's genes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from opengem.contract import QueryError
from opengem.eval.corpus import CorpusView
from opengem.eval.metrics import log_cpm
from opengem.eval.training import QueryableModel

__all__ = ["SEED", "ModelClient"]

SEED = 0
#: inputs per query (the contract allows 10,000 samples per query)
CHUNK = 500
#: the library single-cell outputs are read at: a cell's expected counts at its own
#: ~200-5,000 reads round to a handful of top genes; at this depth the counts are the
#: model's expected CPM (x10), which pseudobulk comparisons need
EXPECTATION_TOTAL = 10_000_000


class ModelClient:
    """A model under evaluation: its queries, with inference seconds and samples counted."""

    def __init__(self, model: QueryableModel) -> None:
        self.model = model
        self.modality = model.modality
        self.inference_seconds = 0.0
        self.inference_samples = 0

    def run(self, query: dict[str, Any], task: str | None) -> Any:
        start = time.perf_counter()
        result = self.model.run(query, task)
        self.inference_seconds += time.perf_counter() - start
        if hasattr(result, "counts"):
            self.inference_samples += int(np.asarray(result.counts).shape[0])
        else:
            self.inference_samples += len(result.classifier_probs)
        return result

    # ----------------------------------------------------------------- reference conditioning

    def from_references(
        self,
        view: CorpusView,
        references: Sequence[int] | np.ndarray,
        metadata: Sequence[dict[str, str]],
        genes: np.ndarray,
    ) -> np.ndarray:
        """log-CPM (over ``genes``) of each reference re-generated under its metadata.

        An empty metadata dict sends no perturbation (the counterfactual control).
        Raises :class:`~opengem.contract.QueryError` when the model cannot take it.
        """
        out = []
        refs = list(references)
        for s in range(0, len(refs), CHUNK):
            chunk = refs[s : s + CHUNK]
            counts = view.counts(chunk).astype(np.int64)
            query = {
                "inputs": [
                    {"counts": c.tolist(), "metadata": dict(md), "num_samples": 1}
                    for c, md in zip(counts, metadata[s : s + CHUNK], strict=True)
                ],
                "conditioning": ["biological", "technical"],
                "sampling_strategy": "mean estimation",
                "deterministic_latents": True,
                "seed": SEED,
            }
            if self.modality == "sc":
                query |= {"total_count": EXPECTATION_TOTAL, "fixed_total_count": True}
            result = self.run(query, "reference-conditioning")
            out.append(log_cpm(np.asarray(result.counts, dtype=np.float64)[:, genes]))
        return np.vstack(out)

    # ----------------------------------------------------------------- generation

    def usable_metadata(
        self, records: Sequence[dict[str, str]]
    ) -> tuple[list[dict[str, str]], list[list[str]]]:
        """Records with the fields this model rejects dropped (unseen study, tissue...).

        One validation of every record reports each refused field (``Problem.input_field``);
        a problem that names no field of a record is raised.
        """
        recs = [dict(r) for r in records]
        dropped: list[list[str]] = [[] for _ in recs]
        query = {
            "inputs": [{"metadata": r, "num_samples": 1} for r in recs],
            "sampling_strategy": "mean estimation",
        }
        try:
            self.model.check(query, None)
        except QueryError as exc:
            for problem in exc.problems:
                where = problem.input_field()
                if where is None or where[1] not in recs[where[0]]:
                    raise
                if where[1] not in dropped[where[0]]:
                    dropped[where[0]].append(where[1])
            for rec, fields in zip(recs, dropped, strict=True):
                for name in fields:
                    del rec[name]
        return recs, dropped

    def generate(
        self,
        records: Sequence[dict[str, str]],
        n_per_condition: Sequence[int],
        genes: np.ndarray,
        library: float,
    ) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
        """Condition means (mean estimation) and samples, log-CPM over ``genes``.

        Both are drawn as deep as a real sample is on ``genes``: a model's
        ``total_count`` spans every gene, so a study that measured a gene panel gets
        ``library`` over the panel's share of the generated means (read off a first
        mean estimation at :data:`EXPECTATION_TOTAL`); drawn cells are then as
        shallow as the real ones. Single-cell means are read at
        :data:`EXPECTATION_TOTAL` (their expected CPM); bulk means at the real depth
        on ``genes`` (their rounding as a real sample's, not that of the panel's
        share of ``library`` reads: 26 genes of 20,120 would get a few reads each).
        """
        usable, dropped = self.usable_metadata(records)

        def means_at(total: int) -> Any:
            return self.run(
                {
                    "inputs": [{"metadata": r, "num_samples": 1} for r in usable],
                    "sampling_strategy": "mean estimation",
                    "deterministic_latents": True,
                    "total_count": total,
                    "seed": SEED,
                },
                None,
            )

        means = means_at(EXPECTATION_TOTAL)
        mean_counts = np.asarray(means.counts, dtype=np.float64)
        shares = mean_counts[:, genes].sum(axis=1) / np.maximum(mean_counts.sum(axis=1), 1.0)
        share = float(np.median(shares)) if len(shares) else 1.0
        depth = int(max(round(library / max(share, 1e-6)), 1))
        if self.modality != "sc":
            means = means_at(depth)
        samples = self.run(
            {
                "inputs": [
                    {"metadata": r, "num_samples": int(n)}
                    for r, n in zip(usable, n_per_condition, strict=True)
                ],
                "sampling_strategy": "sample generation",
                "total_count": depth,
                "seed": SEED,
            },
            None,
        )
        gen_means = log_cpm(np.asarray(means.counts, dtype=np.float64)[:, genes])
        gen_samples = log_cpm(np.asarray(samples.counts, dtype=np.float64)[:, genes])
        return gen_means, gen_samples, dropped

    # ----------------------------------------------------------------- metadata prediction

    def predict_metadata(self, counts: np.ndarray) -> list[dict[str, dict[str, float]]]:
        """Class probabilities per field of each sample (rows of raw counts, all genes)."""
        probs: list[dict[str, dict[str, float]]] = []
        for s in range(0, len(counts), CHUNK):
            res = self.run(
                {
                    "inputs": [
                        {"counts": c.astype(np.int64).tolist()} for c in counts[s : s + CHUNK]
                    ],
                    "seed": SEED,
                },
                "predict-metadata",
            )
            probs.extend(res.classifier_probs)
        return probs

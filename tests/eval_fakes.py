"""Fake models with known answers for the evaluation tests (no training).

Each fake speaks the query contract the protocols use (``run(query, task)``) and
knows the training rows it was "trained" on, as a real model would.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np

from opengem.eval.baselines import renormalise
from opengem.eval.corpus import CorpusView, perturbation_key
from opengem.eval.effects import EffectTable
from opengem.eval.protocols.perturbation import (
    BaselineInput,
    additive_shift,
    cross_study_additive,
)
from opengem.eval.training import TrainingRecord
from opengem.eval.units import perturbation_cells, target_genes, unit_of


class FakeModel:
    """Base fake: references come back unchanged, generation gives the training mean."""

    def __init__(self, view: CorpusView, rows: np.ndarray) -> None:
        self.view = view
        self.modality = view.modality
        self.rows = np.asarray(rows)
        counts = view.counts(rows)
        self.by_counts = {view.counts([r])[0].astype(np.int64).tobytes(): int(r) for r in rows}
        self.by_counts |= {
            view.counts([r])[0].astype(np.int64).tobytes(): int(r) for r in range(view.obs.shape[0])
        }
        self.mean_profile = counts.mean(axis=0)
        self.classes: dict[str, list[str]] = {}
        for f in ("tissue_ontology_id", "sex"):
            vals = sorted({v for v in view.values(f)[rows] if v})
            self.classes[f] = vals

    def check(self, query: dict[str, Any], task: str | None) -> None:
        return None

    def close(self) -> None:
        return None

    def reference(self, counts: Sequence[int], metadata: dict[str, str]) -> np.ndarray:
        return np.asarray(counts, dtype=np.float64)

    def generate(self, metadata: dict[str, str]) -> np.ndarray:
        return self.mean_profile

    def run(self, query: dict[str, Any], task: str | None) -> Any:
        if task == "reference-conditioning":
            out = [
                self.reference(i["counts"], i.get("metadata", {}))
                for i in query["inputs"]
                for _ in range(i.get("num_samples", 1))
            ]
            return SimpleNamespace(counts=np.vstack(out))
        if task == "predict-metadata":
            n = len(query["inputs"])
            probs = [
                {f: {c: 1.0 / len(cs) for c in cs} for f, cs in self.classes.items() if cs}
                for _ in range(n)
            ]
            return SimpleNamespace(classifier_probs=probs)
        out = [
            self.generate(i["metadata"]) for i in query["inputs"] for _ in range(i["num_samples"])
        ]
        return SimpleNamespace(counts=np.vstack(out))


class AdditiveModel(FakeModel):
    """Returns the additive-shift baseline's prediction for every reference."""

    baseline = staticmethod(additive_shift)

    def __init__(self, view: CorpusView, rows: np.ndarray) -> None:
        super().__init__(view, rows)
        self.cells = perturbation_cells(view)
        self.table = EffectTable(view, self.cells, rows)

    def reference(self, counts: Sequence[int], metadata: dict[str, str]) -> np.ndarray:
        counts_arr = np.asarray(counts, dtype=np.int64)
        if not metadata:
            return counts_arr.astype(np.float64)
        row = self.by_counts[counts_arr.tobytes()]
        import pandas as pd

        key = perturbation_key(pd.DataFrame([metadata])).iloc[0]
        cell = next(
            c
            for c in self.cells
            if row in c.controls and c.key == key and c.study == self.view.studies[row]
        )
        genes = self.view.genes_of(cell.study)
        refs = self.view.lcpm([row], cell.study)
        x = BaselineInput(
            self.view,
            unit_of(cell),
            refs,
            genes,
            target_genes(cell.perturbation, genes),
            self.table,
        )
        pred, _ = self.baseline(x)
        if pred is None:
            return counts_arr.astype(np.float64)
        full = np.zeros(self.view.n_genes)
        full[genes] = np.expm1(renormalise(pred))[0]
        return full


class CrossStudyAdditiveModel(AdditiveModel):
    """Returns the cross-study additive shift."""

    baseline = staticmethod(cross_study_additive)


class CollapsedModel(FakeModel):
    """One profile for every condition (and the reference unchanged)."""


def fake_trainer(cls: type[FakeModel]):  # type: ignore[no-untyped-def]
    def trainer(view: CorpusView, rows: np.ndarray, protect: Sequence[str], label: str):  # type: ignore[no-untyped-def]
        record = TrainingRecord(
            label=label,
            n_train_samples=len(rows),
            n_train_studies=len(set(view.studies[rows])),
            budget={"epochs": 0},
            epochs=0,
        )
        return cls(view, rows), record, np.asarray(rows)

    return trainer

"""Effects seen in training: the logFC of every training cell, for the baselines.

:class:`EffectTable` holds the perturbation cells restricted to the rows a model
was fitted on; the effect of a cell is mean log-CPM of its perturbed samples minus
that of its controls, over its own study's genes (NaN for genes it did not
measure). The additive baselines average these effects over a scope:

- ``"study"``: the same perturbation in the other contexts of the same study
  (held-out context; falls back to the study's other perturbations);
- ``"cross-study"``: the same perturbation (type and id) in other studies;
- ``"type"``: other perturbations of the same type (held-out perturbation);
- ``"in-sample"``: every training cell with the same perturbation, its own included
  (the fit protocol).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from opengem.eval.corpus import CorpusView
from opengem.eval.units import Cell, PerturbationUnit, identity_of, restrict_cells

__all__ = ["EffectTable"]


class EffectTable:
    """Training cells (rows restricted to the fitted ones) and their effects."""

    def __init__(self, view: CorpusView, cells: Iterable[Cell], fitted: np.ndarray) -> None:
        self.view = view
        self.cells: list[Cell] = restrict_cells(cells, fitted, view.obs.shape[0])
        self._cache: dict[int, np.ndarray] = {}

    def effect(self, cell: Cell) -> np.ndarray:
        """logFC of a training cell over all genes (NaN where its study did not measure)."""
        k = id(cell)
        if k not in self._cache:
            genes = self.view.genes_of(cell.study)
            full = np.full(self.view.n_genes, np.nan)
            full[genes] = self.view.profile(cell.perturbed, cell.study) - self.view.profile(
                cell.controls, cell.study
            )
            self._cache[k] = full
        return self._cache[k]

    def select(self, unit: PerturbationUnit, scope: str) -> list[Cell]:
        """Training cells of a scope (see the module docstring) for a unit."""
        c = unit.cell
        same_ctx = [t for t in self.cells if t.study == c.study and t.context == c.context]
        if scope == "in-sample":
            return [t for t in self.cells if t.key == c.key and t.study == c.study]
        if scope == "study":
            return [
                t for t in self.cells if t.study == c.study and t.key == c.key and t not in same_ctx
            ]
        if scope == "study-any":
            return [t for t in self.cells if t.study == c.study and t not in same_ctx]
        if scope == "cross-study":
            return [t for t in self.cells if t.study != c.study and t.identity == c.identity]
        if scope == "type":
            ptype = c.perturbation.get("perturbation_type", "")
            return [
                t
                for t in self.cells
                if t.perturbation.get("perturbation_type", "") == ptype
                and t.identity != c.identity
                and not t.is_combination
            ]
        if scope == "same-key":
            return [t for t in self.cells if t.key == c.key]
        raise ValueError(f"unknown effect scope {scope!r}")

    def effects(self, cells: Iterable[Cell], genes: np.ndarray) -> list[np.ndarray]:
        """Effects of cells over ``genes`` (columns of the evaluated study)."""
        return [self.effect(t)[genes] for t in cells]

    def single(self, study: str, part: dict[str, str]) -> list[Cell]:
        """Training cells of one single perturbation (type and id) in a study."""
        ident = identity_of(part)
        return [t for t in self.cells if t.study == study and t.identity == ident]

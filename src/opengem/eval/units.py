"""Perturbation units: matched perturbed and control samples of one context.

A *cell* of the corpus is one perturbation in one context of one study: its
perturbed samples and the context's controls. The context is read per study:

- ``match_group`` (when the study declares it): samples of one study with the same
  biological fields and the same ``match_group`` are each other's matched samples;
- otherwise a hand-written description (:data:`CURATED`: the donor is a free
  column, the shRNA construct only in the title), or the combination of the
  biological fields that vary among the study's perturbed samples (the whole
  study is one context when none varies).

Every perturbation protocol builds its units from these cells
(:func:`perturbation_cells`); a unit is a cell (or several cells of one context)
whose perturbed samples are held out and predicted from matched controls.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from opengem.contract import FIELDS, MATCHED_CONTEXT_FIELDS, PERTURBATION_FIELDS
from opengem.contract.fields import GENE_TARGETING_TYPES
from opengem.eval.corpus import (
    COMBINATION_SEPARATOR,
    CorpusView,
    perturbation_parts,
    text_column,
)

__all__ = [
    "CURATED",
    "Cell",
    "ContextSpec",
    "PerturbationUnit",
    "identity_of",
    "perturbation_cells",
    "restrict_cells",
    "target_genes",
]

Column = str | Callable[[pd.DataFrame], pd.Series]
WHOLE_STUDY = "(whole study)"


def regex_column(column: str, pattern: str) -> Callable[[pd.DataFrame], pd.Series]:
    """A derived column: the first group of ``pattern`` in ``column`` ("" without a match)."""
    rx = re.compile(pattern)

    def get(obs: pd.DataFrame) -> pd.Series:
        return text_column(obs, column).map(lambda s: m.group(1) if (m := rx.search(s)) else "")

    get.__name__ = f"{column}~{pattern}"
    return get


@dataclass(frozen=True)
class ContextSpec:
    """How to read the contexts of one study (hand-written, for what metadata cannot say).

    Attributes
    ----------
    context
        Column (or function of ``obs``) whose value names a sample's context.
    perturbed
        Exact-match filters (column -> value) on the scored perturbed samples.
    pair
        Column (or function) pairing a perturbed sample with its control.
    note
        Why the study is read this way (goes into metrics.json).
    """

    context: Column
    perturbed: Mapping[str, str] = field(default_factory=dict)
    pair: Column | None = None
    note: str = ""


#: hand-written context descriptions of bulk-corpus studies without ``match_group``
CURATED: dict[str, ContextSpec] = {
    "airway": ContextSpec(
        context="donor", note="dexamethasone vs untreated airway smooth muscle, per donor"
    ),
    "srp009615_k562_shrna": ContextSpec(
        context=regex_column("title", r"targeting (\S+) gene"),
        pair=regex_column("title", r"rep(\d+)"),
        note="each shRNA construct is a context: induced (dox) vs uninduced cells of the same "
        "construct, paired by replicate (title)",
    ),
    "gse89888_t47d_e2": ContextSpec(
        context="genotype",
        pair="replicate",
        note="17beta-estradiol vs vehicle in T47D ESR1 wild-type / D538G / Y537S, paired by "
        "replicate",
    ),
    "gse64655_immune_cells": ContextSpec(
        context="cell_type_ontology_id",
        perturbed={"perturbation_time": "1 days"},
        note="influenza vaccination day 1 vs day 0 in each sorted immune cell type",
    ),
    "griss2019_melanoma_bcells": ContextSpec(
        context="b_cell_source",
        pair="patient",
        note="melanoma-conditioned medium vs mock, in blood and tumour-infiltrating B cells, "
        "paired by patient",
    ),
    "gse79027_il13_pbmc": ContextSpec(
        context="batch",
        perturbed={"group": "X24IL13"},
        note="IL-13 vs control PBMC culture per donor batch (the IL-13 + antagonist samples "
        "share the metadata and are held out with the unit, not scored)",
    ),
}


def identity_of(record: Mapping[str, str]) -> str:
    """A perturbation's identity: type and id (dose and time aside), e.g. ``compound:CHEMBL1``."""
    return f"{record.get('perturbation_type', '')}:{record.get('perturbation_ontology_id', '')}"


@dataclass
class Cell:
    """One perturbation (or the curated perturbed set) in one context of one study."""

    study: str
    context: str
    key: str  # perturbation key of the scored samples (several joined by " + ")
    perturbation: dict[str, str]  # perturbation metadata of the first scored sample
    perturbed: np.ndarray  # scored rows
    controls: np.ndarray  # the context's control rows
    held_out: np.ndarray  # rows that go with the scored ones (metadata twins)
    pair_keys: dict[int, str] = field(default_factory=dict)  # row -> pairing key
    note: str = ""

    @property
    def identity(self) -> str:
        return identity_of(self.perturbation)

    @property
    def is_combination(self) -> bool:
        """Several real perturbations (ids joined by ``"|"``; empty parts do not count)."""
        if COMBINATION_SEPARATOR not in self.perturbation.get("perturbation_ontology_id", ""):
            return False
        parts = perturbation_parts(self.perturbation)
        return sum(1 for p in parts if p.get("perturbation_ontology_id")) >= 2

    @property
    def name(self) -> str:
        what = self.perturbation.get("perturbation_ontology_id") or self.perturbation.get(
            "perturbation_type", ""
        )
        extra = [self.perturbation.get(f, "") for f in _PERTURBATION_QUANTITIES]
        extra_text = " ".join(e for e in extra if e)
        return f"{self.study}/{what}{f' {extra_text}' if extra_text else ''}/{self.context}"


#: dose and time: the perturbation fields that are quantities
_PERTURBATION_QUANTITIES = tuple(f for f in PERTURBATION_FIELDS if FIELDS[f].is_quantity)


def restrict_cells(
    cells: Iterable[Cell], rows: np.ndarray, n_rows: int, min_samples: int = 1
) -> list[Cell]:
    """Cells restricted to ``rows`` (e.g. those a model was fitted on), in order.

    A cell keeps its perturbed and control rows that are in ``rows`` (everything
    else as it was); cells left with fewer than ``min_samples`` perturbed or control
    rows are dropped.
    """
    inside = np.zeros(n_rows, dtype=bool)
    inside[np.asarray(rows, dtype=np.intp)] = True
    out = []
    for c in cells:
        pert, ctrl = c.perturbed[inside[c.perturbed]], c.controls[inside[c.controls]]
        if len(pert) >= min_samples and len(ctrl) >= min_samples:
            out.append(replace(c, perturbed=pert, controls=ctrl))
    return out


@dataclass
class PerturbationUnit:
    """A held-out set of perturbed samples, each predicted from a matched control."""

    name: str
    cell: Cell
    scored: np.ndarray
    references: np.ndarray  # matched control row of each scored row
    group: str = ""  # experiment / rotation group
    note: str = ""

    @property
    def study(self) -> str:
        return self.cell.study

    @property
    def controls(self) -> np.ndarray:
        return self.cell.controls


def pair_references(cell: Cell, scored: np.ndarray) -> np.ndarray:
    """Matched control of each scored row: one with the same pairing key when there is
    one, else any control; either way the candidates are dealt in turn, so that 100
    scored cells of one replicate are predicted from 100 of its controls, not 100
    times from its first one."""
    by_key: dict[str, list[int]] = {}
    for r in cell.controls:
        k = cell.pair_keys.get(int(r), "")
        if k:
            by_key.setdefault(k, []).append(int(r))
    dealt: dict[str, int] = {}
    refs = np.empty(len(scored), dtype=np.intp)
    for i, r in enumerate(scored):
        k = cell.pair_keys.get(int(r), "")
        if k and by_key.get(k):
            n = dealt.get(k, 0)
            dealt[k] = n + 1
            refs[i] = by_key[k][n % len(by_key[k])]
        else:
            refs[i] = cell.controls[i % len(cell.controls)]
    return refs


def unit_of(cell: Cell, group: str = "", max_scored: int | None = None) -> PerturbationUnit:
    """The unit scoring a cell (at most ``max_scored`` rows, a seeded subsample)."""
    scored = cell.perturbed
    if max_scored is not None and len(scored) > max_scored:
        rng = np.random.default_rng(0)
        scored = np.sort(rng.choice(scored, max_scored, replace=False))
    return PerturbationUnit(
        cell.name, cell, scored, pair_references(cell, scored), group=group, note=cell.note
    )


def _values(obs: pd.DataFrame, column: Column) -> np.ndarray:
    if callable(column):
        return column(obs).astype(str).to_numpy()
    return text_column(obs, column).to_numpy()


def _joined(view: CorpusView, rows: np.ndarray, fields: Sequence[str]) -> np.ndarray:
    context = view.values(fields[0])[rows].astype(object)
    for f in fields[1:]:
        context = context + "+" + view.values(f)[rows].astype(object)
    return context.astype(str)


def _study_cells(view: CorpusView, study: str, spec: ContextSpec | None) -> list[Cell]:
    rows = np.flatnonzero(view.studies == study)
    obs = view.obs.iloc[rows]
    control = view.is_control()[rows]
    if not control.any() or control.all():
        return []
    pkeys = view.pkeys[rows]
    match = view.values("match_group")[rows]
    pair = None
    note = ""
    varying = [f for f in MATCHED_CONTEXT_FIELDS if len(set(view.values(f)[rows][~control])) > 1]
    if (match != "").any():
        # declared matched groups: the context is the varying biological fields (or the
        # match group itself when none varies); pairs share the match group
        if varying:
            context = _joined(view, rows, varying)
            note = f"context = {' + '.join(varying)}; pairs share match_group"
        elif len(set(match)) > 1:
            context = match.astype(str)
            note = "context = match_group"
        else:
            context = np.full(len(rows), WHOLE_STUDY)
            note = "one context (no biological field varies)"
        pair = match.astype(str)
        filters: Mapping[str, str] = spec.perturbed if spec is not None else {}
        merge_keys = False
    elif spec is not None:
        context = _values(obs, spec.context)
        pair = None if spec.pair is None else _values(obs, spec.pair)
        note = spec.note
        filters = spec.perturbed
        merge_keys = True
    else:
        if varying:
            context = _joined(view, rows, varying)
            note = f"context = {' + '.join(varying)}"
        else:
            context = np.full(len(rows), WHOLE_STUDY)
            note = "one context (no biological field varies)"
        filters = {}
        merge_keys = False
    scored_mask = ~control
    for col, value in filters.items():
        scored_mask &= text_column(obs, col).to_numpy() == value
    cells = []
    for ctx in sorted({c for c in context if c}):
        in_ctx = context == ctx
        ctrl_rows = rows[in_ctx & control]
        if len(ctrl_rows) == 0:
            continue
        groups = (
            [sorted(set(pkeys[in_ctx & scored_mask]))]
            if merge_keys
            else [[k] for k in sorted(set(pkeys[in_ctx & scored_mask]))]
        )
        for keys in groups:
            if not keys:
                continue
            sel = in_ctx & scored_mask & np.isin(pkeys, keys)
            scored = rows[sel]
            held = rows[in_ctx & ~control & np.isin(pkeys, keys)]
            pair_keys = {}
            if pair is not None:
                pair_keys = {int(r): str(pair[i]) for i, r in enumerate(rows) if in_ctx[i]}
            first = int(scored[0])
            cells.append(
                Cell(
                    study=study,
                    context=ctx,
                    key=" + ".join(keys),
                    perturbation=view.record(first, PERTURBATION_FIELDS),
                    perturbed=scored,
                    controls=ctrl_rows,
                    held_out=np.sort(held),
                    pair_keys=pair_keys,
                    note=note,
                )
            )
    return cells


def perturbation_cells(
    view: CorpusView,
    studies: Sequence[str] | None = None,
    curated: Mapping[str, ContextSpec] | None = None,
) -> list[Cell]:
    """Every perturbation cell of the corpus (or of ``studies``), sorted by name."""
    curated = CURATED if curated is None else curated
    cells: list[Cell] = []
    for study in view.study_list():
        if studies is not None and study not in studies:
            continue
        cells.extend(_study_cells(view, study, curated.get(study)))
    return sorted(cells, key=lambda c: c.name)


def target_genes(record: Mapping[str, str], genes: np.ndarray) -> list[int]:
    """Columns (within ``genes``) of the genes a gene-targeting perturbation targets."""
    from opengem.ontology.genes import default_gene_space

    out = []
    space = None
    for part in perturbation_parts(dict(record)):
        if part.get("perturbation_type") not in GENE_TARGETING_TYPES:
            continue
        space = space or default_gene_space()
        where = space.index_of(part.get("perturbation_ontology_id", ""))
        hit = np.flatnonzero(genes == where) if where is not None else np.zeros(0, np.intp)
        if len(hit):
            out.append(int(hit[0]))
    return out

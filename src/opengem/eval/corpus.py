"""Read access to an evaluation corpus: rows, study gene masks, log-CPM, perturbations.

Expression is compared as log1p(CPM) over the genes a study measured
(:meth:`CorpusView.lcpm`). Perturbation columns may hold several perturbations
joined by ``"|"`` (a combination, e.g. CRISPRa pairs); :func:`perturbation_parts`
splits them and :func:`perturbation_key` names a sample's whole perturbation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from opengem.contract import FIELDS, MATCHED_CONTEXT_FIELDS, PERTURBATION_FIELDS, FieldKind
from opengem.eval.metrics import log_cpm, masked_mean, pseudobulk, pseudobulk_mean

__all__ = [
    "COMBINATION_SEPARATOR",
    "CorpusView",
    "EvalError",
    "fast_rows",
    "perturbation_key",
    "perturbation_parts",
]

#: separator of several perturbations in one obs cell ("ENSG_A|ENSG_B")
COMBINATION_SEPARATOR = "|"
#: the fields of a matched context (``MATCHED_CONTEXT_FIELDS``) with a controlled
#: vocabulary (ontology terms, fixed values)
CONTROLLED_CONTEXT_FIELDS: tuple[str, ...] = tuple(
    f for f in MATCHED_CONTEXT_FIELDS if FIELDS[f].kind in (FieldKind.ONTOLOGY, FieldKind.ENUM)
)
#: the perturbation fields with a fixed set of values (the perturbation type)
PERTURBATION_ENUM_FIELDS: tuple[str, ...] = tuple(
    f for f in PERTURBATION_FIELDS if FIELDS[f].kind is FieldKind.ENUM
)


class EvalError(ValueError):
    """An evaluation that cannot run as asked (no units, unknown study, failed training)."""


def text_column(obs: pd.DataFrame, column: str) -> pd.Series:
    """A column as clean strings ("" for missing values and absent columns)."""
    if column not in obs:
        return pd.Series([""] * len(obs), index=obs.index)
    return obs[column].astype(str).replace({"nan": "", "None": "", "<NA>": ""})


def perturbation_key(obs: pd.DataFrame) -> pd.Series:
    """One string per sample naming its whole perturbation (type, id, dose, time)."""
    parts = {f: text_column(obs, f) for f in PERTURBATION_FIELDS}
    key = "type=" + parts["perturbation_type"] + "; id=" + parts["perturbation_ontology_id"]
    return key + "; dose=" + parts["perturbation_dose"] + "; time=" + parts["perturbation_time"]


def perturbation_parts(record: dict[str, str]) -> list[dict[str, str]]:
    """The single perturbations of a (possibly combined) perturbation record.

    ``{"perturbation_ontology_id": "A|B", "perturbation_type": "crispr"}`` gives two
    records; a field with one value applies to every part.
    """
    split = {f: str(record.get(f, "")).split(COMBINATION_SEPARATOR) for f in PERTURBATION_FIELDS}
    n = max(len(v) for v in split.values())
    out = []
    for i in range(n):
        part = {}
        for f, values in split.items():
            v = values[i] if len(values) == n else values[0]
            if v:
                part[f] = v
        out.append(part)
    return out


#: pseudobulk pseudo-replicates a group of single cells is compared as
POOLS = 5


class CorpusView:
    """Read access to a corpus AnnData: rows, study gene masks, log-CPM per study."""

    def __init__(self, adata: Any, path: Path | None = None) -> None:
        self.adata = adata
        self.path = path
        self.obs: pd.DataFrame = adata.obs
        self.modality = str(adata.uns.get("modality", "bulk"))
        self.studies = self.text("study").to_numpy()
        names = [str(s) for s in adata.uns["study_mask_studies"]]
        mask = np.asarray(adata.varm["study_mask"]).astype(bool)
        self._genes = {s: np.flatnonzero(mask[:, j]) for j, s in enumerate(names)}
        self._mask = {s: mask[:, j] for j, s in enumerate(names)}
        self.n_genes = int(adata.n_vars)
        self._text: dict[str, np.ndarray] = {}
        self.pkeys = perturbation_key(self.obs).to_numpy()

    @classmethod
    def load(cls, corpus: Path | str | Any) -> CorpusView:
        """A view of a corpus ``.h5ad`` file (or an in-memory AnnData)."""
        if isinstance(corpus, str | Path):
            import anndata

            path = Path(corpus)
            if not path.is_file():
                raise EvalError(
                    f"corpus file {path} does not exist (build it with `opengem corpus build`)"
                )
            return cls(anndata.read_h5ad(path), path)
        return cls(corpus, None)

    def checksum(self) -> str | None:
        """The corpus checksum of the ``manifest.json`` beside the corpus file, if any."""
        if self.path is None:
            return None
        manifest = self.path.parent / "manifest.json"
        if not manifest.is_file():
            return None
        return json.loads(manifest.read_text()).get("checksum")

    def text(self, column: str) -> pd.Series:
        return text_column(self.obs, column)

    def values(self, column: str) -> np.ndarray:
        """A column as a cached numpy array of clean strings."""
        if column not in self._text:
            self._text[column] = self.text(column).to_numpy().astype(str)
        return self._text[column]

    def study_list(self) -> list[str]:
        return sorted(set(self.studies))

    def genes_of(self, study: str) -> np.ndarray:
        """Gene indices the study measured."""
        return self._genes[study]

    def counts(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Dense raw counts (float64) of corpus rows, all genes."""
        rows = np.asarray(rows, dtype=np.intp)
        block = self.adata.X[rows]
        dense = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
        return dense.astype(np.float64)

    def lcpm(self, rows: Sequence[int] | np.ndarray, study: str) -> np.ndarray:
        """log1p(CPM) of rows over the genes ``study`` measured (CPM within those genes)."""
        return log_cpm(self.counts(rows)[:, self.genes_of(study)])

    @property
    def pooled(self) -> bool:
        """Whether rows are single cells, compared as pseudobulk (their mean CPM)."""
        return self.modality == "sc"

    def profile(self, rows: Sequence[int] | np.ndarray, study: str) -> np.ndarray:
        """Mean expression of rows over the genes ``study`` measured, in log-CPM: the mean
        of log-CPM for bulk samples, the pseudobulk (log of the mean CPM) for cells."""
        return self.mean_of(self.lcpm(rows, study))

    def mean_of(self, lcpm: np.ndarray, measured: np.ndarray | None = None) -> np.ndarray:
        """The mean profile of log-CPM rows in this corpus's space (see :meth:`profile`)."""
        return (pseudobulk_mean if self.pooled else masked_mean)(lcpm, measured)

    def replicates(self, lcpm: np.ndarray) -> np.ndarray:
        """Rows as compared: bulk samples as they are, cells as :data:`POOLS` pseudobulk
        pseudo-replicates (row ``i`` in pool ``i % POOLS``, so paired rows pool alike)."""
        return pseudobulk(lcpm, POOLS) if self.pooled else np.asarray(lcpm, dtype=np.float64)

    def measured(self, rows: Sequence[int] | np.ndarray, study: str) -> np.ndarray:
        """Bool (rows x genes of ``study``): whether each row's own study measured the gene."""
        genes = self.genes_of(study)
        return np.vstack([self._mask[self.studies[r]][genes] for r in np.asarray(rows)])

    def record(self, row: int, fields: Sequence[str] = tuple(FIELDS)) -> dict[str, str]:
        """The non-empty metadata of one row (harmonised fields)."""
        out = {}
        for f in fields:
            v = self.values(f)[row] if f in self.obs else ""
            if v:
                out[f] = str(v)
        return out

    def is_control(self) -> np.ndarray:
        return self.values("perturbation_type") == "control"

    def context_keys(self, fields: Sequence[str] = MATCHED_CONTEXT_FIELDS) -> np.ndarray:
        """Per row: study + the biological fields + ``match_group`` (matched-sample groups).

        Samples with the same key are each other's matched controls / perturbed samples.
        """
        key = self.studies.astype(object)
        for f in (*fields, "match_group"):
            key = key + "\x1f" + self.values(f).astype(object)
        return key.astype(str)

    def subset(self, rows: np.ndarray) -> Any:
        return self.adata[np.sort(np.asarray(rows, dtype=np.intp))].copy()


#: ``--fast`` trains on at most this many samples (the evaluated studies first)
FAST_MAX_TRAIN = 200


def fast_rows(
    view: CorpusView,
    train_rows: np.ndarray,
    focus: Sequence[str],
    cap: int = FAST_MAX_TRAIN,
) -> np.ndarray:
    """A small training set for ``--fast``: the focus studies' rows, then related studies.

    Other studies are added whole, most related first (shared biological metadata
    values with the focus studies), then smallest, until ``cap`` samples. Single-cell
    focus studies larger than ``cap`` are subsampled (seeded).
    """
    train_rows = np.asarray(train_rows, dtype=np.intp)
    in_focus = np.isin(view.studies[train_rows], list(focus))
    keep = list(train_rows[in_focus])
    if view.modality == "sc" and len(keep) > cap:
        rng = np.random.default_rng(0)
        keep = list(np.sort(rng.choice(np.asarray(keep), cap, replace=False)))
    bio = [*CONTROLLED_CONTEXT_FIELDS, *PERTURBATION_ENUM_FIELDS]
    focus_rows = np.flatnonzero(np.isin(view.studies, list(focus)))
    focus_values = {(f, v) for f in bio for v in view.values(f)[focus_rows] if v}
    others = sorted(set(view.studies[train_rows[~in_focus]]))
    sizes = {s: int(np.sum(view.studies[train_rows] == s)) for s in others}

    def shared(s: str) -> int:
        rows = np.flatnonzero(view.studies == s)
        return len({(f, v) for f in bio for v in view.values(f)[rows] if v} & focus_values)

    for s in sorted(others, key=lambda s: (-shared(s), sizes[s], s)):
        if len(keep) >= cap:
            break
        if len(keep) + sizes[s] <= cap or not keep:
            keep.extend(train_rows[view.studies[train_rows] == s])
    return np.sort(np.asarray(keep, dtype=np.intp))

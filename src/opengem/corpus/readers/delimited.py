"""Delimited counts tables (csv / tsv, optionally gzipped), in either orientation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from opengem.corpus.study import CorpusError, StudyTable

ORIENTATIONS = ("genes_x_samples", "samples_x_genes", "auto")


def default_sep(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    return "\t" if name.endswith((".tsv", ".txt", ".tab")) else ","


def detect_orientation(
    row_ids: Sequence[str], col_ids: Sequence[str], looks_like_gene: Callable[[str], bool]
) -> str:
    """Which axis holds genes: the one where more ids look like gene ids."""

    def share(ids: Sequence[str]) -> float:
        ids = list(ids)[:2000]
        return sum(looks_like_gene(str(x)) for x in ids) / max(len(ids), 1)

    rows, cols = share(row_ids), share(col_ids)
    if max(rows, cols) < 0.2 or abs(rows - cols) < 0.1:
        raise CorpusError(
            f"cannot tell which axis holds the genes ({rows:.0%} of row ids and {cols:.0%} of "
            "column ids look like gene ids); set orientation in the card"
        )
    return "genes_x_samples" if rows > cols else "samples_x_genes"


def read_delimited(
    path: Path,
    *,
    orientation: str = "auto",
    looks_like_gene: Callable[[str], bool] | None = None,
    index_column: str | None = None,
    drop_columns: Sequence[str] = (),
    sep: str | None = None,
) -> StudyTable:
    """Read a counts table; rows and columns are genes and samples (or the reverse).

    Parameters
    ----------
    orientation
        ``genes_x_samples``, ``samples_x_genes`` or ``auto`` (needs ``looks_like_gene``).
    index_column
        Column holding the row ids; default the first column.
    drop_columns
        Columns that are neither genes nor samples (a length column, symbols…).
    """
    if orientation not in ORIENTATIONS:
        raise CorpusError(f"orientation {orientation!r} is not one of {', '.join(ORIENTATIONS)}")
    try:
        table = pd.read_csv(path, sep=sep or default_sep(path), low_memory=False)
    except FileNotFoundError:
        raise CorpusError(f"matrix file {path} does not exist") from None
    missing = [c for c in drop_columns if c not in table.columns]
    if missing:
        raise CorpusError(f"drop_columns {missing} are not columns of {path.name}")
    table = table.drop(columns=list(drop_columns))
    if not isinstance(table.index, pd.RangeIndex):
        pass  # the header is one field short (R's write.csv): pandas made the ids the index
    else:
        index = index_column or table.columns[0]
        if index not in table.columns:
            raise CorpusError(f"index_column {index!r} is not a column of {path.name}")
        table = table.set_index(index)
    table.index = table.index.astype(str)
    table.columns = table.columns.astype(str)
    text_cols = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if text_cols:
        raise CorpusError(
            f"{path.name}: columns {text_cols[:5]} hold text, not values; list them in drop_columns"
        )
    if orientation == "auto":
        if looks_like_gene is None:
            raise CorpusError("orientation 'auto' needs a gene id test")
        orientation = detect_orientation(table.index, table.columns, looks_like_gene)
    values = table.to_numpy(dtype=np.float64)
    if orientation == "genes_x_samples":
        return StudyTable(sp.csr_matrix(values.T), list(table.index), list(table.columns))
    return StudyTable(sp.csr_matrix(values), list(table.columns), list(table.index))

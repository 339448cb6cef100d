"""GCT files (Broad / GenePattern): ``#1.2``, dimensions, then Name, Description, samples."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from opengem.corpus.study import CorpusError, StudyTable


def read_gct(path: Path) -> StudyTable:
    """Read a GCT 1.2 (or 1.3 without row/column metadata) expression table."""
    if not path.is_file():
        raise CorpusError(f"matrix file {path} does not exist")
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as fh:
        version = fh.readline().strip()
        if version not in ("#1.2", "#1.3"):
            raise CorpusError(f"{path.name} is not a GCT file (first line {version!r})")
        dims = fh.readline().split()
        table = pd.read_csv(fh, sep="\t", dtype={0: str, 1: str})
    n_rows, n_cols = int(dims[0]), int(dims[1])
    name, description = table.columns[0], table.columns[1]
    if name.lower() != "name" or description.lower() != "description":
        raise CorpusError(
            f"{path.name}: expected columns Name, Description; got {name}, {description}"
        )
    values = table.drop(columns=[description]).set_index(name)
    if values.shape != (n_rows, n_cols):
        raise CorpusError(
            f"{path.name} declares {n_rows} × {n_cols} but holds "
            f"{values.shape[0]} × {values.shape[1]}"
        )
    return StudyTable(
        sp.csr_matrix(values.to_numpy(dtype=np.float64).T),
        values.index.astype(str).tolist(),
        values.columns.astype(str).tolist(),
    )

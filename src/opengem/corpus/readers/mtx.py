"""Matrix Market matrices with gene and barcode files (10x style), either orientation."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import scipy.io
import scipy.sparse as sp

from opengem.corpus.study import CorpusError, StudyTable


def _read_ids(path: Path, column: int = 0) -> list[str]:
    if not path.is_file():
        raise CorpusError(f"file {path} does not exist")
    table = pd.read_csv(path, sep="\t", header=None, dtype=str, comment=None)
    if column >= table.shape[1]:
        raise CorpusError(
            f"{path.name} has {table.shape[1]} column(s); genes_column {column} is out of range"
        )
    return table[column].tolist()


def read_mtx(
    path: Path,
    *,
    genes_path: Path,
    barcodes_path: Path | None = None,
    sample_ids: list[str] | None = None,
    orientation: str = "auto",
    genes_column: int = 0,
) -> StudyTable:
    """Read a Matrix Market file plus its gene ids and sample (barcode) ids.

    ``sample_ids`` stands in for a barcodes file (the sample sheet's order). With
    ``orientation='auto'`` the axis whose length matches the gene list is the genes axis
    (10x writes genes × cells; many exports write cells × genes).
    """
    if not path.is_file():
        raise CorpusError(f"matrix file {path} does not exist")
    genes = _read_ids(genes_path, genes_column)
    samples = _read_ids(barcodes_path) if barcodes_path is not None else sample_ids
    if samples is None:
        raise CorpusError("an mtx matrix needs barcodes_path or a sample sheet giving its order")
    matrix = sp.csr_matrix(scipy.io.mmread(path)).astype("float64")
    shape = matrix.shape
    if orientation == "auto":
        if shape == (len(samples), len(genes)):
            orientation = "samples_x_genes"
        elif shape == (len(genes), len(samples)):
            orientation = "genes_x_samples"
    if orientation == "genes_x_samples":
        matrix = matrix.T.tocsr()
    elif orientation != "samples_x_genes":
        raise CorpusError(
            f"{path.name} is {shape[0]} × {shape[1]}, which matches neither "
            f"{len(samples)} samples × {len(genes)} genes nor the reverse"
        )
    if matrix.shape != (len(samples), len(genes)):
        raise CorpusError(
            f"{path.name} is {shape[0]} × {shape[1]} ({orientation}) but there are "
            f"{len(samples)} sample ids and {len(genes)} gene ids"
        )
    return StudyTable(matrix, genes, list(samples))

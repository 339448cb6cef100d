"""Counts tables people have (CSV / TSV / h5ad, gene ids or symbols) → vectors in
opengem's gene order, ready to send as a query's ``counts``.

The orientation is found from the names: the axis whose names map onto more genes
of the gene space holds the genes (a table of samples × genes, genes × samples, or
a two-column ``gene, count`` list of one sample all work). Versioned Ensembl ids and
symbols map through :meth:`opengem.ontology.genes.GeneSpace.positions`; two names
of one gene add up; genes the table lacks count as 0.
"""

from __future__ import annotations

import gzip
import io
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import pandas as pd

from opengem.contract.validate import MAX_COUNT
from opengem.ontology.genes import GeneSpace, default_gene_space

#: suffixes read as tab-separated (anything else: the first line decides)
_TAB_SUFFIXES = (".tsv", ".txt", ".tab")
FORMATS = "CSV or TSV (optionally .gz) with gene ids or symbols, or .h5ad"


class CountsTableError(ValueError):
    """A counts file opengem cannot turn into count vectors (the message says why)."""


@dataclass(frozen=True)
class CountsTable:
    """Samples of a counts file in gene-space order.

    Attributes
    ----------
    samples
        One name per sample (row of ``counts``).
    counts
        (samples, genes) int64, in the gene space's order.
    mapped
        How many of the file's gene names map onto the gene space.
    gene_names
        How many gene names the file has.
    rounded
        Whether non-integer values were rounded to whole counts.
    """

    samples: list[str]
    counts: np.ndarray
    mapped: int
    gene_names: int
    rounded: bool = False


def _strip_gz(name: str, data: bytes) -> tuple[str, bytes]:
    if name.lower().endswith(".gz") or data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise CountsTableError(f"{name}: not a readable gzip file ({exc})") from None
        name = name[:-3] if name.lower().endswith(".gz") else name
    return name, data


def _read_h5ad(name: str, data: bytes) -> pd.DataFrame:
    import anndata

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "upload.h5ad")
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            adata = anndata.read_h5ad(path)
        except Exception as exc:  # h5py / anndata raise many kinds
            raise CountsTableError(f"{name}: not a readable h5ad file ({exc})") from None
        matrix = adata.X
        if matrix is None:
            raise CountsTableError(f"{name}: the h5ad file has no X matrix")
        dense = matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
        names = [str(v) for v in adata.var_names]
        return pd.DataFrame(dense, index=[str(o) for o in adata.obs_names], columns=names)


def _read_text(name: str, data: bytes) -> pd.DataFrame:
    first = data[:4096].split(b"\n", 1)[0]
    tab = name.lower().endswith(_TAB_SUFFIXES) or (b"\t" in first and b"," not in first)
    sep = "\t" if tab else ","
    try:
        try:
            frame = pd.read_csv(io.BytesIO(data), sep=sep, index_col=0)
        except UnicodeDecodeError:  # spreadsheets still save Latin-1
            frame = pd.read_csv(io.BytesIO(data), sep=sep, index_col=0, encoding="latin-1")
    except (ValueError, pd.errors.ParserError) as exc:
        raise CountsTableError(
            f"{name}: not a readable {'TSV' if tab else 'CSV'} table ({exc}); expected {FORMATS}"
        ) from None
    if frame.shape[1] == 0:
        raise CountsTableError(
            f"{name}: has no columns besides the first (names); expected a table of counts "
            "with gene ids or symbols as row or column names"
        )
    return frame


def read_counts_table(
    data: bytes,
    name: str = "counts.csv",
    genes: GeneSpace | None = None,
    max_samples: int | None = None,
) -> CountsTable:
    """Parse a counts file into count vectors in the gene space's order.

    Raises
    ------
    CountsTableError
        When the file cannot be read, no name is a gene of the gene space, a value is
        not a finite non-negative number, or it holds more than ``max_samples`` samples.
    """
    genes = genes or default_gene_space()
    if not data:
        raise CountsTableError(f"{name}: the file is empty")
    name, data = _strip_gz(name, data)
    if name.lower().endswith(".h5ad") or data[:8] == b"\x89HDF\r\n\x1a\n":
        frame = _read_h5ad(name, data)
    else:
        frame = _read_text(name, data)
    by_columns = genes.positions([str(c) for c in frame.columns])
    by_rows = genes.positions([str(i) for i in frame.index])
    if (by_rows >= 0).sum() > (by_columns >= 0).sum():
        frame, positions = frame.T, by_rows
    else:
        positions = by_columns
    keep = positions >= 0
    if not keep.any():
        raise CountsTableError(
            f"{name}: no row or column name is a gene of opengem's gene space "
            f"({genes.release}, {len(genes):,} genes); name genes by Ensembl id "
            "(ENSG…, any version) or symbol (TP53)"
        )
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    values = numeric.to_numpy(dtype=np.float64)[:, keep]
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = (int(v[0]) for v in np.nonzero(bad))
        gene = frame.columns[np.flatnonzero(keep)[col]]
        raise CountsTableError(
            f"{name}: sample {frame.index[row]!r}, gene {gene!r}: "
            f"{frame.iloc[row, np.flatnonzero(keep)[col]]!r} is not a number; every cell "
            "must hold a count"
        )
    if (values < 0).any():
        row, col = (int(v[0]) for v in np.nonzero(values < 0))
        gene = frame.columns[np.flatnonzero(keep)[col]]
        raise CountsTableError(
            f"{name}: sample {frame.index[row]!r}, gene {gene!r}: {values[row, col]:g} is "
            "negative; counts are 0 or more"
        )
    if (values > MAX_COUNT).any():
        row, col = (int(v[0]) for v in np.nonzero(values > MAX_COUNT))
        gene = frame.columns[np.flatnonzero(keep)[col]]
        raise CountsTableError(
            f"{name}: sample {frame.index[row]!r}, gene {gene!r}: {values[row, col]:g} is "
            f"beyond 2^40, more than any sequencing run counts"
        )
    n = values.shape[0]
    if n == 0:
        raise CountsTableError(f"{name}: the table has gene names but no samples")
    if max_samples is not None and n > max_samples:
        raise CountsTableError(
            f"{name}: holds {n:,} samples; at most {max_samples:,} can be read at once"
        )
    whole = np.rint(values)
    counts = np.zeros((n, len(genes)), dtype=np.int64)
    np.add.at(counts.T, positions[keep], whole.astype(np.int64).T)
    return CountsTable(
        samples=[str(s) for s in frame.index],
        counts=counts,
        mapped=int(keep.sum()),
        gene_names=len(positions),
        rounded=bool((whole != values).any()),
    )

"""ARCHS4-style HDF5: ``data/expression`` (genes × samples), ``meta/genes/*``, ``meta/samples/*``.

Files of this layout hold hundreds of thousands of samples: annotations are read
on their own, and counts only for the chosen samples, a chunk of samples at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from opengem.corpus.study import CorpusError, StudyTable

CHUNK = 2_000
SAMPLE_ID_FIELDS = ("geo_accession", "sample_id", "sra_run")


def _text(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _open(path: Path):  # type: ignore[no-untyped-def]
    import h5py

    if not path.is_file():
        raise CorpusError(f"matrix file {path} does not exist")
    f = h5py.File(path, "r")
    for key in ("data/expression", "meta/genes", "meta/samples"):
        if key not in f:
            f.close()
            raise CorpusError(f"{path.name} is not an ARCHS4-style file: no {key!r}")
    return f


def _sample_ids(f) -> list[str]:  # type: ignore[no-untyped-def]
    for name in SAMPLE_ID_FIELDS:
        if name in f["meta/samples"]:
            return _text(f["meta/samples"][name][:])
    raise CorpusError(f"no sample id field ({', '.join(SAMPLE_ID_FIELDS)}) in meta/samples")


def archs4_annotations(path: Path) -> pd.DataFrame:
    """All ``meta/samples/*`` fields (1-d ones), indexed by sample id."""
    with _open(path) as f:
        ids = _sample_ids(f)
        group = f["meta/samples"]
        cols = {
            k: _text(group[k][:])
            for k in sorted(group)
            if group[k].ndim == 1 and group[k].shape[0] == len(ids)
        }
    return pd.DataFrame(cols, index=pd.Index(ids, name="sample_id"))


def read_archs4(
    path: Path, *, gene_id_field: str | None = None, samples: list[str] | None = None
) -> StudyTable:
    """Counts of the chosen samples (all when ``samples`` is None), read in sample chunks."""
    with _open(path) as f:
        ids = _sample_ids(f)
        genes_group = f["meta/genes"]
        field = gene_id_field or next(
            (
                k
                for k in ("ensembl_gene_id", "ensembl_gene", "gene_symbol", "symbol")
                if k in genes_group
            ),
            None,
        )
        if field is None or field not in genes_group:
            raise CorpusError(
                f"{path.name}: meta/genes has no {gene_id_field or 'gene id'} field; "
                f"fields: {sorted(genes_group)}"
            )
        genes = _text(genes_group[field][:])
        position = {s: i for i, s in enumerate(ids)}
        wanted = ids if samples is None else samples
        missing = [s for s in wanted if s not in position]
        if missing:
            raise CorpusError(f"{path.name} has no sample {missing[0]!r}")
        cols = np.array([position[s] for s in wanted], dtype=np.int64)
        order = np.argsort(cols, kind="stable")
        expression = f["data/expression"]
        if expression.shape != (len(genes), len(ids)):
            raise CorpusError(
                f"{path.name}: data/expression is {expression.shape}, expected "
                f"{len(genes)} genes × {len(ids)} samples"
            )
        blocks = []
        for start in range(0, len(order), CHUNK):
            chunk_cols = cols[order[start : start + CHUNK]]
            lo, hi = int(chunk_cols.min()), int(chunk_cols.max()) + 1
            if hi - lo <= 4 * len(chunk_cols):  # dense enough: one contiguous read
                block = expression[:, lo:hi][:, chunk_cols - lo]
            else:  # scattered samples: read only their columns
                unique, inverse = np.unique(chunk_cols, return_inverse=True)
                block = expression[:, unique][:, inverse]
            blocks.append(sp.csr_matrix(block.T.astype(np.float64)))
        matrix = sp.vstack(blocks).tocsr() if blocks else sp.csr_matrix((0, len(genes)))
        matrix = matrix[np.argsort(order, kind="stable")]
    annotations = archs4_annotations(path).loc[wanted]
    return StudyTable(matrix, genes, list(wanted), annotations)

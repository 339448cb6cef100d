"""AnnData ``.h5ad`` files (e.g. CELLxGENE): counts from ``.X``, a layer, or ``.raw``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from opengem.corpus.study import CorpusError, StudyTable

CHUNK = 10_000


def h5ad_annotations(path: Path) -> pd.DataFrame:
    """The file's ``obs`` (read without loading the matrix)."""
    import anndata

    if not path.is_file():
        raise CorpusError(f"matrix file {path} does not exist")
    adata = anndata.read_h5ad(path, backed="r")
    try:
        obs = adata.obs.copy()
    finally:
        adata.file.close()
    obs.index = obs.index.astype(str)
    return obs


def read_h5ad(
    path: Path,
    *,
    layer: str | None = None,
    gene_id_field: str | None = None,
    samples: list[str] | None = None,
) -> StudyTable:
    """Read counts of an ``.h5ad``; ``.X`` is streamed in row chunks (backed mode).

    Parameters
    ----------
    layer
        A layer name, or ``"raw"`` for ``.raw.X``; default ``.X``.
    gene_id_field
        ``var`` column holding gene ids; default the var index.
    samples
        Read only these observations (in this order).
    """
    import anndata

    if not path.is_file():
        raise CorpusError(f"matrix file {path} does not exist")
    backed = layer is None
    adata = anndata.read_h5ad(path, backed="r" if backed else None)
    try:
        obs_names = adata.obs_names.astype(str)
        if samples is None:
            rows = np.arange(adata.n_obs)
        else:
            where = pd.Index(obs_names).get_indexer(samples)
            if (where < 0).any():
                raise CorpusError(
                    f"{path.name} has no observation {samples[int(np.argmax(where < 0))]!r}"
                )
            rows = where
        if layer == "raw":
            if adata.raw is None:
                raise CorpusError(f"{path.name} has no .raw")
            var, source = adata.raw.var, adata.raw.X
        elif layer is not None:
            if layer not in adata.layers:
                raise CorpusError(
                    f"{path.name} has no layer {layer!r}; layers: {list(adata.layers)}"
                )
            var, source = adata.var, adata.layers[layer]
        else:
            var, source = adata.var, adata.X
        if gene_id_field is None:
            genes = var.index.astype(str).tolist()
        elif gene_id_field in var.columns:
            genes = var[gene_id_field].astype(str).tolist()
        else:
            raise CorpusError(f"{path.name}: var has no column {gene_id_field!r}")
        blocks = []
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        for start in range(0, len(sorted_rows), CHUNK):
            block = source[sorted_rows[start : start + CHUNK]]
            blocks.append(sp.csr_matrix(block, dtype=np.float64))
        matrix = sp.vstack(blocks).tocsr() if blocks else sp.csr_matrix((0, len(genes)))
        matrix = matrix[np.argsort(order, kind="stable")]
        obs = adata.obs.iloc[rows].copy()
    finally:
        if backed:
            adata.file.close()
    obs.index = obs.index.astype(str)
    return StudyTable(matrix, genes, obs.index.tolist(), obs)

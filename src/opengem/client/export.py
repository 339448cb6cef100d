"""A result's DataFrames written as files: CSV, Parquet or h5ad.

One place for the layouts, used by ``opengem generate --out`` and the web page's
downloads: ``csv`` is the expression table (samples × genes, index ``sample``) with
``metadata.csv`` beside it; ``parquet`` is one table, metadata columns prefixed
``meta_`` then one column per gene; ``h5ad`` is :func:`opengem.to_anndata`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

#: format → what the file holds (for menus and error messages)
EXPORT_FORMATS: dict[str, str] = {
    "csv": "expression counts, samples × genes (CSV)",
    "metadata.csv": "sample metadata, one row per sample (CSV)",
    "parquet": "metadata (meta_ columns) and counts in one table (Parquet)",
    "h5ad": "AnnData: counts in X, metadata in obs, gene symbols in var, latents in obsm",
}
MEDIA_TYPES: dict[str, str] = {
    "csv": "text/csv",
    "metadata.csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
    "h5ad": "application/x-hdf5",
}


def combined_table(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Metadata (columns prefixed ``meta_``) joined with the expression counts."""
    return frames["metadata"].add_prefix("meta_").join(frames["expression"])


def write_frames(frames: dict[str, Any], path: Path, fmt: str) -> Path:
    """Write one file of a result in ``fmt`` (a key of :data:`EXPORT_FORMATS`).

    Raises
    ------
    ValueError
        For an unknown format (the message lists the valid ones).
    """
    if fmt == "csv":
        frames["expression"].to_csv(path, index_label="sample")
    elif fmt == "metadata.csv":
        frames["metadata"].to_csv(path, index_label="sample")
    elif fmt == "parquet":
        combined_table(frames).to_parquet(path)
    elif fmt == "h5ad":
        from opengem.client.embedded import to_anndata

        to_anndata(frames).write_h5ad(path)
    else:
        raise ValueError(f"unknown format {fmt!r}; formats: {', '.join(EXPORT_FORMATS)}")
    return path

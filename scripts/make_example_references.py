"""Regenerate the reference count vectors that example queries carry.

Reference-conditioning and metadata-prediction example queries need a real,
full-length count vector. We ship per-gene *means* of real public samples
(rounded to integers; never a copy of a data file), mapped onto opengem's
gene space:

- bulk: the four untreated airway smooth muscle samples of the ``airway``
  study (GEO GSE52778 / SRA SRP033351; Himes et al. 2014);
- single-cell: the 500 FACS-sorted CD14+ monocytes of the ``pbmc14k`` subset
  (Zheng et al. 2017, 10x Genomics PBMC), an average monocyte.

Usage::

    OPENGEM_DATA=../shared/data python scripts/make_example_references.py

Writes ``src/opengem/data/example_reference_{bulk,sc}.tsv.gz`` (gene_id, count;
non-zero genes only), byte-identical for identical input.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io

from opengem.ontology.genes import default_gene_space
from opengem.settings import data_root

OUT = Path(__file__).resolve().parents[1] / "src/opengem/data"


def _round_to_total(values: np.ndarray, total: int) -> np.ndarray:
    """Largest-remainder rounding of ``values`` scaled to sum to ``total``."""
    scaled = values / values.sum() * total
    counts = np.floor(scaled).astype(np.int64)
    short = total - int(counts.sum())
    order = np.lexsort((np.arange(len(scaled)), -(scaled - counts)))
    counts[order[:short]] += 1
    return counts


def _write(
    name: str, provenance: str, gene_ids: list[str], values: np.ndarray, total: int | None = None
) -> None:
    genes = default_gene_space()
    summed = np.zeros(len(genes))
    pos = genes.positions(gene_ids)
    ok = pos >= 0
    np.add.at(summed, pos[ok], values[ok])
    counts = np.rint(summed).astype(np.int64) if total is None else _round_to_total(summed, total)
    buf = io.StringIO()
    buf.write(
        f"# {provenance}\n# mapped onto {genes.release} protein-coding genes; "
        f"{int(ok.sum())} of {len(gene_ids)} source genes mapped\n"
    )
    buf.write("gene_id\tcount\n")
    for i in np.flatnonzero(counts):
        buf.write(f"{genes.gene_ids[i]}\t{counts[i]}\n")
    path = OUT / name
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue().encode())
    tmp.replace(path)
    print(f"{name}: {np.count_nonzero(counts)} non-zero genes, library {counts.sum():,}")


def main() -> None:
    root = data_root()
    airway = pd.read_csv(root / "airway/counts_data.csv.gz", index_col=0)
    meta = pd.read_csv(root / "airway/metadata.csv")
    untreated = meta.loc[meta["dex"] == "untreated", "run"].tolist()
    _write(
        "example_reference_bulk.tsv.gz",
        "mean of the 4 untreated airway smooth muscle samples of GEO GSE52778 "
        f"({', '.join(untreated)}), rounded",
        airway.index.astype(str).tolist(),
        airway[untreated].mean(axis=1).to_numpy(),
    )

    pbmc = root / "pbmc14k_sorted_subset3500"
    cells = pd.read_csv(pbmc / "cell_metadata.csv", index_col=0)
    genes = pd.read_csv(pbmc / "genes.tsv", header=None, sep="\t")[0].astype(str).tolist()
    matrix = scipy.io.mmread(pbmc / "matrix.mtx.gz").tocsr()  # cells x genes
    mono = np.flatnonzero((cells["trueLabel_full"] == "CD14+ Monocyte").to_numpy())
    mean = np.asarray(matrix[mono].mean(axis=0)).ravel()
    library = int(np.median(np.asarray(matrix[mono].sum(axis=1)).ravel()))
    # plain rounding would zero most genes of a ~1,500-UMI cell: scale the mean
    # profile to the median library instead and round by largest remainder
    _write(
        "example_reference_sc.tsv.gz",
        f"mean of the {len(mono)} CD14+ monocytes of the pbmc14k subset (Zheng et al. 2017, "
        f"10x Genomics PBMC), scaled to their median library ({library} UMIs) and rounded",
        genes,
        mean,
        total=library,
    )


if __name__ == "__main__":
    main()

"""Genes onto the shared gene space, values onto integer read counts.

- Ensembl ids lose their version; symbols and Entrez ids map through the gene
  space and, for older symbols and Entrez, an Ensembl annotation table
  (``gene_annotation/annotables_grch38.tsv.gz`` in the data root);
- several source genes landing on one gene are summed;
- each study records which genes it measured (a mask), so a 500-gene table
  never claims the other 19,620 genes were zero;
- coverage (recount2 base-pair sums) becomes reads (÷ read length, rounded);
  estimated counts are rounded and flagged; ERCC spike-ins and non-gene rows
  (``__no_feature``…) are dropped and reported apart from unmapped genes.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from opengem.corpus.study import CorpusError, StudyTable
from opengem.ontology.genes import GeneSpace, is_ensembl_gene_id, strip_version

GENE_ID_TYPES = ("ensembl", "symbol", "entrez")
VALUE_TYPES = ("counts", "coverage", "estimated")
MAX_COUNT = np.iinfo(np.int32).max


def is_spike_in(gene_id: str) -> bool:
    return gene_id.upper().startswith("ERCC-")


def is_non_gene(gene_id: str) -> bool:
    """HTSeq/featureCounts summary rows and empty ids."""
    return gene_id.startswith("__") or gene_id.strip() in ("", "nan", "NA")


class GeneMapper:
    """Maps source gene ids of one id type onto a gene space."""

    def __init__(self, genes: GeneSpace, annotation: pd.DataFrame | None = None) -> None:
        self.genes = genes
        self.entrez: dict[str, str] = {}
        self.symbols: dict[str, str] = {}
        if annotation is not None:
            in_space = annotation[annotation["ensgene"].isin(set(genes.gene_ids))]
            by_entrez = in_space.dropna(subset=["entrez"]).groupby("entrez")["ensgene"].unique()
            self.entrez = {str(int(float(k))): v[0] for k, v in by_entrez.items() if len(v) == 1}
            by_symbol = in_space.dropna(subset=["symbol"]).groupby("symbol")["ensgene"].unique()
            self.symbols = {str(k).upper(): v[0] for k, v in by_symbol.items() if len(v) == 1}

    @classmethod
    def from_annotables(cls, genes: GeneSpace, path: Path | None) -> GeneMapper:
        """With the annotables table (ensgene, entrez, symbol) when the file exists."""
        if path is None or not path.is_file():
            return cls(genes)
        with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as fh:
            table = pd.read_csv(
                fh,
                sep="\t",
                usecols=["ensgene", "entrez", "symbol"],
                dtype={"ensgene": str, "symbol": str},
                low_memory=False,
            )
        return cls(genes, table)

    def resolve(self, gene_id: str, id_type: str) -> str | None:
        text = str(gene_id).strip()
        if id_type == "ensembl":
            return strip_version(text) if is_ensembl_gene_id(text) and text in self.genes else None
        if id_type == "entrez":
            key = text.removesuffix(".0")
            if not self.entrez:
                raise CorpusError(
                    "Entrez gene ids need the gene annotation table "
                    "(gene_annotation/annotables_grch38.tsv.gz in the data root)"
                )
            return self.entrez.get(key)
        if id_type == "symbol":
            hit = None if is_ensembl_gene_id(text) else self.genes.resolve(text)
            return hit or self.symbols.get(text.upper())
        raise CorpusError(f"gene_id_type {id_type!r} is not one of {', '.join(GENE_ID_TYPES)}")

    def positions(self, gene_ids: Sequence[str], id_type: str) -> np.ndarray:
        out = np.full(len(gene_ids), -1, dtype=np.int64)
        for i, g in enumerate(gene_ids):
            hit = self.resolve(g, id_type)
            if hit is not None:
                out[i] = self.genes.index_of(hit)  # type: ignore[assignment]
        return out


@dataclass
class HarmonizedStudy:
    """One study on the gene space: integer counts, measured-gene mask, and what was lost."""

    counts: sp.csr_matrix  # samples × genes, int32
    measured: np.ndarray  # bool per gene of the space
    sample_ids: list[str]
    source_genes: int
    mapped_genes: int
    duplicates_summed: int
    unmapped_fraction: float
    spike_in_fraction: float
    top_unmapped: list[tuple[str, float]] = field(default_factory=list)
    rounded: bool = False


def _first_bad(values: sp.csr_matrix, mask_data: np.ndarray) -> tuple[int, int, float]:
    coo = values.tocoo()
    k = int(np.argmax(mask_data))
    return int(coo.row[k]), int(coo.col[k]), float(coo.data[k])


def harmonize(
    table: StudyTable,
    *,
    study: str,
    mapper: GeneMapper,
    gene_id_type: str,
    value_type: str,
    read_length: float | None = None,
    max_unmapped_fraction: float = 0.35,
) -> HarmonizedStudy:
    """Map a study onto the gene space and turn its values into integer counts."""
    if value_type not in VALUE_TYPES:
        raise CorpusError(
            f"{study}: value_type {value_type!r} is not one of {', '.join(VALUE_TYPES)}"
        )
    values = table.values.tocsr().astype(np.float64)
    values.sum_duplicates()
    data = values.data
    coo = values.tocoo()
    for bad, what in ((~np.isfinite(data), "NaN or infinite"), (data < 0, "negative")):
        if bad.any():
            k = int(np.argmax(bad))
            raise CorpusError(
                f"{study}: sample {table.sample_ids[coo.row[k]]!r}, gene "
                f"{table.gene_ids[coo.col[k]]!r} has a {what} value ({data[k]!r})"
            )
    if value_type == "counts":
        frac = data != np.round(data)
        if frac.any():
            k = int(np.argmax(frac))
            raise CorpusError(
                f"{study}: sample {table.sample_ids[coo.row[k]]!r}, gene "
                f"{table.gene_ids[coo.col[k]]!r} holds {data[k]!r}, not a count; "
                "declare value_type = 'estimated' if these are expected counts"
            )
    elif value_type == "coverage":
        if not read_length or read_length <= 0:
            raise CorpusError(f"{study}: value_type 'coverage' needs a positive read_length")
        values = values / float(read_length)
    rounded = value_type != "counts"
    values = values.tocsr()
    values.data = np.round(values.data)
    values.eliminate_zeros()

    ids = [str(g) for g in table.gene_ids]
    spike = np.array([is_spike_in(g) for g in ids])
    non_gene = np.array([is_non_gene(g) for g in ids])
    pos = mapper.positions(ids, gene_id_type)
    pos[spike | non_gene] = -1
    per_gene = np.asarray(values.sum(axis=0)).ravel()
    total = per_gene[~non_gene].sum()
    spike_total = per_gene[spike].sum()
    unmapped = (pos < 0) & ~spike & ~non_gene
    unmapped_total = per_gene[unmapped].sum()
    denom = max(total - spike_total, 1.0)
    unmapped_fraction = float(unmapped_total / denom)
    order = np.argsort(-per_gene[unmapped], kind="stable")[:10]
    top = [(ids[i], float(per_gene[i] / denom)) for i in np.flatnonzero(unmapped)[order]]
    if unmapped_fraction > max_unmapped_fraction:
        listed = ", ".join(f"{g} ({f:.1%})" for g, f in top[:5])
        raise CorpusError(
            f"{study}: {unmapped_fraction:.1%} of counts fall on genes outside the gene space "
            f"(above max_unmapped_fraction {max_unmapped_fraction:.0%}); largest: {listed}. "
            "Check gene_id_type, or raise max_unmapped_fraction in the card"
        )
    n_genes = len(mapper.genes)
    keep = np.flatnonzero(pos >= 0)
    projector = sp.csr_matrix((np.ones(len(keep)), (keep, pos[keep])), shape=(len(ids), n_genes))
    counts = (values @ projector).tocsr()
    if counts.nnz and counts.data.max() > MAX_COUNT:
        raise CorpusError(f"{study}: a count exceeds {MAX_COUNT:,}; are these counts?")
    counts = counts.astype(np.int32)
    counts.eliminate_zeros()
    counts.sort_indices()
    measured = np.zeros(n_genes, dtype=bool)
    measured[pos[keep]] = True
    return HarmonizedStudy(
        counts=counts,
        measured=measured,
        sample_ids=list(table.sample_ids),
        source_genes=int((~spike & ~non_gene).sum()),
        mapped_genes=int(measured.sum()),
        duplicates_summed=int(len(keep) - measured.sum()),
        unmapped_fraction=unmapped_fraction,
        spike_in_fraction=float(spike_total / max(total, 1.0)),
        top_unmapped=top,
        rounded=rounded,
    )

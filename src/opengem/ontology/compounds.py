"""Names of the ChEMBL and ChEBI compounds opengem's corpus and examples use.

ChEMBL ships no offline ontology, and ChEBI's full ontology takes seconds to
load, so labels for reports and vocabularies come from this small table
(``scripts/make_compound_table.py`` regenerates it from the data root).
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def compound_names() -> dict[str, str]:
    """Compound id (``CHEMBL25``, ``CHEBI:15365``) -> preferred name."""
    text = resources.files("opengem.data").joinpath("compounds.tsv").read_text()
    names: dict[str, str] = {}
    for line in text.splitlines()[2:]:
        compound_id, name, chembl_id, chebi_id = [*line.split("\t"), "", "", ""][:4]
        for key in (compound_id, chembl_id, chebi_id):
            if key:
                names.setdefault(key, name)
    return names


def compound_label(compound_id: str) -> str | None:
    return compound_names().get(compound_id.strip())

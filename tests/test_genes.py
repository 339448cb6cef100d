from __future__ import annotations

import numpy as np
import pytest

from opengem.ontology import GeneSpace, default_gene_space, strip_version


def test_shipped_gene_space_is_gencode_protein_coding() -> None:
    genes = default_gene_space()
    assert 19_000 < len(genes) < 21_000
    assert genes.release.startswith("GENCODE v")
    assert all(g.startswith("ENSG") and len(g) == 15 for g in genes.gene_ids)
    assert len(set(genes.gene_ids)) == len(genes)
    assert genes.symbol_of("ENSG00000141510") == "TP53"


def test_versions_symbols_and_entrez_map_onto_the_space() -> None:
    genes = default_gene_space()
    tp53 = "ENSG00000141510"
    assert strip_version("ENSG00000141510.17") == tp53
    assert genes.resolve("ENSG00000141510.17") == tp53
    assert genes.resolve("tp53") == tp53
    assert genes.resolve("7157", entrez={"7157": tp53}) == tp53
    assert genes.resolve("7157") is None  # digits are not symbols without an Entrez table
    assert genes.resolve("MALAT1") is None  # lncRNA: not in the protein-coding space
    pos = genes.positions(["TP53", "not-a-gene", "ENSG00000141510.3"])
    assert pos[0] == pos[2] == genes.index_of(tp53)
    assert pos[1] == -1


def test_ambiguous_symbol_does_not_resolve() -> None:
    space = GeneSpace(("ENSG00000000001", "ENSG00000000002"), ("DUP", "DUP"))
    assert space.ids_for_symbol("dup") == ("ENSG00000000001", "ENSG00000000002")
    assert space.resolve("DUP") is None
    assert np.array_equal(space.positions(["DUP"]), [-1])


def test_gene_space_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="duplicates"):
        GeneSpace(("ENSG00000000001", "ENSG00000000001"), ("A", "B"))

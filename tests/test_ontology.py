from __future__ import annotations

from opengem.ontology import default_resolver, ontology_of, parse_taxon


def test_prefixes() -> None:
    assert ontology_of("UBERON:0000945") == "UBERON"
    assert ontology_of("CVCL_0023") == "CVCL"
    assert ontology_of("cl:0000236") == "CL"
    assert ontology_of("ENSG00000141510") is None
    assert parse_taxon("NCBITaxon:9606") == parse_taxon("9606") == "9606"


def test_terms_labels_and_ancestors() -> None:
    r = default_resolver()
    assert r.label("UBERON:0000945") == "stomach"
    assert r.label("CL:0000236") == "B cell"
    assert r.label("CVCL_0023") == "A-549"
    assert r.label("PATO:0000461") == "normal"
    assert r.term("UBERON:9999999") is None
    # transverse colon is part of the colon
    assert "UBERON:0001155" in r.ancestors("UBERON:0001157")
    assert "CL:0000236" not in r.ancestors("CL:0000236")


def test_search_by_label_and_typo_ids() -> None:
    r = default_resolver()
    assert r.search("stomach", "UBERON")[0].term_id == "UBERON:0000945"
    assert r.search("B cell", "CL")[0].term_id == "CL:0000236"
    assert [t.term_id for t in r.similar_ids("UBERON:000945", "UBERON")] == ["UBERON:0000945"]
    assert [t.term_id for t in r.similar_ids("cvcl_0023", "CVCL")] == ["CVCL_0023"]

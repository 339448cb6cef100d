"""One place that names any id opengem handles, and lists its ontology ancestors."""

from __future__ import annotations

from functools import lru_cache

from opengem.ontology.compounds import compound_label
from opengem.ontology.genes import default_gene_space, is_ensembl_gene_id
from opengem.ontology.resolver import default_resolver, ontology_of
from opengem.ontology.taxa import TAXA, parse_taxon

#: ontologies whose terms are encoded with their ancestors
HIERARCHICAL = ("UBERON", "CL", "MONDO")


@lru_cache(maxsize=65536)
def term_label(value: str) -> str:
    """Label of an ontology term, gene id (symbol), compound or taxon; "" when unknown."""
    if not value:
        return ""
    if is_ensembl_gene_id(value):
        return default_gene_space().symbol_of(value) or ""
    if value.startswith("NCBITaxon:"):
        return TAXA.get(parse_taxon(value) or "", "")
    if value.startswith(("CHEMBL", "CHEBI:")):
        return compound_label(value) or (default_resolver().label(value) or "")
    if ontology_of(value) is not None:
        return default_resolver().label(value) or ""
    return ""


@lru_cache(maxsize=65536)
def term_ancestors(value: str) -> tuple[str, ...]:
    """Ancestors of an UBERON / CL / MONDO term (nearest first); () for anything else."""
    if ontology_of(value) in HIERARCHICAL and value.startswith(HIERARCHICAL):
        return tuple(default_resolver().ancestors(value))
    return ()

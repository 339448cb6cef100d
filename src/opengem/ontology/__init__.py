"""Ontology terms, the shared gene space and the small taxon table."""

from opengem.ontology.genes import GeneSpace, default_gene_space, is_ensembl_gene_id, strip_version
from opengem.ontology.resolver import (
    ONTOLOGY_NAMES,
    Term,
    TermResolver,
    default_resolver,
    ontology_of,
)
from opengem.ontology.taxa import TAXA, parse_taxon

__all__ = [
    "ONTOLOGY_NAMES",
    "TAXA",
    "GeneSpace",
    "Term",
    "TermResolver",
    "default_gene_space",
    "default_resolver",
    "is_ensembl_gene_id",
    "ontology_of",
    "parse_taxon",
    "strip_version",
]

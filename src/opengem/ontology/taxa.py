"""A small NCBI Taxonomy table for infection and coculture perturbations.

cellxgene-ontology-guide ships the full NCBITaxon tree (~15 MB compressed,
millions of terms); loading it to check a handful of pathogen ids would cost
seconds and hundreds of MB, so opengem keeps the taxa its corpus and users
need here, with their NCBI scientific names. Add a row to support another one.
"""

from __future__ import annotations

import re

#: NCBI Taxonomy id -> scientific name.
TAXA: dict[str, str] = {
    "9606": "Homo sapiens",
    "10090": "Mus musculus",
    "2697049": "Severe acute respiratory syndrome coronavirus 2",
    "694009": "Severe acute respiratory syndrome-related coronavirus",
    "1335626": "Middle East respiratory syndrome-related coronavirus",
    "11320": "Influenza A virus",
    "11520": "Influenza B virus",
    "12814": "Respiratory syncytial virus",
    "11216": "Human respirovirus 3",
    "11676": "Human immunodeficiency virus 1",
    "10298": "Human alphaherpesvirus 1",
    "10376": "Human gammaherpesvirus 4",
    "10359": "Human betaherpesvirus 5",
    "11103": "Hepacivirus hominis",
    "10407": "Hepatitis B virus",
    "64320": "Zika virus",
    "12637": "Dengue virus",
    "186538": "Zaire ebolavirus",
    "1773": "Mycobacterium tuberculosis",
    "1280": "Staphylococcus aureus",
    "562": "Escherichia coli",
    "1313": "Streptococcus pneumoniae",
    "28901": "Salmonella enterica",
    "287": "Pseudomonas aeruginosa",
    "5833": "Plasmodium falciparum",
    "5811": "Toxoplasma gondii",
    "5476": "Candida albicans",
}

_TAXON_RE = re.compile(r"^(?:NCBITaxon:)?(\d+)$")


def parse_taxon(text: str) -> str | None:
    """``'NCBITaxon:9606'`` or ``'9606'`` -> ``'9606'``; None if not taxon-shaped."""
    m = _TAXON_RE.match(text.strip())
    return m.group(1) if m else None

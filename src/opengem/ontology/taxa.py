"""A small NCBI Taxonomy table for infection and coculture perturbations.

cellxgene-ontology-guide ships the full NCBITaxon tree (~15 MB compressed,
millions of terms); loading it to check a handful of pathogen ids would cost
seconds and hundreds of MB, so opengem keeps the taxa its corpus and users
need here, with their NCBI scientific names. Add a row to support another one.
"""

from __future__ import annotations

import difflib
import re

#: NCBI Taxonomy id -> scientific name.
TAXA: dict[str, str] = {
    "9606": "Homo sapiens",
    "10090": "Mus musculus",
    "2697049": "Severe acute respiratory syndrome coronavirus 2",
    "694009": "Severe acute respiratory syndrome-related coronavirus",
    "1335626": "Middle East respiratory syndrome-related coronavirus",
    "11320": "Influenza A virus",
    "211044": "Influenza A virus (A/Puerto Rico/8/1934(H1N1))",
    "11520": "Influenza B virus",
    "12814": "Respiratory syncytial virus",
    "11259": "Human respiratory syncytial virus A2",
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
    "147711": "Rhinovirus A",
    "31708": "Human rhinovirus 16",
    "1773": "Mycobacterium tuberculosis",
    "83332": "Mycobacterium tuberculosis H37Rv",
    "1280": "Staphylococcus aureus",
    "562": "Escherichia coli",
    "1313": "Streptococcus pneumoniae",
    "28901": "Salmonella enterica",
    "59201": "Salmonella enterica subsp. enterica",
    "90371": "Salmonella enterica subsp. enterica serovar Typhimurium",
    "99287": "Salmonella enterica subsp. enterica serovar Typhimurium str. LT2",
    "216597": "Salmonella enterica subsp. enterica serovar Typhimurium str. SL1344",
    "287": "Pseudomonas aeruginosa",
    "5833": "Plasmodium falciparum",
    "5811": "Toxoplasma gondii",
    "5476": "Candida albicans",
}

#: Common short names people write -> NCBI Taxonomy id (for suggestions only).
ALIASES: dict[str, str] = {
    "sars-cov-2": "2697049",
    "sars-cov2": "2697049",
    "covid-19": "2697049",
    "iav": "11320",
    "pr8": "211044",
    "rsv": "12814",
    "hpiv3": "11216",
    "hrv-16": "31708",
    "rv-16": "31708",
    "rv16": "31708",
    "mtb": "1773",
    "h37rv": "83332",
    "hiv-1": "11676",
    "ebv": "10376",
    "hsv-1": "10298",
    "cmv": "10359",
}

_TAXON_RE = re.compile(r"^(?:NCBITaxon:)?(\d+)$")


def parse_taxon(text: str) -> str | None:
    """``'NCBITaxon:9606'`` or ``'9606'`` -> ``'9606'``; None if not taxon-shaped."""
    m = _TAXON_RE.match(text.strip())
    return m.group(1) if m else None


def similar_taxa(text: str, limit: int = 5) -> list[str]:
    """Near matches in the table, as ``"NCBITaxon:<id> (<name>)"``; [] when none is near.

    An id is compared with the table's ids (a slip of a digit or two); free text with
    the names (word for word first, then spelling), so an unknown Salmonella strain
    suggests the Salmonella rows, never an unrelated organism.
    """
    key = text.strip()
    taxon = parse_taxon(key)
    if taxon is not None:
        hits = difflib.get_close_matches(taxon, list(TAXA), n=limit, cutoff=0.75)
    else:
        words = [w for w in re.split(r"[^a-z0-9]+", key.lower()) if len(w) > 2]
        by_words = [
            k for k, name in TAXA.items() if words and all(w in name.lower() for w in words[:1])
        ]
        by_words.sort(key=lambda k: -sum(w in TAXA[k].lower() for w in words))
        lowered = {v.lower(): k for k, v in TAXA.items()}
        close = difflib.get_close_matches(key.lower(), list(lowered), n=limit, cutoff=0.6)
        alias = ALIASES.get(key.lower())
        hits = list(dict.fromkeys([*([alias] if alias else []), *by_words]))
        hits = list(dict.fromkeys([*hits, *(lowered[c] for c in close)]))
    return [f"NCBITaxon:{k} ({TAXA[k]})" for k in hits[:limit]]

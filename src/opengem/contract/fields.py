"""The metadata field registry: every key a query's ``metadata`` may carry.

One declarative table (compare CELLxGENE's ``schema_definition.yaml``): each
field names its latent group, its kind, and what values are valid. The
validation engine (:mod:`opengem.contract.validate`), the corpus curation and
the model's metadata encoder all read this table; nothing else lists fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class LatentGroup(StrEnum):
    """The three latent groups of a GEM model; each owns a set of metadata fields."""

    BIOLOGICAL = "biological"
    TECHNICAL = "technical"
    PERTURBATION = "perturbation"


class FieldKind(StrEnum):
    ONTOLOGY = "ontology"  # an ontology term id
    ENUM = "enum"  # one of a fixed set of strings
    QUANTITY = "quantity"  # "<number> <unit>" (dose, time) or a plain number (age)
    TEXT = "text"  # free text / accession


class IdSpace(StrEnum):
    """Identifier spaces a term id may come from; names match the resolver's ontologies."""

    UBERON = "UBERON"
    CL = "CL"
    MONDO = "MONDO"
    PATO = "PATO"
    CVCL = "CVCL"
    ENSEMBL_GENE = "ENSEMBL_GENE"
    CHEBI = "CHEBI"
    CHEMBL = "CHEMBL"
    NCBI_TAXON = "NCBI_TAXON"


#: How each id space is described to a person, and an example id.
ID_SPACE_INFO: dict[IdSpace, tuple[str, str]] = {
    IdSpace.UBERON: ("an UBERON tissue id", "UBERON:0000945"),
    IdSpace.CL: ("a Cell Ontology (CL) cell type id", "CL:0000236"),
    IdSpace.MONDO: ("a MONDO disease id", "MONDO:0011719"),
    IdSpace.PATO: ("PATO:0000461 (normal) for healthy samples", "PATO:0000461"),
    IdSpace.CVCL: ("a Cellosaurus cell line id", "CVCL_0023"),
    IdSpace.ENSEMBL_GENE: ("an Ensembl human gene id", "ENSG00000141510"),
    IdSpace.CHEBI: ("a ChEBI compound id", "CHEBI:15365"),
    IdSpace.CHEMBL: ("a ChEMBL compound id", "CHEMBL25"),
    IdSpace.NCBI_TAXON: ("an NCBI Taxonomy id", "NCBITaxon:2697049"),
}

#: Healthy / no disease, as CELLxGENE encodes it.
NORMAL_DISEASE_ID = "PATO:0000461"

SAMPLE_TYPES = ("cell line", "organoid", "other", "primary cells", "primary tissue", "xenograft")
SEXES = ("female", "male")
PERTURBATION_TYPES = (
    "coculture",
    "compound",
    "control",
    "crispr",
    "genetic",
    "infection",
    "other",
    "overexpression",
    "peptide or biologic",
    "shrna",
    "sirna",
)
#: Perturbation types that act on one gene; their id is an Ensembl gene.
GENE_TARGETING_TYPES = ("crispr", "shrna", "sirna", "overexpression")
#: Loss-of-function types: a model that never saw one encodes it as another it knows.
LOSS_OF_FUNCTION_TYPES = ("crispr", "shrna", "sirna")
LIBRARY_LAYOUTS = ("PAIRED", "SINGLE")
PLATFORMS = ("illumina",)
#: ENA's library_selection vocabulary (the docs also write "polyA" for "PolyA").
LIBRARY_SELECTIONS = (
    "RANDOM",
    "PCR",
    "RANDOM PCR",
    "RT-PCR",
    "HMPR",
    "MF",
    "repeat fractionation",
    "size fractionation",
    "MSLL",
    "cDNA",
    "cDNA_randomPriming",
    "cDNA_oligo_dT",
    "PolyA",
    "Oligo-dT",
    "Inverse rRNA",
    "Inverse rRNA selection",
    "ChIP",
    "ChIP-Seq",
    "MNase",
    "DNase",
    "Hybrid Selection",
    "Reduced Representation",
    "Restriction Digest",
    "5-methylcytidine antibody",
    "MBD2 protein methyl-CpG binding domain",
    "CAGE",
    "RACE",
    "MDA",
    "padlock probes capture method",
    "other",
    "unspecified",
)


@dataclass(frozen=True)
class FieldSpec:
    """One metadata field.

    Attributes
    ----------
    name
        The query key.
    group
        The latent group that owns the field (its prior reads it, its classifier head predicts it).
    kind
        How values are checked.
    id_spaces
        For ontology fields: the identifier spaces a value may come from.
    values
        For enum fields: the valid values (matched case-insensitively, returned canonical).
    unit_kind
        For quantity fields: ``"dose"``, ``"time"`` or ``"age"``.
    description
        One line for people (docs, ``opengem vocab``, error messages).
    """

    name: str
    group: LatentGroup
    kind: FieldKind
    description: str
    id_spaces: tuple[IdSpace, ...] = ()
    values: tuple[str, ...] = ()
    unit_kind: str | None = None
    example: str = ""


_B, _T, _P = LatentGroup.BIOLOGICAL, LatentGroup.TECHNICAL, LatentGroup.PERTURBATION

FIELDS: dict[str, FieldSpec] = {
    f.name: f
    for f in (
        FieldSpec(
            "age_years",
            _B,
            FieldKind.QUANTITY,
            "donor age in years (a number)",
            unit_kind="age",
            example="65",
        ),
        FieldSpec(
            "cell_line_ontology_id",
            _B,
            FieldKind.ONTOLOGY,
            "cell line (Cellosaurus)",
            id_spaces=(IdSpace.CVCL,),
            example="CVCL_0023",
        ),
        FieldSpec(
            "cell_type_ontology_id",
            _B,
            FieldKind.ONTOLOGY,
            "cell type (Cell Ontology)",
            id_spaces=(IdSpace.CL,),
            example="CL:0000236",
        ),
        FieldSpec(
            "developmental_stage",
            _B,
            FieldKind.TEXT,
            "developmental stage (free text)",
            example="adult",
        ),
        FieldSpec(
            "disease_ontology_id",
            _B,
            FieldKind.ONTOLOGY,
            "disease (MONDO; PATO:0000461 'normal' for healthy)",
            id_spaces=(IdSpace.MONDO, IdSpace.PATO),
            example="MONDO:0011719",
        ),
        FieldSpec("ethnicity", _B, FieldKind.TEXT, "ethnicity (free text)"),
        FieldSpec("genotype", _B, FieldKind.TEXT, "genotype (free text)"),
        FieldSpec("race", _B, FieldKind.TEXT, "race (free text)"),
        FieldSpec(
            "sample_type",
            _B,
            FieldKind.ENUM,
            "kind of biological sample",
            values=SAMPLE_TYPES,
            example="primary tissue",
        ),
        FieldSpec("sex", _B, FieldKind.ENUM, "donor sex", values=SEXES, example="female"),
        FieldSpec(
            "tissue_ontology_id",
            _B,
            FieldKind.ONTOLOGY,
            "tissue (UBERON)",
            id_spaces=(IdSpace.UBERON,),
            example="UBERON:0000945",
        ),
        FieldSpec(
            "perturbation_dose",
            _P,
            FieldKind.QUANTITY,
            "dose as '<number> <unit>'",
            unit_kind="dose",
            example="10 uM",
        ),
        FieldSpec(
            "perturbation_ontology_id",
            _P,
            FieldKind.ONTOLOGY,
            "what was perturbed: Ensembl gene, ChEBI, ChEMBL or NCBI Taxonomy id",
            id_spaces=(IdSpace.ENSEMBL_GENE, IdSpace.CHEBI, IdSpace.CHEMBL, IdSpace.NCBI_TAXON),
            example="ENSG00000141510",
        ),
        FieldSpec(
            "perturbation_time",
            _P,
            FieldKind.QUANTITY,
            "time since perturbation as '<number> <unit>'",
            unit_kind="time",
            example="24 hours",
        ),
        FieldSpec(
            "perturbation_type",
            _P,
            FieldKind.ENUM,
            "kind of perturbation",
            values=PERTURBATION_TYPES,
            example="compound",
        ),
        FieldSpec(
            "library_layout",
            _T,
            FieldKind.ENUM,
            "sequencing layout",
            values=LIBRARY_LAYOUTS,
            example="PAIRED",
        ),
        FieldSpec(
            "library_selection",
            _T,
            FieldKind.ENUM,
            "library selection (ENA vocabulary)",
            values=LIBRARY_SELECTIONS,
            example="cDNA",
        ),
        FieldSpec(
            "platform",
            _T,
            FieldKind.ENUM,
            "sequencing platform",
            values=PLATFORMS,
            example="illumina",
        ),
        FieldSpec(
            "study",
            _T,
            FieldKind.TEXT,
            "study (batch): a corpus study id such as 'airway' (see `opengem vocab`)",
            example="airway",
        ),
    )
}

#: Perturbation fields: the only metadata reference-conditioning queries accept.
PERTURBATION_FIELDS: tuple[str, ...] = tuple(n for n, f in FIELDS.items() if f.group is _P)
#: Joins the components of a combination of perturbations in the four perturbation
#: fields of normalised metadata, in aligned order (``"ENSG…|ENSG…"`` with
#: ``"overexpression|overexpression"``; one dose / time may stand for every component).
PERTURBATION_SEP = "|"


def fields_of(group: LatentGroup) -> tuple[str, ...]:
    """Field names owned by one latent group, in registry order."""
    return tuple(n for n, f in FIELDS.items() if f.group is group)

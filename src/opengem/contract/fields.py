"""The metadata field registry: every key a query's ``metadata`` may carry.

One declarative table (compare CELLxGENE's ``schema_definition.yaml``): each
field names its latent group, its kind, and what values are valid. The
validation engine (:mod:`opengem.contract.validate`), the corpus curation and
the model's metadata encoder all read this table; nothing else lists fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from opengem.contract.quantities import parse_age, parse_quantity


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


@dataclass(frozen=True)
class PerturbationTypeSpec:
    """One value of ``perturbation_type`` and what it implies.

    Attributes
    ----------
    name
        The value.
    id_spaces
        The identifier spaces its ``perturbation_ontology_id`` may come from: ``None``
        for any space of that field, ``()`` for none (a control has no id).
    id_rule
        How the rule is told to a person (``"must be …"``), where ``id_spaces`` narrows.
    targets_gene
        It acts on one gene (its id is an Ensembl gene).
    loss_of_function
        A loss-of-function type: a model that never saw it encodes it as another it knows.
    """

    name: str
    id_spaces: tuple[IdSpace, ...] | None = None
    id_rule: str = ""
    targets_gene: bool = False
    loss_of_function: bool = False


_GENE = (IdSpace.ENSEMBL_GENE,)
_GENE_RULE = "an Ensembl gene id"

#: Every perturbation type, in the order the contract lists them.
PERTURBATION_TYPE_SPECS: dict[str, PerturbationTypeSpec] = {
    t.name: t
    for t in (
        PerturbationTypeSpec("coculture"),
        PerturbationTypeSpec("compound", (IdSpace.CHEBI, IdSpace.CHEMBL), "a ChEBI or ChEMBL id"),
        PerturbationTypeSpec("control", ()),
        PerturbationTypeSpec("crispr", _GENE, _GENE_RULE, targets_gene=True, loss_of_function=True),
        PerturbationTypeSpec("genetic"),
        PerturbationTypeSpec("infection", (IdSpace.NCBI_TAXON,), "an NCBI Taxonomy id"),
        PerturbationTypeSpec("other"),
        PerturbationTypeSpec("overexpression", _GENE, _GENE_RULE, targets_gene=True),
        PerturbationTypeSpec("peptide or biologic"),
        PerturbationTypeSpec("shrna", _GENE, _GENE_RULE, targets_gene=True, loss_of_function=True),
        PerturbationTypeSpec("sirna", _GENE, _GENE_RULE, targets_gene=True, loss_of_function=True),
    )
}
PERTURBATION_TYPES: tuple[str, ...] = tuple(PERTURBATION_TYPE_SPECS)
#: Perturbation types that act on one gene; their id is an Ensembl gene.
GENE_TARGETING_TYPES: tuple[str, ...] = tuple(
    n for n, t in PERTURBATION_TYPE_SPECS.items() if t.targets_gene
)
#: Loss-of-function types: a model that never saw one encodes it as another it knows.
LOSS_OF_FUNCTION_TYPES: tuple[str, ...] = tuple(
    n for n, t in PERTURBATION_TYPE_SPECS.items() if t.loss_of_function
)
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
        For quantity fields, their unit family: ``"dose"``, ``"time"`` or ``"age"`` (a
        plain number of years).
    description
        One line for people (docs, ``opengem vocab``, error messages).
    context_rank
        For the fields that define a sample's biological context (what a matched control
        shares with its perturbed samples): the field's place in a context, most specific
        first. ``None`` for every other field.
    hierarchical
        For ontology fields: a term is encoded with its ancestors (so an unseen child
        term shares tokens with its parents). ``False`` matches ids as they are.
    """

    name: str
    group: LatentGroup
    kind: FieldKind
    description: str
    id_spaces: tuple[IdSpace, ...] = ()
    values: tuple[str, ...] = ()
    unit_kind: str | None = None
    example: str = ""
    context_rank: int | None = None
    hierarchical: bool = True

    @property
    def is_quantity(self) -> bool:
        """A number (dose, time, age) rather than a categorical value."""
        return self.kind is FieldKind.QUANTITY

    @property
    def uses_ancestors(self) -> bool:
        """An ontology field whose values are encoded with their ancestor terms."""
        return self.kind is FieldKind.ONTOLOGY and self.hierarchical

    @property
    def names_entity(self) -> bool:
        """Its values name things a model learns one by one: ontology terms (tissues, cell
        types, cell lines, diseases, perturbation agents) and the perturbation's type."""
        return self.kind is FieldKind.ONTOLOGY or (
            self.group is LatentGroup.PERTURBATION and self.kind is FieldKind.ENUM
        )


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
            context_rank=0,
        ),
        FieldSpec(
            "cell_type_ontology_id",
            _B,
            FieldKind.ONTOLOGY,
            "cell type (Cell Ontology)",
            id_spaces=(IdSpace.CL,),
            example="CL:0000236",
            context_rank=1,
        ),
        FieldSpec(
            "developmental_stage",
            _B,
            FieldKind.TEXT,
            "developmental stage (free text)",
            example="adult",
            context_rank=6,
        ),
        FieldSpec(
            "disease_ontology_id",
            _B,
            FieldKind.ONTOLOGY,
            "disease (MONDO; PATO:0000461 'normal' for healthy)",
            id_spaces=(IdSpace.MONDO, IdSpace.PATO),
            example="MONDO:0011719",
            context_rank=3,
        ),
        FieldSpec("ethnicity", _B, FieldKind.TEXT, "ethnicity (free text)"),
        FieldSpec("genotype", _B, FieldKind.TEXT, "genotype (free text)", context_rank=4),
        FieldSpec("race", _B, FieldKind.TEXT, "race (free text)"),
        FieldSpec(
            "sample_type",
            _B,
            FieldKind.ENUM,
            "kind of biological sample",
            values=SAMPLE_TYPES,
            example="primary tissue",
            context_rank=5,
        ),
        FieldSpec("sex", _B, FieldKind.ENUM, "donor sex", values=SEXES, example="female"),
        FieldSpec(
            "tissue_ontology_id",
            _B,
            FieldKind.ONTOLOGY,
            "tissue (UBERON)",
            id_spaces=(IdSpace.UBERON,),
            example="UBERON:0000945",
            context_rank=2,
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
            hierarchical=False,
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


#: Quantity fields (numbers: age, dose, time), in registry order.
QUANTITY_FIELDS: tuple[str, ...] = tuple(n for n, f in FIELDS.items() if f.is_quantity)
#: The fields that define a sample's biological context (what a matched control shares
#: with its perturbed samples), most specific first (``FieldSpec.context_rank``).
MATCHED_CONTEXT_FIELDS: tuple[str, ...] = tuple(
    sorted(
        (n for n, f in FIELDS.items() if f.context_rank is not None),
        key=lambda n: FIELDS[n].context_rank or 0,
    )
)
#: Fields whose values name things a model learns one by one (``FieldSpec.names_entity``).
ENTITY_FIELDS: tuple[str, ...] = tuple(n for n, f in FIELDS.items() if f.names_entity)


def quantity_value(name: str, text: str | None) -> tuple[float | None, str | None]:
    """(value in base units, unit dimension) of a quantity field's value.

    Ages are a plain number of years (no dimension); doses and times are parsed in
    their field's unit family. Empty values give ``(None, None)``.
    """
    if not text:
        return None, None
    family = FIELDS[name].unit_kind
    if family == "age":
        return parse_age(text), None
    q = parse_quantity(text, family or "")
    return q.to_base(), q.dimension

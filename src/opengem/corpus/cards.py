"""Study cards: where a study's counts are, how to read them, what every sample is.

The format is documented in ``corpus/studies/README.md``. A card is parsed
into :class:`StudyCard` (unknown keys rejected), its matrix read with the
format's reader, and every sample's metadata resolved (defaults, then
columns, then rules) and checked with the same rules as a query
(:func:`opengem.contract.validate_metadata`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from opengem.contract import FIELDS, PERTURBATION_FIELDS, QueryError, validate_metadata
from opengem.contract.errors import Problem
from opengem.corpus.readers import (
    FORMATS,
    archs4_annotations,
    h5ad_annotations,
    read_archs4,
    read_delimited,
    read_gct,
    read_h5ad,
    read_mtx,
)
from opengem.corpus.readers.delimited import default_sep
from opengem.corpus.study import CorpusError, StudyTable
from opengem.ontology.genes import default_gene_space, is_ensembl_gene_id
from opengem.tomlfiles import read_toml_model

Scalar = str | int | float
Match = str | list[str]

#: Card-only fields: set like metadata fields (defaults, columns, rules) and kept as
#: obs columns, but not query fields. ``perturbation_method`` says how a gene-targeting
#: perturbation was made ("CRISPRa", "CRISPR knockout", "shRNA", "siRNA"…; "" unknown).
CARD_FIELDS = ("perturbation_method",)
#: Separator of several perturbations of one sample in the four perturbation fields.
PERTURBATION_SEP = "|"
#: obs columns the corpus writes itself; free columns may not reuse them.
RESERVED_COLUMNS = (
    frozenset(FIELDS)
    | frozenset(CARD_FIELDS)
    | {
        "study",
        "sample_id",
        "value_type",
        "modality",
        "library_size",
        "accession",
        "match_group",
    }
)
_ID_RE = re.compile(r"^[a-z0-9_]+$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StudyInfo(_Section):
    id: str
    accession: str
    title: str
    modality: Literal["bulk", "sc"]
    citation: str = ""
    notes: str = ""

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ID_RE.match(v):
            raise ValueError("must be lower-case letters, digits and '_'")
        return v


class MatrixSpec(_Section):
    format: Literal["delimited", "mtx", "h5ad", "archs4", "gct"]
    path: str
    gene_id_type: Literal["ensembl", "symbol", "entrez"]
    value_type: Literal["counts", "coverage", "estimated"]
    orientation: Literal["genes_x_samples", "samples_x_genes", "auto"] = "auto"
    read_length: float | None = Field(default=None, gt=0)
    index_column: str | None = None
    drop_columns: list[str] = Field(default_factory=list)
    sep: str | None = None
    genes_path: str | None = None
    genes_column: int = Field(default=0, ge=0)
    barcodes_path: str | None = None
    layer: str | None = None
    gene_id_field: str | None = None
    max_unmapped_fraction: float = Field(default=0.35, ge=0, le=1)

    @model_validator(mode="after")
    def _coverage(self) -> MatrixSpec:
        if self.value_type == "coverage" and self.read_length is None:
            raise ValueError("value_type 'coverage' needs read_length")
        if self.format == "mtx" and self.genes_path is None:
            raise ValueError("format 'mtx' needs genes_path")
        return self


class SampleSheet(_Section):
    path: str | None = None
    id_column: str | int | None = None  # a name, or a 0-based position (for an empty header)
    sep: str | None = None
    include: dict[str, Match] = Field(default_factory=dict)
    exclude: dict[str, Match] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _id(self) -> SampleSheet:
        if self.path is not None and self.id_column is None:
            raise ValueError("a sample sheet path needs id_column")
        return self


class ColumnMap(_Section):
    column: str
    map: dict[str, str] | None = None


class Rule(_Section):
    when: dict[str, Match] = Field(default_factory=dict)
    when_matches: dict[str, str] = Field(default_factory=dict)
    set: dict[str, Scalar]


def _check_fields(names: Any, where: str) -> None:
    for name in names:
        if name not in FIELDS and name not in CARD_FIELDS:
            close = difflib.get_close_matches(name, [*FIELDS, *CARD_FIELDS], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{where}: {name!r} is not a metadata field{hint}")


class StudyCard(_Section):
    study: StudyInfo
    matrix: MatrixSpec
    samples: SampleSheet = Field(default_factory=SampleSheet)
    defaults: dict[str, Scalar] = Field(default_factory=dict)
    columns: dict[str, ColumnMap] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)
    free: dict[str, str] = Field(default_factory=dict)
    #: pairing / context columns (name = sheet column, in order): obs ``match_group``
    match: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _fields(self) -> StudyCard:
        _check_fields(self.defaults, "defaults")
        _check_fields(self.columns, "columns")
        for i, rule in enumerate(self.rules):
            _check_fields(rule.set, f"rules[{i}].set")
        sets: list[Mapping[str, Any]] = [self.defaults, self.columns, *(r.set for r in self.rules)]
        if any("study" in s for s in sets):
            raise ValueError("the study field is set from [study].id; do not set it")
        clash = sorted(set(self.free) & RESERVED_COLUMNS)
        if clash:
            raise ValueError(f"free: {clash} are reserved obs columns; rename them")
        bad = [n for n in self.match if not re.match(r"^[A-Za-z0-9_.-]+$", n)]
        if bad:
            raise ValueError(f"match: names {bad} may hold only letters, digits, '_', '.', '-'")
        return self


def load_card(path: Path) -> StudyCard:
    """Parse and check one card file (structure only; data is read by :func:`read_card`)."""
    try:
        card = read_toml_model(path, StudyCard, "study card")
    except ValueError as exc:
        raise CorpusError(str(exc)) from None
    if card.study.id != path.stem:
        raise CorpusError(
            f"{path}: study.id {card.study.id!r} must equal the file name {path.stem!r}"
        )
    return card


def load_cards(folder: Path) -> list[tuple[Path, StudyCard]]:
    """Every ``*.toml`` card of a folder, sorted by file name (the corpus order)."""
    paths = sorted(folder.glob("*.toml"))
    if not paths:
        raise CorpusError(f"no study cards (*.toml) in {folder}")
    return [(p, load_card(p)) for p in paths]


# ----------------------------------------------------------------------- reading data
def _looks_like(gene_id_type: str) -> Any:
    genes = default_gene_space()
    if gene_id_type == "ensembl":
        return is_ensembl_gene_id
    if gene_id_type == "entrez":
        return lambda x: x.removesuffix(".0").isdigit()
    return lambda x: bool(genes.ids_for_symbol(x))


def _sheet(card: StudyCard, root: Path, study: str) -> pd.DataFrame | None:
    spec = card.samples
    if spec.path is None:
        return None
    path = root / spec.path
    if not path.is_file():
        raise CorpusError(f"{study}: sample sheet {path} does not exist")
    sheet = pd.read_csv(path, sep=spec.sep or default_sep(path), dtype=str, keep_default_na=False)
    if not isinstance(sheet.index, pd.RangeIndex):
        # the header is one field short (R's write.csv): the row names become column 0
        sheet = sheet.rename_axis("row_name").reset_index()
    column = spec.id_column
    if isinstance(column, int):
        if column >= sheet.shape[1]:
            raise CorpusError(
                f"{study}: sample sheet {path.name} has {sheet.shape[1]} columns; "
                f"id_column {column} is out of range"
            )
        column = str(sheet.columns[column])
    if column not in sheet.columns:
        raise CorpusError(
            f"{study}: sample sheet {path.name} has no column {column!r}; "
            f"columns: {list(sheet.columns)}"
        )
    ids = sheet[column]
    dup = ids[ids.duplicated()]
    if len(dup):
        raise CorpusError(f"{study}: sample id {dup.iloc[0]!r} appears twice in {path.name}")
    return sheet.set_index(column, drop=False)


def _matches(row: pd.Series, when: dict[str, Match], regex: dict[str, str], study: str) -> bool:
    for column, wanted in when.items():
        if column not in row.index:
            raise CorpusError(f"{study}: rule column {column!r} is not in the sample sheet")
        values = wanted if isinstance(wanted, list) else [wanted]
        if str(row[column]) not in [str(v) for v in values]:
            return False
    for column, pattern in regex.items():
        if column not in row.index:
            raise CorpusError(f"{study}: rule column {column!r} is not in the sample sheet")
        if not re.search(pattern, str(row[column])):
            return False
    return True


def _select(sheet: pd.DataFrame, card: StudyCard, study: str) -> pd.DataFrame:
    keep = [
        (not card.samples.include or _matches(row, card.samples.include, {}, study))
        and not (card.samples.exclude and _matches(row, card.samples.exclude, {}, study))
        for _, row in sheet.iterrows()
    ]
    return sheet[keep]


def read_card(card: StudyCard, root: Path) -> tuple[StudyTable, pd.DataFrame, int]:
    """Read a card's matrix and sample sheet.

    Returns the study restricted to (and ordered as) the selected sheet samples,
    the sheet (index = sample id; always with a ``sample_id`` column), and how
    many matrix samples were left out because the sheet does not list them.
    """
    study, m = card.study.id, card.matrix
    path = root / m.path
    if not path.is_file():
        raise CorpusError(f"{study}: matrix file {path} does not exist")
    sheet = _sheet(card, root, study)
    if sheet is None and m.format == "h5ad":
        sheet = h5ad_annotations(path).astype(str)
    elif sheet is None and m.format == "archs4":
        sheet = archs4_annotations(path)
    if sheet is not None:
        sheet = sheet.copy()
        sheet["sample_id"] = sheet.index.astype(str)
        sheet = _select(sheet, card, study)
        wanted: list[str] | None = sheet.index.astype(str).tolist()
    else:
        wanted = None

    if m.format == "delimited":
        table = read_delimited(
            path,
            orientation=m.orientation,
            looks_like_gene=_looks_like(m.gene_id_type),
            index_column=m.index_column,
            drop_columns=m.drop_columns,
            sep=m.sep,
        )
    elif m.format == "mtx":
        table = read_mtx(
            path,
            genes_path=root / m.genes_path if m.genes_path else path,
            barcodes_path=root / m.barcodes_path if m.barcodes_path else None,
            sample_ids=None if m.barcodes_path else wanted_all(card, root, study),
            orientation=m.orientation,
            genes_column=m.genes_column,
        )
    elif m.format == "gct":
        table = read_gct(path)
    elif m.format == "h5ad":
        table = read_h5ad(path, layer=m.layer, gene_id_field=m.gene_id_field, samples=wanted)
    elif m.format == "archs4":
        table = read_archs4(path, gene_id_field=m.gene_id_field, samples=wanted)
    else:  # pragma: no cover - pydantic restricts the formats
        raise CorpusError(f"{study}: unknown format {m.format!r}; formats: {FORMATS}")

    dup = pd.Index(table.sample_ids)
    if dup.has_duplicates:
        raise CorpusError(
            f"{study}: sample id {dup[dup.duplicated()][0]!r} appears twice in the matrix"
        )
    if sheet is None:
        sheet = pd.DataFrame({"sample_id": table.sample_ids}, index=table.sample_ids)
        sheet = _select(sheet, card, study)
    present = set(table.sample_ids)
    missing = [s for s in sheet.index if s not in present]
    if missing:
        raise CorpusError(
            f"{study}: sample {missing[0]!r} of the sample sheet is not in the "
            f"matrix ({len(missing)} missing; matrix ids look like "
            f"{table.sample_ids[:3]})"
        )
    left_out = len(present) - len(sheet)
    return table.subset(sheet.index.tolist()), sheet, left_out


def wanted_all(card: StudyCard, root: Path, study: str) -> list[str] | None:
    """For an mtx without barcodes: the full (unfiltered) sheet order names the rows."""
    sheet = _sheet(card, root, study)
    return None if sheet is None else sheet.index.astype(str).tolist()


# -------------------------------------------------------------------------- metadata
def split_perturbations(record: dict[str, str]) -> list[dict[str, str]]:
    """The perturbations of one record: one dict of perturbation fields per perturbation.

    Several perturbations of one sample are written in the four perturbation fields
    joined by ``"|"`` in aligned order; a field unset for all of them may stay unset.
    Raises ``ValueError`` when the joined fields do not align.
    """
    parts = {f: str(record.get(f, "")).split(PERTURBATION_SEP) for f in PERTURBATION_FIELDS}
    n = max(len(v) for v in parts.values())
    if len(parts["perturbation_type"]) > 1:  # the types say how many perturbations there are
        n = len(parts["perturbation_type"])
    if n == 1:
        return [{f: v[0] for f, v in parts.items() if v[0] != ""}]
    for f, v in parts.items():
        if len(v) == 1 and v[0] == "":
            parts[f] = [""] * n
        elif len(v) != n:
            raise ValueError(
                f"{f} {record.get(f)!r} has {len(v)} '|'-separated values for {n} "
                "perturbations; write one value per perturbation, in the same order"
            )
    if any(t == "" for t in parts["perturbation_type"]):
        raise ValueError(
            f"perturbation_type {record.get('perturbation_type', '')!r}: each of the {n} "
            "perturbations needs its own perturbation_type"
        )
    if "control" in parts["perturbation_type"]:
        raise ValueError(
            f"perturbation_type {record['perturbation_type']!r}: 'control' cannot be combined "
            "with other perturbations"
        )
    return [{f: v[i] for f, v in parts.items() if v[i] != ""} for i in range(n)]


def _validate_record(record: dict[str, str], where: str) -> dict[str, str]:
    """Canonical record; several perturbations are checked one by one and re-joined."""
    try:
        perturbations = split_perturbations(record)
    except ValueError as exc:
        raise QueryError([Problem(where, None, str(exc))], subject="metadata") from None
    base = {k: v for k, v in record.items() if k not in PERTURBATION_FIELDS}
    if len(perturbations) == 1:
        return validate_metadata({**base, **perturbations[0]}, location=where)
    out = validate_metadata(base, location=where)
    checked = [
        validate_metadata(p, location=f"{where}: perturbation {i + 1} of {len(perturbations)}")
        for i, p in enumerate(perturbations)
    ]
    for f in PERTURBATION_FIELDS:
        values = [c.get(f, "") for c in checked]
        if any(values):
            out[f] = PERTURBATION_SEP.join(values)
    return out


def sample_metadata(card: StudyCard, sheet: pd.DataFrame, location: str) -> list[dict[str, str]]:
    """The harmonised, validated metadata of every sheet row, in sheet order.

    Each record also carries the card fields (:data:`CARD_FIELDS`) that are set.
    """
    study = card.study.id
    for f, spec in card.columns.items():
        if spec.column not in sheet.columns:
            raise CorpusError(
                f"{study}: columns.{f} reads column {spec.column!r}, which the "
                f"sample sheet does not have; columns: {list(sheet.columns)}"
            )
    for kind, table in (("free", card.free), ("match", card.match)):
        for name, column in table.items():
            if column not in sheet.columns:
                raise CorpusError(
                    f"{study}: {kind}.{name} reads column {column!r}, which the sample "
                    f"sheet does not have; columns: {list(sheet.columns)}"
                )
    records: list[dict[str, str]] = []
    checked: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
    for sample_id, row in sheet.iterrows():
        record = {k: str(v) for k, v in card.defaults.items()}
        for f, spec in card.columns.items():
            value = str(row[spec.column])
            if spec.map is not None:
                if value not in spec.map:
                    raise CorpusError(
                        f"{study}: sample {sample_id!r}: columns.{f}: value {value!r} of column "
                        f'{spec.column!r} is not in the map; add it ("" means unknown)'
                    )
                value = spec.map[value]
            record[f] = value
        for rule in card.rules:
            if _matches(row, rule.when, rule.when_matches, study):
                record.update({k: str(v) for k, v in rule.set.items()})
        extra = {k: record.pop(k) for k in CARD_FIELDS if record.get(k, "") != ""}
        key = tuple(sorted((k, v) for k, v in record.items() if v != ""))
        if key not in checked:
            try:
                checked[key] = _validate_record(dict(key), f"{location}: sample {sample_id}")
            except QueryError as exc:
                raise CorpusError(f"{study}: {exc}") from None
        records.append({**checked[key], **extra})
    return records


def match_groups(card: StudyCard, sheet: pd.DataFrame) -> list[str]:
    """Per sheet row, the declared pairing columns as ``"name=value;name=value"``.

    ``""`` when the card declares none, or when a declared column is empty for the row.
    """
    if not card.match:
        return [""] * len(sheet)
    out = []
    for _, row in sheet.iterrows():
        values = [(name, str(row[column]).strip()) for name, column in card.match.items()]
        joined = ";".join(f"{n}={v}" for n, v in values)
        out.append("" if any(v == "" for _, v in values) else joined)
    return out

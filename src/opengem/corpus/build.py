"""Corpus build: every study card → ``bulk.h5ad`` + ``sc.h5ad`` + ``corpus_report.md``.

Each output is AnnData with sparse raw counts (int32 CSR) in ``.X``, harmonised
metadata + ``study`` + ``sample_id`` + free columns in ``obs`` (obs names are
``<study>:<sample id>``), the gene space in ``var``, and a compact per-study
mask of measured genes in ``varm["study_mask"]`` (genes × studies, columns
named by ``uns["study_mask_studies"]``). Everything is computed in memory
before anything is written, files are written under temporary names and
renamed, and equal inputs give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from opengem.contract import FIELDS, FieldKind
from opengem.corpus.cards import (
    CARD_FIELDS,
    PERTURBATION_SEP,
    StudyCard,
    load_card,
    load_cards,
    match_groups,
    read_card,
    sample_metadata,
)
from opengem.corpus.harmonize import GeneMapper, HarmonizedStudy, harmonize
from opengem.corpus.study import CorpusError
from opengem.ontology.cell_lines import cell_line_sex
from opengem.ontology.describe import term_label
from opengem.ontology.genes import GeneSpace, default_gene_space

MODALITIES = ("bulk", "sc")
ANNOTATION_TABLE = Path("gene_annotation/annotables_grch38.tsv.gz")
FORMAT_VERSION = 1


@dataclass
class StudyResult:
    """One card, read, harmonised and annotated."""

    card: StudyCard
    path: Path
    data: HarmonizedStudy
    obs: pd.DataFrame
    left_out: int
    #: cell line -> samples whose sex was filled from the cell-line table
    sex_from_table: dict[str, int] = field(default_factory=dict)
    #: cell line -> (sheet sex, samples) where the sheet's sex contradicts the table
    sex_conflicts: dict[str, tuple[str, int]] = field(default_factory=dict)


@dataclass
class CorpusManifest:
    """What a build produced; written as ``manifest.json`` beside the files."""

    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)
    checksum: str = ""

    def to_json(self) -> str:
        return (
            json.dumps(
                {
                    "format_version": FORMAT_VERSION,
                    "checksum": self.checksum,
                    "files": self.files,
                    "studies": self.studies,
                },
                indent=2,
                sort_keys=True,
            )
            + "\n"
        )


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def process_card(path: Path, card: StudyCard, root: Path, mapper: GeneMapper) -> StudyResult:
    """Read, harmonise and annotate one study (nothing written)."""
    table, sheet, left_out = read_card(card, root)
    m = card.matrix
    data = harmonize(
        table,
        study=card.study.id,
        mapper=mapper,
        gene_id_type=m.gene_id_type,
        value_type=m.value_type,
        read_length=m.read_length,
        max_unmapped_fraction=m.max_unmapped_fraction,
    )
    records = sample_metadata(card, sheet, location=str(path.name))
    obs = pd.DataFrame.from_records(records, index=sheet.index)
    obs = obs.reindex(columns=[*FIELDS, *CARD_FIELDS]).fillna("")
    filled, conflicts = fill_sex_from_cell_lines(obs)
    obs["study"] = card.study.id  # the technical `study` field: one batch per card
    obs["accession"] = card.study.accession
    obs["sample_id"] = sheet.index.astype(str)
    obs["value_type"] = m.value_type
    obs["library_size"] = np.asarray(data.counts.sum(axis=1)).ravel().astype(np.int64)
    obs["match_group"] = match_groups(card, sheet)
    for name, column in card.free.items():
        obs[name] = sheet[column].astype(str).to_numpy()
    obs.index = [f"{card.study.id}:{s}" for s in sheet.index]
    return StudyResult(card, path, data, obs, left_out, filled, conflicts)


def fill_sex_from_cell_lines(
    obs: pd.DataFrame,
) -> tuple[dict[str, int], dict[str, tuple[str, int]]]:
    """Fill an unset ``sex`` from the cell-line table (in place).

    Returns, per cell line, how many samples were filled, and where the sheet's
    own sex contradicts the table (kept as the sheet says, and reported).
    """
    filled: dict[str, int] = {}
    conflicts: dict[str, tuple[str, int]] = {}
    lines = obs["cell_line_ontology_id"].to_numpy()
    sexes = obs["sex"].to_numpy().copy()
    for line in sorted(set(lines) - {""}):
        known = cell_line_sex(line)
        if known is None:
            continue
        rows = lines == line
        unset = rows & (sexes == "")
        if unset.any():
            sexes[unset] = known
            filled[line] = int(unset.sum())
        other = rows & (sexes != "") & (sexes != known)
        if other.any():
            conflicts[line] = (str(sexes[other][0]), int(other.sum()))
    obs["sex"] = sexes
    return filled, conflicts


def _assemble(results: list[StudyResult], genes: GeneSpace, modality: str) -> Any:
    import anndata

    X = sp.vstack([r.data.counts for r in results], format="csr").astype(np.int32)
    X.sort_indices()
    obs = pd.concat([r.obs for r in results], axis=0)
    free = sorted({c for r in results for c in r.card.free})
    for c in free:
        obs[c] = obs[c].fillna("") if c in obs else ""
    columns = [*FIELDS, *CARD_FIELDS, "match_group"]
    obs = obs[[*columns, "accession", "sample_id", "value_type", "library_size", *free]]
    for c in obs.columns:
        if c != "library_size":
            values = obs[c].astype(str)
            obs[c] = pd.Categorical(values, categories=sorted(values.unique()))
    obs.index = obs.index.astype(str)
    var = pd.DataFrame(
        {"symbol": list(genes.symbols)}, index=pd.Index(genes.gene_ids, name="gene_id")
    )
    mask = np.stack([r.data.measured for r in results], axis=1).astype(np.uint8)
    adata = anndata.AnnData(X=X, obs=obs, var=var)
    adata.varm["study_mask"] = mask
    adata.uns["study_mask_studies"] = np.array([r.card.study.id for r in results])
    adata.uns["modality"] = modality
    adata.uns["gene_space"] = genes.source
    adata.uns["format_version"] = FORMAT_VERSION
    return adata


def _write_h5ad(adata: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    adata.write_h5ad(tmp, compression="gzip")
    os.replace(tmp, path)


def _write_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def build_corpus(
    studies: Path,
    data_root: Path,
    out: Path,
    *,
    annotation: Path | None = None,
    progress: Callable[[str], None] | None = None,
    only: list[str] | None = None,
) -> CorpusManifest:
    """Build the corpus from every card in ``studies`` (or only the named study ids).

    Raises
    ------
    CorpusError
        Naming the study, sample, field and value of the first problem; nothing is
        written then.
    """
    genes = default_gene_space()
    if only:
        missing = sorted(s for s in only if not (studies / f"{s}.toml").is_file())
        if missing:
            raise CorpusError(f"no study card for {missing} in {studies}")
        cards = [(studies / f"{s}.toml", load_card(studies / f"{s}.toml")) for s in sorted(only)]
    else:
        cards = load_cards(studies)
    mapper = GeneMapper.from_annotables(genes, annotation or data_root / ANNOTATION_TABLE)
    results: list[StudyResult] = []
    for path, card in cards:
        if progress:
            progress(card.study.id)
        results.append(process_card(path, card, data_root, mapper))
    ids = pd.Index([i for r in results for i in r.obs.index])
    if ids.has_duplicates:
        raise CorpusError(f"sample {ids[ids.duplicated()][0]!r} appears in two cards")

    out.mkdir(parents=True, exist_ok=True)
    manifest = CorpusManifest()
    for modality in MODALITIES:
        group = [r for r in results if r.card.study.modality == modality]
        target = out / f"{modality}.h5ad"
        if not group:
            if target.exists():
                target.unlink()
            continue
        _write_h5ad(_assemble(group, genes, modality), target)
        manifest.files[target.name] = sha256(target)
    for r in results:
        d = r.data
        manifest.studies[r.card.study.id] = {
            "accession": r.card.study.accession,
            "modality": r.card.study.modality,
            "samples": int(d.counts.shape[0]),
            "genes_measured": d.mapped_genes,
            "unmapped_fraction": round(d.unmapped_fraction, 6),
            "value_type": r.card.matrix.value_type,
        }
    manifest.checksum = hashlib.sha256(
        "".join(f"{k}={v}\n" for k, v in sorted(manifest.files.items())).encode()
    ).hexdigest()
    _write_text(render_report(results, manifest), out / "corpus_report.md")
    _write_text(manifest.to_json(), out / "manifest.json")
    return manifest


# ------------------------------------------------------------------------- the report
def _label(field_name: str, value: str) -> str:
    if FIELDS[field_name].kind is not FieldKind.ONTOLOGY:
        return value
    if PERTURBATION_SEP in value:  # several perturbations of one sample
        return PERTURBATION_SEP.join(term_label(v) for v in value.split(PERTURBATION_SEP))
    return term_label(value)


def render_report(results: list[StudyResult], manifest: CorpusManifest) -> str:
    """Markdown: studies, field coverage, vocabulary with labels, unmapped genes."""
    lines = ["# opengem training corpus", "", f"Corpus checksum: `{manifest.checksum}`", ""]
    for name, digest in sorted(manifest.files.items()):
        lines.append(f"- `{name}`: sha256 `{digest}`")
    lines += [
        "",
        "## Studies",
        "",
        "| study | accession | modality | samples | genes measured | unmapped counts | "
        "ERCC | values | left out |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        d = r.data
        lines.append(
            f"| {r.card.study.id} | {r.card.study.accession} | {r.card.study.modality} | "
            f"{d.counts.shape[0]:,} | {d.mapped_genes:,} | {d.unmapped_fraction:.2%} | "
            f"{d.spike_in_fraction:.2%} | {r.card.matrix.value_type}"
            f"{' (rounded)' if d.rounded else ''} | {r.left_out} |"
        )
    obs = pd.concat([r.obs for r in results])
    for modality in MODALITIES:
        sub = obs[
            obs["study"].isin(
                [r.card.study.id for r in results if r.card.study.modality == modality]
            )
        ]
        if sub.empty:
            continue
        lines += [
            "",
            f"## {modality}: {len(sub):,} samples",
            "",
            "### Field coverage",
            "",
            "| field | samples with a value | distinct values |",
            "|---|---|---|",
        ]
        for f in FIELDS:
            known = sub[f][sub[f] != ""]
            lines.append(
                f"| {f} | {len(known):,} ({len(known) / len(sub):.0%}) | {known.nunique()} |"
            )
        lines += ["", "### Vocabulary", ""]
        for f, spec in FIELDS.items():
            counts = sub[f][sub[f] != ""].value_counts()
            if counts.empty or spec.kind is FieldKind.TEXT:
                continue
            lines += [f"**{f}**", "", "| value | label | samples |", "|---|---|---|"]
            for value in sorted(counts.index):
                lines.append(f"| {value} | {_label(f, value)} | {counts[value]:,} |")
            lines.append("")
    lines += _perturbation_section(results)
    lines += _match_section(results)
    lines += _sex_section(results)
    lines += ["## Unmapped genes (largest share of counts per study)", ""]
    for r in results:
        top = ", ".join(f"{g} ({f:.2%})" for g, f in r.data.top_unmapped[:5]) or "none"
        lines.append(f"- {r.card.study.id}: {top}")
    return "\n".join(lines) + "\n"


def _context_of(row: pd.Series) -> str:
    """A sample's context in words: its cell line, else cell type, else tissue (+ genotype)."""
    for f in ("cell_line_ontology_id", "cell_type_ontology_id", "tissue_ontology_id"):
        if row[f]:
            text = term_label(row[f]) or row[f]
            break
    else:
        text = "unknown context"
    return f"{text} ({row['genotype']})" if row["genotype"] else text


def _perturbation_section(results: list[StudyResult]) -> list[str]:
    """Every distinct perturbation with its label, and the contexts it appears in."""
    rows: dict[tuple[str, str, str], dict[str, set[str] | int]] = {}
    combos: dict[str, int] = {}
    for r in results:
        obs = r.obs
        perturbed = obs[(obs["perturbation_type"] != "") & (obs["perturbation_type"] != "control")]
        for _, row in perturbed.iterrows():
            ids = row["perturbation_ontology_id"].split(PERTURBATION_SEP)
            types = row["perturbation_type"].split(PERTURBATION_SEP)
            doses = row["perturbation_dose"].split(PERTURBATION_SEP)
            ids = ids if len(ids) == len(types) else [""] * len(types)
            doses = doses if len(doses) == len(types) else [""] * len(types)
            if len(types) > 1:
                combos[r.card.study.id] = combos.get(r.card.study.id, 0) + 1
            for pid, ptype, dose in zip(ids, types, doses, strict=True):
                key = (r.card.study.modality, pid, ptype)
                entry = rows.setdefault(
                    key, {"studies": set(), "contexts": set(), "doses": set(), "n": 0}
                )
                entry["studies"].add(r.card.study.id)  # type: ignore[union-attr]
                entry["contexts"].add(_context_of(row))  # type: ignore[union-attr]
                if dose:
                    entry["doses"].add(dose)  # type: ignore[union-attr]
                entry["n"] += 1  # type: ignore[operator]
    lines = [
        "## Perturbations",
        "",
        "Each perturbation of a sample counted once (a sample with two perturbations counts "
        "for both); contexts are the cell lines, cell types or tissues it was applied to.",
        "",
        "| modality | perturbation | label | type | samples | doses | studies | contexts |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (modality, pid, ptype), e in sorted(rows.items()):
        label = term_label(pid) if pid else "(no id)"
        lines.append(
            f"| {modality} | {pid or '-'} | {label} | {ptype} | {e['n']:,} | "
            f"{', '.join(sorted(e['doses'])) or '-'} | "  # type: ignore[arg-type]
            f"{', '.join(sorted(e['studies']))} | "  # type: ignore[arg-type]
            f"{'; '.join(sorted(e['contexts']))} |"  # type: ignore[arg-type]
        )
    lines.append("")
    if combos:
        lines += [
            "Samples with several perturbations (fields joined by `|`): "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(combos.items())),
            "",
        ]
    return lines


def _match_section(results: list[StudyResult]) -> list[str]:
    declared = [r for r in results if r.card.match]
    if not declared:
        return []
    lines = [
        "## Matched groups",
        "",
        "`match_group` = the card's declared pairing columns; samples of one study with the "
        "same biological fields and the same match_group are each other's matched controls.",
        "",
        "| study | columns | groups | samples in a group |",
        "|---|---|---|---|",
    ]
    for r in declared:
        groups = r.obs["match_group"]
        lines.append(
            f"| {r.card.study.id} | {', '.join(r.card.match)} | "
            f"{groups[groups != ''].nunique():,} | {int((groups != '').sum()):,} |"
        )
    return [*lines, ""]


def _sex_section(results: list[StudyResult]) -> list[str]:
    lines = [
        "## Sex from the cell-line table",
        "",
        "`sex` values filled from `src/opengem/data/cell_lines.tsv` (Cellosaurus) because the "
        "card names the cell line and its sheet gives no sex:",
        "",
        "| study | cell line | label | sex | samples filled |",
        "|---|---|---|---|---|",
    ]
    from opengem.ontology.cell_lines import cell_lines

    table = cell_lines()
    for r in results:
        for line, n in sorted(r.sex_from_table.items()):
            lines.append(
                f"| {r.card.study.id} | {line} | {term_label(line)} | {table[line].sex} | {n:,} |"
            )
    conflicts = [(r.card.study.id, c, v) for r in results for c, v in r.sex_conflicts.items()]
    if conflicts:
        lines += ["", "Sheet sex contradicting the table (the sheet's value is kept):", ""]
        lines += [f"- {s}: {c} sheet {v[0]} ({v[1]:,} samples)" for s, c, v in conflicts]
    named = sorted({c for r in results for c in set(r.obs["cell_line_ontology_id"]) - {""}})
    unknown = [c for c in named if c in table and cell_line_sex(c) is None]
    if unknown:
        lines += [
            "",
            "In the table without a verified sex (left unknown unless the sheet says): "
            + ", ".join(f"{c} ({table[c].name})" for c in unknown),
        ]
    absent = [c for c in named if c not in table]
    if absent:
        obs = pd.concat([r.obs for r in results])
        rows = obs[obs["cell_line_ontology_id"].isin(absent)]
        lines += [
            "",
            f"Not in the table: {len(absent)} cell lines ({len(rows):,} samples, "
            f"{int((rows['sex'] != '').sum()):,} with a sex from their sheet; e.g. "
            + ", ".join(absent[:3])
            + ")",
        ]
    return [*lines, ""]

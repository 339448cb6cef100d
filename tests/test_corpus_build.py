"""Study cards and the corpus build on a small data root written by the test."""

from __future__ import annotations

import textwrap
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest

from opengem.corpus import CorpusError, build_corpus, load_card
from opengem.ontology import default_gene_space

GENES = default_gene_space()
IDS = list(GENES.gene_ids[:40])


def write_study(root: Path, name: str = "toy", n_genes: int = 40) -> None:
    """A bulk study: 4 samples (2 control, 2 treated) and a sample sheet."""
    rng = np.random.default_rng(1)
    counts = pd.DataFrame(
        rng.integers(0, 100, size=(n_genes, 4)), index=IDS[:n_genes], columns=["A", "B", "C", "D"]
    )
    (root / name).mkdir(parents=True, exist_ok=True)
    counts.to_csv(root / name / "counts.csv")
    pd.DataFrame(
        {
            "run": ["A", "B", "C", "D"],
            "treatment": ["none", "dex", "none", "dex"],
            "gender": ["M", "F", "F", "NA"],
            "donor": ["d1", "d1", "d2", "d2"],
        }
    ).to_csv(root / name / "sheet.csv", index=False)


CARD = """
[study]
id = "{name}"
accession = "GSE0"
title = "toy study"
modality = "bulk"

[matrix]
format = "delimited"
path = "{name}/counts.csv"
orientation = "genes_x_samples"
gene_id_type = "ensembl"
value_type = "counts"

[samples]
path = "{name}/sheet.csv"
id_column = "run"

[defaults]
tissue_ontology_id = "UBERON:0002048"
perturbation_type = "control"

[columns.sex]
column = "gender"
map = {{ M = "male", F = "female", NA = "" }}

[[rules]]
when = {{ treatment = "dex" }}
set = {{ perturbation_type = "compound", perturbation_ontology_id = "CHEMBL384467", perturbation_dose = "1 uM" }}

[[rules]]
when = {{ run = "D" }}
set = {{ tissue_ontology_id = "" }}

[free]
donor = "donor"
"""


def setup(tmp_path: Path, card: str = CARD, name: str = "toy") -> tuple[Path, Path]:
    root, studies = tmp_path / "data", tmp_path / "studies"
    studies.mkdir(parents=True, exist_ok=True)
    write_study(root, name)
    (studies / f"{name}.toml").write_text(textwrap.dedent(card.format(name=name)))
    return root, studies


def test_build_writes_harmonised_anndata(tmp_path: Path) -> None:
    root, studies = setup(tmp_path)
    manifest = build_corpus(studies, root, tmp_path / "out")
    adata = anndata.read_h5ad(tmp_path / "out" / "bulk.h5ad")
    assert not (tmp_path / "out" / "sc.h5ad").exists()
    assert adata.shape == (4, len(GENES))
    assert list(adata.obs_names) == ["toy:A", "toy:B", "toy:C", "toy:D"]
    assert list(adata.var_names) == list(GENES.gene_ids) and "symbol" in adata.var
    obs = adata.obs.astype(str)
    assert obs["sex"].tolist() == ["male", "female", "female", ""]
    assert obs["perturbation_type"].tolist() == ["control", "compound", "control", "compound"]
    assert obs["perturbation_dose"].tolist() == ["", "1 uM", "", "1 uM"]
    assert obs["tissue_ontology_id"].tolist() == ["UBERON:0002048"] * 3 + [""]  # rule unset it
    assert obs["donor"].tolist() == ["d1", "d1", "d2", "d2"]
    assert obs["study"].tolist() == ["toy"] * 4 and obs["sample_id"].tolist() == list("ABCD")
    raw = pd.read_csv(root / "toy" / "counts.csv", index_col=0)
    np.testing.assert_array_equal(adata.X[:, :40].toarray(), raw.to_numpy().T)
    np.testing.assert_array_equal(adata.obs["library_size"], raw.sum(axis=0).to_numpy())
    assert adata.varm["study_mask"].shape == (len(GENES), 1)
    assert adata.varm["study_mask"][:, 0].sum() == 40
    assert list(adata.uns["study_mask_studies"]) == ["toy"]
    assert manifest.studies["toy"]["samples"] == 4
    report = (tmp_path / "out" / "corpus_report.md").read_text()
    assert "| toy | GSE0 | bulk | 4 |" in report
    assert "| UBERON:0002048 | lung | 3 |" in report


def test_build_is_byte_identical(tmp_path: Path) -> None:
    root, studies = setup(tmp_path)
    a = build_corpus(studies, root, tmp_path / "a")
    b = build_corpus(studies, root, tmp_path / "b")
    assert a.files == b.files and a.checksum == b.checksum
    assert (tmp_path / "a" / "bulk.h5ad").read_bytes() == (
        tmp_path / "b" / "bulk.h5ad"
    ).read_bytes()


def test_gene_subset_study_gets_its_own_mask(tmp_path: Path) -> None:
    root, studies = setup(tmp_path)
    write_study(root, "small", n_genes=10)
    (studies / "small.toml").write_text(textwrap.dedent(CARD.format(name="small")))
    build_corpus(studies, root, tmp_path / "out")
    adata = anndata.read_h5ad(tmp_path / "out" / "bulk.h5ad")
    studies_order = list(adata.uns["study_mask_studies"])
    mask = adata.varm["study_mask"]
    assert mask[:, studies_order.index("small")].sum() == 10
    assert mask[:, studies_order.index("toy")].sum() == 40
    assert adata.n_obs == 8


@pytest.mark.parametrize(
    ("old", "new", "needles"),
    [
        (
            'path = "{name}/counts.csv"',
            'path = "{name}/missing.csv"',
            ["toy", "missing.csv", "does not exist"],
        ),
        (
            'tissue_ontology_id = "UBERON:0002048"',
            'tissue_ontology_id = "CL:0000236"',
            ["toy", "sample A", "tissue_ontology_id", "CL:0000236"],
        ),
        (
            'tissue_ontology_id = "UBERON:0002048"',
            'tissue_ontology_id = "UBERON:9999999"',
            ["toy", "tissue_ontology_id", "UBERON:9999999", "does not exist"],
        ),
        (
            'perturbation_dose = "1 uM"',
            'perturbation_dose = "1 spoon"',
            ["toy", "sample B", "perturbation_dose", "spoon"],
        ),
        (
            'M = "male", F = "female", NA = ""',
            'M = "male", F = "female"',
            ["toy", "sample 'D'", "columns.sex", "'NA'", "not in the map"],
        ),
        ('id_column = "run"', 'id_column = "sample"', ["toy", "no column 'sample'"]),
        (
            'tissue_ontology_id = "UBERON:0002048"',
            'tisue_ontology_id = "UBERON:0002048"',
            ["toy.toml", "tisue_ontology_id", "did you mean 'tissue_ontology_id'"],
        ),
        ('id = "{name}"', 'id = "other"', ["must equal the file name"]),
        ('value_type = "counts"', 'value_type = "coverage"', ["needs read_length"]),
        ('donor = "donor"', 'sex = "donor"', ["reserved obs columns"]),
    ],
)
def test_bad_cards_fail_with_named_study_sample_field_value(
    tmp_path: Path, old: str, new: str, needles: list[str]
) -> None:
    assert old in CARD
    root, studies = setup(tmp_path, CARD.replace(old, new))
    out = tmp_path / "out"
    with pytest.raises(CorpusError) as err:
        build_corpus(studies, root, out)
    for needle in needles:
        assert needle in str(err.value), str(err.value)
    assert not out.exists() or not any(out.iterdir()), "nothing half-written"


def test_bad_matrix_values_and_samples(tmp_path: Path) -> None:
    root, studies = setup(tmp_path)
    counts = pd.read_csv(root / "toy" / "counts.csv", index_col=0)
    counts.iloc[3, 2] = -4
    counts.to_csv(root / "toy" / "counts.csv")
    with pytest.raises(CorpusError, match=r"toy: sample 'C', gene .* negative"):
        build_corpus(studies, root, tmp_path / "out")
    write_study(root)
    sheet = pd.read_csv(root / "toy" / "sheet.csv")
    sheet.loc[2, "run"] = "Z"
    sheet.to_csv(root / "toy" / "sheet.csv", index=False)
    with pytest.raises(CorpusError, match="sample 'Z' of the sample sheet is not in the matrix"):
        build_corpus(studies, root, tmp_path / "out")
    sheet.loc[2, "run"] = "A"
    sheet.to_csv(root / "toy" / "sheet.csv", index=False)
    with pytest.raises(CorpusError, match="'A' appears twice"):
        build_corpus(studies, root, tmp_path / "out")


def test_failed_rebuild_keeps_the_previous_corpus(tmp_path: Path) -> None:
    root, studies = setup(tmp_path)
    out = tmp_path / "out"
    build_corpus(studies, root, out)
    before = (out / "bulk.h5ad").read_bytes()
    (studies / "toy.toml").write_text(CARD.format(name="toy").replace("UBERON:0002048", "UBERON:0"))
    with pytest.raises(CorpusError):
        build_corpus(studies, root, out)
    assert (out / "bulk.h5ad").read_bytes() == before
    assert not list(out.glob(".*.tmp"))


def test_include_exclude_and_sheetless_cards(tmp_path: Path) -> None:
    card = CARD.replace('id_column = "run"', 'id_column = "run"\nexclude = {{ donor = "d2" }}')
    root, studies = setup(tmp_path, card)
    build_corpus(studies, root, tmp_path / "out")
    adata = anndata.read_h5ad(tmp_path / "out" / "bulk.h5ad")
    assert list(adata.obs["sample_id"]) == ["A", "B"]
    report = (tmp_path / "out" / "corpus_report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| toy |"))
    assert row.endswith("| 2 |")  # two matrix samples left out

    sheetless = textwrap.dedent("""
        [study]
        id = "bare"
        accession = "GSE1"
        title = "matrix only"
        modality = "sc"
        [matrix]
        format = "delimited"
        path = "bare/counts.csv"
        gene_id_type = "ensembl"
        value_type = "counts"
        [defaults]
        cell_type_ontology_id = "CL:0000236"
        [[rules]]
        when_matches = { sample_id = "^[AB]$" }
        set = { sex = "female" }
    """)
    write_study(root, "bare")
    (studies / "bare.toml").write_text(sheetless)
    card_obj = load_card(studies / "bare.toml")
    assert card_obj.study.modality == "sc"
    build_corpus(studies, root, tmp_path / "out2", only=["bare"])
    sc = anndata.read_h5ad(tmp_path / "out2" / "sc.h5ad")
    assert sc.obs["sex"].astype(str).tolist() == ["female", "female", "", ""]

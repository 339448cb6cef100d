"""Card features for perturbation experiments: several perturbations per sample, the
perturbation method, declared matched groups, cell-line sex, checked compound and taxon ids."""

from __future__ import annotations

import textwrap
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest

from opengem.contract import QueryError, parse_quantity, validate_metadata
from opengem.corpus import CorpusError, build_corpus
from opengem.corpus.cards import split_perturbations
from opengem.ontology import default_gene_space
from opengem.ontology.cell_lines import cell_line_sex, cell_lines
from opengem.ontology.compounds import compound_label, is_known_chembl
from opengem.ontology.taxa import TAXA, similar_taxa

GENES = default_gene_space()
KLF1, MAP2K6, TP53 = "ENSG00000105610", "ENSG00000108984", "ENSG00000141510"

CARD = """
[study]
id = "pairs"
accession = "GSE1"
title = "toy CRISPRa pairs"
modality = "bulk"

[matrix]
format = "delimited"
path = "pairs/counts.csv"
orientation = "genes_x_samples"
gene_id_type = "ensembl"
value_type = "counts"

[samples]
path = "pairs/sheet.csv"
id_column = "run"

[defaults]
sample_type = "cell line"
cell_line_ontology_id = "CVCL_0031"
perturbation_type = "overexpression"
perturbation_method = "CRISPRa"

[columns.perturbation_ontology_id]
column = "target"
map = {{ "KLF1" = "{klf1}", "KLF1+MAP2K6" = "{klf1}|{map2k6}", "none" = "" }}

[columns.sex]
column = "sex"
map = {{ "" = "", "male" = "male" }}

[[rules]]
when_matches = {{ target = "\\\\+" }}
set = {{ perturbation_type = "overexpression|overexpression", perturbation_dose = "|" }}

[[rules]]
when = {{ target = "none" }}
set = {{ perturbation_type = "control", perturbation_method = "" }}

[match]
donor = "donor"
day = "day"
"""


def _setup(tmp_path: Path, card: str = CARD) -> tuple[Path, Path]:
    root, studies = tmp_path / "data", tmp_path / "studies"
    (root / "pairs").mkdir(parents=True)
    studies.mkdir()
    rng = np.random.default_rng(0)
    ids = list(GENES.gene_ids[:30])
    pd.DataFrame(rng.integers(0, 50, size=(30, 4)), index=ids, columns=["A", "B", "C", "D"]).to_csv(
        root / "pairs" / "counts.csv"
    )
    pd.DataFrame(
        {
            "run": list("ABCD"),
            "target": ["none", "KLF1", "KLF1+MAP2K6", "KLF1"],
            "sex": ["", "", "", "male"],
            "donor": ["d1", "d1", "d1", ""],
            "day": ["1", "1", "1", "2"],
        }
    ).to_csv(root / "pairs" / "sheet.csv", index=False)
    text = textwrap.dedent(card.format(klf1=KLF1, map2k6=MAP2K6))
    (studies / "pairs.toml").write_text(text)
    return root, studies


def test_pairs_methods_groups_and_sex(tmp_path: Path) -> None:
    root, studies = _setup(tmp_path)
    build_corpus(studies, root, tmp_path / "out")
    obs = anndata.read_h5ad(tmp_path / "out" / "bulk.h5ad").obs.astype(str)
    # a pair keeps both targets, each with its own type (and empty dose positions)
    assert obs["perturbation_ontology_id"].tolist() == ["", KLF1, f"{KLF1}|{MAP2K6}", KLF1]
    assert obs.loc["pairs:C", "perturbation_type"] == "overexpression|overexpression"
    assert obs.loc["pairs:B", "perturbation_type"] == "overexpression"  # single stays plain
    assert obs.loc["pairs:C", "perturbation_dose"] == ""  # all positions empty -> unset
    assert obs["perturbation_method"].tolist() == ["", "CRISPRa", "CRISPRa", "CRISPRa"]
    # declared pairing columns, in card order; an empty value leaves the sample unmatched
    assert obs["match_group"].tolist() == ["donor=d1;day=1"] * 3 + [""]
    # MCF-7 is female (Cellosaurus): filled where the sheet is silent, the sheet kept otherwise
    assert obs["sex"].tolist() == ["female", "female", "female", "male"]
    report = (tmp_path / "out" / "corpus_report.md").read_text()
    assert "| pairs | CVCL_0031 | MCF-7 | female | 3 |" in report
    assert "pairs: CVCL_0031 sheet male (1 samples)" in report
    assert f"| bulk | {MAP2K6} | MAP2K6 | overexpression | 1 |" in report
    assert f"| bulk | {KLF1} | KLF1 | overexpression | 3 |" in report
    assert "| pairs | donor, day | 1 | 3 |" in report


@pytest.mark.parametrize(
    ("old", "new", "needles"),
    [
        (  # two ids but one type
            'perturbation_type = "overexpression|overexpression", ',
            "",
            ["pairs", "sample C", "perturbation_type", "has 1 '|'-separated values for 2"],
        ),
        (  # misaligned dose
            'perturbation_dose = "|"',
            'perturbation_dose = "1 uM|2 uM|3 uM"',
            ["pairs", "sample C", "perturbation_dose", "'1 uM|2 uM|3 uM'", "3 '|'-separated"],
        ),
        (  # the second component must be a gene for a gene-targeting type
            '"KLF1+MAP2K6" = "{klf1}|{map2k6}"',
            '"KLF1+MAP2K6" = "{klf1}|CHEMBL25"',
            ["pairs", "sample C", "perturbation 2 of 2", "CHEMBL25", "must be an Ensembl gene id"],
        ),
        (  # an unknown ChEMBL id is refused, not syntax-checked
            '"KLF1+MAP2K6" = "{klf1}|{map2k6}"',
            '"KLF1+MAP2K6" = "{klf1}|CHEMBL999999999"',
            ["sample C", "perturbation 2 of 2", "CHEMBL999999999", "compound table"],
        ),
        (  # control does not combine
            'perturbation_type = "overexpression|overexpression", ',
            'perturbation_type = "overexpression|control", ',
            ["sample C", "'control' cannot be combined"],
        ),
    ],
)
def test_bad_multi_perturbations_name_the_problem(
    tmp_path: Path, old: str, new: str, needles: list[str]
) -> None:
    assert old in CARD
    root, studies = _setup(tmp_path, CARD.replace(old, new))
    with pytest.raises(CorpusError) as err:
        build_corpus(studies, root, tmp_path / "out")
    for needle in needles:
        assert needle.format(klf1=KLF1) in str(err.value)


def test_split_perturbations() -> None:
    assert split_perturbations({"perturbation_type": "compound"}) == [
        {"perturbation_type": "compound"}
    ]
    two = split_perturbations(
        {
            "perturbation_type": "infection|other",
            "perturbation_ontology_id": "NCBITaxon:31708|",
            "perturbation_time": "24 hours|",
        }
    )
    assert two == [
        {
            "perturbation_type": "infection",
            "perturbation_ontology_id": "NCBITaxon:31708",
            "perturbation_time": "24 hours",
        },
        {"perturbation_type": "other"},
    ]


def test_cell_line_table_facts() -> None:
    table = cell_lines()
    assert all(acc.startswith("CVCL_") for acc in table)
    for line, sex in [
        ("CVCL_0031", "female"),  # MCF-7
        ("CVCL_0553", "female"),  # T-47D
        ("CVCL_0030", "female"),  # HeLa
        ("CVCL_0063", "female"),  # HEK293T
        ("CVCL_0004", "female"),  # K-562
        ("CVCL_0023", "male"),  # A549
        ("CVCL_0006", "male"),  # THP-1
    ]:
        assert cell_line_sex(line) == sex, line
    assert cell_line_sex("CVCL_9999") is None


def test_compound_table_is_checked() -> None:
    assert compound_label("CHEMBL53463") == "DOXORUBICIN"
    assert compound_label("CHEBI:28748") == "DOXORUBICIN"  # ChEBI cross-reference
    assert is_known_chembl("CHEMBL384467") and not is_known_chembl("CHEMBL999999999")
    with pytest.raises(QueryError, match="compound table") as err:
        validate_metadata(
            {"perturbation_type": "compound", "perturbation_ontology_id": "CHEMBL534630"}
        )
    assert "CHEMBL53463 (DOXORUBICIN)" in err.value.problems[0].suggestions


def test_taxon_suggestions_are_near_matches() -> None:
    assert TAXA["83332"] == "Mycobacterium tuberculosis H37Rv"
    assert TAXA["211044"] == "Influenza A virus (A/Puerto Rico/8/1934(H1N1))"
    with pytest.raises(QueryError) as err:
        validate_metadata(
            {"perturbation_type": "infection", "perturbation_ontology_id": "NCBITaxon:99288"}
        )
    hints = err.value.problems[0].suggestions
    assert hints and all("Salmonella" in h for h in hints)
    assert similar_taxa("NCBITaxon:1234567") == []  # nothing near: no unrelated organism
    by_name = similar_taxa("Salmonella Typhimurium")
    assert by_name and all("Salmonella" in h for h in by_name)
    assert not any("Homo sapiens" in h for h in by_name)


def test_moi_is_a_dose() -> None:
    q = parse_quantity("0.2 MOI", "dose")
    assert (q.value, q.unit, q.dimension) == (0.2, "MOI", "multiplicity of infection")
    assert str(parse_quantity("15 moi", "dose")) == "15 MOI"
    assert (
        validate_metadata(
            {
                "perturbation_type": "infection",
                "perturbation_ontology_id": "NCBITaxon:2697049",
                "perturbation_dose": "2 moi",
            }
        )["perturbation_dose"]
        == "2 MOI"
    )

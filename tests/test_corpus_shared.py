"""The real corpus: every shared study builds, and known biology survives harmonisation."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import anndata
import numpy as np
import pytest

from opengem.ontology import default_gene_space

pytestmark = pytest.mark.corpus
REPO = Path(__file__).resolve().parents[1]
CARDS = sorted((REPO / "corpus" / "studies").glob("*.toml"))
GENES = default_gene_space()


def _mean_log_cpm(adata: anndata.AnnData, rows: np.ndarray, gene_id: str) -> float:
    x = adata.X[rows]
    lib = np.asarray(x.sum(axis=1)).ravel()
    g = x[:, GENES.index_of(gene_id)].toarray().ravel()
    return float(np.mean(np.log1p(g / lib * 1e6)))


def test_every_card_is_in_the_corpus(shared_corpus: Path) -> None:
    manifest = json.loads((shared_corpus / "manifest.json").read_text())
    report = (shared_corpus / "corpus_report.md").read_text()
    assert set(manifest["studies"]) == {p.stem for p in CARDS}
    for path in CARDS:
        card = tomllib.loads(path.read_text())
        study = manifest["studies"][path.stem]
        assert study["samples"] > 0 and study["modality"] == card["study"]["modality"]
        assert f"| {path.stem} | {card['study']['accession']} |" in report
    assert set(manifest["files"]) == {"bulk.h5ad", "sc.h5ad"}


def test_known_sizes_and_labels(shared_corpus: Path) -> None:
    studies = json.loads((shared_corpus / "manifest.json").read_text())["studies"]
    assert studies["airway"]["samples"] == 8
    assert studies["zheng2017_pbmc_sorted"]["samples"] == 3500
    assert studies["kang2018_pbmc_ifnb"]["samples"] == 2000
    assert studies["papalexi2021_thp1_crispr"]["genes_measured"] < 300  # a 299-gene panel
    report = (shared_corpus / "corpus_report.md").read_text()
    for row in (
        "| UBERON:0002107 | liver |",
        "| CVCL_0004 | K-562 |",
        "| CL:0000236 | B cell |",
        "| CHEMBL384467 | DEXAMETHASONE |",
        "| PATO:0000461 | normal |",
    ):
        assert row in report


def test_dexamethasone_induces_fkbp5_in_airway(shared_corpus: Path) -> None:
    bulk = anndata.read_h5ad(shared_corpus / "bulk.h5ad")
    airway = (bulk.obs["study"] == "airway").to_numpy()
    treated = airway & (bulk.obs["perturbation_type"] == "compound").to_numpy()
    control = airway & (bulk.obs["perturbation_type"] == "control").to_numpy()
    fkbp5 = "ENSG00000096060"
    gain = _mean_log_cpm(bulk, treated, fkbp5) - _mean_log_cpm(bulk, control, fkbp5)
    assert gain > 2.0  # FKBP5 is a classic glucocorticoid target (Himes et al. 2014)


def test_interferon_beta_induces_isg15_in_pbmc(shared_corpus: Path) -> None:
    sc = anndata.read_h5ad(shared_corpus / "sc.h5ad")
    kang = (sc.obs["study"] == "kang2018_pbmc_ifnb").to_numpy()
    stim = kang & (sc.obs["perturbation_type"] != "control").to_numpy()
    ctrl = kang & (sc.obs["perturbation_type"] == "control").to_numpy()
    isg15 = "ENSG00000187608"
    assert _mean_log_cpm(sc, stim, isg15) - _mean_log_cpm(sc, ctrl, isg15) > 2.0


def test_gene_subset_studies_are_masked(shared_corpus: Path) -> None:
    sc = anndata.read_h5ad(shared_corpus / "sc.h5ad")
    studies = list(sc.uns["study_mask_studies"])
    mask = sc.varm["study_mask"][:, studies.index("papalexi2021_thp1_crispr")].astype(bool)
    rows = (sc.obs["study"] == "papalexi2021_thp1_crispr").to_numpy()
    outside = sc.X[rows][:, ~mask]
    assert mask.sum() < 300 and outside.nnz == 0

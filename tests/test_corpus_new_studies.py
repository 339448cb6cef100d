"""Curated facts of the infection, interferon, dose-series, CRISPRa-pair and cell-line
mixture studies (issue 10): each assertion would fail on a mis-curated card."""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest

from opengem.ontology import default_gene_space

pytestmark = pytest.mark.corpus
GENES = default_gene_space()
SARS2 = "NCBITaxon:2697049"
IFNS = {
    "IFNA8": "ENSG00000120242",
    "IFNb": "ENSG00000171855",
    "IFNg": "ENSG00000111537",
    "IFNL1": "ENSG00000182393",
    "IFNe": "ENSG00000184995",
}


@pytest.fixture(scope="module")
def bulk(shared_corpus: Path) -> anndata.AnnData:
    return anndata.read_h5ad(shared_corpus / "bulk.h5ad")


@pytest.fixture(scope="module")
def sc(shared_corpus: Path) -> anndata.AnnData:
    return anndata.read_h5ad(shared_corpus / "sc.h5ad")


def _obs(adata: anndata.AnnData, study: str) -> pd.DataFrame:
    obs = adata.obs[adata.obs["study"] == study].astype(str)
    assert len(obs), study
    return obs


def _log_cpm(adata: anndata.AnnData, names: pd.Index, symbol: str) -> np.ndarray:
    rows = adata.obs_names.get_indexer(names)
    x = adata.X[rows]
    lib = np.asarray(x.sum(axis=1)).ravel()
    g = x[:, GENES.index_of(GENES.ids_for_symbol(symbol)[0])].toarray().ravel()
    return np.log1p(g / lib * 1e6)


def test_sars_cov_2_infections_and_their_mocks(bulk: anndata.AnnData) -> None:
    obs = _obs(bulk, "gse147507_respiratory_viruses")
    assert len(obs) == 61
    sars = obs[obs["perturbation_ontology_id"] == SARS2]
    assert len(sars) == 18 and set(sars["perturbation_type"]) == {"infection"}
    assert set(sars["perturbation_dose"]) == {"0.2 MOI", "2 MOI"}
    assert set(sars["perturbation_time"]) == {"24 hours"}
    contexts = set(
        zip(
            sars["cell_line_ontology_id"],
            sars["cell_type_ontology_id"],
            sars["genotype"],
            strict=True,
        )
    )
    assert contexts == {
        ("", "CL:0002328", ""),  # NHBE
        ("CVCL_0023", "", ""),  # A549
        ("CVCL_0023", "", "ACE2 transgene (lentiviral vector)"),  # A549-ACE2
        ("CVCL_0609", "", ""),  # Calu-3
    }
    for group, rows in sars.groupby("match_group"):
        mocks = obs[(obs["match_group"] == group) & (obs["perturbation_type"] == "control")]
        assert len(mocks) == 3, group  # every series has 3 mocks ...
        for f in ("cell_line_ontology_id", "cell_type_ontology_id", "genotype"):
            assert set(mocks[f]) == set(rows[f]), (group, f)  # ... of the same context
        assert set(mocks["perturbation_ontology_id"]) == {""}
    other = {
        "NCBITaxon:211044": 6,  # influenza A/PR/8/34
        "NCBITaxon:11259": 5,  # RSV A2
        "NCBITaxon:11216": 3,  # HPIV3
    }
    for taxon, n in other.items():
        assert (obs["perturbation_ontology_id"] == taxon).sum() == n
    assert set(obs.loc[obs["series"] == "Series4_A549", "perturbation_time"]) == {"9 hours", ""}
    assert set(obs.loc[obs["cell_line_ontology_id"] == "CVCL_0023", "sex"]) == {"male"}
    assert set(obs.loc[obs["cell_type_ontology_id"] == "CL:0002328", "sex"]) == {""}  # NHBE


def test_five_interferons_are_five_ligands(bulk: anndata.AnnData) -> None:
    obs = _obs(bulk, "hawn_mdm_ifn")
    treated = obs[obs["perturbation_type"] != "control"]
    assert set(treated["perturbation_type"]) == {"peptide or biologic"}
    assert set(treated["perturbation_ontology_id"]) == set(IFNS.values())
    for name, gene in IFNS.items():
        rows = obs[obs["interferon"] == name]
        assert set(rows["perturbation_ontology_id"]) == {gene}
        assert rows["donor"].nunique() == 5 and rows["match_group"].nunique() == 5
    assert set(obs.loc[obs["interferon"] == "IFNL1", "perturbation_dose"]) == {"100 ng/mL"}
    assert set(obs.loc[obs["interferon"] == "IFNg", "perturbation_dose"]) == {"10 ng/mL"}
    assert set(obs["perturbation_time"]) == {""}  # not in the files: not invented
    # the re-derived labels (not the scrambled *_WRONG ones): IFN-beta raises MX1 over
    # each donor's own untreated cells, and IFN-gamma raises CXCL9 most
    for _, rows in obs.groupby("match_group"):
        mx1 = dict(zip(rows["interferon"], _log_cpm(bulk, rows.index, "MX1"), strict=True))
        assert mx1["IFNb"] - mx1["untreated"] > 1.0
    cxcl9 = {n: _log_cpm(bulk, obs.index[obs["interferon"] == n], "CXCL9").mean() for n in IFNS}
    assert max(cxcl9, key=cxcl9.get) == "IFNg"


def test_macrophage_tuberculosis_experiments(bulk: anndata.AnnData) -> None:
    mtb = _obs(bulk, "hawn_am_mdm_mtb")
    assert len(mtb) == 24 and set(mtb["cell_type_ontology_id"]) == {"CL:0000583", "CL:0000235"}
    infected = mtb[mtb["perturbation_type"] == "infection"]
    assert set(infected["perturbation_ontology_id"]) == {"NCBITaxon:83332"}
    assert len(infected) == 12 and set(infected["perturbation_time"]) == {"6 hours"}
    cryo = _obs(bulk, "hawn_am_cryo")
    assert len(cryo) == 6 and not cryo["sample_id"].str.startswith("AM18_AM_").any()
    # batch 2 library names are swapped: the `Mtb` column decides
    assert cryo.loc["hawn_am_cryo:70_AM18_Cryo_Media", "perturbation_type"] == "infection"
    assert cryo.loc["hawn_am_cryo:69_AM18_Cryo_MTB", "perturbation_type"] == "control"
    il1b = _log_cpm(bulk, cryo.index, "IL1B")
    is_inf = (cryo["perturbation_type"] == "infection").to_numpy()
    assert il1b[is_inf].min() > il1b[~is_inf].max()
    assert set(cryo["match_group"]) == {
        "donor=AM18;preservation=cryo",
        "donor=AM21;preservation=fresh",
        "donor=AM21;preservation=cryo",
    }


def test_doxorubicin_dose_series(bulk: anndata.AnnData) -> None:
    obs = _obs(bulk, "knowles2018_dox_ipsc_cm")
    assert len(obs) == 29
    treated = obs[obs["perturbation_type"] == "compound"]
    assert set(treated["perturbation_ontology_id"]) == {"CHEMBL53463"}
    assert set(treated["perturbation_dose"]) == {"0.625 uM", "1.25 uM", "2.5 uM", "5 uM"}
    controls = obs[obs["perturbation_type"] == "control"]
    assert len(controls) == 6 and set(controls["perturbation_dose"]) == {""}
    assert controls["match_group"].nunique() == 6  # one untreated sample per individual
    sizes = obs.groupby("match_group").size().to_dict()
    lines = ["c21.1", "c41", "c47.1", "c60.1", "c64", "c70.1"]
    assert sizes == {f"individual={c}": 4 if c == "c60.1" else 5 for c in lines}
    assert set(obs["perturbation_time"]) == {""}


def test_rhinovirus_in_pdcs(bulk: anndata.AnnData) -> None:
    obs = _obs(bulk, "dillmcfarland_pdc_rhinovirus")
    assert len(obs) == 42 and obs["donor"].nunique() == 13
    both = obs[(obs["virus_stock"] != "none") & (obs["co_treatment"] == "EOS.supp")]
    assert len(both) == 4
    assert set(both["perturbation_ontology_id"]) == {"NCBITaxon:31708|"}
    assert set(both["perturbation_type"]) == {"infection|other"}
    assert set(obs.loc[obs["experiment"] == "P259_2", "disease_ontology_id"]) == {"MONDO:0004979"}
    # every donor has a medium culture as matched control
    for _, rows in obs.groupby("match_group"):
        assert (rows["perturbation_type"] == "control").sum() == 1


def test_norman_pairs_carry_two_targets(sc: anndata.AnnData) -> None:
    obs = _obs(sc, "norman2019_k562_crispra")
    pairs = obs[obs["target"].str.contains(r"\+")]
    assert len(pairs) == 1480 and pairs["target"].nunique() == 15
    klf1_map2k6 = pairs[pairs["target"] == "KLF1+MAP2K6"]
    assert set(klf1_map2k6["perturbation_ontology_id"]) == {"ENSG00000105610|ENSG00000108984"}
    assert set(pairs["perturbation_type"]) == {"overexpression|overexpression"}
    singles = obs[~obs["target"].str.contains(r"\+") & (obs["target"] != "control")]
    assert singles["target"].nunique() == 18
    assert set(singles["perturbation_type"]) == {"overexpression"}  # CRISPRa = up-regulation
    assert set(obs.loc[obs["target"] != "control", "perturbation_method"]) == {"CRISPRa"}
    assert set(obs.loc[obs["target"] == "control", "perturbation_type"]) == {"control"}
    assert set(obs["sex"]) == {"female"}  # K-562, from the cell-line table


def test_same_knockouts_in_three_glioblastoma_lines(sc: anndata.AnnData) -> None:
    obs = _obs(sc, "mcfaline2023_gbm_kinase_crispr")
    per_line = obs[obs["perturbation_type"] == "crispr"].groupby("cell_line_ontology_id")[
        "perturbation_ontology_id"
    ]
    assert set(per_line.nunique()) == {9} and len(per_line) == 3
    assert len({frozenset(v) for _, v in per_line}) == 1  # the same 9 targets in each line
    for _, rows in obs.groupby("match_group"):
        assert (rows["perturbation_type"] == "control").sum() == 100
        assert rows["cell_line_ontology_id"].nunique() == 1


def test_cellbench_singlets_only(sc: anndata.AnnData) -> None:
    studies = [s for s in sc.obs["study"].unique() if str(s).startswith("cellbench_")]
    assert len(studies) == 5
    obs = sc.obs[sc.obs["study"].isin(studies)].astype(str)
    assert len(obs) == 240 + 210 + 156 + 163 + 252
    assert set(obs["demuxlet_cls"]) == {"SNG"}  # doublets are absent
    assert obs["cell_line_ontology_id"].nunique() == 5
    assert set(obs.loc[obs["cell_line_name"] == "HCC827", "cell_line_ontology_id"]) == {"CVCL_2063"}


def test_cytokines_are_named_ligands(bulk: anndata.AnnData, sc: anndata.AnnData) -> None:
    kang = _obs(sc, "kang2018_pbmc_ifnb")
    stim = kang[kang["perturbation_type"] != "control"]
    assert set(stim["perturbation_ontology_id"]) == {"ENSG00000171855"}  # IFNB1
    assert set(stim["perturbation_type"]) == {"peptide or biologic"}
    il13 = _obs(bulk, "gse79027_il13_pbmc")
    assert set(il13.loc[il13["group"] == "X24IL13", "perturbation_ontology_id"]) == {
        "ENSG00000169194"
    }
    arm = il13[il13["group"] == "X24IL13Ant"]
    assert set(arm["perturbation_ontology_id"]) == {"ENSG00000169194|"}
    assert set(arm["perturbation_type"]) == {"peptide or biologic|peptide or biologic"}


def test_cell_line_sex_is_filled_and_reported(bulk: anndata.AnnData, shared_corpus: Path) -> None:
    mcf7 = _obs(bulk, "mcf7_bisphenols")
    assert len(mcf7) == 240 and set(mcf7["sex"]) == {"female"}
    t47d = _obs(bulk, "gse89888_t47d_e2")
    assert set(t47d["sex"]) == {"female"}
    report = (shared_corpus / "corpus_report.md").read_text()
    assert "| mcf7_bisphenols | CVCL_0031 | MCF-7 | female | 240 |" in report
    assert (
        "| bulk | NCBITaxon:2697049 | Severe acute respiratory syndrome coronavirus 2 | "
        "infection | 18 |" in report
    )
    assert (
        "| bulk | ENSG00000111537 | IFNG | peptide or biologic | 5 | 10 ng/mL | hawn_mdm_ifn |"
        in report
    )
    assert "| bulk | CHEMBL53463 | DOXORUBICIN | compound | 23 |" in report

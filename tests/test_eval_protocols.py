"""The evaluation protocols end to end with real (``--fast``) trainings, and their pieces.

Synthetic corpus: a compound in 2 tissues x 4 studies (and one shRNA target per
study), so every study is a held-out-context experiment with two contexts. Tests
with fake models (no training) are in ``test_eval_fakes.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from opengem.cli import app
from opengem.corpus.synthetic import synthetic_corpus
from opengem.eval import baselines as bl
from opengem.eval.corpus import CorpusView, EvalError, fast_rows
from opengem.eval.protocols.held_out_context import experiments_of
from opengem.eval.results import UnitResult, summarise, verdicts
from opengem.eval.run import run_protocol
from opengem.eval.units import perturbation_cells


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    adata, _ = synthetic_corpus(n_genes=200, samples_per_condition=6, seed=1)
    path = tmp_path_factory.mktemp("synthetic") / "bulk.h5ad"
    adata.write_h5ad(path)
    (path.parent / "manifest.json").write_text(json.dumps({"checksum": "synthetic-checksum"}))
    return path


def check_metrics(out: Path, protocol: str, baselines: set[str]) -> dict[str, Any]:
    """metrics.json has the documented structure; report.html and its PNGs exist."""
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == protocol
    assert "corpus_checksum" in metrics and metrics["command"]
    assert isinstance(metrics["n_trainings"], int) and metrics["n_trainings"] >= 1
    assert metrics["units"]
    for unit in metrics["units"]:
        assert {"unit", "n_samples", "model", "baselines"} <= set(unit)
        assert unit["n_samples"] >= 1
        assert set(unit["baselines"]) == baselines
        assert unit["model"]
    summary = metrics["summary"]
    assert summary["n_units"] == len(metrics["units"])
    assert set(summary["baselines"]) == baselines
    model_metrics = set(summary["model"])
    assert model_metrics == set(metrics["verdict"])
    for sentence in metrics["verdict"].values():
        assert "model" in sentence
    timings = metrics["timings"]
    assert timings["total_seconds"] > 0 and len(timings["training_seconds"]) == len(
        metrics["trainings"]
    )
    for training in metrics["trainings"]:
        assert training["budget"] and training["truncated"] is False
    html = (out / "report.html").read_text()
    pngs = sorted(out.glob("*.png"))
    assert (out / "pca.png") in pngs and (out / "gene_mean_sd.png") in pngs
    for png in pngs:
        assert png.stat().st_size < 400_000
        assert png.name in html
    return metrics


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow  # trains (several seconds on two cores)
def test_held_out_context_cli(corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "hoc"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--protocol",
            "held-out-context",
            "--corpus",
            str(corpus_file),
            "--fast",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = check_metrics(out, "held-out-context", {"no_change", "additive_shift", "train_mean"})
    assert metrics["corpus_checksum"] == "synthetic-checksum"
    assert metrics["command"].startswith("opengem eval --protocol held-out-context --corpus")
    # 4 studies x (compound, shRNA) experiments with 2 tissue contexts each: 16 units, and one
    # training per rotation (2), not per unit
    assert len(metrics["units"]) == 16 and metrics["n_trainings"] == 2
    assert (out / "logfc.png").is_file()
    units = metrics["units"]
    assert {u["rotation"] for u in units} == {0, 1}
    compound = [u for u in units if u["perturbation"]["perturbation_type"] == "compound"]
    shrna = [u for u in units if u["perturbation"]["perturbation_type"] == "shrna"]
    assert len(compound) == len(shrna) == 8
    # the planted compound effect is the same in every context: the additive shift finds it
    for u in compound:
        assert u["baselines"]["additive_shift"]["pearson_delta_top100"] > 0.8
        assert u["baselines"]["no_change"]["direction_accuracy_top100"] == 0.0
    # gene-targeting units report the error at the target gene
    assert all("on_target_error" in u["model"] for u in shrna)
    assert "on_target_error" not in compound[0]["model"]
    # the counterfactual metrics and the "no perturbation sent" row are in every unit
    for u in units:
        assert "cf_pearson_delta_top100" in u["model"]
        assert "pearson_delta_top100" in u["diagnostics"]["no_perturbation_sent"]
    assert "no_perturbation_sent" in metrics["summary"]["diagnostics"]


def _without_timings(metrics: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in metrics.items() if k not in ("timings", "command")}
    return json.loads(json.dumps(out))


@pytest.mark.slow  # trains (several seconds on two cores)
def test_two_fast_runs_give_identical_metrics(corpus_file: Path, tmp_path: Path) -> None:
    """Fixed budgets: the same command gives the same digits (timings aside)."""
    runs = [
        run_protocol(
            "held-out-study",
            corpus_file,
            tmp_path / f"run{i}",
            fast=True,
            studies=["synthetic_1"],
            log=lambda s: None,
        )
        for i in range(2)
    ]
    check_metrics(
        tmp_path / "run0",
        "held-out-study",
        {"logistic_pca", "logistic_pca_fixed", "condition_mean"},
    )
    assert runs[0]["n_trainings"] == 1 and runs[0]["trainings"][0]["budget"]
    assert _without_timings(runs[0]) == _without_timings(runs[1])
    unit = runs[0]["units"][0]
    assert unit["metadata"]["scored"]["tissue_ontology_id"] == unit["n_samples"]
    assert "diversity" in unit["model"] and "tissue_ontology_id:accuracy_exact" in unit["model"]


@pytest.mark.slow  # trains (several seconds on two cores)
def test_seen_condition_api(corpus_file: Path, tmp_path: Path) -> None:
    metrics = run_protocol("seen-condition", corpus_file, tmp_path, fast=True, log=lambda s: None)
    check_metrics(tmp_path, "seen-condition", {"condition_mean"})
    assert metrics["n_trainings"] == 1
    # 4 studies x 2 tissues x 3 perturbations x 2 sexes, 3 replicates each: 1 held out
    assert metrics["n_conditions"] == 48 and metrics["n_held_out_replicates"] == 48
    cm = metrics["summary"]["baselines"]["condition_mean"]
    assert cm["samplewise_pearson"] > 0.9
    assert 0.9 < cm["samplewise_pearson_ceiling_ratio"] < 1.1
    for unit in metrics["units"]:
        assert 0.9 < unit["replicate_ceiling"] <= 1.0


def test_study_selection_and_errors(corpus_file: Path, tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="not in the corpus"):
        run_protocol("seen-condition", corpus_file, tmp_path / "a", studies=["nope"], log=print)
    with pytest.raises(EvalError, match="unknown protocol"):
        run_protocol("cross-validation", corpus_file, tmp_path / "b", log=print)
    # a failed run leaves no output folder behind
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--protocol",
            "held-out-context",
            "--corpus",
            str(tmp_path / "missing.h5ad"),
            "--out",
            str(tmp_path / "c"),
        ],
    )
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not (tmp_path / "c").exists()
    result = CliRunner().invoke(app, ["eval", "--corpus", "x", "--out", "y"])
    assert result.exit_code == 2 and "--protocol NAME or --all" in result.output


# --------------------------------------------------------------------------- pieces


def test_cells_and_experiments_of_synthetic_corpus(corpus_file: Path) -> None:
    view = CorpusView.load(corpus_file)
    cells = perturbation_cells(view)
    experiments = experiments_of(cells)
    assert len(cells) == 16 and len(experiments) == 8
    tissue = view.values("tissue_ontology_id")
    for cs in experiments.values():
        assert [c.context for c in cs] == ["UBERON:0002048", "UBERON:0002107"]
        for c in cs:
            # controls of the same context; held-out rows are all perturbed
            assert (view.values("perturbation_type")[c.held_out] != "control").all()
            assert (tissue[c.perturbed] == c.context).all()
            assert (tissue[c.controls] == c.context).all()
    assert {c.study for c in perturbation_cells(view, ["synthetic_2"])} == {"synthetic_2"}


def test_match_group_pairs_samples(corpus_file: Path) -> None:
    """A declared match_group pairs each perturbed sample with a control of its group."""
    import anndata

    from opengem.eval.units import unit_of

    adata = anndata.read_h5ad(corpus_file)
    obs = adata.obs.copy()
    obs["match_group"] = ""
    first = (obs["study"] == "synthetic_1").to_numpy()
    obs.loc[first, "match_group"] = [f"donor={i % 2}" for i in range(int(first.sum()))]
    adata.obs = obs
    view = CorpusView(adata)
    cells = [c for c in perturbation_cells(view) if c.study == "synthetic_1"]
    # the tissue varies: it is the context (2 tissues x compound, shRNA)
    assert len(cells) == 4
    groups = view.values("match_group")
    for c in cells:
        unit = unit_of(c)
        assert (groups[unit.references] == groups[unit.scored]).all()
    # a study where no biological field varies: the match groups are the contexts
    obs.loc[first, "tissue_ontology_id"] = "UBERON:0002048"
    adata.obs = obs
    cells = [c for c in perturbation_cells(CorpusView(adata)) if c.study == "synthetic_1"]
    assert sorted({c.context for c in cells}) == ["donor=0", "donor=1"]


def test_paired_references_are_dealt_among_the_pairs_controls() -> None:
    """Scored rows of one pairing key take that key's controls in turn, not its first."""
    from opengem.eval.units import Cell, pair_references

    controls = np.array([10, 11, 12, 20, 21])
    keys = {10: "a", 11: "a", 12: "a", 20: "b", 21: "b"}
    scored = np.array([0, 1, 2, 3, 4, 5, 6])
    keys |= {0: "a", 1: "a", 2: "a", 3: "a", 4: "b", 5: "b", 6: "c"}
    cell = Cell("s", "ctx", "k", {}, scored, controls, scored, pair_keys=keys)
    refs = pair_references(cell, scored)
    assert refs[:4].tolist() == [10, 11, 12, 10]  # key a: every control once, then again
    assert refs[4:6].tolist() == [20, 21]  # key b: its own controls only
    assert refs[6] in controls  # a key without controls: any control


def test_fast_rows_keeps_focus_studies_first(corpus_file: Path) -> None:
    view = CorpusView.load(corpus_file)
    rows = np.arange(view.obs.shape[0])
    kept = fast_rows(view, rows, ["synthetic_3"], cap=40)
    studies = view.studies[kept]
    assert (studies == "synthetic_3").sum() == (view.studies == "synthetic_3").sum()


def test_additive_shift_and_train_mean() -> None:
    ref = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]])
    shifted = bl.additive_shift(ref, [np.array([1.0, 0.0, np.nan]), np.array([3.0, -2.0, 1.0])])
    assert np.allclose(shifted, ref + np.array([2.0, -1.0, 1.0]))
    assert np.allclose(bl.additive_shift(ref, []), ref)
    assert np.allclose(bl.no_change(ref), ref)
    x = np.array([[1.0, 5.0], [3.0, 0.0]])
    measured = np.array([[True, True], [True, False]])
    assert np.allclose(bl.train_mean(x), [2.0, 2.5])
    assert np.allclose(bl.train_mean(x, measured), [2.0, 5.0])


def test_condition_mean_samples_recover_profile_and_dispersion() -> None:
    rng = np.random.default_rng(0)
    profile = rng.dirichlet(np.ones(300))
    train = rng.poisson(profile * 1e6, size=(4, 300))
    mean = bl.condition_mean(train)
    assert mean.shape == (300,)
    phi = 0.2
    draws = bl.condition_mean_samples(train, 400, 1e6, rng, phi)
    assert draws.shape == (400, 300) and draws.dtype == np.int64
    assert np.corrcoef(draws.mean(axis=0), profile * 1e6)[0, 1] > 0.99
    estimated = bl.estimate_dispersion([draws[:200], draws[200:]])
    expressed = profile * 1e6 > 2000
    assert abs(np.median(estimated[expressed]) - phi) < 0.05
    # genes no sample measured take the fallback
    fallback = np.full(300, 7.0)
    measured = np.ones((4, 300), dtype=bool)
    measured[:, 0] = False
    assert bl.condition_mean(train, measured, fallback)[0] == 7.0


def test_logistic_pca_separates_classes() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(0.0, 3.0, (3, 60))
    y = np.repeat(["a", "b", "c"], 30)
    x = centres[np.repeat(np.arange(3), 30)] + rng.normal(size=(90, 60))
    model = bl.LogisticPCA(n_components=10).fit(x, y.tolist())
    test = centres[[0, 1, 2, 2]] + rng.normal(size=(4, 60))
    assert model.predict(test) == ["a", "b", "c", "c"]
    probs = model.predict_proba(test)
    assert probs.shape == (4, 3) and np.allclose(probs.sum(axis=1), 1.0)


def test_summary_and_verdicts_directions() -> None:
    units = [
        UnitResult(
            "u1",
            "s",
            3,
            model={"r2_all": 0.9, "energy_distance": 2.0, "classifier_auc": 0.55},
            baselines={
                "a": {"r2_all": 0.8, "energy_distance": 1.0, "classifier_auc": 0.9},
                "b": {"r2_all": 1.0, "energy_distance": 3.0, "classifier_auc": 0.7},
            },
        ),
        UnitResult(
            "u2",
            "s",
            3,
            model={"r2_all": 0.7, "energy_distance": 2.0, "classifier_auc": float("nan")},
            baselines={
                "a": {"r2_all": 0.6, "energy_distance": 1.0, "classifier_auc": 0.9},
                "b": {"r2_all": 0.65, "energy_distance": 3.0, "classifier_auc": 0.7},
            },
        ),
    ]
    summary = summarise(units)
    assert summary["n_units"] == 2
    assert math.isclose(summary["model"]["r2_all"], 0.8)
    assert math.isclose(summary["model"]["classifier_auc"], 0.55)  # NaN units skipped
    text = verdicts(units, summary)
    assert "loses to the toughest baseline, b" in text["r2_all"]  # 0.800 < 0.825
    assert "better on 1 of 2 units" in text["r2_all"]
    assert "loses to the toughest baseline, a" in text["energy_distance"]  # lower is better
    assert "beats the toughest baseline, b" in text["classifier_auc"]  # closest to 0.5
    assert summary["n_defined"]["classifier_auc"] == 1
    assert math.isclose(summary["median"]["model"]["r2_all"], 0.8)


def test_a_baseline_of_a_few_units_is_compared_on_those_units() -> None:
    # "easy" applies to the easy unit only: its mean (0.9) beats the model's overall mean
    # (0.6), yet on that unit the model is better (0.95); "hard" applies everywhere
    units = [
        UnitResult("easy", "s", 3, model={"r2_all": 0.95}, baselines={"easy": {"r2_all": 0.9},
                   "hard": {"r2_all": 0.5}}),
        UnitResult("hard", "s", 3, model={"r2_all": 0.25}, baselines={"hard": {"r2_all": 0.3}}),
    ]  # fmt: skip
    summary = summarise(units)
    assert summary["paired"]["easy"]["r2_all"]["n"] == 1
    assert math.isclose(summary["paired"]["easy"]["r2_all"]["model"], 0.95)
    text = verdicts(units, summary)["r2_all"]
    # the model's paired gap to "hard" (0.6 vs 0.4) and to "easy" (0.95 vs 0.9): neither
    # beats it, so the toughest is the one it leads by least
    assert "beats the toughest baseline, easy (0.900" in text
    assert "on the 1 units both are defined" in text


# --------------------------------------------------------------------------- real corpus


@pytest.mark.corpus
@pytest.mark.parametrize(
    ("protocol", "study", "baselines"),
    [
        (
            "held-out-context",
            "airway",  # donors are its contexts (match_group)
            {"no_change", "additive_shift", "train_mean"},
        ),
        (
            "held-out-study",
            "gse147507_covid_lung",
            {"logistic_pca", "logistic_pca_fixed", "condition_mean"},
        ),
        ("fit", "gse89888_t47d_e2", {"no_change", "additive_in_sample"}),
        ("seen-condition", "airway", {"condition_mean"}),
    ],
)
def test_protocols_on_the_real_corpus(
    shared_corpus: Path, tmp_path: Path, protocol: str, study: str, baselines: set[str]
) -> None:
    out = tmp_path / protocol
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--protocol",
            protocol,
            "--corpus",
            str(shared_corpus / "bulk.h5ad"),
            "--study",
            study,
            "--fast",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = check_metrics(out, protocol, baselines)
    manifest = json.loads((shared_corpus / "manifest.json").read_text())
    assert metrics["corpus_checksum"] == manifest["checksum"]
    assert {u["study"] for u in metrics["units"]} == {study}
    # seconds per training: benchmarks/timed_checks.py

"""The evaluation protocols end to end (``--fast``), their baselines and report files.

Synthetic corpus: a compound in 2 tissues x 4 studies (and one shRNA target per
study), so every study is a held-out-context experiment with two contexts.
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
from opengem.eval.experiments import find_experiments
from opengem.eval.protocols import run_protocol, summarise, verdicts
from opengem.eval.runner import CorpusView, EvalError, fast_rows


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
    html = (out / "report.html").read_text()
    pngs = sorted(out.glob("*.png"))
    assert (out / "pca.png") in pngs and (out / "gene_mean_sd.png") in pngs
    for png in pngs:
        assert png.stat().st_size < 400_000
        assert png.name in html
    return metrics


# --------------------------------------------------------------------------- end to end


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
    compound = [u for u in units if "compound" in u["unit"]]
    shrna = [u for u in units if "shrna" in u["unit"]]
    # the planted compound effect is the same in every context: the additive shift finds it
    for u in compound:
        assert u["baselines"]["additive_shift"]["pearson_delta_top100"] > 0.8
        assert u["baselines"]["no_change"]["direction_accuracy_top100"] == 0.0
    # gene-targeting units report the error at the target gene
    assert all("on_target_error" in u["model"] for u in shrna)
    assert "on_target_error" not in compound[0]["model"]


def test_held_out_study_api(corpus_file: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    metrics = run_protocol(
        "held-out-study", corpus_file, tmp_path, fast=True, command="test", log=lines.append
    )
    check_metrics(tmp_path, "held-out-study", {"logistic_pca", "condition_mean"})
    assert (tmp_path / "calibration.png").is_file()
    assert metrics["n_trainings"] == 2  # 4 studies, 2 disjoint folds
    assert sorted(s for f in metrics["folds"] for s in f) == [f"synthetic_{i}" for i in range(4)]
    assert any("holding out" in line for line in lines)
    for unit in metrics["units"]:
        # tissue is always a training class; the held-out study never is
        assert unit["scorable"]["tissue_ontology_id"] == unit["n_samples"]
        assert unit["scorable"].get("study", 0) == 0
        assert "tissue_ontology_id:accuracy" in unit["model"]
        assert "tissue_ontology_id:accuracy" in unit["baselines"]["logistic_pca"]
        assert "samplewise_pearson" in unit["baselines"]["condition_mean"]
    # tissue programmes are strong: the PCA baseline recovers them
    assert metrics["summary"]["baselines"]["logistic_pca"]["tissue_ontology_id:accuracy"] > 0.9


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
        run_protocol("seen-condition", corpus_file, tmp_path, studies=["nope"], log=print)
    with pytest.raises(EvalError, match="unknown protocol"):
        run_protocol("cross-validation", corpus_file, tmp_path, log=print)
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--protocol",
            "held-out-context",
            "--corpus",
            str(tmp_path / "missing.h5ad"),
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2 and "does not exist" in result.output


# --------------------------------------------------------------------------- pieces


def test_experiments_of_synthetic_corpus(corpus_file: Path) -> None:
    view = CorpusView.load(corpus_file)
    experiments = find_experiments(view.obs)
    assert len(experiments) == 8
    for e in experiments:
        assert [u.context for u in e.units] == ["UBERON:0002048", "UBERON:0002107"]
        for u in e.units:
            # references are controls of the same context; held-out rows are all perturbed
            assert set(u.references) <= set(u.controls)
            assert (view.text("perturbation_type").to_numpy()[u.held_out] != "control").all()
            tissue = view.text("tissue_ontology_id").to_numpy()
            assert (tissue[u.perturbed] == u.context).all() and (
                tissue[u.controls] == u.context
            ).all()
    assert find_experiments(view.obs, studies=["synthetic_2"])[0].study == "synthetic_2"


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
        {
            "model": {"r2_all": 0.9, "energy_distance": 2.0, "classifier_auc": 0.55},
            "baselines": {
                "a": {"r2_all": 0.8, "energy_distance": 1.0, "classifier_auc": 0.9},
                "b": {"r2_all": 1.0, "energy_distance": 3.0, "classifier_auc": 0.7},
            },
        },
        {
            "model": {"r2_all": 0.7, "energy_distance": 2.0, "classifier_auc": float("nan")},
            "baselines": {
                "a": {"r2_all": 0.6, "energy_distance": 1.0, "classifier_auc": 0.9},
                "b": {"r2_all": 0.65, "energy_distance": 3.0, "classifier_auc": 0.7},
            },
        },
    ]
    summary = summarise(units)
    assert summary["n_units"] == 2
    assert math.isclose(summary["model"]["r2_all"], 0.8)
    assert math.isclose(summary["model"]["classifier_auc"], 0.55)  # NaN units skipped
    text = verdicts(units, summary)
    assert "loses to the strongest baseline, b" in text["r2_all"]  # 0.800 < 0.825
    assert "better on 1 of 2 units" in text["r2_all"]
    assert "loses to the strongest baseline, a" in text["energy_distance"]  # lower is better
    assert "beats the strongest baseline, b" in text["classifier_auc"]  # closest to 0.5


# --------------------------------------------------------------------------- real corpus


@pytest.mark.corpus
@pytest.mark.parametrize(
    ("protocol", "study", "baselines"),
    [
        (
            "held-out-context",
            "griss2019_melanoma_bcells",
            {"no_change", "additive_shift", "train_mean"},
        ),
        ("held-out-study", "gse147507_covid_lung", {"logistic_pca", "condition_mean"}),
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
    assert metrics["timings"]["training_seconds_total"] < 60 * metrics["n_trainings"]

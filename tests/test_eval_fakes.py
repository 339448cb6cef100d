"""The evaluation with fake models whose answers are known (no training: fast).

- a model that returns the reference unchanged has no effect: counterfactual Pearson Δ
  undefined and magnitude 0;
- a model that returns the additive baseline reproduces the additive row exactly;
- a collapsed generator (one profile for every condition) has diversity 1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import anndata
import numpy as np
import pytest

from opengem.corpus.synthetic import synthetic_corpus
from opengem.eval.corpus import CorpusView, EvalError, perturbation_parts
from opengem.eval.run import run_all, run_protocol
from opengem.eval.units import perturbation_cells

from .eval_fakes import (
    AdditiveModel,
    CollapsedModel,
    CrossStudyAdditiveModel,
    FakeModel,
    fake_trainer,
)


@pytest.fixture(scope="module")
def corpus() -> anndata.AnnData:
    adata, _ = synthetic_corpus(n_genes=200, samples_per_condition=6, seed=1)
    return adata


def quiet(_: str) -> None:
    return None


def run(protocol: str, corpus: anndata.AnnData, out: Path, model: type[FakeModel]) -> dict:
    return run_protocol(protocol, corpus, out, trainer=fake_trainer(model), log=quiet, report=False)


def test_unchanged_reference_has_no_effect(corpus: anndata.AnnData, tmp_path: Path) -> None:
    metrics = run("held-out-context", corpus, tmp_path, FakeModel)
    for unit in metrics["units"]:
        model = unit["model"]
        assert model["cf_pearson_delta_top100"] is None  # undefined, not "nan"
        assert model["cf_magnitude_ratio_top100"] == 0.0
        assert model["pearson_delta_top100"] is None
        # the no-change baseline is the same predictor: its row is undefined the same way
        assert unit["baselines"]["no_change"]["pearson_delta_top100"] is None
        assert unit["diagnostics"]["no_perturbation_sent"]["pearson_delta_top100"] is None
    summary = metrics["summary"]
    assert "cf_pearson_delta_top100" in summary["undefined"]
    assert summary["n_defined"]["cf_pearson_delta_top100"] == 0
    verdict = metrics["verdict"]["cf_pearson_delta_top100"]
    assert "undefined" in verdict and "nan" not in verdict


def test_additive_model_reproduces_the_additive_row(
    corpus: anndata.AnnData, tmp_path: Path
) -> None:
    metrics = run("held-out-context", corpus, tmp_path, AdditiveModel)
    assert len(metrics["units"]) == 16
    for unit in metrics["units"]:
        additive = unit["baselines"]["additive_shift"]
        assert unit["model"] == additive  # every metric, counterfactual ones included
        # sending no perturbation gives the reference back: no effect
        assert unit["diagnostics"]["no_perturbation_sent"]["pearson_delta_top100"] is None
    compound = [u for u in metrics["units"] if "compound" in str(u["perturbation"])]
    assert all(u["model"]["cf_pearson_delta_top100"] > 0.8 for u in compound)
    assert "ties with the toughest baseline" in metrics["verdict"]["pearson_delta_top100"]


def test_collapsed_generator_has_diversity_one(corpus: anndata.AnnData, tmp_path: Path) -> None:
    metrics = run("seen-condition", corpus, tmp_path, CollapsedModel)
    for unit in metrics["units"]:
        assert math.isclose(unit["model"]["diversity"], 1.0)
        # real conditions differ (tissues, perturbations): less correlated
        assert unit["real_diversity"] < unit["model"]["diversity"]
        assert unit["baselines"]["condition_mean"]["diversity"] < 0.999
        assert unit["model"]["diversity_gap"] > unit["baselines"]["condition_mean"]["diversity_gap"]


@pytest.mark.slow  # trains (several seconds on two cores)
def test_metadata_scoring_flags_constant_predictions(
    corpus: anndata.AnnData, tmp_path: Path
) -> None:
    metrics = run("held-out-study", corpus, tmp_path, FakeModel)
    for unit in metrics["units"]:
        md = unit["metadata"]
        # uniform probabilities: one class predicted for every sample, truth varies
        assert "tissue_ontology_id" in md["constant_prediction"]["model"]
        assert "sex" in md["constant_prediction"]["model"]
        assert md["scored"]["tissue_ontology_id"] == unit["n_samples"]
        assert "study" not in md["scored"]
        assert unit["model"]["fields_predicted_constant"] == 2
        assert unit["model"]["tissue_ontology_id:balanced_accuracy"] == 0.5
        # the baselines read the expression: refitted on the study's genes, and fitted
        # once on every gene (the same here, where every study measures every gene)
        assert unit["baselines"]["logistic_pca"]["tissue_ontology_id:accuracy"] > 0.9
        fixed = unit["baselines"]["logistic_pca_fixed"]
        assert fixed["tissue_ontology_id:accuracy"] > 0.9
        assert fixed["metadata_accuracy"] == pytest.approx(
            unit["baselines"]["logistic_pca"]["metadata_accuracy"], abs=0.1
        )


def test_fit_and_held_out_perturbation_units(corpus: anndata.AnnData, tmp_path: Path) -> None:
    fit = run("fit", corpus, tmp_path / "fit", AdditiveModel)
    assert len(fit["units"]) == 16 and fit["n_trainings"] == 1
    assert set(fit["summary"]["baselines"]) == {"no_change", "additive_in_sample"}
    hop = run("held-out-perturbation", corpus, tmp_path / "hop", FakeModel)
    # shRNA has three targets (a type with >= 2 perturbations); the compound is alone
    assert hop["perturbations_by_type"] == {
        "shrna": sorted(
            {f"shrna:{u['perturbation']['perturbation_ontology_id']}" for u in hop["units"]}
        )
    }
    assert {"type_mean", "on_target_only"} <= set(hop["summary"]["baselines"])
    assert all("on_target_error" in u["model"] for u in hop["units"])
    # the compound is in every study (and one shRNA target in two): each study's units
    # see the perturbation only in the other studies
    cross = run("held-out-study-perturbation", corpus, tmp_path / "cross", CrossStudyAdditiveModel)
    assert cross["n_trainings"] == 4 and len(cross["units"]) == 8 + 4
    for unit in cross["units"]:
        compound = unit["perturbation"]["perturbation_type"] == "compound"
        if compound:
            assert unit["baselines"]["cross_study_additive"]["pearson_delta_top100"] > 0.8
        assert len(unit["seen_in_studies"]) == (3 if compound else 1)
        assert unit["model"] == unit["baselines"]["cross_study_additive"]
    with pytest.raises(EvalError, match="no combined perturbation"):
        run("combinations", corpus, tmp_path / "x", FakeModel)
    assert not (tmp_path / "x").exists()  # a failed run leaves no output folder


def test_combinations_and_sum_of_singles(tmp_path: Path) -> None:
    adata, effects = synthetic_corpus(n_genes=200, samples_per_condition=6, seed=2)
    obs = adata.obs.copy()
    for col in ("perturbation_type", "perturbation_ontology_id"):
        obs[col] = obs[col].astype(str)
    targets = list(effects.knockdown_targets)
    # turn study 0's compound samples into a pair of its knockdown and another target
    sel = (obs["study"] == "synthetic_0") & (obs["perturbation_type"] == "compound")
    obs.loc[sel, "perturbation_type"] = "shrna"
    obs.loc[sel, "perturbation_ontology_id"] = f"{targets[0]}|{targets[1]}"
    obs.loc[sel, ["perturbation_dose", "perturbation_time"]] = ""
    second = (obs["study"] == "synthetic_0") & (obs["perturbation_type"] == "shrna")
    second &= obs["perturbation_ontology_id"] == targets[0]
    idx = np.flatnonzero(second.to_numpy())[::2]
    obs.iloc[idx, obs.columns.get_loc("perturbation_ontology_id")] = targets[1]
    adata.obs = obs
    view = CorpusView(adata)
    pairs = [c for c in perturbation_cells(view) if c.is_combination]
    assert len(pairs) == 2
    assert len(perturbation_parts(pairs[0].perturbation)) == 2
    metrics = run("combinations", adata, tmp_path, FakeModel)
    assert len(metrics["units"]) == 2
    for unit in metrics["units"]:
        assert "sum_of_singles" in unit["baselines"]
        assert unit["baselines"]["sum_of_singles"]["on_target_error"] is not None


@pytest.mark.slow  # every protocol end to end (~1 min on two cores)
def test_all_writes_one_summary(corpus: anndata.AnnData, tmp_path: Path) -> None:
    out = tmp_path / "all"
    summary = run_all(corpus, out, trainer=fake_trainer(AdditiveModel), log=quiet)
    assert set(summary["protocols"]) == {
        "fit",
        "held-out-context",
        "held-out-study-perturbation",
        "held-out-perturbation",
        "held-out-study",
        "seen-condition",
    }
    assert set(summary["skipped"]) == {"combinations"}
    assert json.loads((out / "summary.json").read_text())["modality"] == "bulk"
    html = (out / "report.html").read_text()
    for name in summary["protocols"]:
        assert (out / name / "metrics.json").is_file()
        assert f"{name}/report.html" in html
    assert not list(tmp_path.glob(".*partial*"))


def test_single_cell_units_are_scored_as_pseudobulk(tmp_path: Path) -> None:
    """The same corpus read as cells: units pool their cells into pseudobulk
    pseudo-replicates, the unchanged reference still has no effect, and the additive
    model (one shift per cell) still carries the planted compound effect."""
    adata, _ = synthetic_corpus(n_genes=200, samples_per_condition=6, seed=1)
    adata.uns["modality"] = "sc"
    unchanged = run("held-out-context", adata, tmp_path / "fake", FakeModel)
    for unit in unchanged["units"]:
        assert unit["model"]["cf_pearson_delta_top100"] is None
        assert unit["model"]["cf_magnitude_ratio_top100"] == 0.0
    additive = run("held-out-context", adata, tmp_path / "additive", AdditiveModel)
    compound = [u for u in additive["units"] if "compound" in str(u["perturbation"])]
    assert compound
    assert all(u["model"]["cf_pearson_delta_top100"] > 0.8 for u in compound)


def test_generated_samples_get_the_real_depth_on_the_studys_genes() -> None:
    """A study that measured a tenth of the model's transcriptome (its genes hold 10% of
    the generated profile) gets 10x the real library as ``total_count``, so its drawn
    samples carry the real depth on the genes it measured."""
    from types import SimpleNamespace

    from opengem.eval.querying import ModelClient

    profile = np.full(100, 0.9 / 90)
    profile[:10] = 0.01  # the panel: 10% of the profile
    queries: list[dict] = []

    class Panel:
        modality = "bulk"

        def run(self, query: dict, task: str | None) -> SimpleNamespace:
            queries.append(query)
            n = sum(i["num_samples"] for i in query["inputs"])
            return SimpleNamespace(counts=np.tile(profile * query["total_count"], (n, 1)))

        def check(self, query: dict, task: str | None) -> None:
            return None

        def close(self) -> None:
            return None

    client = ModelClient(Panel())  # type: ignore[arg-type]
    client.generate([{"tissue_ontology_id": "UBERON:0002048"}], [3], np.arange(10), 1000.0)
    drawn = [q for q in queries if q["sampling_strategy"] == "sample generation"]
    assert len(drawn) == 1 and drawn[0]["total_count"] == 10_000

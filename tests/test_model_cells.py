"""Shallow samples (single cells): effects in pseudobulk space, heads on query-time inputs.

One small model in linear mean space is trained on a synthetic corpus of shallow
samples (~1,000 reads; ``opengem.corpus.synthetic``) whose study ``synthetic_0``
measured only half of the genes, with a sixth of the cells held out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from opengem.contract import validate_query
from opengem.corpus.synthetic import DEX, synthetic_corpus
from opengem.engine import Predictor
from opengem.eval.metrics import pseudobulk, pseudobulk_mean
from opengem.train import TrainConfig
from opengem.train.fit import train_bundle

REF_MODEL, PRED_MODEL = "gem-1-sc_reference-conditioning", "gem-1-sc_predict-metadata"
DEX_RECORD = {
    "perturbation_type": "compound",
    "perturbation_ontology_id": DEX,
    "perturbation_dose": "1 uM",
    "perturbation_time": "18 hours",
}


def _train(adata: Any, mean_space: str) -> Any:
    config = TrainConfig.model_validate(
        {
            "modality": "sc",
            "model": {
                "latent_biological": 4,
                "latent_technical": 2,
                "latent_perturbation": 4,
                "mean_space": mean_space,
            },
            "training": {"seed": 0},
        }
    )
    return train_bundle(adata, config, None, progress=False, store_latents=False).bundle


@pytest.fixture(scope="module")
def cells() -> dict[str, Any]:
    adata, effects = synthetic_corpus(
        samples_per_condition=60, library_size=1000.0, dispersion=50.0, seed=1
    )
    adata.uns["modality"] = "sc"
    held = np.arange(adata.n_obs) % 6 == 0
    train = adata[~held].copy()
    return {
        "adata": adata,
        "effects": effects,
        "held": np.flatnonzero(held),
        "linear": _train(train, "linear"),
        "log": _train(train, "log"),
    }


def _lcpm(counts: np.ndarray) -> np.ndarray:
    counts = np.atleast_2d(counts).astype(float)
    return np.log1p(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) * 1e6)


def test_pseudobulk_is_the_log_of_the_mean_cpm() -> None:
    # two cells: a gene at 0 and 999 CPM has mean CPM 499.5, whatever the logs average
    lcpm = np.log1p(np.array([[0.0, 1e6], [999.0, 1e6 - 999.0]]))
    assert pseudobulk_mean(lcpm)[0] == pytest.approx(np.log1p(499.5))
    assert lcpm.mean(axis=0)[0] == pytest.approx(np.log1p(999.0) / 2)
    rows = np.log1p(np.arange(12, dtype=float).reshape(6, 2))
    pools = pseudobulk(rows, 3)  # rows 0,3 / 1,4 / 2,5
    assert pools.shape == (3, 2)
    assert pools[1, 1] == pytest.approx(np.log1p((3.0 + 9.0) / 2))
    assert pseudobulk(rows[:2], 5).shape == (2, 2)  # fewer rows than pools: one each


@pytest.mark.slow  # shares a fitted model (~1 min on two cores)
def test_effects_are_learned_as_pseudobulk_fold_changes(cells: dict[str, Any]) -> None:
    """In shallow cells a 4x induction is ~log(4) in pseudobulk; the mean of the
    cells' logs says something else (detection rate times a large log)."""
    adata, effects = cells["adata"], cells["effects"]
    obs = adata.obs
    x = adata.X.toarray().astype(float)
    lcpm = _lcpm(x)
    genes = np.asarray(effects.perturbation_up)
    dex = (obs["perturbation_ontology_id"] == DEX).to_numpy()
    ctrl = (obs["perturbation_type"] == "control").to_numpy()
    measured = (obs["study"] != "synthetic_0").to_numpy()
    truth = pseudobulk_mean(lcpm[dex & measured]) - pseudobulk_mean(lcpm[ctrl & measured])
    for space in ("linear", "log"):
        model = cells[space].model
        rows = [i for i, u in enumerate(model.units) if u.key == f"compound:{DEX}"]
        learned = model.unit_effect[rows].astype(float).mean(axis=0)
        err = np.abs(learned[genes] - truth[genes]).mean()
        if space == "linear":
            assert err < 0.2, f"linear-space effect off the pseudobulk fold change by {err:.2f}"
        else:
            assert err > 0.3, "mean-of-logs effect should differ in shallow cells"


@pytest.mark.slow  # shares a fitted model (~1 min on two cores)
def test_reference_conditioning_moves_the_pseudobulk_by_the_planted_fold(
    cells: dict[str, Any],
) -> None:
    adata, effects = cells["adata"], cells["effects"]
    obs = adata.obs
    predictor = Predictor(cells["linear"])
    ctrl = np.flatnonzero(
        (obs["perturbation_type"] == "control").to_numpy()
        & (obs["study"] == "synthetic_1").to_numpy()
    )[:40]

    def run(metadata: dict[str, str]) -> np.ndarray:
        query = validate_query(
            {
                "inputs": [
                    {
                        "counts": adata.X[r].toarray().ravel().astype(int).tolist(),
                        "metadata": metadata,
                        "num_samples": 1,
                    }
                    for r in ctrl
                ],
                "sampling_strategy": "mean estimation",
                "deterministic_latents": True,
                "total_count": 10_000_000,
                "fixed_total_count": True,
            },
            REF_MODEL,
        )
        return pseudobulk_mean(_lcpm(np.asarray(predictor.predict(query).counts)))

    change = run(DEX_RECORD) - run({})
    up, down = np.asarray(effects.perturbation_up), np.asarray(effects.perturbation_down)
    fold = np.log(effects.fold)
    assert np.median(change[up]) == pytest.approx(fold, abs=0.35)
    assert np.median(change[down]) == pytest.approx(-fold, abs=0.35)


@pytest.mark.slow  # shares a fitted model (~1 min on two cores)
def test_heads_read_a_gene_subset_study_as_a_query_brings_it(cells: dict[str, Any]) -> None:
    """Held-out cells of the half-gene study arrive with zeros for the genes it did not
    measure; the heads were trained on the same view and still call their tissue."""
    adata = cells["adata"]
    rows = [r for r in cells["held"] if adata.obs["study"].iloc[r] == "synthetic_0"]
    query = validate_query(
        {"inputs": [{"counts": adata.X[r].toarray().ravel().astype(int).tolist()} for r in rows]},
        PRED_MODEL,
    )
    result = Predictor(cells["linear"]).predict(query)
    truth = adata.obs["tissue_ontology_id"].iloc[rows].astype(str).tolist()
    predicted = [m["tissue_ontology_id"] for m in result.metadata]
    assert np.mean([p == t for p, t in zip(predicted, truth, strict=True)]) >= 0.9


def _overdispersion(counts: np.ndarray) -> np.ndarray:
    """Per gene, (var - mean) / mean² of counts at one library: the NB φ."""
    mean, var = counts.mean(axis=0), counts.var(axis=0, ddof=1)
    return (var - mean) / np.maximum(mean, 1e-12) ** 2


@pytest.mark.slow  # fits a small model (~30 s on two cores)
def test_sample_generation_draws_cells_as_overdispersed_as_the_training_cells() -> None:
    """100 genes whose cells vary far beyond counting noise in one study (planted in
    synthetic_2: Gamma noise of φ = 1 on top of the corpus's φ = 0.02) get that study
    a learned dispersion near 1 there, the quiet study near 0.02; cells generated in
    each study carry their study's dispersion, around the condition's pseudobulk."""
    import scipy.sparse as sp

    adata, _ = synthetic_corpus(
        samples_per_condition=60, library_size=2000.0, dispersion=50.0, seed=5
    )
    adata.uns["modality"] = "sc"
    rng = np.random.default_rng(5)
    x = adata.X.toarray().astype(np.float64)
    obs = adata.obs
    noisy = (obs["study"] == "synthetic_2").to_numpy()
    wild = np.arange(100)
    block = x[np.ix_(noisy, wild)]
    x[np.ix_(noisy, wild)] = rng.poisson(block * rng.gamma(1.0, 1.0, block.shape))
    adata.X = sp.csr_matrix(x.astype(np.int32))
    bundle = _train(adata, "linear")
    model = bundle.model
    own = model.study_cell_dispersion
    expressed = np.flatnonzero(x.mean(axis=0) > 2.0)
    inside, outside = np.intersect1d(expressed, wild), np.setdiff1d(expressed, wild)[:200]
    assert len(inside) >= 30 and len(outside) >= 100
    assert 0.6 < np.median(own["synthetic_2"][inside]) < 1.6
    assert np.median(own["synthetic_1"][inside]) < 0.15
    assert np.median(own["synthetic_2"][outside]) < 0.1
    assert np.median(own["synthetic_1"][inside]) < np.median(model.cell_dispersion[inside])
    predictor = Predictor(bundle)
    metadata_of: dict[str, dict[str, str]] = {}

    def generated(study: str) -> tuple[np.ndarray, np.ndarray]:
        """400 cells generated in a control condition of ``study``, and its real cells."""
        rows = np.flatnonzero(
            (obs["study"] == study).to_numpy() & (obs["perturbation_type"] == "control").to_numpy()
        )
        fields = ("tissue_ontology_id", "sample_type", "study", "perturbation_type")
        metadata = {f: str(obs[f].iloc[rows[0]]) for f in fields}
        metadata_of[study] = metadata
        keep = np.all([(obs[f].iloc[rows] == v).to_numpy() for f, v in metadata.items()], axis=0)
        query = validate_query(
            {
                "inputs": [{"metadata": metadata, "num_samples": 400}],
                "sampling_strategy": "sample generation",
                "deterministic_latents": True,
                "total_count": 2000,
                "seed": 0,
            },
            "gem-1-sc",
        )
        return np.asarray(predictor.predict(query).counts, dtype=np.float64), x[rows[keep]]

    loud, real = generated("synthetic_2")
    quiet, _ = generated("synthetic_1")
    assert np.median(_overdispersion(loud)[inside]) == pytest.approx(
        np.median(own["synthetic_2"][inside]), rel=0.35
    )
    assert np.median(_overdispersion(quiet)[inside]) < 0.2
    assert np.median(_overdispersion(loud)[inside]) > 5 * np.median(_overdispersion(quiet)[inside])
    real = real / real.sum(axis=1, keepdims=True) * 2000
    share = np.corrcoef(np.log1p(loud.mean(axis=0)), np.log1p(real.mean(axis=0)))[0, 1]
    assert share > 0.95

    # both studies in one query (rows of either within one decoded block): each input
    # is drawn with its own study's dispersion
    both = validate_query(
        {
            "inputs": [
                {"metadata": dict(metadata_of["synthetic_1"]), "num_samples": 203},
                {"metadata": dict(metadata_of["synthetic_2"]), "num_samples": 301},
            ],
            "sampling_strategy": "sample generation",
            "deterministic_latents": True,
            "total_count": 2000,
            "seed": 1,
        },
        "gem-1-sc",
    )
    mixed = np.asarray(predictor.predict(both).counts, dtype=np.float64)
    quiet_part, loud_part = (
        _overdispersion(mixed[:203])[inside],
        _overdispersion(mixed[203:])[inside],
    )
    assert np.median(quiet_part) < 0.2
    assert np.median(loud_part) > 5 * np.median(quiet_part)


@pytest.mark.slow  # shares a fitted model (~1 min on two cores)
def test_sample_generation_draws_each_cells_depth_as_the_training_cells_vary(
    cells: dict[str, Any],
) -> None:
    """The corpus's cells differ in depth (log-normal, SD 0.3 planted): the model learns
    that SD, and cells generated from metadata vary as much around the asked total;
    mean estimation keeps every cell at the total."""
    model = cells["linear"].model
    assert 0.2 < model.cell_library_sd < 0.4
    own = model.study_cell_library_sd["synthetic_1"]
    assert 0.2 < own < 0.4
    predictor = Predictor(cells["linear"])
    metadata = {
        "tissue_ontology_id": str(cells["adata"].obs["tissue_ontology_id"].iloc[0]),
        "study": "synthetic_1",
        "perturbation_type": "control",
    }

    def libraries(strategy: str) -> np.ndarray:
        query = validate_query(
            {
                "inputs": [{"metadata": metadata, "num_samples": 500}],
                "sampling_strategy": strategy,
                "total_count": 5000,
                "seed": 0,
            },
            "gem-1-sc",
        )
        return np.asarray(predictor.predict(query).counts, dtype=np.float64).sum(axis=1)

    drawn = libraries("sample generation")
    assert np.log(drawn).std() == pytest.approx(own, rel=0.2)
    assert drawn.mean() == pytest.approx(5000, rel=0.05)
    expected = libraries("mean estimation")
    assert np.abs(expected - 5000).max() <= 10  # rounding only

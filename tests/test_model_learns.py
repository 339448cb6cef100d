"""The model learns planted structure (each assertion can fail for a real reason).

One small model is trained on a synthetic corpus (``opengem.corpus.synthetic``) with
a sixth of the samples and every knock-down of one target gene held out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from opengem.contract import validate_query
from opengem.corpus.synthetic import DEX, LIVER, LUNG, synthetic_corpus
from opengem.engine import Predictor
from opengem.ontology import default_gene_space
from opengem.train import TrainConfig
from opengem.train.fit import train_bundle

GENES = default_gene_space()
REF_MODEL, PRED_MODEL = "gem-1-bulk_reference-conditioning", "gem-1-bulk_predict-metadata"


@pytest.fixture(scope="module")
def trained() -> dict[str, Any]:
    adata, effects = synthetic_corpus(seed=0)
    held_target = list(effects.knockdown_targets)[2]
    obs = adata.obs
    is_held_kd = (obs["perturbation_ontology_id"] == held_target).to_numpy()
    held_out = (np.arange(adata.n_obs) % 6 == 0) & ~is_held_kd
    train = adata[~held_out & ~is_held_kd].copy()
    config = TrainConfig.model_validate(
        {
            "modality": "bulk",
            "model": {"latent_biological": 8, "latent_technical": 2, "latent_perturbation": 8},
            "training": {"validation_studies": ["synthetic_3"], "seed": 0},
        }
    )
    result = train_bundle(train, config, None, progress=False)
    return {
        "adata": adata,
        "effects": effects,
        "held_out": np.flatnonzero(held_out),
        "held_target": held_target,
        "bundle": result.bundle,
        "predictor": Predictor(result.bundle),
        "train_mean": np.asarray(train.X.mean(axis=0)).ravel(),
    }


def _log_cpm(counts: np.ndarray) -> np.ndarray:
    counts = np.atleast_2d(counts).astype(float)
    return np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e6)


def _reference_query(counts: np.ndarray, metadata: dict[str, str]) -> Any:
    return validate_query(
        {
            "inputs": [
                {"counts": counts.astype(int).tolist(), "metadata": metadata, "num_samples": 1}
            ],
            "sampling_strategy": "mean estimation",
            "deterministic_latents": True,
            "seed": 1,
        },
        REF_MODEL,
    )


def test_prior_mean_beats_the_per_gene_mean_on_held_out_samples(
    trained: dict[str, Any],
) -> None:
    adata, rows = trained["adata"], trained["held_out"]
    model = trained["bundle"].model
    obs = adata.obs.iloc[rows]
    full = adata.X[rows].toarray()[:, :400].min(axis=1) > 0  # studies measuring every gene
    unperturbed = rows[(obs["perturbation_type"] == "control").to_numpy() & full]
    records = [
        {"tissue_ontology_id": t}
        for t in adata.obs["tissue_ontology_id"].iloc[unperturbed].astype(str)
    ]
    real = _log_cpm(adata.X[unperturbed].toarray())[:, :400]
    prior = model.prior_mean(records)[:, :400]
    train_mean = _log_cpm(trained["train_mean"][None, :])[0, :400]
    model_err = np.mean((prior - real) ** 2)
    mean_err = np.mean((train_mean[None, :] - real) ** 2)
    assert model_err < 0.5 * mean_err


def test_prior_means_separate_planted_tissues(trained: dict[str, Any]) -> None:
    predictor, effects = trained["predictor"], trained["effects"]
    result = predictor.predict(
        validate_query(
            {
                "inputs": [
                    {
                        "metadata": {"tissue_ontology_id": t, "perturbation_type": "control"},
                        "num_samples": 1,
                    }
                    for t in (LUNG, LIVER)
                ],
                "sampling_strategy": "mean estimation",
                "deterministic_latents": True,
            },
            "gem-1-bulk",
        )
    )
    lc = _log_cpm(result.counts)
    lung_genes, liver_genes = effects.tissue_genes[LUNG], effects.tissue_genes[LIVER]
    assert lc[0, lung_genes].mean() - lc[1, lung_genes].mean() > 1.0
    assert lc[1, liver_genes].mean() - lc[0, liver_genes].mean() > 1.0


def test_reference_conditioning_recovers_the_planted_perturbation(trained: dict[str, Any]) -> None:
    adata, effects, predictor = trained["adata"], trained["effects"], trained["predictor"]
    obs = adata.obs.iloc[trained["held_out"]]
    controls = trained["held_out"][(obs["perturbation_type"] == "control").to_numpy()]
    lfc_up, lfc_down, lfc_other = [], [], []
    planted = set(effects.perturbation_up) | set(effects.perturbation_down)
    other = np.array([g for g in range(100, 400) if g not in planted])
    for row in controls[:4]:
        reference = adata.X[row].toarray().ravel()
        dex = {
            "perturbation_type": "compound",
            "perturbation_ontology_id": DEX,
            "perturbation_dose": "1 uM",
            "perturbation_time": "18 hours",
        }
        treated = predictor.predict(_reference_query(reference, dex)).counts[0]
        control = predictor.predict(_reference_query(reference, {})).counts[0]
        lfc = _log_cpm(treated)[0] - _log_cpm(control)[0]
        lfc_up.append(lfc[effects.perturbation_up].mean())
        lfc_down.append(lfc[effects.perturbation_down].mean())
        lfc_other.append(np.abs(lfc[other]).mean())
    planted_lfc = np.log(effects.fold)
    assert 0.5 * planted_lfc < np.mean(lfc_up) < 1.5 * planted_lfc
    assert -1.5 * planted_lfc < np.mean(lfc_down) < -0.5 * planted_lfc
    assert np.mean(lfc_other) < 0.25 * planted_lfc


def test_classifier_heads_predict_the_planted_tissue(trained: dict[str, Any]) -> None:
    adata, predictor = trained["adata"], trained["predictor"]
    rows = trained["held_out"]
    query = validate_query(
        {"inputs": [{"counts": adata.X[r].toarray().ravel().tolist()} for r in rows]}, PRED_MODEL
    )
    result = predictor.predict(query)
    truth = adata.obs["tissue_ontology_id"].iloc[rows].astype(str).tolist()
    predicted = [m["tissue_ontology_id"] for m in result.metadata]
    assert np.mean([p == t for p, t in zip(predicted, truth, strict=True)]) >= 0.95
    for probs in result.classifier_probs:
        assert abs(sum(probs["tissue_ontology_id"].values()) - 1) < 1e-6


def test_on_target_term_knocks_down_an_unseen_target(trained: dict[str, Any]) -> None:
    adata, predictor = trained["adata"], trained["predictor"]
    target = trained["held_target"]
    assert target not in predictor.vocab.fields["perturbation_ontology_id"].classes
    index = GENES.index_of(target)
    row = trained["held_out"][0]
    reference = adata.X[row].toarray().ravel()
    kd = predictor.predict(
        _reference_query(
            reference, {"perturbation_type": "shrna", "perturbation_ontology_id": target}
        )
    )
    control = predictor.predict(_reference_query(reference, {}))
    drop = _log_cpm(control.counts)[0, index] - _log_cpm(kd.counts)[0, index]
    assert drop > np.log(2)


def _dex(dose: str) -> dict[str, str]:
    return {
        "perturbation_type": "compound",
        "perturbation_ontology_id": DEX,
        "perturbation_dose": dose,
        "perturbation_time": "18 hours",
    }


def test_no_perturbation_returns_the_reference_and_outputs_say_what_was_seen(
    trained: dict[str, Any],
) -> None:
    adata, predictor = trained["adata"], trained["predictor"]
    held = trained["held_out"]
    x = adata.X[held].toarray()[:, :400]
    control_rows = held[(adata.obs["perturbation_type"].iloc[held] == "control").to_numpy()]
    row = next(r for r in control_rows if x[list(held).index(r)].min() > 0)  # a whole panel
    reference = adata.X[row].toarray().ravel()
    control = predictor.predict(_reference_query(reference, {}))
    # the reference itself (denoised a little toward similar contexts), not a redraw
    r = np.corrcoef(_log_cpm(control.counts)[0, :400], _log_cpm(reference)[0, :400])[0, 1]
    assert r > 0.98
    treated = predictor.predict(_reference_query(reference, _dex("1 uM")))
    assert treated.metadata[0]["perturbation_seen"] == "true"
    assert control.metadata[0]["perturbation_seen"] == ""


def test_an_unseen_compound_is_humble_and_flagged(trained: dict[str, Any]) -> None:
    adata, predictor = trained["adata"], trained["predictor"]
    row = trained["held_out"][0]
    reference = adata.X[row].toarray().ravel()
    seen = predictor.predict(_reference_query(reference, _dex("1 uM")))
    unseen_meta = dict(_dex("1 uM"), perturbation_ontology_id="CHEMBL25")  # aspirin
    unseen = predictor.predict(_reference_query(reference, unseen_meta))
    control = predictor.predict(_reference_query(reference, {}))
    base = _log_cpm(control.counts)[0]
    seen_shift = np.abs(_log_cpm(seen.counts)[0] - base)[:400].sum()
    unseen_shift = np.abs(_log_cpm(unseen.counts)[0] - base)[:400].sum()
    assert unseen.metadata[0]["perturbation_seen"] == "false"
    assert unseen_shift < seen_shift  # shrunk toward what is known of compounds


def _small_bundle(adata: Any) -> Any:
    config = TrainConfig.model_validate(
        {
            "modality": "bulk",
            "model": {"latent_biological": 4, "latent_technical": 2, "latent_perturbation": 4},
            "training": {"validation_fraction": 0.0, "seed": 0},
        }
    )
    return train_bundle(adata, config, None, progress=False).bundle


def _generated_in(predictor: Predictor, study: str) -> np.ndarray:
    """log-CPM of 40 lung samples generated in ``study`` (2M reads each, seed 0)."""
    metadata = {"tissue_ontology_id": LUNG, "sample_type": "primary tissue", "study": study}
    query = validate_query(
        {
            "inputs": [{"metadata": metadata, "num_samples": 40}],
            "sampling_strategy": "sample generation",
            "total_count": 2_000_000,
            "seed": 0,
        },
        "gem-1-bulk",
    )
    return _log_cpm(np.asarray(predictor.predict(query).counts))


def test_generation_in_a_seen_study_varies_as_much_as_that_study() -> None:
    """A study whose replicates vary 4x as much (planted) generates samples that vary
    more than those of a quiet study, and draws no second batch on top of its own."""
    import scipy.sparse as sp

    adata, _ = synthetic_corpus(seed=3)
    rng = np.random.default_rng(3)
    x = adata.X.toarray()
    noisy = (adata.obs["study"] == "synthetic_2").to_numpy()
    x[noisy] = rng.poisson(x[noisy] * rng.lognormal(0.0, 0.6, x[noisy].shape))
    adata.X = sp.csr_matrix(x.astype(np.int32))
    bundle = _small_bundle(adata)
    spread = bundle.model.study_spread
    assert spread["synthetic_2"] > 2.5 * max(spread["synthetic_1"], spread["synthetic_3"])
    predictor = Predictor(bundle)

    def generated_sd(study: str) -> float:
        return float(_generated_in(predictor, study)[:, :400].std(axis=0).mean())

    assert generated_sd("synthetic_2") > 1.3 * generated_sd("synthetic_1")


def test_generation_in_a_seen_study_varies_gene_by_gene_as_that_study() -> None:
    """A study whose replicates vary more in 100 genes only (planted) stores a larger
    noise SD for those genes than for the rest, and generates replicates that vary
    more in them than the samples generated for a quiet study do."""
    import scipy.sparse as sp

    adata, _ = synthetic_corpus(seed=4)
    rng = np.random.default_rng(4)
    x = adata.X.toarray().astype(np.float64)
    noisy = (adata.obs["study"] == "synthetic_2").to_numpy()
    genes = np.arange(100)
    block = x[np.ix_(noisy, genes)]
    x[np.ix_(noisy, genes)] = rng.poisson(block * rng.lognormal(0.0, 0.8, block.shape))
    adata.X = sp.csr_matrix(x.astype(np.int32))
    bundle = _small_bundle(adata)
    own = bundle.model.study_noise_sd
    assert {"synthetic_1", "synthetic_2"} <= set(own)
    expressed = np.flatnonzero(x[noisy].mean(axis=0) > 50)
    inside = np.intersect1d(expressed, genes)
    outside = np.setdiff1d(expressed, genes)[:400]
    assert len(inside) >= 20 and len(outside) >= 100
    assert np.median(own["synthetic_2"][inside]) > 2 * np.median(own["synthetic_2"][outside])
    predictor = Predictor(bundle)

    def generated_sd(study: str, cols: np.ndarray) -> float:
        return float(_generated_in(predictor, study)[:, cols].std(axis=0).mean())

    ratio_noisy = generated_sd("synthetic_2", inside) / generated_sd("synthetic_2", outside)
    ratio_quiet = generated_sd("synthetic_1", inside) / generated_sd("synthetic_1", outside)
    assert ratio_noisy > 1.5 * ratio_quiet


def test_a_head_gets_its_own_genes_per_class_of_its_field() -> None:
    """``field_genes_per_class``: a head gets that many of its own genes per class of
    its field (a tissue head no longer shares 20 genes among all tissues), never fewer
    than ``n_field_genes``; 0 leaves every head at ``n_field_genes``."""
    adata, _ = synthetic_corpus(seed=0)

    def heads(per_class: int) -> dict[str, tuple[int, int]]:
        config = TrainConfig.model_validate(
            {
                "modality": "bulk",
                "model": {
                    "latent_biological": 4,
                    "latent_technical": 2,
                    "latent_perturbation": 4,
                    "n_field_genes": 4,
                    "field_genes_per_class": per_class,
                },
                "training": {"validation_fraction": 0.0, "seed": 0},
            }
        )
        model = train_bundle(adata, config, None, progress=False).bundle.model
        return {n: (len(c.genes), len(c.classes)) for n, c in model.classifiers.items()}

    plain, wide = heads(0), heads(3)
    assert {genes for genes, _ in plain.values()} == {4}
    assert wide["tissue_ontology_id"] == (6, 2)  # liver, lung: 3 genes each
    for name, (genes, classes) in wide.items():
        assert genes == max(4, 3 * classes), name
    assert any(classes > 2 for _, classes in wide.values())


def test_generation_in_a_named_context_takes_the_effect_measured_there() -> None:
    """A compound planted with the opposite effect in one study: generating that study's
    samples from metadata gives its own (reversed) effect, another study's its normal
    one; naming no study blends the contexts (most of them normal)."""
    import scipy.sparse as sp

    adata, effects = synthetic_corpus(seed=5)
    rng = np.random.default_rng(5)
    x = adata.X.toarray()
    obs = adata.obs
    flip = ((obs["study"] == "synthetic_1") & (obs["perturbation_ontology_id"] == DEX)).to_numpy()
    up, down, fold = effects.perturbation_up, effects.perturbation_down, effects.fold
    # up genes down by fold² (thinning), down genes up by fold²: the effect reversed
    x[np.ix_(flip, up)] = rng.binomial(x[np.ix_(flip, up)], 1.0 / fold**2)
    x[np.ix_(flip, down)] = rng.poisson(x[np.ix_(flip, down)] * fold**2)
    adata.X = sp.csr_matrix(x.astype(np.int32))
    predictor = Predictor(_small_bundle(adata))

    def dex_lfc(study: str | None) -> float:
        base = {"tissue_ontology_id": LIVER, "sample_type": "primary tissue"}
        if study:
            base["study"] = study
        query = validate_query(
            {
                "inputs": [
                    {"metadata": {**base, **_dex("1 uM")}, "num_samples": 1},
                    {"metadata": {**base, "perturbation_type": "control"}, "num_samples": 1},
                ],
                "sampling_strategy": "mean estimation",
                "deterministic_latents": True,
            },
            "gem-1-bulk",
        )
        lc = _log_cpm(np.asarray(predictor.predict(query).counts))
        lfc = lc[0] - lc[1]
        return float(lfc[up].mean() - lfc[down].mean()) / 2

    def stored_lfc(study: str) -> float:
        """The same from a stored control sample of ``study`` (condition on sample ids)."""
        control = (obs["study"] == study) & (obs["perturbation_type"] == "control")
        sample = str(obs.index[control.to_numpy() & (obs["tissue_ontology_id"] == LIVER)][0])

        def run(metadata: dict[str, str]) -> np.ndarray:
            query = validate_query(
                {
                    "inputs": [{"sample_ids": [sample], "metadata": metadata, "num_samples": 1}],
                    "sampling_strategy": "mean estimation",
                    "deterministic_latents": True,
                },
                "gem-1-bulk_condition-on-sample-ids",
            )
            return _log_cpm(np.asarray(predictor.predict(query).counts))[0]

        lfc = run(_dex("1 uM")) - run({})
        return float(lfc[up].mean() - lfc[down].mean()) / 2

    planted = float(np.log(fold))
    own, other, blended = dex_lfc("synthetic_1"), dex_lfc("synthetic_2"), dex_lfc(None)
    assert -1.3 * planted < own < -0.7 * planted
    assert 0.7 * planted < other < 1.3 * planted
    assert own < blended and blended > 0
    assert -1.3 * planted < stored_lfc("synthetic_1") < -0.7 * planted
    assert 0.7 * planted < stored_lfc("synthetic_2") < 1.3 * planted


def test_head_temperature_weighs_each_held_out_study_alike() -> None:
    """One large study whose labels its feature gives away and five small ones where 40%
    of them contradict it: a temperature fitted on every held-out sample alike trusts the
    large study (the sharpest of the grid, 0.5); weighing each study the same softens
    the head, as most studies say it must be (~2)."""
    from opengem.model.fitting import _temperature
    from opengem.model.gem import ModelConfig

    rng = np.random.default_rng(0)
    feats, labels, studies = [], [], []
    for s, (n, flipped) in enumerate([(3000, 0.0)] + [(40, 0.4)] * 5):
        y = rng.integers(0, 2, n)
        signal = np.where(rng.random(n) < flipped, 1 - y, y)
        feats.append(np.c_[3.0 * (2 * signal - 1) + rng.normal(0, 1, n), rng.normal(0, 1, n)])
        labels.append(y)
        studies += [f"s{s}"] * n
    t = _temperature(
        np.vstack(feats),
        np.concatenate(labels),
        np.array(studies),
        2,
        ModelConfig(n_genes=2),
        np.random.default_rng(0),
    )
    assert t > 1.5

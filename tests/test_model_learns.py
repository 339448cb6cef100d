"""The model learns planted structure (each assertion can fail for a real reason).

One small model is trained on a synthetic corpus (``opengem.corpus.synthetic``) with
a sixth of the samples and every knock-down of one target gene held out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from opengem.contract import LatentGroup, validate_query
from opengem.corpus.synthetic import DEX, LIVER, LUNG, synthetic_corpus
from opengem.engine import Predictor
from opengem.model import GROUPS, nb_log_likelihood
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
            "model": {
                "hidden": 64,
                "latent_biological": 8,
                "latent_technical": 4,
                "latent_perturbation": 8,
            },
            "training": {
                "max_epochs": 60,
                "batch_size": 32,
                "kl_warmup_epochs": 10,
                "patience": 15,
                "validation_studies": ["synthetic_3"],
                "seed": 0,
            },
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


def test_reconstruction_beats_a_per_gene_mean_model(trained: dict[str, Any]) -> None:
    adata, rows = trained["adata"], trained["held_out"]
    module = trained["bundle"].module
    x = torch.as_tensor(adata.X[rows].toarray()[:, :400], dtype=torch.float32)
    genes = torch.arange(400)
    with torch.no_grad():
        q = module.inference(x, genes)
        lib = x.sum(1, keepdim=True)
        meta = trained["predictor"]._encode([{}] * len(rows))
        out = module.generative({g: q[g][0] for g in GROUPS}, lib, meta, genes)
        model_ll = nb_log_likelihood(x, out["mu"], out["theta"]).sum(1).mean()
        profile = torch.as_tensor(trained["train_mean"][:400], dtype=torch.float32)
        mean_mu = lib * profile / profile.sum()
        mean_ll = nb_log_likelihood(x, mean_mu, out["theta"]).sum(1).mean()
    assert model_ll > mean_ll + 50  # nats per sample, on held-out samples


def test_prior_means_separate_planted_tissues(trained: dict[str, Any]) -> None:
    predictor, effects = trained["predictor"], trained["effects"]
    prior = predictor._prior(
        [
            {"tissue_ontology_id": LUNG, "perturbation_type": "control"},
            {"tissue_ontology_id": LIVER, "perturbation_type": "control"},
        ]
    )
    mean, std = prior[LatentGroup.BIOLOGICAL]
    assert np.linalg.norm(mean[0] - mean[1]) > 2 * std.mean()
    # and the decoded priors express each tissue's own program
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

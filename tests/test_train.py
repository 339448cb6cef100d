"""Training mechanics: seeds, configs, bundles, the CLI, and a 2-process CPU DDP fit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from opengem.corpus.synthetic import synthetic_corpus
from opengem.engine import BundleError, Predictor, load_bundle, save_bundle
from opengem.train import TrainConfig, load_config
from opengem.train.fit import train_bundle

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "modality": "bulk",
    "model": {
        "hidden": 16,
        "latent_biological": 4,
        "latent_technical": 2,
        "latent_perturbation": 4,
        "embedding": 4,
        "prior_hidden": 8,
    },
    "training": {
        "max_epochs": 2,
        "batch_size": 32,
        "kl_warmup_epochs": 1,
        "validation_studies": ["synthetic_3"],
    },
}


@pytest.fixture(scope="module")
def corpus():  # type: ignore[no-untyped-def]
    adata, _ = synthetic_corpus(n_genes=120, samples_per_condition=4, seed=3)
    return adata


def test_same_config_and_seed_give_the_same_weights(corpus) -> None:  # type: ignore[no-untyped-def]
    config = TrainConfig.model_validate(TINY)
    a = train_bundle(corpus, config, None, progress=False).bundle.module.state_dict()
    b = train_bundle(corpus, config, None, progress=False).bundle.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = TrainConfig.model_validate({**TINY, "training": {**TINY["training"], "seed": 1}})
    c = train_bundle(corpus, other, None, progress=False).bundle.module.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_bundle_round_trip_and_checks(corpus, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = train_bundle(corpus, TrainConfig.model_validate(TINY), tmp_path / "b", progress=False)
    bundle = load_bundle(tmp_path / "b")
    assert bundle.modality == "bulk" and len(bundle.latent_sample_ids) == corpus.n_obs
    assert bundle.info["training"]["validation_studies"] == ["synthetic_3"]
    assert "loss" in bundle.info["validation"]
    # float16 storage keeps predictions within tolerance of the float32 model
    query = {
        "inputs": [{"metadata": {"tissue_ontology_id": "UBERON:0002048"}, "num_samples": 1}],
        "sampling_strategy": "mean estimation",
        "deterministic_latents": True,
        "total_count": 1_000_000,
    }
    from opengem.contract import validate_query

    q = validate_query(query, "gem-1-bulk")
    fp32 = Predictor(result.bundle).predict(q).counts.astype(float)
    fp16 = Predictor(bundle).predict(q).counts.astype(float)
    top = np.argsort(-fp32[0])[:100]
    assert np.allclose(np.log1p(fp16[0, top]), np.log1p(fp32[0, top]), atol=0.05)
    # checks on load
    manifest = json.loads((tmp_path / "b" / "bundle.json").read_text())
    manifest["format_version"] = 99
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format_version 99"):
        load_bundle(tmp_path / "b")
    manifest["format_version"] = 1
    manifest["gene_order"] = manifest["gene_order"][::-1]
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="gene order differs"):
        load_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)
    # saving over an existing bundle replaces it whole
    save_bundle(result.bundle, tmp_path / "b")
    assert load_bundle(tmp_path / "b").modality == "bulk"


def test_shipped_configs_parse_and_bad_ones_name_the_key(tmp_path: Path) -> None:
    for name in ("bulk", "sc"):
        assert load_config(REPO / "configs" / f"{name}.toml").modality == name
    bad = tmp_path / "bad.toml"
    bad.write_text('modality = "bulk"\n[training]\nbatch_sise = 3\n')
    with pytest.raises(ValueError, match=r"training\.batch_sise"):
        load_config(bad)


def test_train_cli_with_two_process_cpu_ddp(corpus, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bulk.h5ad"
    corpus.write_h5ad(path)
    config = tmp_path / "tiny.toml"
    config.write_text(
        'modality = "bulk"\n[model]\nhidden = 16\nlatent_biological = 4\nlatent_technical = 2\n'
        "latent_perturbation = 4\nembedding = 4\nprior_hidden = 8\n[training]\nmax_epochs = 2\n"
        'batch_size = 16\nvalidation_studies = ["synthetic_3"]\n'
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "opengem.cli",
            "train",
            "--corpus",
            str(path),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "ddp"),
            "--devices",
            "2",
            "--strategy",
            "ddp_spawn",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "trained in" in out.stdout
    assert load_bundle(tmp_path / "ddp").modality == "bulk"
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "opengem.cli",
            "train",
            "--corpus",
            str(tmp_path / "nope.h5ad"),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_backed_corpus_trains_like_an_in_memory_one(corpus, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bulk.h5ad"
    corpus.write_h5ad(path)
    config = TrainConfig.model_validate(TINY)
    backed = TrainConfig.model_validate({**TINY, "training": {**TINY["training"], "backed": True}})
    a = train_bundle(path, config, None, progress=False).bundle.module.state_dict()
    b = train_bundle(path, backed, None, progress=False).bundle.module.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)

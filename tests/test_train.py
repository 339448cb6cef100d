"""Training mechanics: seeds, configs, bundles, the CLI, and a 2-process CPU DDP fit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from opengem.corpus.synthetic import synthetic_corpus
from opengem.engine import BundleError, Predictor, load_bundle, save_bundle
from opengem.train import TrainConfig, load_config
from opengem.train.fit import train_bundle

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "modality": "bulk",
    "model": {"latent_biological": 4, "latent_technical": 2, "latent_perturbation": 4},
    "training": {"validation_studies": ["synthetic_3"]},
}


def _arrays(result) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    return result.bundle.model.arrays()


@pytest.fixture(scope="module")
def corpus():  # type: ignore[no-untyped-def]
    adata, _ = synthetic_corpus(n_genes=120, samples_per_condition=4, seed=3)
    return adata


@pytest.mark.slow  # trains (several seconds on two cores)
def test_same_config_gives_the_same_arrays(corpus) -> None:  # type: ignore[no-untyped-def]
    config = TrainConfig.model_validate(TINY)
    a = _arrays(train_bundle(corpus, config, None, progress=False))
    b = _arrays(train_bundle(corpus, config, None, progress=False))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    other = TrainConfig.model_validate({**TINY, "model": {**TINY["model"], "ridge_terms": 3.0}})
    c = _arrays(train_bundle(corpus, other, None, progress=False))
    assert not np.array_equal(a["coef_v"], c["coef_v"])


def test_bundle_round_trip_and_checks(corpus, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = train_bundle(corpus, TrainConfig.model_validate(TINY), tmp_path / "b", progress=False)
    bundle = load_bundle(tmp_path / "b")
    held = int((corpus.obs["study"] == "synthetic_3").sum())
    assert bundle.modality == "bulk" and len(bundle.latent_sample_ids) == corpus.n_obs - held
    assert bundle.info["training"]["validation_studies"] == ["synthetic_3"]
    assert "tissue_ontology_id" in bundle.info["validation"]["classifier_accuracy"]
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
    manifest["format_version"] = 2
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
    bad.write_text('modality = "bulk"\n[training]\nmax_epochs = 3\n')
    with pytest.raises(ValueError, match=r"training\.max_epochs"):
        load_config(bad)


@pytest.mark.slow  # trains (several seconds on two cores)
def test_train_cli_writes_a_bundle_and_names_a_missing_corpus(corpus, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bulk.h5ad"
    corpus.write_h5ad(path)
    config = tmp_path / "tiny.toml"
    config.write_text(
        'modality = "bulk"\n[model]\nlatent_biological = 4\nlatent_technical = 2\n'
        'latent_perturbation = 4\n[training]\nvalidation_studies = ["synthetic_3"]\n'
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "opengem.cli", "train", *args],
            capture_output=True,
            text=True,
            timeout=600,
        )

    out = cli("--corpus", str(path), "--config", str(config), "--out", str(tmp_path / "b"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "fitted in" in out.stdout
    assert load_bundle(tmp_path / "b").modality == "bulk"
    missing = cli(
        "--corpus",
        str(tmp_path / "nope.h5ad"),
        "--config",
        str(config),
        "--out",
        str(tmp_path / "x"),
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr


@pytest.mark.slow  # trains (several seconds on two cores)
def test_backed_corpus_trains_like_an_in_memory_one(corpus, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bulk.h5ad"
    corpus.write_h5ad(path)
    config = TrainConfig.model_validate(TINY)
    backed = TrainConfig.model_validate({**TINY, "training": {**TINY["training"], "backed": True}})
    a = _arrays(train_bundle(path, config, None, progress=False))
    b = _arrays(train_bundle(path, backed, None, progress=False))
    assert all(np.allclose(a[k], b[k], atol=1e-9) for k in a)

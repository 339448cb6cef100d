"""The web page's server side without a browser: counts uploads, the result summary
(preview, PCA, fold changes, class bars), downloads, assets and ``opengem ui``."""

from __future__ import annotations

import gzip
import io
import os
import re
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from opengem.client.export import EXPORT_FORMATS
from opengem.client.tables import CountsTableError, read_counts_table
from opengem.contract import FIELDS
from opengem.engine.results import ExpressionResult, MetadataResult
from opengem.ontology.genes import GeneSpace
from opengem.server.app import create_app
from opengem.server.config import ServerConfig
from opengem.server.keys import authenticate, create_key
from opengem.server.testing import free_port
from opengem.server.ui_summary import cpm, pca, sample_inputs, summarise

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

GENES = GeneSpace(
    ("ENSG00000000001", "ENSG00000000002", "ENSG00000000003", "ENSG00000000004"),
    ("AAA", "BBB", "CCC", "CCC"),  # CCC names two genes: ambiguous as a symbol
)
ASSETS = Path(__file__).resolve().parents[1] / "src" / "opengem" / "server" / "ui_assets"


# ------------------------------------------------------------------ counts tables
def test_counts_table_either_orientation_ids_or_symbols() -> None:
    by_rows = b"gene,s1,s2\nAAA,5,0\nENSG00000000002.7,1,9\nCCC,4,4\n"
    table = read_counts_table(by_rows, "x.csv", GENES)
    assert table.samples == ["s1", "s2"]
    assert table.counts.tolist() == [[5, 1, 0, 0], [0, 9, 0, 0]]  # CCC is ambiguous: skipped
    assert (table.mapped, table.gene_names) == (2, 3)
    by_columns = b"sample\tAAA\tBBB\nx\t1.4\t2\ny\t3\t0.6\n"
    flipped = read_counts_table(by_columns, "y.tsv", GENES)
    assert flipped.samples == ["x", "y"] and flipped.rounded
    assert flipped.counts.tolist() == [[1, 2, 0, 0], [3, 1, 0, 0]]
    zipped = read_counts_table(gzip.compress(by_rows), "x.csv.gz", GENES)
    assert np.array_equal(zipped.counts, table.counts)
    latin = read_counts_table("gène,s1\nAAA,1\n".encode("latin-1"), "x.csv", GENES)
    assert latin.counts.tolist() == [[1, 0, 0, 0]]
    # two names of one gene add up
    twice = read_counts_table(b"g,s\nBBB,2\nENSG00000000002,3\n", "t.csv", GENES)
    assert twice.counts.tolist() == [[0, 5, 0, 0]]


def test_counts_table_h5ad(tmp_path: Path) -> None:
    import anndata

    adata = anndata.AnnData(
        X=np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32),
        obs=pd.DataFrame(index=["c1", "c2"]),
        var=pd.DataFrame(index=["AAA", "BBB", "nope"]),
    )
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    table = read_counts_table(path.read_bytes(), path.name, GENES)
    assert table.samples == ["c1", "c2"] and table.counts.tolist() == [[1, 2, 0, 0], [4, 5, 0, 0]]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"a,b\n1,2\n", "no row or column name is a gene"),
        (b"g,s1\nAAA,lots\n", "sample 's1', gene 'AAA': 'lots' is not a number"),
        (b"g,s1\nAAA,-3\n", "-3 is negative"),
        (b"g,s1,s2,s3\nAAA,1,2,3\n", "holds 3 samples; at most 2"),
        (b"\x1f\x8bnot gzip", "not a readable gzip file"),
        (b"g,s1\nAAA,1e30\n", "1e+30 is beyond 2^40"),
        (b"g,s1\nAAA,nan\n", "is not a number"),
        (b"g,AAA,BBB\n", "gene names but no samples"),
        (b"\x89HDF\r\n\x1a\nbroken", "not a readable h5ad file"),
    ],
)
def test_counts_table_refusals_say_why(data: bytes, words: str) -> None:
    with pytest.raises(CountsTableError, match=re.escape(words)):
        read_counts_table(data, "bad.csv", GENES, max_samples=2)


# ------------------------------------------------------------------ summary
def _two_groups(n_genes: int = 50) -> tuple[dict[str, object], dict[str, object]]:
    rng = np.random.default_rng(0)
    base = rng.integers(50, 500, size=n_genes)
    a = rng.poisson(base, size=(3, n_genes))
    shifted = base.copy()
    shifted[:10] *= 20  # the second input: ten genes far higher
    b = rng.poisson(shifted, size=(2, n_genes))
    gene_order = [f"ENSG{i:011d}" for i in range(n_genes)]
    payload = {
        "outputs": [{"counts": row.tolist(), "metadata": {}} for row in np.vstack([a, b])],
        "gene_order": gene_order,
        "model_version": "test",
    }
    query = {
        "inputs": [
            {"metadata": {"tissue_ontology_id": "UBERON:0002048"}, "num_samples": 3},
            {"metadata": {"sex": "male"}, "num_samples": 2},
        ]
    }
    return payload, query


def test_summary_groups_samples_and_pca_separates_inputs() -> None:
    payload, query = _two_groups()
    labels = {"tissue_ontology_id": {"UBERON:0002048": "lung"}}
    out = summarise(payload, query, {"ENSG00000000000": "FIRST"}, labels)
    assert [s["input"] for s in out["samples"]] == [0, 0, 0, 1, 1]
    assert out["inputs"] == ["1: lung (UBERON:0002048)", "2: male"]
    xs = [p["x"] for p in out["pca"]["points"]]
    assert max(xs[:3]) < min(xs[3:]) or min(xs[:3]) > max(xs[3:])  # PC1 splits the inputs
    assert out["pca"]["explained"][0] > 0.5
    assert len(out["preview"]["rows"]) == 5 and len(out["preview"]["genes"]) == 20
    assert "fold_change" not in out and "predictions" not in out


def test_sample_inputs_falls_back_to_one_group_when_counts_disagree() -> None:
    assert sample_inputs({"inputs": [{"num_samples": 2}, {"num_samples": 1.0}]}, 3) == [0, 0, 1]
    assert sample_inputs({"inputs": [{"num_samples": 2}]}, 3) == [0, 0, 0]


def test_fold_change_is_log2_of_cpm_ratio_to_the_reference() -> None:
    reference = np.array([100, 100, 100, 700])
    generated = np.array([[400, 100, 100, 400], [400, 100, 100, 400]])
    payload = {
        "outputs": [{"counts": r.tolist()} for r in generated],
        "gene_order": list(GENES.gene_ids),
    }
    query = {"inputs": [{"counts": reference.tolist(), "metadata": {}, "num_samples": 2}]}
    out = summarise(payload, query, dict(zip(GENES.gene_ids, GENES.symbols, strict=True)))
    fc = out["fold_change"]
    assert fc["symbols"] == ["AAA", "BBB", "CCC", "CCC"]
    expected = np.log2((cpm(generated[:1])[0] + 1) / (cpm(reference[None])[0] + 1))
    assert np.allclose(fc["inputs"][0]["log2fc"], expected, atol=1e-4)
    assert fc["inputs"][0]["top"][0] == 0  # the gene quadrupled ranks first
    kinds = [p["kind"] for p in out["pca"]["points"]]
    assert kinds == ["generated", "generated", "reference"]


def test_class_bars_are_ranked_with_labels() -> None:
    payload = {
        "outputs": [
            {
                "metadata": {"sex": "male", "tissue_ontology_id": "UBERON:1", "modality": "bulk"},
                "classifier_probs": {
                    "sex": {"female": 0.1, "male": 0.9},
                    "tissue_ontology_id": {f"UBERON:{i}": p for i, p in enumerate([0.1, 0.6, 0.3])},
                },
                "latents": {},
                "decoder_sample": {"counts": [1, 2, 3, 4]},
            }
        ],
        "gene_order": list(GENES.gene_ids),
    }
    out = summarise(
        payload,
        {"inputs": [{"counts": [1, 2, 3, 4]}]},
        {},
        {"tissue_ontology_id": {"UBERON:1": "lung"}},
    )
    bars = out["predictions"][0]["classes"]
    assert list(bars) == ["sex", "tissue_ontology_id"]  # registry order
    assert [b["value"] for b in bars["tissue_ontology_id"]] == ["UBERON:1", "UBERON:2", "UBERON:0"]
    assert bars["tissue_ontology_id"][0]["label"] == "lung"
    assert out["predictions"][0]["metadata"] == {"sex": "male", "tissue_ontology_id": "UBERON:1"}


def test_pca_of_one_sample_is_the_origin() -> None:
    coords, explained = pca(np.ones((1, 5)))
    assert coords.tolist() == [[0.0, 0.0]] and explained == [0.0, 0.0]


# ------------------------------------------------------------------ HTTP, in process
@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    os.environ.pop("OPENGEM_DATABASE_URL", None)
    app = create_app(
        ServerConfig(tmp_path / "data", auth=True, database_url=None), start_workers=False
    )
    token = create_key(app.state.opengem.store, "tests")
    with TestClient(app) as client:
        yield client, token


def test_the_page_and_its_assets_come_from_opengem(api: tuple[TestClient, str]) -> None:
    client, _ = api
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert urls and not [u for u in urls if u.startswith(("http:", "https:", "//"))]
    for url in urls:
        if url.startswith("/ui/static/"):
            assert client.get(url).status_code == 200, url
    for asset in ASSETS.iterdir():  # nothing in the JS or CSS reaches outside either
        text = asset.read_text()
        assert not re.findall(r"https?://(?!www\.w3\.org/2000/svg)", text), asset.name
    assert "/" not in client.get("/openapi.json").json()["paths"]  # outside the API schema


def test_config_describes_every_field_and_the_auth(api: tuple[TestClient, str]) -> None:
    client, _ = api
    config = client.get("/ui/api/config").json()
    assert config["auth"] is True
    assert [f["name"] for f in config["fields"]] == list(FIELDS)
    groups = {f["name"]: f["group"] for f in config["fields"]}
    assert groups["tissue_ontology_id"] == "biological" and groups["platform"] == "technical"
    assert "hours" in config["units"]["time"] and "uM" in config["units"]["dose"]
    assert {m["model_id"] for m in config["models"]} >= {"gem-1-bulk", "gem-1-sc"}
    assert list(config["export_formats"]) == list(EXPORT_FORMATS)


def test_counts_upload_needs_a_key_and_reports_problems(api: tuple[TestClient, str]) -> None:
    client, token = api
    body = b"gene,a\nTP53,5\nGAPDH,100\n"
    assert client.post("/ui/api/counts?filename=x.csv", content=body).status_code == 401
    auth = {"Authorization": f"Bearer {token}"}
    ok = client.post("/ui/api/counts?filename=../../x.csv", content=body, headers=auth).json()
    assert ok["filename"] == "x.csv" and ok["samples"] == [
        {"name": "a", "library": 105, "genes": 2}
    ]
    assert len(ok["counts"][0]) == ok["n_genes"] and sum(ok["counts"][0]) == 105
    bad = client.post("/ui/api/counts?filename=x.csv", content=b"a,b\n1,2\n", headers=auth)
    assert bad.status_code == 422
    assert bad.json()["problems"][0]["location"] == "reference"


def _ready_job(
    client: TestClient,
    token: str,
    result: ExpressionResult | MetadataResult,
    model_id: str,
    query: dict[str, object],
) -> tuple[str, str]:
    """A finished job holding ``result``; its id and the signed part of its download URL."""
    state = client.app.state.opengem  # type: ignore[attr-defined]
    owner = authenticate(state.store, token)
    job_id: str = state.store.submit(
        model_id, orjson.dumps(query), kind="json", key_id=owner.key_id, samples=len(result)
    )
    state.store.claim("w")
    state.store.finish(job_id, "w", state.files.write(job_id, "json", result))
    status = client.get(
        f"/api/model-queries/{job_id}/status", headers={"Authorization": f"Bearer {token}"}
    ).json()
    return job_id, "?" + status["downloadUrl"].partition("?")[2]


def test_summary_and_downloads_follow_the_signed_url(api: tuple[TestClient, str]) -> None:
    client, token = api
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 100, size=(3, 4), dtype=np.int64)
    result = ExpressionResult(
        counts=counts,
        metadata=[{"sex": "male", "modality": "bulk"}] * 3,
        latents={"biological": rng.standard_normal((3, 2)).astype(np.float32)},
        gene_order=list(GENES.gene_ids),
        model_version="t",
    )
    query = {"inputs": [{"metadata": {"sex": "male"}, "num_samples": 3}]}
    job_id, signed = _ready_job(client, token, result, "gem-1-bulk", query)
    base = f"/ui/api/model-queries/{job_id}"
    summary = client.get(f"{base}/summary{signed}").json()
    assert summary["n_samples"] == 3 and summary["inputs"] == ["1: male"]
    assert client.get(f"{base}/summary?expires=1&signature=x").status_code == 403

    csv = client.get(f"{base}/download/csv{signed}")
    assert csv.status_code == 200 and "attachment" in csv.headers["content-disposition"]
    frame = pd.read_csv(io.StringIO(csv.text), index_col="sample")
    assert frame.to_numpy().tolist() == counts.tolist()
    meta = pd.read_csv(io.StringIO(client.get(f"{base}/download/metadata.csv{signed}").text))
    assert list(meta["sex"]) == ["male"] * 3
    parquet = pd.read_parquet(io.BytesIO(client.get(f"{base}/download/parquet{signed}").content))
    assert list(parquet.columns[:2]) == ["meta_sex", "meta_modality"]
    assert parquet[list(GENES.gene_ids)].to_numpy().tolist() == counts.tolist()
    h5ad = client.get(f"{base}/download/h5ad{signed}")
    assert h5ad.content[:8] == b"\x89HDF\r\n\x1a\n"
    unknown = client.get(f"{base}/download/xlsx{signed}")
    assert (
        unknown.status_code == 404
        and "csv, metadata.csv, parquet, h5ad" in unknown.json()["detail"]
    )
    assert not list(Path(client.app.state.opengem.config.data_dir).rglob(".export-*"))


# ------------------------------------------------------------------ opengem ui
def test_opengem_ui_serves_the_page_on_loopback_without_keys(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "opengem.cli",
            "ui",
            "--no-open",
            "--port",
            str(port),
            "--workers",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline and health is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    health = orjson.loads(r.read())
            except OSError:
                time.sleep(0.1)
        assert health is not None and health["auth"] is False
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert b"/ui/static/app.js" in r.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/models", timeout=5) as r:
            assert r.status == 200  # no key needed
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in err.decode()

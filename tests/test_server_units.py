"""Server parts without running queries: signing, keys, Arrow/JSON formats, config,
and the HTTP surface in-process (auth, limits, errors, downloads)."""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from opengem.engine.results import ExpressionResult, MetadataResult
from opengem.server.app import create_app
from opengem.server.config import ServerConfig, is_loopback
from opengem.server.formats import (
    ARROW_STREAM,
    ResultFiles,
    arrow_table,
    list_array,
    result_json_bytes,
    write_arrow_stream,
)
from opengem.server.keys import authenticate, create_key, quota_message
from opengem.server.signing import SECRET_FILE, UrlSigner, Verdict
from opengem.server.store import SQLiteJobStore, open_store

from .helpers import assert_frames_equal

with warnings.catch_warnings():  # starlette 1.x nudges towards httpx2; httpx works the same
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

GENES = ["ENSG00000000003", "ENSG00000000005", "ENSG00000000419", "ENSG00000000457"]


def expression_result(n: int = 3, big: bool = False) -> ExpressionResult:
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 1000, size=(n, len(GENES)), dtype=np.int64)
    if big:
        counts[0, 0] = 2**40
    return ExpressionResult(
        counts=counts,
        metadata=[
            {"sex": "female" if i % 2 else "male", "tissue_ontology_id": "", "modality": "bulk"}
            for i in range(n)
        ],
        latents={
            g: rng.standard_normal((n, d)).astype(np.float32)
            for g, d in (("biological", 4), ("technical", 2), ("perturbation", 3))
        },
        gene_order=GENES,
        model_version="opengem-test",
        request_type="reference_conditioned",
    )


def metadata_result(n: int = 2) -> MetadataResult:
    rng = np.random.default_rng(1)
    probs = [
        {
            "sex": {"female": 0.25 + i / 10, "male": 0.75 - i / 10},
            "age_years": {"0": 0.5, "65": 0.5},
        }
        for i in range(n)
    ]
    return MetadataResult(
        metadata=[{"sex": "male", "age_years": "65", "modality": "bulk"} for _ in range(n)],
        classifier_probs=probs,
        latents={
            g: rng.standard_normal((n, 3)).astype(np.float32)
            for g in ("biological", "technical", "perturbation")
        },
        decoder_counts=rng.integers(0, 50, size=(n, len(GENES)), dtype=np.int64),
        gene_order=GENES,
        model_version="opengem-test",
    )


# ------------------------------------------------------------------ signing
def test_signed_urls_reject_tampering_and_expiry(tmp_path: Path) -> None:
    signer = UrlSigner.from_data_dir(tmp_path)
    expires, sig = signer.sign("q1", 60)
    assert signer.verify("q1", expires, sig) is Verdict.OK
    assert signer.verify("q2", expires, sig) is Verdict.BAD
    assert signer.verify("q1", expires + 1, sig) is Verdict.BAD
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    assert signer.verify("q1", expires, flipped) is Verdict.BAD
    assert signer.verify("q1", expires, "zz" * 32) is Verdict.BAD
    assert signer.verify("q1", expires, "é" * 64) is Verdict.BAD
    assert signer.verify("q1", expires, "") is Verdict.BAD
    assert signer.verify("q1", expires, sig, now=expires + 1) is Verdict.EXPIRED
    # the secret is private to the owner and shared by every process of the data folder
    mode = stat.S_IMODE((tmp_path / SECRET_FILE).stat().st_mode)
    assert mode == 0o600
    assert UrlSigner.from_data_dir(tmp_path).verify("q1", expires, sig) is Verdict.OK
    assert UrlSigner.from_data_dir(tmp_path / "other").verify("q1", expires, sig) is Verdict.BAD


# ------------------------------------------------------------------ keys
def test_keys_are_stored_hashed_and_checked(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "opengem.db")
    token = create_key(store, "lab", 100)
    other = create_key(store, "ci")
    assert token.startswith("og_") and token != other
    key = authenticate(store, token)
    assert key is not None and key.name == "lab" and key.quota_samples_per_week == 100
    assert authenticate(store, f" {token} ") == key
    assert authenticate(store, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert authenticate(store, "og_000000000000_" + token.split("_", 2)[2]) is None
    assert authenticate(store, "not a key") is None
    keys = store.list_keys()
    assert len({k.salt for k in keys}) == 2
    secret = token.split("_", 2)[2]
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("opengem.db*"))
    assert secret.encode() not in raw and token.encode() not in raw
    store = SQLiteJobStore(tmp_path / "opengem.db")
    store.revoke_key(key.key_id)
    assert authenticate(store, token) is None
    with pytest.raises(ValueError):
        create_key(store, "  ")
    store.close()


def test_quota_message_reads_like_the_hosted_api() -> None:
    assert quota_message(100, 0, 10).startswith(
        "The limit is 100 samples per week. You have 0 samples remaining this week."
    )
    assert "asks for 10 samples" in quota_message(100, 0, 10)
    assert "You have 0 samples" in quota_message(100, -5, 10)


def test_keys_cli_prints_the_key_once_on_its_last_line(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "opengem.cli", "keys", *args, "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "OPENGEM_DATABASE_URL": ""},
        )

    out = cli("create", "--name", "lab", "--quota-samples-per-week", "5")
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip().splitlines()[-1]
    assert token.startswith("og_") and " " not in token
    store = open_store(tmp_path, "")
    key = authenticate(store, token)
    assert key is not None and key.quota_samples_per_week == 5
    store.close()
    listed = cli("list")
    assert listed.returncode == 0 and "lab" in listed.stdout and token not in listed.stdout
    assert cli("revoke", key.key_id).returncode == 0
    assert cli("revoke", key.key_id).returncode == 2
    assert "revoked" in cli("list").stdout


# ------------------------------------------------------------------ formats
def test_list_arrays_come_from_numpy_buffers() -> None:
    import pyarrow as pa

    matrix = np.arange(12, dtype=np.int32).reshape(3, 4)
    array = list_array(matrix, pa.int32())
    assert array.type == pa.list_(pa.int32())
    assert array.to_pylist() == matrix.tolist()
    assert np.array_equal(array.offsets.to_numpy(), [0, 4, 8, 12])
    empty = list_array(np.zeros((0, 4), dtype=np.int32), pa.int32())
    assert len(empty) == 0


@pytest.mark.parametrize("big", [False, True])
def test_arrow_expression_stream_reads_back_in_pysynthbio(big: bool) -> None:
    import pyarrow as pa
    from pysynthbio.arrow_transformers import transform_arrow_stream

    result = expression_result(big=big)
    table = arrow_table(result)
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert meta["request_type"] == "reference_conditioned"
    assert meta["model_version"] == "opengem-test"
    assert json.loads(meta["gene_order"]) == GENES
    assert table.schema.field("counts").type == pa.list_(pa.int64() if big else pa.int32())
    assert table.schema.field("biological_latent").type == pa.list_(pa.float32())
    sink = io.BytesIO()
    write_arrow_stream(table, sink)
    assert_frames_equal(transform_arrow_stream(sink.getvalue()), result.to_frames())


def test_arrow_metadata_stream_reads_back_in_pysynthbio() -> None:
    from pysynthbio.arrow_transformers import transform_arrow_stream

    result = metadata_result()
    table = arrow_table(result)
    assert table.schema.names == ["classifier_probs", "latents", "metadata", "decoder_sample"]
    sink = io.BytesIO()
    write_arrow_stream(table, sink)
    assert_frames_equal(transform_arrow_stream(sink.getvalue()), result.to_frames())


def test_result_json_reads_back_exactly() -> None:
    from pysynthbio.output_transformers import OUTPUT_TRANSFORMERS

    result = expression_result()
    frames = OUTPUT_TRANSFORMERS["gem-1-bulk"](orjson.loads(result_json_bytes(result)))
    assert_frames_equal(frames, result.to_frames())
    meta = metadata_result()
    frames = OUTPUT_TRANSFORMERS["gem-1-bulk_predict-metadata"](
        orjson.loads(result_json_bytes(meta))
    )
    assert_frames_equal(frames, meta.to_frames())


def test_result_json_takes_arrays_of_any_layout() -> None:
    """A metadata prediction of several samples has column-sliced latents: the JSON path
    (orjson encodes C-contiguous arrays only) must take them."""
    meta = metadata_result(3)
    meta.latents = {g: np.asfortranarray(v) for g, v in meta.latents.items()}
    meta.decoder_counts = np.asfortranarray(meta.decoder_counts)
    assert not meta.latents["biological"].flags["C_CONTIGUOUS"]
    payload = orjson.loads(result_json_bytes(meta))
    assert (
        payload["outputs"][2]["latents"]["biological"]
        == meta.latents["biological"][2].astype(np.float64).tolist()
    )
    assert payload["outputs"][1]["decoder_sample"]["counts"] == meta.decoder_counts[1].tolist()
    result = expression_result()
    result.counts = np.asfortranarray(result.counts)
    assert (
        orjson.loads(result_json_bytes(result))["outputs"][0]["counts"] == result.counts[0].tolist()
    )


def test_result_files_are_written_atomically(tmp_path: Path) -> None:
    files = ResultFiles(tmp_path)
    name = files.write("q1", "json", expression_result())
    assert name == "q1.json.gz"
    payload = json.loads(gzip.decompress(files.path(name).read_bytes()))
    assert payload["gene_order"] == GENES and len(payload["outputs"]) == 3
    assert [p.name for p in files.root.iterdir()] == ["q1.json.gz"]  # no temporaries
    with pytest.raises(ValueError):
        files.path("../escape")
    files.delete(name)
    assert not files.path(name).exists()


# ------------------------------------------------------------------ config
def test_auth_defaults_to_on_off_loopback(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    assert not ServerConfig(tmp_path, host="127.0.0.1").auth_enabled
    assert ServerConfig(tmp_path, host="0.0.0.0").auth_enabled
    assert ServerConfig(tmp_path, host="127.0.0.1", auth=True).auth_enabled
    assert not ServerConfig(tmp_path, host="0.0.0.0", auth=False).auth_enabled
    with pytest.raises(ValueError, match="workers"):
        ServerConfig(tmp_path, workers=-1)
    config = ServerConfig(tmp_path, workers=3, query_timeout_s=5)
    assert ServerConfig.from_json(config.to_json()) == config


# ------------------------------------------------------------------ HTTP, in-process
@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, str, ServerConfig]]:
    config = ServerConfig(
        tmp_path / "data", auth=True, max_body_bytes=4096, database_url=None, download_ttl_s=60
    )
    os.environ.pop("OPENGEM_DATABASE_URL", None)
    app = create_app(config, start_workers=False)
    token = create_key(app.state.opengem.store, "tests")
    with TestClient(app) as client:
        yield client, token, config


def test_auth_is_required_on_the_api(api: tuple[TestClient, str, ServerConfig]) -> None:
    client, token, _ = api
    assert client.get("/healthz").status_code == 200
    assert client.get("/healthz").json()["auth"] is True
    missing = client.get("/api/models")
    assert missing.status_code == 401 and "API key" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == "Bearer"
    bad = client.get("/api/models", headers={"Authorization": "Bearer og_000000000000_nope"})
    assert bad.status_code == 401
    assert client.get("/api/models", headers={"Authorization": f"Basic {token}"}).status_code == 401
    ok = client.get("/api/models", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200
    entry = ok.json()["models"][0]
    assert entry["model_id"] == "gem-1-bulk" and {"available", "loaded"} <= set(entry)


def test_errors_are_4xx_with_a_detail(api: tuple[TestClient, str, ServerConfig]) -> None:
    client, token, _ = api
    auth = {"Authorization": f"Bearer {token}"}
    r = client.get("/api/models/gem-9/example-query", headers=auth)
    assert r.status_code == 404 and "valid model ids" in r.json()["detail"]
    r = client.get("/api/models/gem-1-bulk/example-query", headers=auth)
    assert r.status_code == 200 and "inputs" in r.json()["example_query"]
    r = client.post("/api/models/gem-9/predict", content=b"{}", headers=auth)
    assert r.status_code == 404
    r = client.post("/api/models/gem-1-bulk/predict", content=b"{not json", headers=auth)
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    r = client.post(
        "/api/models/gem-1-bulk/predict", content=b"[" + b"1," * 5000 + b"1]", headers=auth
    )
    assert r.status_code == 413 and "4,096 bytes" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no content-length: the limit applies while streaming
        for _ in range(10):
            yield b" " * 1000

    r = client.post("/api/models/gem-1-bulk/predict", content=chunks(), headers=auth)
    assert r.status_code == 413
    r = client.get("/api/model-queries/nope/status", headers=auth)
    assert r.status_code == 404
    assert client.get("/no/such/route").status_code == 404
    assert client.delete("/api/models", headers=auth).status_code == 405


def test_downloads_need_a_valid_unexpired_signature(
    api: tuple[TestClient, str, ServerConfig],
) -> None:
    client, token, _ = api
    state = client.app.state.opengem  # type: ignore[attr-defined]
    owner = authenticate(state.store, token)
    job_id = state.store.submit("gem-1-bulk", b"{}", kind="json", key_id=owner.key_id, samples=3)
    state.store.claim("w")
    result = expression_result()
    state.store.finish(job_id, "w", state.files.write(job_id, "json", result))

    status = client.get(
        f"/api/model-queries/{job_id}/status", headers={"Authorization": f"Bearer {token}"}
    ).json()
    assert status["status"] == "ready" and status["samples"] == 3
    url = status["downloadUrl"]
    assert url.startswith("http://testserver/api/model-queries/")
    # no bearer token needed; gzip on the wire when accepted, plain otherwise
    zipped = client.get(url, headers={"Accept-Encoding": "gzip"})
    assert zipped.status_code == 200 and zipped.headers["content-encoding"] == "gzip"
    plain = client.get(url, headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200 and "content-encoding" not in plain.headers
    assert zipped.json() == plain.json() == orjson.loads(result_json_bytes(result))

    path, _, query = url.partition("?")
    params = dict(p.split("=") for p in query.split("&"))
    sig = params["signature"]
    tampered = ("0" if sig[0] != "0" else "1") + sig[1:]
    for bad in (
        f"{path}?expires={params['expires']}&signature={tampered}",
        f"{path}?expires={int(params['expires']) + 1}&signature={sig}",
        f"{path}?expires=soon&signature={sig}",
        path,
        url.replace(job_id, "0" * 32),
    ):
        r = client.get(bad)
        assert r.status_code == 403, bad
    expires, sig = state.signer.sign(job_id, -10)
    r = client.get(f"{path}?expires={expires}&signature={sig}")
    assert r.status_code == 403 and "expired" in r.json()["detail"]
    # a query is only visible to the key that made it
    other = create_key(state.store, "other")
    r = client.get(
        f"/api/model-queries/{job_id}/status", headers={"Authorization": f"Bearer {other}"}
    )
    assert r.status_code == 404


def test_openapi_and_docs(api: tuple[TestClient, str, ServerConfig]) -> None:
    client, _, _ = api
    spec = client.get("/openapi.json").json()
    assert {
        "/api/models",
        "/api/models/{model_id}/example-query",
        "/api/models/{model_id}/vocab",
        "/api/models/gem-1-bulk/predict",
        "/api/models/gem-1-sc_reference-conditioning/predict",
        "/api/model-queries/{query_id}/status",
        "/api/model-queries/{query_id}/result",
        "/healthz",
    } <= set(spec["paths"])
    predict = spec["paths"]["/api/models/gem-1-bulk/predict"]["post"]
    assert "application/json" in predict["requestBody"]["content"]
    assert ARROW_STREAM in predict["responses"]["200"]["content"]
    assert client.get("/docs").status_code == 200


def test_no_auth_on_loopback_by_default(tmp_path: Path) -> None:
    app = create_app(ServerConfig(tmp_path, host="127.0.0.1"), start_workers=False)
    with TestClient(app) as client:
        assert client.get("/api/models").status_code == 200
        ids = [m["model_id"] for m in client.get("/api/models").json()["models"]]
        assert ids[0] == "gem-1-bulk" and len(ids) == 7

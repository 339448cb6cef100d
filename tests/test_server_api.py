"""The real pysynthbio 4.2.4 client (and opengem's own remote client) against ``opengem serve``.

One server for the module (a real subprocess on a free loopback port, auth on, two
workers). Every model id runs through both protocols — hosted (submit, poll,
signed download) and self-hosted (Arrow stream) — and must return exactly the
DataFrames the embedded API returns for the same query and seed.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd
import pytest
import requests

import opengem
from opengem.client import api as og
from opengem.client import errors as og_errors
from opengem.client.embedded import predict_query as embedded_predict
from opengem.contract import MODEL_IDS
from opengem.server.keys import create_key
from opengem.server.store import open_store
from opengem.server.testing import bundle_available, start_server

from .helpers import assert_frames_equal, example

pysynthbio = pytest.importorskip("pysynthbio")

QUOTA = 12
ENV_VARS = (
    "SYNTHESIZE_API_KEY",
    "SYNTHESIZE_API_BASE_URL",
    "SYNTHESIZE_SELF_HOSTED",
    "SYNTHESIZE_ENDPOINT_GEM_1_BULK",
    "SYNTHESIZE_API_BASE_URL__GEM_1_BULK",
    "SYNTHESIZE_CONFIG",
)

pytestmark = pytest.mark.skipif(
    not bundle_available("gem-1-bulk"), reason="no gem-1-bulk bundle (set OPENGEM_MODELS)"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("server") / "data"
    store = open_store(data, "")
    keys = {
        "main": create_key(store, "tests"),
        "quota": create_key(store, "small plan", QUOTA),
    }
    store.close()
    process = start_server(
        data,
        workers=2,
        auth=True,
        args=["--max-samples-per-query", "2000", "--max-body-mb", "1"],
        env={"OPENGEM_DATABASE_URL": ""},
    )
    try:
        yield {"url": process.url, "keys": keys, "process": process, "data": data}
    finally:
        process.stop()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def key(server: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SYNTHESIZE_API_KEY", server["keys"]["main"])
    return str(server["keys"]["main"])


def needs_bundle(model_id: str) -> None:
    if not bundle_available(model_id):
        pytest.skip(f"no bundle for {model_id} (set OPENGEM_MODELS)")


# --------------------------------------------------------------- pysynthbio: models
def test_list_models_and_example_queries(server: dict[str, Any], key: str) -> None:
    for self_hosted in (False, True):
        models = pysynthbio.list_models(api_base_url=server["url"], self_hosted=self_hosted)
        assert [m["model_id"] for m in models["models"]] == list(MODEL_IDS)
    for model_id in MODEL_IDS:
        got = pysynthbio.get_example_query(model_id, api_base_url=server["url"])
        assert got == opengem.get_example_query(model_id)
    assert "example_query" in pysynthbio.get_example_query(
        "gem-1-sc", api_base_url=server["url"], self_hosted=True
    )


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_predict_hosted_and_self_hosted_equal_embedded(
    server: dict[str, Any], key: str, model_id: str
) -> None:
    needs_bundle(model_id)
    query = example(model_id)
    want = embedded_predict(copy.deepcopy(query), model_id)
    hosted = pysynthbio.predict_query(
        copy.deepcopy(query), model_id=model_id, api_base_url=server["url"], poll_interval_seconds=1
    )
    assert_frames_equal(hosted, want)
    arrow = pysynthbio.predict_query(
        copy.deepcopy(query), model_id=model_id, api_base_url=server["url"], self_hosted=True
    )
    assert_frames_equal(arrow, want)


@pytest.mark.parametrize("model_id", ["gem-1-bulk", "gem-1-bulk_predict-metadata"])
def test_streamed_arrow_bytes_are_those_of_the_embedded_result(
    server: dict[str, Any], key: str, model_id: str
) -> None:
    """The worker streams its result batch by batch while the API sends it: the bytes
    are still exactly the Arrow stream of the whole embedded result (several batches)."""
    from opengem.client.embedded import run_query
    from opengem.client.remote import RemoteClient
    from opengem.server.formats import BATCH_ROWS, arrow_table, write_arrow_stream

    query = example(model_id, seed=5)
    if model_id == "gem-1-bulk":
        for item in query["inputs"]:
            item["num_samples"] = BATCH_ROWS + 44  # 600 samples: three record batches
    sink = io.BytesIO()
    write_arrow_stream(arrow_table(run_query(copy.deepcopy(query), model_id)), sink)
    remote = RemoteClient(server["url"], api_key=key)
    assert remote.predict_arrow(model_id, copy.deepcopy(query), raw=True) == sink.getvalue()


def test_opengem_client_reads_a_multi_batch_stream_equal_to_embedded(
    server: dict[str, Any], key: str
) -> None:
    """opengem's client reads the Arrow stream off the socket message by message: a
    result of three record batches (counts, metadata, latents) reads as the embedded one."""
    from opengem.client.remote import RemoteClient
    from opengem.server.formats import BATCH_ROWS

    query = example("gem-1-bulk", seed=5)
    for item in query["inputs"]:
        item["num_samples"] = BATCH_ROWS + 44  # 600 samples: three record batches
    want = embedded_predict(copy.deepcopy(query), "gem-1-bulk")
    got = RemoteClient(server["url"], api_key=key).predict_query(
        copy.deepcopy(query), "gem-1-bulk", self_hosted=True
    )
    assert len(got["expression"]) == 2 * (BATCH_ROWS + 44)
    assert not got["latents"].empty
    assert_frames_equal(got, want)


def test_models_report_what_is_loaded(server: dict[str, Any], key: str) -> None:
    pysynthbio.predict_query(
        example("gem-1-bulk"), model_id="gem-1-bulk", api_base_url=server["url"], self_hosted=True
    )
    entry = pysynthbio.list_models(api_base_url=server["url"])["models"][0]
    assert entry["model_id"] == "gem-1-bulk" and entry["available"] and entry["loaded"]


def test_vocab_lists_the_trained_values(server: dict[str, Any], key: str) -> None:
    r = requests.get(
        f"{server['url']}/api/models/gem-1-bulk/vocab",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert r.status_code == 200
    body = r.json()
    assert body["model_id"] == "gem-1-bulk" and body["model_version"]
    tissues = body["fields"]["tissue_ontology_id"]
    assert example("gem-1-bulk")["inputs"][1]["metadata"]["tissue_ontology_id"] in tissues


# --------------------------------------------------------------- pysynthbio: errors
def test_unknown_model_is_not_found(server: dict[str, Any], key: str) -> None:
    with pytest.raises(pysynthbio.NotFoundError):
        pysynthbio.get_example_query("gem-9-bulk", api_base_url=server["url"])
    with pytest.raises(pysynthbio.NotFoundError):
        pysynthbio.predict_query(
            example("gem-1-bulk"), model_id="gem-9", api_base_url=server["url"]
        )
    with pytest.raises(pysynthbio.NotFoundError):
        pysynthbio.predict_query(
            example("gem-1-bulk"), model_id="gem-9", api_base_url=server["url"], self_hosted=True
        )


def test_bad_key_is_an_authentication_error(
    server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYNTHESIZE_API_KEY", "og_0123456789ab_not-the-right-secret-at-all")
    with pytest.raises(pysynthbio.AuthenticationError) as caught:
        pysynthbio.list_models(api_base_url=server["url"])
    assert caught.value.status_code == 401
    with pytest.raises(pysynthbio.AuthenticationError):
        pysynthbio.predict_query(
            example("gem-1-bulk"), model_id="gem-1-bulk", api_base_url=server["url"]
        )
    with pytest.raises(pysynthbio.AuthenticationError, match="auth enabled"):
        pysynthbio.predict_query(
            example("gem-1-bulk"),
            model_id="gem-1-bulk",
            api_base_url=server["url"],
            self_hosted=True,
        )
    monkeypatch.delenv("SYNTHESIZE_API_KEY")
    with pytest.raises(pysynthbio.AuthenticationError):  # self-hosted sends no key at all
        pysynthbio.list_models(api_base_url=server["url"], self_hosted=True)


def test_invalid_query_is_a_validation_error_naming_the_field(
    server: dict[str, Any], key: str
) -> None:
    query = example("gem-1-bulk")
    query["inputs"][1]["metadata"]["tissue_ontology_id"] = "UBERON:9999999"
    query["inputs"][0]["metadata"]["tisue"] = "stomach"
    with pytest.raises(pysynthbio.ValidationError) as caught:
        pysynthbio.predict_query(
            copy.deepcopy(query), model_id="gem-1-bulk", api_base_url=server["url"]
        )
    text = str(caught.value)
    assert caught.value.status_code == 422
    assert "inputs[1].metadata.tissue_ontology_id" in text and "UBERON:9999999" in text
    assert "inputs[0].metadata.tisue" in text
    body = caught.value.response_json
    assert body["detail"].startswith("invalid query for gem-1-bulk") and len(body["problems"]) == 2
    with pytest.raises(pysynthbio.ValidationError, match="tissue_ontology_id"):
        pysynthbio.predict_query(
            copy.deepcopy(query),
            model_id="gem-1-bulk",
            api_base_url=server["url"],
            self_hosted=True,
        )
    too_many = example("gem-1-bulk")
    too_many["inputs"].append(copy.deepcopy(too_many["inputs"][0]))
    for item in too_many["inputs"]:
        item["num_samples"] = 800
    with pytest.raises(pysynthbio.ValidationError, match="2,000"):
        pysynthbio.predict_query(too_many, model_id="gem-1-bulk", api_base_url=server["url"])


def test_quota_exceeded_is_429_with_the_message(
    server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYNTHESIZE_API_KEY", server["keys"]["quota"])
    query = example("gem-1-bulk")  # 10 samples; the key may make 12 a week
    first = pysynthbio.predict_query(
        copy.deepcopy(query), model_id="gem-1-bulk", api_base_url=server["url"], self_hosted=True
    )
    assert len(first["expression"]) == 10
    with pytest.raises(pysynthbio.SynthesizeAPIError) as caught:
        pysynthbio.predict_query(
            copy.deepcopy(query), model_id="gem-1-bulk", api_base_url=server["url"]
        )
    assert caught.value.status_code == 429
    assert f"The limit is {QUOTA} samples per week. You have 2 samples remaining this week." in str(
        caught.value
    )
    raw = requests.post(
        f"{server['url']}/api/models/gem-1-bulk/predict",
        json=query,
        headers={"Authorization": f"Bearer {server['keys']['quota']}"},
        timeout=30,
    )
    assert raw.status_code == 429
    assert 0 < int(raw.headers["Retry-After"]) <= 7 * 86400  # when the week's quota resets


def test_tampered_download_signature_is_403(server: dict[str, Any], key: str) -> None:
    url = pysynthbio.predict_query(
        example("gem-1-bulk"),
        model_id="gem-1-bulk",
        api_base_url=server["url"],
        poll_interval_seconds=1,
        return_download_url=True,
    )["download_url"]
    assert requests.get(url, timeout=30).status_code == 200  # no bearer token
    base, sig = url.rsplit("signature=", 1)
    tampered = base + "signature=" + ("0" if sig[0] != "0" else "1") + sig[1:]
    assert requests.get(tampered, timeout=30).status_code == 403
    with pytest.raises(pysynthbio.SynthesizeAPIError) as caught:
        from pysynthbio.http_client import get_json

        get_json(tampered)
    assert caught.value.status_code == 403


def test_body_size_limit_is_413(server: dict[str, Any], key: str) -> None:
    query = example("gem-1-bulk")
    query["padding"] = "x" * (2 * 1024 * 1024)
    with pytest.raises(pysynthbio.SynthesizeAPIError) as caught:
        pysynthbio.predict_query(query, model_id="gem-1-bulk", api_base_url=server["url"])
    assert caught.value.status_code == 413


# --------------------------------------------------------------- opengem's own client
def test_opengem_client_on_the_server_equals_embedded(server: dict[str, Any], key: str) -> None:
    for model_id in ("gem-1-bulk", "gem-1-bulk_predict-metadata"):
        query = example(model_id)
        want = embedded_predict(copy.deepcopy(query), model_id)
        hosted = og.predict_query(
            query, model_id, api_base_url=server["url"], poll_interval_seconds=0.2
        )
        assert_frames_equal(hosted, want)
        arrow = og.predict_query(query, model_id, api_base_url=server["url"], self_hosted=True)
        assert_frames_equal(arrow, want)
        assert query == example(model_id)  # the caller's dict is left alone
    raw = og.predict_query(
        example("gem-1-bulk"), "gem-1-bulk", api_base_url=server["url"], raw_response=True
    )
    assert raw["outputs"] and raw["gene_order"]
    url = og.predict_query(
        example("gem-1-bulk"), "gem-1-bulk", api_base_url=server["url"], return_download_url=True
    )["download_url"]
    assert requests.get(url, timeout=30).json() == raw
    stream = og.predict_query(
        example("gem-1-bulk"),
        "gem-1-bulk",
        api_base_url=server["url"],
        self_hosted=True,
        raw_response=True,
    )
    assert isinstance(stream, bytes) and len(stream) > 1000


def test_opengem_client_picks_the_server_from_the_environment(
    server: dict[str, Any], key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = opengem.list_models()["models"][0]
    assert "available" not in local  # embedded: the contract's list
    assert "available" not in og.list_models()["models"][0]
    monkeypatch.setenv("SYNTHESIZE_API_BASE_URL", server["url"])
    assert og.list_models()["models"][0]["available"] is True
    assert og.get_example_query("gem-1-sc") == opengem.get_example_query("gem-1-sc")
    monkeypatch.delenv("SYNTHESIZE_API_BASE_URL")
    monkeypatch.setenv("SYNTHESIZE_ENDPOINT_GEM_1_BULK", server["url"])
    assert og.resolve_base_url(None, "gem-1-bulk_predict-metadata") == server["url"]
    assert og.resolve_base_url(None, "gem-1-sc") is None
    monkeypatch.setenv("SYNTHESIZE_SELF_HOSTED", "yes")
    frames = og.predict_query(example("gem-1-bulk"), "gem-1-bulk")
    assert frames["expression"].shape[0] == 10


def test_opengem_client_raises_pysynthbio_named_errors(
    server: dict[str, Any], monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    url = server["url"]
    with pytest.raises(og_errors.NotFoundError, match="valid model ids"):
        og.get_example_query("gem-9", api_base_url=url)
    bad = example("gem-1-bulk")
    bad["inputs"][1]["metadata"]["tissue_ontology_id"] = "UBERON:9999999"
    for self_hosted in (False, True):
        with pytest.raises(og_errors.ValidationError) as caught:
            og.predict_query(bad, "gem-1-bulk", api_base_url=url, self_hosted=self_hosted)
        assert "inputs[1].metadata.tissue_ontology_id" in str(caught.value)
        assert isinstance(caught.value, ValueError) and caught.value.status_code == 422
    monkeypatch.setenv("SYNTHESIZE_API_KEY", "og_0123456789ab_wrong-wrong-wrong-wrong")
    with pytest.raises(og_errors.AuthenticationError):
        og.list_models(api_base_url=url)
    with pytest.raises(og_errors.SynthesizeAPIError, match="Network error"):
        og.list_models(api_base_url="http://127.0.0.1:9")
    with pytest.raises(ValueError, match="Invalid api_base_url"):
        og.list_models(api_base_url="ftp://example.org")


# --------------------------------------------------------------- load and fuzzing
@pytest.mark.slow
def test_fifty_concurrent_queries_all_succeed(server: dict[str, Any], key: str) -> None:
    """50 clients at once, half hosted (polling), half self-hosted (Arrow): 0 errors."""
    queries = []
    for seed in range(5):
        q = example("gem-1-bulk")
        q["seed"] = seed
        q["sampling_strategy"] = "mean estimation"
        for item in q["inputs"]:
            item["num_samples"] = 2
        queries.append(q)
    want = [embedded_predict(copy.deepcopy(q), "gem-1-bulk") for q in queries]

    def one(i: int) -> tuple[int, dict[str, pd.DataFrame]]:
        q = copy.deepcopy(queries[i % 5])
        if i % 2:
            got = pysynthbio.predict_query(
                q, model_id="gem-1-bulk", api_base_url=server["url"], self_hosted=True
            )
        else:
            got = pysynthbio.predict_query(
                q, model_id="gem-1-bulk", api_base_url=server["url"], poll_interval_seconds=1
            )
        return i, got

    # how long 50 parallel clients take: benchmarks/reliability.py (--clients 50)
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50)))
    assert len(results) == 50
    for i, got in results:
        assert_frames_equal(got, want[i % 5])


@pytest.mark.slow
def test_openapi_fuzzing_finds_no_server_errors(server: dict[str, Any], key: str) -> None:
    """schemathesis against /openapi.json, each model's predict with its own schema
    (bounded examples): no 5xx, every status code and content type documented, every
    response matching its schema, every schema-invalid request refused. (Not checked:
    that every schema-valid query is accepted: vocabularies, ontologies and the gene
    count are the validator's, beyond a JSON Schema.)"""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import checks as sc

    checks = [
        sc.not_a_server_error,
        sc.status_code_conformance,
        sc.content_type_conformance,
        sc.response_schema_conformance,
        sc.negative_data_rejection,
    ]
    schema = schemathesis.openapi.from_url(f"{server['url']}/openapi.json")
    headers = {"Authorization": f"Bearer {key}"}
    failures: list[str] = []
    ran = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=15,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            try:
                case.call_and_validate(headers=headers, timeout=60, checks=checks)
            except Exception as exc:  # schemathesis' failure group: every check that failed
                found = getattr(exc, "exceptions", [exc])
                failures.extend(
                    f"{case.method} {case.formatted_path}: {str(e).splitlines()[0]}"
                    f" (body {str(case.body)[:200]})"
                    for e in found
                )

        check()
        ran += 1
    assert ran >= 13  # seven predict operations, one per model
    assert failures == [], failures[:10]

    # and the validator behind predict, with query-shaped JSON on real model ids
    from hypothesis import strategies as st

    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=12)
        | st.sampled_from(["UBERON:0000945", "male", "mean estimation", "CVCL_0023", "24 hours"])
    )
    words = st.sampled_from(
        [
            "metadata",
            "num_samples",
            "counts",
            "sample_ids",
            "sex",
            "age_years",
            "tissue_ontology_id",
            "perturbation_dose",
            "sampling_strategy",
            "seed",
            "mode",
        ]
    ) | st.text(max_size=8)
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(words, inner, max_size=4),
        max_leaves=16,
    )
    queries = st.fixed_dictionaries(
        {"inputs": st.lists(st.dictionaries(words, values, max_size=4), max_size=3) | values},
        optional={k: values for k in ("sampling_strategy", "seed", "conditioning", "total_count")},
    )

    @settings(
        max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(model_id=st.sampled_from(MODEL_IDS), query=queries)
    def predict(model_id: str, query: dict[str, Any]) -> None:
        r = requests.post(
            f"{server['url']}/api/models/{model_id}/predict",
            json=query,
            headers=headers,
            timeout=60,
        )
        if r.status_code >= 500:
            failures.append(f"POST {model_id} {query!r}: {r.status_code} {r.text[:200]}")

    predict()
    assert failures == []
    log = server["process"].log()
    assert "Traceback" not in log, log[-3000:]

"""Hostile inputs get a fast, clear answer (issue 14, first rows).

Table-driven: each case is a request a hostile or careless client sends and the
answer it must get, against a real ``opengem serve`` on loopback; the parsing
helpers are also checked on their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests

from opengem.contract import MODEL_SPECS, QueryError, get_example_query, validate_query
from opengem.ontology import default_gene_space
from opengem.server.formats import ARROW_STREAM, non_finite_paths, wants_arrow
from opengem.server.testing import bundle_available, start_server

N = len(default_gene_space())
PREDICT = "gem-1-bulk_predict-metadata"


def _counts(last: Any) -> list[Any]:
    return [5] * (N - 1) + [last]


@pytest.mark.parametrize(
    ("counts", "says"),
    [
        (_counts(2**63), "too large"),
        (_counts(2**64), "out of range"),
        (_counts(1e300), "too large"),
        (_counts(2**200), "out of range"),
        ([True] + [5] * (N - 1), "true/false"),
        (_counts(-1), "negative"),
        (_counts(2.5), "non-integer"),
    ],
)
def test_a_count_out_of_range_or_not_an_integer_is_refused(counts: list[Any], says: str) -> None:
    with pytest.raises(QueryError) as err:
        validate_query({"inputs": [{"counts": counts}]}, PREDICT)
    problem = err.value.problems[0]
    assert problem.location == "inputs[0].counts"
    assert says in str(problem)
    if says in ("too large", "out of range"):
        assert "index 20119" in str(problem)  # where, and the allowed range
        assert "1,099,511,627,776" in str(problem)


def test_whole_number_floats_stay_valid() -> None:
    query = validate_query({"inputs": [{"counts": [float(v) for v in _counts(7)]}]}, PREDICT)
    assert np.asarray(query.inputs[0].counts).sum() == 5 * (N - 1) + 7


@pytest.mark.parametrize(
    ("accept", "arrow"),
    [
        (ARROW_STREAM, True),
        (f"{ARROW_STREAM}, application/json", True),
        (f"{ARROW_STREAM};q=0, application/json", False),
        (f"{ARROW_STREAM};q=0.5, application/json;q=0.9", False),
        (f"application/json;q=0.2, {ARROW_STREAM};q=0.8", True),
        ("*/*", False),
        ("", False),
        (f"{ARROW_STREAM};q=nonsense", False),
    ],
)
def test_accept_weighs_q_values(accept: str, arrow: bool) -> None:
    assert wants_arrow(accept) is arrow


def test_non_finite_literals_are_located() -> None:
    body = b'{"inputs": [{"counts": [1, NaN, 3, Infinity]}, {"counts": [-Infinity]}]}'
    assert non_finite_paths(body) == [
        "inputs[0].counts[1]",
        "inputs[0].counts[3]",
        "inputs[1].counts[0]",
    ]
    assert non_finite_paths(b"{not json") == []


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not bundle_available("gem-1-bulk"):
        pytest.skip("no gem-1-bulk bundle (set OPENGEM_MODELS)")
    process = start_server(
        tmp_path_factory.mktemp("hostile") / "data",
        workers=1,
        auth=False,
        args=["--body-timeout", "1"],
        env={"OPENGEM_DATABASE_URL": ""},
    )
    try:
        yield process.url
    finally:
        process.stop()


def test_server_answers_hostile_requests(server: str) -> None:
    url = f"{server}/api/models/{PREDICT}/predict"
    head = requests.head(f"{server}/healthz", timeout=10)
    assert head.status_code == 200

    huge = ",".join(["5"] * (N - 1) + ["9223372036854775808"])
    r = requests.post(url, data=f'{{"inputs": [{{"counts": [{huge}]}}]}}', timeout=30)
    assert r.status_code == 422
    assert "inputs[0].counts" in r.text and "too large" in r.text

    nan = ",".join(["5"] * 41 + ["NaN"] + ["5"] * (N - 42))
    r = requests.post(url, data=f'{{"inputs": [{{"counts": [{nan}]}}]}}', timeout=30)
    assert r.status_code == 400
    assert "NaN or Infinity" in r.text and "inputs[0].counts[41]" in r.text

    valid = {"inputs": [{"counts": _counts(7)}]}
    r = requests.post(
        url,
        json=valid,
        headers={"Accept": f"{ARROW_STREAM};q=0, application/json"},
        timeout=120,
    )
    assert r.status_code in (200, 202)
    assert r.headers["content-type"].startswith("application/json")


def _refused(query: dict[str, Any], model: str = "gem-1-bulk") -> QueryError:
    """The error of a refused query (how long refusing takes: benchmarks/timed_checks.py)."""
    with pytest.raises(QueryError) as err:
        validate_query(query, model)
    return err.value


def test_many_bad_inputs_stop_after_a_bounded_number_of_problems() -> None:
    from opengem.contract.validate import MAX_PROBLEMS

    query = {
        "inputs": [
            {"metadata": {"tissue_ontology_id": f"UBERON:99{i:05d}"}, "num_samples": 1}
            for i in range(20_000)
        ]
    }
    err = _refused(query)
    assert len(err.problems) == MAX_PROBLEMS + 1
    assert "checking stopped after" in str(err.problems[-1])


def test_huge_values_and_keys_are_refused_before_any_look_up() -> None:
    long = "x" * 1_000_000
    err = _refused(
        {"inputs": [{"metadata": {"tissue_ontology_id": long, long: "y"}, "num_samples": 1}]}
    )
    text = str(err)
    assert "1,000,000 characters long" in text
    assert len(text) < 2_000  # nothing echoed at length
    err = _refused({"inputs": [{"num_samples": 1}], **{f"k{i}": 1 for i in range(100_000)}})
    assert len(err.problems) == 21
    pipes = {"perturbation_ontology_id": "|" * 100_000, "perturbation_type": "compound"}
    err = _refused({"inputs": [{"metadata": pipes, "num_samples": 1}]})
    assert "an input combines at most" in str(err)


def test_no_auth_on_a_public_address_is_refused(tmp_path: Any) -> None:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "opengem.cli", "serve", "--host", "0.0.0.0", "--no-auth"]
    done = subprocess.run(
        [*cmd, "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "--allow-public-no-auth" in done.stderr


def test_a_failed_query_gives_its_samples_back(tmp_path: Any) -> None:
    from opengem.server.keys import authenticate, charge, create_key, fail_and_refund
    from opengem.server.store import open_store, week_of

    store = open_store(tmp_path / "data", "")
    try:
        secret = create_key(store, "lab", 1_000)
        key = authenticate(store, secret)
        assert key is not None
        for _ in range(3):  # three queries of 400 would pass the quota...
            assert charge(store, key, 400) is None
            job = store.submit("gem-1-bulk", b"{}", kind="json", key_id=key.key_id, samples=400)
            assert fail_and_refund(store, job, None, "timed out")  # ...but none delivered
            assert not fail_and_refund(store, job, None, "again")  # refunded once
        assert store.usage(key.key_id, week_of()) == 0
        assert charge(store, key, 1_000) is None  # the whole quota is still there
    finally:
        store.close()


def test_a_stalled_body_is_answered_and_closed(server: str) -> None:
    import socket
    import time
    from urllib.parse import urlparse

    where = urlparse(server)
    start = time.monotonic()
    with socket.create_connection((where.hostname, where.port), timeout=20) as sock:
        sock.sendall(
            f"POST /api/models/{PREDICT}/predict HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode()
        )
        reply = b""
        while chunk := sock.recv(65536):  # the server answers, then closes
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408")
    assert b"stalled" in reply
    assert time.monotonic() - start < 15


def test_openapi_documents_the_errors_a_client_can_get(tmp_path: Any) -> None:
    from opengem.server.app import create_app
    from opengem.server.config import ServerConfig

    spec = create_app(ServerConfig(data_dir=tmp_path)).openapi()
    paths = spec["paths"]
    for path in (
        "/api/models",
        "/api/models/{model_id}/example-query",
        "/api/models/{model_id}/vocab",
        "/api/models/gem-1-bulk/predict",
        "/api/model-queries/{query_id}/status",
    ):
        for operation in paths[path].values():
            assert "401" in operation["responses"], path
    for model_id in MODEL_SPECS:
        predict = paths[f"/api/models/{model_id}/predict"]["post"]["responses"]
        assert {"400", "401", "408", "413", "422", "429"} <= set(predict), model_id


def test_each_model_documents_its_own_query_schema_which_its_example_meets(
    tmp_path: Any,
) -> None:
    import jsonschema_rs

    from opengem.server.app import create_app
    from opengem.server.config import ServerConfig

    spec = create_app(ServerConfig(data_dir=tmp_path)).openapi()
    schemas = spec["components"]["schemas"]
    assert "/api/models/{model_id}/predict" not in spec["paths"]

    def schema_of(model_id: str) -> Any:
        body = spec["paths"][f"/api/models/{model_id}/predict"]["post"]["requestBody"]
        content = body["content"]["application/json"]
        ref = content["schema"]["$ref"].rsplit("/", 1)[-1]
        return jsonschema_rs.validator_for(schemas[ref]), content["example"]

    validators = {m: schema_of(m) for m in MODEL_SPECS}
    for model_id, (validator, example) in validators.items():
        assert validator.is_valid(example), model_id
        assert example == get_example_query(model_id)["example_query"]
    # the schemas differ where the models do: each example fails the other tasks' schemas
    base = validators["gem-1-bulk"][0]
    assert not base.is_valid(validators["gem-1-bulk_reference-conditioning"][1])  # counts
    assert not validators["gem-1-bulk_predict-metadata"][0].is_valid(validators["gem-1-bulk"][1])
    # and agree with the validator on what it refuses
    example = get_example_query("gem-1-bulk")["example_query"]
    hostile = [
        example | {"conditioning": ["biological"]},  # a reference-conditioning key
        example | {"sampling_strategy": "most likely"},
        example | {"inputs": [{"metadata": {"colour": "red"}, "num_samples": 1}]},
        example | {"inputs": [{"metadata": {}, "num_samples": 0}]},
        example | {"inputs": []},
    ]
    for query in hostile:
        assert not base.is_valid(query), query
        with pytest.raises(QueryError):
            validate_query(query, "gem-1-bulk")
    sc = validators["gem-1-sc"][0]  # single-cell models draw cells too (beyond GEM-1)
    example = get_example_query("gem-1-sc")["example_query"]
    assert sc.is_valid(example | {"sampling_strategy": "sample generation"})
    assert not sc.is_valid(example | {"sampling_strategy": "posterior sample"})


def test_json_logs_are_one_object_per_line_with_a_time(tmp_path: Any) -> None:
    import json

    if not bundle_available("gem-1-bulk"):
        pytest.skip("no gem-1-bulk bundle (set OPENGEM_MODELS)")
    process = start_server(
        tmp_path / "data", workers=1, auth=False, args=["--log-format", "json", "--log-level", "info"],
        env={"OPENGEM_DATABASE_URL": ""},
    )  # fmt: skip
    try:
        assert requests.get(f"{process.url}/healthz", timeout=10).status_code == 200
        requests.get(f"{process.url}/api/models", timeout=10)
    finally:
        process.stop()
    lines = [line for line in process.log().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert any("GET /api/models" in r["message"] for r in records)  # access lines too
    assert all(r["time"] and r["level"] for r in records)
    assert any(r["logger"] == "opengem.worker" for r in records)  # workers log the same way


def test_docs_load_nothing_from_outside(server: str) -> None:
    import re

    page = requests.get(f"{server}/docs", timeout=10)
    assert page.status_code == 200
    urls = re.findall(r'(?:src|href|url)\s*[:=]\s*["\']([^"\']+)["\']', page.text)
    assert urls and not [u for u in urls if u.startswith(("http:", "https:", "//"))]
    for url in urls:
        if url.startswith("/static/"):
            assert requests.get(f"{server}{url}", timeout=10).status_code == 200, url
    assert requests.get(f"{server}/redoc", timeout=10).url.endswith("/docs")


def test_sampling_strategies_are_one_registry() -> None:
    from opengem.contract.query import SAMPLING_STRATEGIES, STRATEGIES
    from opengem.engine.predictor import DRAWS

    assert set(DRAWS) == set(STRATEGIES) == set(SAMPLING_STRATEGIES)
    for name in STRATEGIES:  # every strategy is offered by both modalities
        for model_id in ("gem-1-bulk", "gem-1-sc"):
            query = {"inputs": [{"metadata": {}, "num_samples": 1}], "sampling_strategy": name}
            assert validate_query(query, model_id).sampling_strategy == name
    with pytest.raises(QueryError) as err:
        validate_query(
            {"inputs": [{"metadata": {}, "num_samples": 1}], "sampling_strategy": "posterior"},
            "gem-1-sc",
        )
    assert "'sample generation'" in str(err.value) and "'mean estimation'" in str(err.value)


def test_the_problem_cap_reached_inside_a_combination_is_a_422_not_a_crash() -> None:
    # found by schemathesis: the cap stopped a record half read, and the half record
    # (no perturbation field collected yet) crashed the combination check
    metadata: dict[str, Any] = {f"colour_{i}": "red" for i in range(25)}
    metadata |= {"perturbation_ontology_id": ["CHEMBL25", "CHEMBL25"]}
    query = {
        "inputs": [{"counts": [1, 2], "metadata": metadata, "num_samples": 1}],
        "sampling_strategy": "mean estimation",
    }
    with pytest.raises(QueryError) as info:
        validate_query(query, "gem-1-sc_reference-conditioning")
    assert "colour_0" in str(info.value)

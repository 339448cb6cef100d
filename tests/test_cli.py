"""The CLI as a user runs it: real subprocesses, exit codes, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from opengem.contract import MODEL_IDS


def opengem(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opengem.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_models_lists_every_id() -> None:
    out = opengem("models", "--json")
    assert out.returncode == 0
    assert [m["model_id"] for m in json.loads(out.stdout)["models"]] == list(MODEL_IDS)


def test_example_full_is_valid_json_that_validates(tmp_path: Path) -> None:
    out = opengem("example", "gem-1-bulk_predict-metadata", "--full")
    assert out.returncode == 0
    path = tmp_path / "q.json"
    path.write_text(json.dumps(json.loads(out.stdout)["example_query"]))
    checked = opengem("validate", "gem-1-bulk_predict-metadata", "--query", str(path))
    assert checked.returncode == 0, checked.stderr


def test_examples_command_validates_all() -> None:
    out = opengem("examples")
    assert out.returncode == 0, out.stderr
    assert f"all {len(MODEL_IDS)} example queries are valid" in out.stdout
    assert out.stdout.count(": valid (") == len(MODEL_IDS)


@pytest.mark.parametrize(
    ("args", "stdin", "needle"),
    [
        (("example", "gem-9"), None, "unknown model_id 'gem-9'"),
        (("validate", "gem-1-bulk", "-q", "-"), "{not json", "is not valid JSON"),
        (("validate", "gem-1-bulk", "-q", "/nonexistent/q.json"), None, "cannot read query file"),
        (
            ("validate", "gem-1-bulk", "-q", "-"),
            json.dumps(
                {
                    "inputs": [
                        {"metadata": {"tissue_ontology_id": "CL:0000236"}, "num_samples": 1}
                    ],
                    "sampling_strategy": "mean estimation",
                }
            ),
            "inputs[0].metadata.tissue_ontology_id: 'CL:0000236' is a Cell Ontology term",
        ),
    ],
)
def test_bad_input_exits_2_without_traceback(
    args: tuple[str, ...], stdin: str | None, needle: str
) -> None:
    out = opengem(*args, stdin=stdin)
    assert out.returncode == 2
    assert needle in out.stderr
    assert "Traceback" not in out.stderr + out.stdout

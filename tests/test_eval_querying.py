"""The evaluation's queries: fields a model refuses are dropped after one validation."""

from __future__ import annotations

from typing import Any

import pytest

from opengem.contract import Problem, QueryError, validate_query
from opengem.eval.querying import ModelClient

VOCAB = {
    "tissue_ontology_id": {"UBERON:0000945": "stomach"},
    "sex": {"female": "female", "male": "male"},
}


class CheckingModel:
    """A model that only validates (against a small vocabulary), counting the calls."""

    modality = "bulk"

    def __init__(self) -> None:
        self.checks = 0

    def check(self, query: dict[str, Any], task: str | None) -> None:
        self.checks += 1
        validate_query(query, "gem-1-bulk", vocabulary=VOCAB, max_problems=None)

    def run(self, query: dict[str, Any], task: str | None) -> Any:
        raise AssertionError("not run")

    def close(self) -> None:
        return None


def test_refused_fields_are_dropped_in_one_validation() -> None:
    model = CheckingModel()
    records = [
        {"tissue_ontology_id": "UBERON:0000945", "sex": "female"},
        *({"tissue_ontology_id": "UBERON:0002107", "sex": "male"} for _ in range(30)),
        {"tissue_ontology_id": "UBERON:0002107", "sex": "robot", "study": "airway"},
    ]
    usable, dropped = ModelClient(model).usable_metadata(records)
    assert model.checks == 1  # more problems than a user is shown, all from one call
    assert usable[0] == records[0] and dropped[0] == []
    assert all(u == {"sex": "male"} for u in usable[1:31])
    assert all(d == ["tissue_ontology_id"] for d in dropped[1:31])
    assert usable[31] == {"study": "airway"}
    assert dropped[31] == ["tissue_ontology_id", "sex"]
    assert records[1]["tissue_ontology_id"] == "UBERON:0002107"  # the caller's records stay


def test_a_problem_of_no_field_is_raised() -> None:
    model = CheckingModel()
    records = [{"sex": "female"}] * 10_001  # more samples than a query may ask for
    with pytest.raises(QueryError):
        ModelClient(model).usable_metadata(records)


def test_problem_paths() -> None:
    p = Problem("inputs[3].metadata.perturbation_ontology_id[1]", "x", "bad")
    assert p.path == ("inputs", 3, "metadata", "perturbation_ontology_id", 1)
    assert p.input_field() == (3, "perturbation_ontology_id")
    assert Problem("inputs[0].counts", 1, "bad").input_field() is None
    assert Problem("", None, "bad").path == ()

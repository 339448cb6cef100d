from __future__ import annotations

import pytest

import opengem
from opengem.contract import MODEL_IDS, Modality, Task, UnknownModelError, parse_model_id

EXPECTED = {
    "gem-1-bulk": (Modality.BULK, Task.BASELINE),
    "gem-1-sc": (Modality.SC, Task.BASELINE),
    "gem-1-bulk_reference-conditioning": (Modality.BULK, Task.REFERENCE_CONDITIONING),
    "gem-1-sc_reference-conditioning": (Modality.SC, Task.REFERENCE_CONDITIONING),
    "gem-1-bulk_predict-metadata": (Modality.BULK, Task.PREDICT_METADATA),
    "gem-1-sc_predict-metadata": (Modality.SC, Task.PREDICT_METADATA),
    "gem-1-bulk_condition-on-sample-ids": (Modality.BULK, Task.CONDITION_ON_SAMPLE_IDS),
}


def test_exactly_the_seven_model_ids() -> None:
    assert set(MODEL_IDS) == set(EXPECTED)


@pytest.mark.parametrize("model_id", list(EXPECTED))
def test_parse_model_id(model_id: str) -> None:
    spec = parse_model_id(model_id)
    assert (spec.modality, spec.task) == EXPECTED[model_id]
    assert spec.family == "gem-1"
    assert spec.base_model_id == f"gem-1-{spec.modality.value}"


@pytest.mark.parametrize("bad", ["gem-1", "GEM-1-BULK", "gem-1-sc_condition-on-sample-ids", "", 3])
def test_unknown_model_lists_valid_ids(bad: object) -> None:
    with pytest.raises(UnknownModelError) as err:
        parse_model_id(bad)
    message = str(err.value)
    assert repr(bad) in message
    assert all(m in message for m in EXPECTED)


def test_list_models_shape() -> None:
    models = opengem.list_models()["models"]
    assert [m["model_id"] for m in models] == list(MODEL_IDS)
    for m in models:
        assert set(m) >= {"model_id", "modality", "task", "description"}
        assert m["description"]

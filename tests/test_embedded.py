"""The embedded API on the shipped models: pysynthbio code runs unchanged, no server."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import opengem
import opengem as pysynthbio
from opengem.contract import reference_counts
from opengem.engine import default_registry
from opengem.ontology import default_gene_space

N_GENES = len(default_gene_space())
BULK, SC = "gem-1-bulk", "gem-1-sc"
REF = "gem-1-bulk_reference-conditioning"

pytestmark = pytest.mark.skipif(
    not default_registry().available(BULK) or not default_registry().available(SC),
    reason=f"no shipped bundles in {default_registry().models_dir}",
)


# ----------------------------------------------- the seed documents, as written
def test_seed_baseline_document_runs_unchanged() -> None:
    example_query = pysynthbio.get_example_query(model_id="gem-1-bulk")["example_query"]
    print(example_query)
    query = pysynthbio.get_example_query(model_id="gem-1-bulk")["example_query"]
    result = pysynthbio.predict_query(query, model_id="gem-1-bulk")
    assert set(result) >= {"metadata", "expression"}

    sc_query = pysynthbio.get_example_query(model_id="gem-1-sc")["example_query"]
    sc_result = pysynthbio.predict_query(sc_query, model_id="gem-1-sc")
    assert sc_result["expression"].shape == (10, N_GENES)

    query = pysynthbio.get_example_query(model_id="gem-1-bulk")["example_query"]
    query["total_count"] = 8_000_000
    query["deterministic_latents"] = True
    query["sampling_strategy"] = "mean estimation"
    results = pysynthbio.predict_query(query, model_id="gem-1-bulk")
    sums = results["expression"].sum(axis=1)
    assert np.all(np.abs(sums - 8_000_000) < N_GENES)

    query = pysynthbio.get_example_query(model_id="gem-1-bulk")["example_query"]
    query["inputs"][0]["num_samples"] = 10
    query["inputs"].append(
        {
            "metadata": {
                "sex": "male",
                "sample_type": "primary tissue",
                "tissue_ontology_id": "UBERON:0002371",
            },
            "num_samples": 5,
        }
    )
    result = pysynthbio.predict_query(query, model_id="gem-1-bulk")
    metadata = result["metadata"]
    expression = result["expression"]
    assert expression.shape == (20, N_GENES)
    assert metadata.head()["cell_line_ontology_id"].tolist() == ["CVCL_0004"] * 5


def test_seed_reference_conditioning_document_runs_unchanged() -> None:
    your_reference_counts = reference_counts("bulk")  # the placeholder, with real counts
    control_sample_counts = reference_counts("bulk")

    query = pysynthbio.get_example_query(model_id="gem-1-bulk_reference-conditioning")[
        "example_query"
    ]
    query["inputs"][0]["counts"] = your_reference_counts
    query["inputs"][0]["metadata"] = {
        "perturbation_ontology_id": "CHEMBL25",  # Aspirin (ChEMBL ID)
        "perturbation_type": "compound",
        "perturbation_time": "24 hours",
        "perturbation_dose": "10 um",
    }
    query["inputs"][0]["num_samples"] = 3
    query["sampling_strategy"] = "mean estimation"
    result = pysynthbio.predict_query(query, model_id="gem-1-bulk_reference-conditioning")
    assert result["expression"].shape == (3, N_GENES)

    query = pysynthbio.get_example_query(model_id="gem-1-bulk_reference-conditioning")[
        "example_query"
    ]
    query["inputs"][0]["counts"] = control_sample_counts
    query["inputs"][0]["metadata"] = {
        "perturbation_ontology_id": "ENSG00000141510",  # TP53 Ensembl ID
        "perturbation_type": "crispr",
    }
    query["inputs"][0]["num_samples"] = 5
    result = pysynthbio.predict_query(query, model_id="gem-1-bulk_reference-conditioning")

    metadata = result["metadata"]
    expression = result["expression"]
    print(expression.shape)
    print(metadata.head())

    reference_cpm = np.array(your_reference_counts) / np.sum(your_reference_counts) * 1e6
    generated_counts = expression.iloc[0].values
    generated_cpm = generated_counts / np.sum(generated_counts) * 1e6
    log2fc = np.log2(generated_cpm + 1) - np.log2(reference_cpm + 1)
    gene_names = expression.columns
    top_indices = np.argsort(log2fc)[-20:]
    print("Top upregulated genes:", gene_names[top_indices].tolist())
    # the on-target term: a TP53 knockout lowers TP53 itself
    tp53 = list(gene_names).index("ENSG00000141510")
    assert log2fc[tp53] < np.median(log2fc)


# ------------------------------------------------------------------- behaviour
def _bulk_query(**top: object) -> dict:
    query = opengem.get_example_query(BULK)["example_query"]
    query.update(top)
    return query


def test_seed_gives_byte_identical_results_across_processes() -> None:
    a = opengem.predict_query(_bulk_query(seed=7), model_id=BULK, raw_response=True)
    b = opengem.predict_query(_bulk_query(seed=7), model_id=BULK, raw_response=True)
    assert a == b
    # another process writes its whole result as JSON: the same bytes as this one's
    code = (
        "import json, sys, opengem; q = opengem.get_example_query('gem-1-bulk')['example_query'];"
        "q['seed'] = 7; r = opengem.predict_query(q, model_id='gem-1-bulk', raw_response=True);"
        "sys.stdout.write(json.dumps(r, sort_keys=True))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
    assert out == json.dumps(a, sort_keys=True).encode()
    c = opengem.predict_query(_bulk_query(seed=8), model_id=BULK, raw_response=True)
    assert c["outputs"][0]["counts"] != a["outputs"][0]["counts"]
    unseeded = [
        opengem.predict_query(_bulk_query(seed=None), model_id=BULK, raw_response=True)["outputs"][
            0
        ]["counts"]
        for _ in range(2)
    ]
    assert unseeded[0] != unseeded[1]


def test_mean_estimation_rows_sum_to_total_count() -> None:
    result = opengem.predict_query(
        _bulk_query(sampling_strategy="mean estimation", total_count=5_000_000), model_id=BULK
    )
    sums = result["expression"].sum(axis=1).to_numpy()
    assert np.all(np.abs(sums - 5_000_000) <= N_GENES / 2)
    assert result["expression"].dtypes.unique().tolist() == [np.dtype("int64")]


def test_reference_keeps_its_library_size_unless_fixed() -> None:
    query = opengem.get_example_query(REF)["example_query"]
    library = sum(query["inputs"][0]["counts"])
    kept = opengem.predict_query(query, model_id=REF)["expression"].sum(axis=1)
    assert np.all(np.abs(kept - library) <= N_GENES / 2)
    query["fixed_total_count"] = True
    query["total_count"] = 1_000_000
    fixed = opengem.predict_query(query, model_id=REF)["expression"].sum(axis=1)
    assert np.all(np.abs(fixed - 1_000_000) <= N_GENES / 2)


def test_num_samples_and_input_order() -> None:
    query = _bulk_query()
    query["inputs"][0]["num_samples"] = 2
    query["inputs"][1]["num_samples"] = 3
    result = opengem.predict_query(query, model_id=BULK)
    meta = result["metadata"]
    assert len(meta) == 5 and len(result["expression"]) == 5 and len(result["latents"]) == 5
    assert meta["cell_line_ontology_id"].tolist() == ["CVCL_0004"] * 2 + [""] * 3
    assert meta["tissue_ontology_id"].tolist() == [""] * 2 + ["UBERON:0002048"] * 3
    assert meta["tissue_label"].tolist()[-1] == "lung"
    assert set(meta["modality"]) == {"bulk"}
    assert len(result["latents"]["biological"][0]) > 0


def test_predict_metadata_probabilities_sum_to_one() -> None:
    model = "gem-1-bulk_predict-metadata"
    result = opengem.predict_query(
        opengem.get_example_query(model)["example_query"], model_id=model
    )
    assert set(result) == {"metadata", "latents", "classifier_probs", "expression"}
    probs = result["classifier_probs"].iloc[0]
    for field, dist in probs.items():
        assert abs(sum(dist.values()) - 1) < 1e-6, field
        assert result["metadata"].iloc[0][field] == max(dist, key=dist.get)
    assert result["expression"].shape == (1, N_GENES)


def test_single_cell_sample_generation_draws_cells_around_the_mean() -> None:
    """Beyond GEM-1 (mean estimation only): generated cells of one condition differ from
    each other, more than counting noise alone would make them, around the condition's
    expected profile."""
    query = opengem.get_example_query(SC)["example_query"]
    query["inputs"] = query["inputs"][:1]
    query["inputs"][0]["num_samples"] = 200
    query |= {"deterministic_latents": True, "seed": 3}
    mean = opengem.predict_query(query | {"sampling_strategy": "mean estimation"}, model_id=SC)
    cells = opengem.predict_query(query | {"sampling_strategy": "sample generation"}, model_id=SC)
    x = cells["expression"].to_numpy(dtype=float)
    expected = mean["expression"].to_numpy(dtype=float)[0]  # deterministic: every row alike
    assert len({tuple(r) for r in x[:20]}) == 20
    top = np.argsort(-expected)[:200]
    assert np.corrcoef(x.mean(axis=0)[top], expected[top])[0, 1] > 0.95
    excess = x[:, top].var(axis=0, ddof=1) / np.maximum(x[:, top].mean(axis=0), 1e-9)
    assert np.median(excess) > 1.2  # Poisson counts alone: 1


def test_deterministic_latents_remove_latent_randomness() -> None:
    runs = [
        opengem.predict_query(
            _bulk_query(deterministic_latents=True, seed=s, sampling_strategy="mean estimation"),
            model_id=BULK,
        )
        for s in (1, 2)
    ]
    pd.testing.assert_frame_equal(runs[0]["expression"], runs[1]["expression"])
    first = runs[0]["expression"].to_numpy()
    assert np.array_equal(first[0], first[1])  # replicates of one input agree
    noisy = opengem.predict_query(
        _bulk_query(seed=1, sampling_strategy="mean estimation"), model_id=BULK
    )["expression"].to_numpy()
    assert not np.array_equal(noisy[0], noisy[1])


def test_out_of_vocabulary_values_are_refused_with_suggestions() -> None:
    query = _bulk_query()
    query["inputs"][0]["metadata"] = {
        "cell_line_ontology_id": "CVCL_0027"
    }  # Hep-G2: not in the corpus
    with pytest.raises(opengem.QueryError) as err:
        opengem.predict_query(query, model_id=BULK)
    (problem,) = err.value.problems
    assert "not in this model's vocabulary" in problem.reason and problem.suggestions


def test_a_field_the_bundle_was_not_trained_with_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a bundle trained before "ethnicity" joined the contract: its vocabulary lacks it
    vocab = default_registry().predictor(BULK).vocab
    monkeypatch.delitem(vocab.fields, "ethnicity")
    query = _bulk_query()
    query["inputs"][0]["metadata"]["ethnicity"] = "Han Chinese"
    with pytest.raises(opengem.QueryError) as err:
        opengem.predict_query(query, model_id=BULK)
    (problem,) = err.value.problems
    assert problem.location == "inputs[0].metadata.ethnicity"
    assert BULK in problem.reason and "not trained with" in problem.reason
    assert "tissue_ontology_id" in problem.reason.split("trained with:")[1]
    assert "ethnicity" not in problem.reason.split("trained with:")[1]
    # unset, the field is no problem (clients echo every key with "")
    query["inputs"][0]["metadata"]["ethnicity"] = ""
    assert opengem.predict_query(query, model_id=BULK)["expression"].shape[0] == 10


def test_to_anndata_round_trip() -> None:
    result = opengem.predict_query(_bulk_query(), model_id=BULK)
    adata = opengem.to_anndata(result)
    assert adata.shape == (10, N_GENES)
    assert adata.var.loc["ENSG00000141510", "symbol"] == "TP53"
    np.testing.assert_array_equal(adata.X, result["expression"].to_numpy())
    assert adata.obsm["X_biological"].shape[0] == 10
    assert adata.obs["cell_line_ontology_id"].iloc[0] == "CVCL_0004"


def test_condition_on_sample_ids_uses_stored_samples() -> None:
    model = "gem-1-bulk_condition-on-sample-ids"
    query = opengem.get_example_query(model)["example_query"]
    result = opengem.predict_query(query, model_id=model)
    assert result["expression"].shape == (3, N_GENES)
    query["inputs"][0]["sample_ids"] = ["SRR0000000"]
    with pytest.raises(opengem.QueryError, match="not a training sample"):
        opengem.predict_query(query, model_id=model)


# ------------------------------------------------------- combinations of perturbations
#: two shRNA knockdowns of the K562 series the shipped bulk model was trained on
SRF, EGR1 = "ENSG00000112658", "ENSG00000120738"


def _reference_query(metadata: dict, sampling_strategy: str = "mean estimation") -> dict:
    query = opengem.get_example_query(REF)["example_query"]
    query["inputs"] = query["inputs"][:1]
    query["inputs"][0].update(metadata=metadata, num_samples=2)
    query.update(seed=3, sampling_strategy=sampling_strategy)
    return query


def _mean_log(result: dict) -> np.ndarray:
    return np.log1p(np.array([o["counts"] for o in result["outputs"]], dtype=float)).mean(axis=0)


def test_a_combination_of_perturbations_runs_end_to_end() -> None:
    as_lists = {
        "perturbation_ontology_id": [SRF, EGR1],
        "perturbation_type": ["shrna", "shrna"],
        "perturbation_time": "48 hours",
    }
    joined = {
        "perturbation_ontology_id": f"{SRF}|{EGR1}",
        "perturbation_type": "shrna|shrna",
        "perturbation_time": "48 hours",
    }
    for strategy in ("mean estimation", "sample generation"):
        a = opengem.predict_query(
            _reference_query(as_lists, strategy), model_id=REF, raw_response=True
        )
        b = opengem.predict_query(
            _reference_query(joined, strategy), model_id=REF, raw_response=True
        )
        assert a == b  # the list and the joined forms are one query
    both = opengem.predict_query(_reference_query(as_lists), model_id=REF, raw_response=True)
    meta = both["outputs"][0]["metadata"]
    assert meta["perturbation_ontology_id"] == f"{SRF}|{EGR1}"
    assert meta["perturbation_type"] == "shrna|shrna"
    assert meta["perturbation_label"] == "SRF|EGR1"

    def single(gene: str) -> np.ndarray:
        md = {"perturbation_ontology_id": gene, "perturbation_type": "shrna"}
        md["perturbation_time"] = "48 hours"
        return _mean_log(
            opengem.predict_query(_reference_query(md), model_id=REF, raw_response=True)
        )

    none = _mean_log(opengem.predict_query(_reference_query({}), model_id=REF, raw_response=True))
    srf, egr1, pair = single(SRF), single(EGR1), _mean_log(both)
    for alone in (srf, egr1):
        assert np.abs(alone - none).max() > 0.1  # each perturbation moves the output ...
        assert np.abs(pair - alone).max() > 0.1  # ... and the pair differs from either alone


def test_bad_components_of_a_combination_are_refused_with_their_index() -> None:
    query = _reference_query(
        {
            "perturbation_ontology_id": [SRF, "CHEMBL384467", "CHEMBL25"],
            "perturbation_type": ["shrna", "shrna", "compund"],
        }
    )
    with pytest.raises(opengem.QueryError) as err:
        opengem.predict_query(query, model_id=REF)
    by_location = {p.location: p for p in err.value.problems}
    where = "inputs[0].metadata."
    assert "must be an Ensembl gene id" in by_location[f"{where}perturbation_ontology_id[1]"].reason
    assert "compound" in by_location[f"{where}perturbation_type[2]"].suggestions
    assert "give its perturbation_type" not in str(err.value)  # the type was given
    query["inputs"][0]["metadata"]["perturbation_type"] = ["shrna", "shrna"]
    with pytest.raises(opengem.QueryError, match="has 2 values but perturbation_ontology_id has 3"):
        opengem.predict_query(query, model_id=REF)

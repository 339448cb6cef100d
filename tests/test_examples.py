"""Example queries are valid, and the seed documents' query blocks validate."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import opengem
from opengem.contract import MODEL_IDS, Modality, parse_model_id, reference_counts
from opengem.ontology import default_gene_space

REPO = Path(__file__).resolve().parents[1]
N_GENES = len(default_gene_space())


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_every_example_validates(model_id: str) -> None:
    example = opengem.get_example_query(model_id)
    assert set(example) == {"example_query"}
    query = example["example_query"]
    normalised = opengem.validate_query(query, model_id)
    assert normalised.model_id == model_id
    for item in query["inputs"]:
        if "counts" in item:
            assert len(item["counts"]) == N_GENES
            assert all(isinstance(c, int) for c in item["counts"][:100])


def test_examples_are_fresh_copies() -> None:
    a = opengem.get_example_query("gem-1-bulk")["example_query"]
    a["inputs"][0]["num_samples"] = 99
    b = opengem.get_example_query("gem-1-bulk")["example_query"]
    assert b["inputs"][0]["num_samples"] == 5


def test_published_example_values() -> None:
    bulk = opengem.get_example_query("gem-1-bulk")["example_query"]
    assert bulk["sampling_strategy"] == "sample generation" and bulk["seed"] == 11
    assert len(bulk["inputs"]) == 2  # the R vignette appends inputs[[3]]
    sc = opengem.get_example_query("gem-1-sc")["example_query"]
    assert sc["sampling_strategy"] == "mean estimation"


def test_reference_vectors_look_like_their_modality() -> None:
    bulk = np.array(reference_counts(Modality.BULK))
    sc = np.array(reference_counts("sc"))
    genes = default_gene_space()
    assert bulk.sum() > 1e6 and np.count_nonzero(bulk) > 10_000  # a deep bulk library
    assert 200 < sc.sum() < 20_000 and np.count_nonzero(sc) < 2_000  # a sparse single cell
    # housekeeping genes are expressed, a liver-only gene is not (airway smooth muscle)
    assert bulk[genes.index_of("ENSG00000075624")] > 1000  # ACTB
    assert bulk[genes.index_of("ENSG00000163631")] < 10  # ALB
    # CD14 is a monocyte marker
    assert sc[genes.index_of("ENSG00000170458")] > 0


# -------------------------------------------------- the seed documents, with real values
def _ref_counts() -> list[int]:
    return reference_counts("bulk")


def test_seed_baseline_document_queries() -> None:
    """The query edits of the baseline models page (001_…txt), in order."""
    get = lambda m: opengem.get_example_query(model_id=m)["example_query"]  # noqa: E731
    queries = []
    query = get("gem-1-bulk")
    queries.append(("gem-1-bulk", query))
    sc_query = get("gem-1-sc")
    sc_query["sampling_strategy"] = "mean estimation"
    queries.append(("gem-1-sc", sc_query))
    bulk_query = get("gem-1-bulk")
    bulk_query["sampling_strategy"] = "sample generation"
    queries.append(("gem-1-bulk", bulk_query))
    q = get("gem-1-bulk")
    q["total_count"] = 5_000_000
    queries.append(("gem-1-bulk", q))
    q = get("gem-1-bulk")
    q["deterministic_latents"] = True
    queries.append(("gem-1-bulk", q))
    q = get("gem-1-bulk")
    q["seed"] = 42
    queries.append(("gem-1-bulk", q))
    q = get("gem-1-bulk")
    q["total_count"] = 8_000_000
    q["deterministic_latents"] = True
    q["sampling_strategy"] = "mean estimation"
    queries.append(("gem-1-bulk", q))
    q = get("gem-1-bulk")
    q["inputs"][0]["num_samples"] = 10
    q["inputs"].append(
        {
            "metadata": {
                "sex": "male",
                "sample_type": "primary tissue",
                "tissue_ontology_id": "UBERON:0002371",
            },
            "num_samples": 5,
        }
    )
    queries.append(("gem-1-bulk", q))
    for model_id, query in queries:
        opengem.validate_query(query, model_id)
    assert len(q["inputs"]) == 3


def test_seed_reference_conditioning_document_queries() -> None:
    """The query edits of the reference-conditioning page (000_…txt), placeholders filled."""
    model = "gem-1-bulk_reference-conditioning"
    query = opengem.get_example_query(model_id=model)["example_query"]
    query["inputs"][0]["counts"] = _ref_counts()  # "your_reference_counts"
    query["inputs"][0]["metadata"] = {
        "perturbation_ontology_id": "CHEMBL25",
        "perturbation_type": "compound",
        "perturbation_time": "24 hours",
        "perturbation_dose": "10 um",
    }
    query["inputs"][0]["num_samples"] = 3
    query["sampling_strategy"] = "mean estimation"
    drug = opengem.validate_query(query, model)
    assert drug.inputs[0].metadata["perturbation_dose"] == "10 uM"

    query = opengem.get_example_query(model_id=model)["example_query"]
    query["inputs"][0]["counts"] = _ref_counts()  # "control_sample_counts"
    query["inputs"][0]["metadata"] = {
        "perturbation_ontology_id": "ENSG00000141510",
        "perturbation_type": "crispr",
    }
    query["inputs"][0]["num_samples"] = 5
    opengem.validate_query(query, model)

    for fixed, total in ((False, None), (True, 10_000_000)):
        q = opengem.get_example_query(model_id=model)["example_query"]
        q["fixed_total_count"] = fixed
        if total:
            q["total_count"] = total
        q["deterministic_latents"] = True
        q["seed"] = 42
        assert opengem.validate_query(q, model).fixed_total_count is fixed


def test_seed_documents_are_where_the_tests_say() -> None:
    """Guard: the two seed documents still contain the snippets transcribed above."""
    ref = REPO.parent / "shared" / "reference"
    if not ref.is_dir():
        pytest.skip(f"seed documents not found at {ref}")
    baseline = (ref / "001_3b3860bf8e7ae56a.txt").read_text()
    conditioning = (ref / "000_41886777aff3fe6d.txt").read_text()
    assert '"tissue_ontology_id": "UBERON:0002371"' in baseline
    assert 'query["total_count"] = 8_000_000' in baseline
    assert '"perturbation_dose": "10 um"' in conditioning
    assert '"perturbation_ontology_id": "ENSG00000141510"' in conditioning


# ------------------------------------------------ provenance of the shipped reference vectors
@pytest.mark.corpus
def test_reference_vectors_regenerate_byte_identically(tmp_path: Path) -> None:
    script = REPO / "scripts" / "make_example_references.py"
    data = REPO / "src" / "opengem" / "data"
    before = {p.name: p.read_bytes() for p in data.glob("example_reference_*.tsv.gz")}
    try:
        subprocess.run([sys.executable, str(script)], check=True, capture_output=True, cwd=REPO)
        after = {p.name: p.read_bytes() for p in data.glob("example_reference_*.tsv.gz")}
    finally:
        for name, blob in before.items():
            (data / name).write_bytes(blob)
    assert (
        after.keys()
        == before.keys()
        == {
            "example_reference_bulk.tsv.gz",
            "example_reference_sc.tsv.gz",
        }
    )
    for name in before:
        assert gzip.decompress(after[name]) == gzip.decompress(before[name]), name


def test_example_modalities_match_models() -> None:
    for model_id in MODEL_IDS:
        spec = parse_model_id(model_id)
        query = opengem.get_example_query(model_id)["example_query"]
        for item in query["inputs"]:
            if "counts" in item:
                big = sum(item["counts"]) > 1e6
                assert big == (spec.modality is Modality.BULK)

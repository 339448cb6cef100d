"""Table-driven validation tests: good queries normalise, bad ones name location and reason."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import opengem
from opengem.contract import (
    BaselineQuery,
    QueryError,
    ReferenceQuery,
    SampleIdsQuery,
    UnknownModelError,
    validate_query,
)
from opengem.ontology import default_gene_space
from opengem.settings import QueryLimits

from .helpers import example

N_GENES = len(default_gene_space())
BULK, SC = "gem-1-bulk", "gem-1-sc"
REF, SC_REF = "gem-1-bulk_reference-conditioning", "gem-1-sc_reference-conditioning"
PRED, SC_PRED = "gem-1-bulk_predict-metadata", "gem-1-sc_predict-metadata"
IDS = "gem-1-bulk_condition-on-sample-ids"

Edit = Callable[[dict[str, Any]], None]


def md(**fields: Any) -> Edit:
    """Replace the first input's metadata."""

    def edit(q: dict[str, Any]) -> None:
        q["inputs"][0]["metadata"] = dict(fields)

    return edit


def top(**keys: Any) -> Edit:
    def edit(q: dict[str, Any]) -> None:
        q.update(keys)

    return edit


def drop(key: str) -> Edit:
    def edit(q: dict[str, Any]) -> None:
        q.pop(key)

    return edit


def first_input(**keys: Any) -> Edit:
    def edit(q: dict[str, Any]) -> None:
        q["inputs"][0].update(keys)

    return edit


def counts_with(index: int, value: Any, length: int = N_GENES) -> Edit:
    def edit(q: dict[str, Any]) -> None:
        counts = [1] * length
        if 0 <= index < length:
            counts[index] = value
        q["inputs"][0]["counts"] = counts

    return edit


# --------------------------------------------------------------------------- good queries
GOOD: list[tuple[str, str, Edit]] = [
    ("bulk example as is", BULK, lambda q: None),
    ("sc example as is", SC, lambda q: None),
    (
        "legacy mode instead of sampling_strategy",
        BULK,
        lambda q: q.update(mode=q.pop("sampling_strategy")),
    ),
    ("mode equal to sampling_strategy", BULK, top(mode="sample generation")),
    ("legacy modality key", BULK, top(modality="bulk")),
    ("legacy return_classifier_probs", BULK, top(return_classifier_probs=True)),
    ("source key is accepted", BULK, top(source="pysynthbio")),
    (
        "whole-number float num_samples and seed",
        BULK,
        lambda q: (q["inputs"][0].update(num_samples=5.0), q.update(seed=11.0)),
    ),
    ("empty metadata", BULK, md()),
    ("unset values as empty strings and null", BULK, md(sex="", tissue_ontology_id=None)),
    ("healthy disease as PATO normal", BULK, md(disease_ontology_id="PATO:0000461")),
    ("age as a number", BULK, md(age_years=42)),
    (
        "all technical fields",
        BULK,
        md(
            library_layout="PAIRED",
            library_selection="cDNA",
            platform="illumina",
            study="PRJNA229998",
        ),
    ),
    (
        "infection with a bare taxon id",
        BULK,
        md(perturbation_type="infection", perturbation_ontology_id="2697049"),
    ),
    (
        "compound with ChEBI",
        BULK,
        md(perturbation_type="compound", perturbation_ontology_id="CHEBI:15365"),
    ),
    (
        "shrna on a versioned Ensembl id",
        BULK,
        md(perturbation_type="shrna", perturbation_ontology_id="ENSG00000141510.17"),
    ),
    (
        "reference with legacy wrapped counts",
        REF,
        lambda q: q["inputs"][0].update(counts={"counts": q["inputs"][0]["counts"]}),
    ),
    ("reference with conditioning as a string (R unboxing)", REF, top(conditioning="biological")),
    (
        "reference with whole-number float counts",
        REF,
        lambda q: q["inputs"][0].update(counts=[float(c) for c in q["inputs"][0]["counts"]]),
    ),
    (
        "reference with numpy counts",
        REF,
        lambda q: q["inputs"][0].update(counts=np.asarray(q["inputs"][0]["counts"])),
    ),
    ("reference with fixed_total_count", REF, top(fixed_total_count=True, total_count=5_000_000)),
    ("reference with no metadata means control", REF, lambda q: q["inputs"][0].pop("metadata")),
    (
        "reference with legacy dose and time spellings",
        REF,
        md(
            perturbation_ontology_id="CHEMBL25",
            perturbation_type="compound",
            perturbation_time="24h",
            perturbation_dose="10uM",
        ),
    ),
    ("sc reference", SC_REF, lambda q: None),
    ("predict metadata", PRED, lambda q: None),
    ("sc predict metadata without seed", SC_PRED, drop("seed")),
    (
        "condition on one sample_id",
        IDS,
        lambda q: q["inputs"][0].update(sample_id=q["inputs"][0].pop("sample_ids")[0]),
    ),
]


@pytest.mark.parametrize(("name", "model_id", "edit"), GOOD, ids=[g[0] for g in GOOD])
def test_good_queries_validate(name: str, model_id: str, edit: Edit) -> None:
    query = example(model_id)
    edit(query)
    before = copy.deepcopy(query) if not _has_array(query) else None
    validate_query(query, model_id)
    if before is not None:
        assert query == before, "validation must not mutate the caller's query"


def _has_array(q: dict[str, Any]) -> bool:
    return any(isinstance(i.get("counts"), np.ndarray) for i in q["inputs"])


# ---------------------------------------------------------------------------- bad queries
BAD: list[tuple[str, str, Edit, str, str]] = [
    # (name, model, edit, expected location, expected words in the reason)
    (
        "unknown top-level key",
        BULK,
        top(sampling_stratgy="mean estimation"),
        "sampling_stratgy",
        "sampling_strategy",
    ),
    (
        "reference-only key on a baseline model",
        BULK,
        top(conditioning=["biological"]),
        "conditioning",
        "applies only to reference-conditioning",
    ),
    (
        "sampling strategy on predict-metadata",
        PRED,
        top(sampling_strategy="mean estimation"),
        "sampling_strategy",
        "applies only to",
    ),
    (
        "missing sampling_strategy",
        BULK,
        drop("sampling_strategy"),
        "sampling_strategy",
        "is required",
    ),
    (
        "unknown sampling strategy",
        BULK,
        top(sampling_strategy="mean"),
        "sampling_strategy",
        "not a valid sampling strategy",
    ),
    (
        "unknown legacy mode on single-cell",
        SC,
        lambda q: q.update(mode="posterior sample", sampling_strategy=None),
        "mode",
        "not a valid sampling strategy",
    ),
    (
        "mode contradicts sampling_strategy",
        BULK,
        top(mode="mean estimation"),
        "mode",
        "contradicts",
    ),
    ("wrong legacy modality", BULK, top(modality="single-cell"), "modality", "does not match"),
    ("empty inputs", BULK, top(inputs=[]), "inputs", "non-empty"),
    ("missing inputs", BULK, drop("inputs"), "inputs", "is required"),
    ("inputs not a list", BULK, top(inputs={"metadata": {}}), "inputs", "non-empty list"),
    ("input not an object", BULK, top(inputs=["stomach"]), "inputs[0]", "must be an object"),
    (
        "num_samples zero",
        BULK,
        first_input(num_samples=0),
        "inputs[0].num_samples",
        "between 1 and",
    ),
    (
        "num_samples negative",
        BULK,
        first_input(num_samples=-3),
        "inputs[0].num_samples",
        "between 1 and",
    ),
    (
        "num_samples non-integer",
        BULK,
        first_input(num_samples=2.5),
        "inputs[0].num_samples",
        "whole number",
    ),
    (
        "num_samples as text",
        BULK,
        first_input(num_samples="5"),
        "inputs[0].num_samples",
        "whole number",
    ),
    (
        "num_samples over the per-input maximum",
        BULK,
        first_input(num_samples=1001),
        "inputs[0].num_samples",
        "between 1 and 1,000",
    ),
    (
        "missing num_samples",
        BULK,
        lambda q: q["inputs"][0].pop("num_samples"),
        "inputs[0].num_samples",
        "is required",
    ),
    ("total_count zero", BULK, top(total_count=0), "total_count", "between 1 and"),
    ("total_count negative", BULK, top(total_count=-10), "total_count", "between 1 and"),
    ("seed non-integer", BULK, top(seed=1.5), "seed", "whole number"),
    ("seed as text", BULK, top(seed="11"), "seed", "whole number"),
    ("seed negative", BULK, top(seed=-1), "seed", "between 0 and"),
    (
        "deterministic_latents as text",
        BULK,
        top(deterministic_latents="yes"),
        "deterministic_latents",
        "true or false",
    ),
    ("unknown input key", BULK, first_input(num_sample=3), "inputs[0].num_sample", "num_samples"),
    (
        "unknown metadata field",
        BULK,
        md(tisue="UBERON:0000945"),
        "inputs[0].metadata.tisue",
        "tissue_ontology_id",
    ),
    (
        "v1 free-text key",
        BULK,
        md(tissue="stomach"),
        "inputs[0].metadata.tissue",
        "tissue_ontology_id",
    ),
    (
        "CL id as tissue",
        BULK,
        md(tissue_ontology_id="CL:0000236"),
        "inputs[0].metadata.tissue_ontology_id",
        "Cell Ontology term (B cell)",
    ),
    (
        "UBERON id as cell type",
        BULK,
        md(cell_type_ontology_id="UBERON:0000945"),
        "inputs[0].metadata.cell_type_ontology_id",
        "UBERON anatomy term (stomach)",
    ),
    (
        "label instead of id",
        BULK,
        md(tissue_ontology_id="stomach"),
        "inputs[0].metadata.tissue_ontology_id",
        "not an ontology id",
    ),
    (
        "tissue id that does not exist",
        BULK,
        md(tissue_ontology_id="UBERON:9999999"),
        "inputs[0].metadata.tissue_ontology_id",
        "does not exist in UBERON",
    ),
    (
        "disease id that does not exist",
        BULK,
        md(disease_ontology_id="MONDO:9999999"),
        "inputs[0].metadata.disease_ontology_id",
        "does not exist in MONDO",
    ),
    (
        "cell line id that does not exist",
        BULK,
        md(cell_line_ontology_id="CVCL_ZZZZZZ"),
        "inputs[0].metadata.cell_line_ontology_id",
        "does not exist in CVCL",
    ),
    (
        "lower-case cell line id",
        BULK,
        md(cell_line_ontology_id="cvcl_0023"),
        "inputs[0].metadata.cell_line_ontology_id",
        "not spelled as CVCL ids are",
    ),
    (
        "cell line name instead of id",
        BULK,
        md(cell_line_ontology_id="A-549"),
        "inputs[0].metadata.cell_line_ontology_id",
        "not an ontology id",
    ),
    (
        "disease given as EFO",
        BULK,
        md(disease_ontology_id="EFO:0000311"),
        "inputs[0].metadata.disease_ontology_id",
        "Experimental Factor Ontology",
    ),
    (
        "PATO term other than normal",
        BULK,
        md(disease_ontology_id="PATO:0000460"),
        "inputs[0].metadata.disease_ontology_id",
        "only PATO term",
    ),
    ("sex not in enum", BULK, md(sex="unknown"), "inputs[0].metadata.sex", "not a valid sex"),
    (
        "sample_type not in enum",
        BULK,
        md(sample_type="tissue"),
        "inputs[0].metadata.sample_type",
        "not a valid sample_type",
    ),
    (
        "perturbation_type not in enum",
        BULK,
        md(perturbation_type="knockout"),
        "inputs[0].metadata.perturbation_type",
        "not a valid perturbation_type",
    ),
    (
        "library_layout not in enum",
        BULK,
        md(library_layout="TRIPLE"),
        "inputs[0].metadata.library_layout",
        "not a valid library_layout",
    ),
    (
        "platform not in enum",
        BULK,
        md(platform="nanopore"),
        "inputs[0].metadata.platform",
        "not a valid platform",
    ),
    (
        "malformed dose",
        BULK,
        md(perturbation_dose="lots"),
        "inputs[0].metadata.perturbation_dose",
        "<number> <unit>",
    ),
    (
        "dose with unknown unit",
        BULK,
        md(perturbation_dose="10 parsecs"),
        "inputs[0].metadata.perturbation_dose",
        "unknown dose unit",
    ),
    (
        "time without unit",
        BULK,
        md(perturbation_time="24"),
        "inputs[0].metadata.perturbation_time",
        "has no unit",
    ),
    (
        "time as a number",
        BULK,
        md(perturbation_time=24),
        "inputs[0].metadata.perturbation_time",
        "<number> <unit>",
    ),
    (
        "age not a number",
        BULK,
        md(age_years="old"),
        "inputs[0].metadata.age_years",
        "number of years",
    ),
    (
        "gene symbol as perturbation id",
        BULK,
        md(perturbation_ontology_id="TP53"),
        "inputs[0].metadata.perturbation_ontology_id",
        "not an ontology id",
    ),
    (
        "Ensembl id outside the gene space",
        BULK,
        md(perturbation_ontology_id="ENSG00000251562", perturbation_type="crispr"),
        "inputs[0].metadata.perturbation_ontology_id",
        "not a human protein-coding gene",
    ),
    (
        "crispr with a compound id",
        BULK,
        md(perturbation_ontology_id="CHEMBL25", perturbation_type="crispr"),
        "inputs[0].metadata.perturbation_ontology_id",
        "must be an Ensembl gene id",
    ),
    (
        "compound with a gene id",
        BULK,
        md(perturbation_ontology_id="ENSG00000141510", perturbation_type="compound"),
        "inputs[0].metadata.perturbation_ontology_id",
        "ChEBI or ChEMBL",
    ),
    (
        "control with a perturbation id",
        BULK,
        md(perturbation_ontology_id="CHEMBL25", perturbation_type="control"),
        "inputs[0].metadata.perturbation_ontology_id",
        "control has no perturbation id",
    ),
    (
        "unknown taxon",
        BULK,
        md(perturbation_ontology_id="NCBITaxon:123456789"),
        "inputs[0].metadata.perturbation_ontology_id",
        "NCBI Taxonomy table",
    ),
    (
        "malformed ChEMBL id",
        BULK,
        md(perturbation_ontology_id="chembl25"),
        "inputs[0].metadata.perturbation_ontology_id",
        "not an ontology id",
    ),
    (
        "biological field in reference conditioning",
        REF,
        md(tissue_ontology_id="UBERON:0000945"),
        "inputs[0].metadata.tissue_ontology_id",
        "inferred from the reference counts",
    ),
    (
        "technical field in reference conditioning",
        REF,
        md(study="PRJNA1"),
        "inputs[0].metadata.study",
        "accept only perturbation fields",
    ),
    (
        "reference counts too short",
        REF,
        counts_with(-1, 0, length=100),
        "inputs[0].counts",
        f"expects {N_GENES:,}",
    ),
    ("reference counts negative", REF, counts_with(7, -2), "inputs[0].counts", "negative"),
    ("reference counts NaN", REF, counts_with(3, math.nan), "inputs[0].counts", "NaN"),
    ("reference counts non-integer", REF, counts_with(5, 2.5), "inputs[0].counts", "non-integer"),
    ("reference counts with text", REF, counts_with(2, "x"), "inputs[0].counts", "only numbers"),
    (
        "reference counts all zero",
        REF,
        first_input(counts=[0] * N_GENES),
        "inputs[0].counts",
        "all zeros",
    ),
    (
        "reference counts not a list",
        REF,
        first_input(counts="1,2,3"),
        "inputs[0].counts",
        "must be a list",
    ),
    (
        "reference counts missing",
        REF,
        lambda q: q["inputs"][0].pop("counts"),
        "inputs[0].counts",
        "is required",
    ),
    (
        "wrapped counts still checked",
        REF,
        first_input(counts={"counts": [1, 2, 3]}),
        "inputs[0].counts.counts",
        "expects",
    ),
    (
        "unknown conditioning group",
        REF,
        top(conditioning=["biological", "batch"]),
        "conditioning[1]",
        "not a valid latent group",
    ),
    ("empty conditioning", REF, top(conditioning=[]), "conditioning", "non-empty"),
    (
        "fixed_total_count as text",
        REF,
        top(fixed_total_count="true"),
        "fixed_total_count",
        "true or false",
    ),
    (
        "predict-metadata counts with negative",
        PRED,
        counts_with(0, -1),
        "inputs[0].counts",
        "negative",
    ),
    (
        "predict-metadata metadata key",
        PRED,
        first_input(metadata={}),
        "inputs[0].metadata",
        "not an input key",
    ),
    (
        "sample ids and sample id together",
        IDS,
        first_input(sample_id="SRR1039509"),
        "inputs[0].sample_id",
        "together with sample_ids",
    ),
    (
        "no sample ids",
        IDS,
        lambda q: q["inputs"][0].pop("sample_ids"),
        "inputs[0].sample_ids",
        "is required",
    ),
    ("empty sample ids", IDS, first_input(sample_ids=[]), "inputs[0].sample_ids", "non-empty list"),
    (
        "biological field with sample ids",
        IDS,
        md(sex="male"),
        "inputs[0].metadata.sex",
        "inferred from the reference",
    ),
]


@pytest.mark.parametrize(
    ("name", "model_id", "edit", "location", "words"), BAD, ids=[b[0] for b in BAD]
)
def test_bad_queries_name_location_and_reason(
    name: str, model_id: str, edit: Edit, location: str, words: str
) -> None:
    query = example(model_id)
    edit(query)
    query = {k: v for k, v in query.items() if v is not None}
    with pytest.raises(QueryError) as err:
        validate_query(query, model_id)
    hits = [p for p in err.value.problems if p.location == location]
    assert hits, f"no problem at {location}: {err.value}"
    assert any(words in p.reason + " ".join(p.suggestions) for p in hits), str(err.value)
    assert location in str(err.value)


def test_every_problem_is_reported_at_once() -> None:
    query = example(BULK)
    query["seed"] = "x"
    query["inputs"][0]["metadata"]["sex"] = "unknown"
    query["inputs"][1]["metadata"]["tissue_ontology_id"] = "CL:0000236"
    query["inputs"][1]["num_samples"] = 0
    with pytest.raises(QueryError) as err:
        validate_query(query, BULK)
    locations = {p.location for p in err.value.problems}
    assert locations == {
        "seed",
        "inputs[0].metadata.sex",
        "inputs[1].metadata.tissue_ontology_id",
        "inputs[1].num_samples",
    }


def test_message_reads_like_the_contract() -> None:
    query = example(BULK)
    query["inputs"][0]["metadata"] = {"tissue_ontology_id": "CL:0000236"}
    with pytest.raises(QueryError) as err:
        validate_query(query, BULK)
    assert (
        "inputs[0].metadata.tissue_ontology_id: 'CL:0000236' is a Cell Ontology term (B cell); "
        "this field needs an UBERON tissue id" in str(err.value)
    )
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    ("field", "value", "suggestion"),
    [
        ("tissue_ontology_id", "stomach", "UBERON:0000945 (stomach)"),
        ("tissue_ontology_id", "UBERON:000945", "UBERON:0000945 (stomach)"),
        ("cell_line_ontology_id", "cvcl_0023", "CVCL_0023 (A-549)"),
        ("cell_type_ontology_id", "B cell", "CL:0000236 (B cell)"),
        ("perturbation_ontology_id", "TP53", "ENSG00000141510 (TP53)"),
        ("sex", "femal", "female"),
        ("sample_type", "primary tisue", "primary tissue"),
    ],
)
def test_suggestions_point_at_valid_values(field: str, value: str, suggestion: str) -> None:
    query = example(BULK)
    query["inputs"][0]["metadata"] = {field: value}
    with pytest.raises(QueryError) as err:
        validate_query(query, BULK)
    (problem,) = err.value.problems
    assert suggestion in problem.suggestions
    assert len(problem.suggestions) <= 5


def test_query_must_be_a_dict() -> None:
    with pytest.raises(QueryError, match="must be a JSON object"):
        validate_query([1, 2], BULK)


def test_unknown_model_id() -> None:
    with pytest.raises(UnknownModelError, match="valid model ids: gem-1-bulk"):
        validate_query(example(BULK), "gem-2")


def test_per_query_sample_limit_is_configurable() -> None:
    query = example(BULK)
    limits = QueryLimits(max_samples_per_input=4, max_samples_per_query=6)
    with pytest.raises(QueryError) as err:
        validate_query(query, BULK, limits=limits)
    locations = [p.location for p in err.value.problems]
    assert locations == ["inputs[0].num_samples", "inputs[1].num_samples"]
    query["inputs"][0]["num_samples"] = query["inputs"][1]["num_samples"] = 4
    with pytest.raises(QueryError, match="8 samples in total; at most 6"):
        validate_query(query, BULK, limits=limits)


def test_limits_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENGEM_MAX_SAMPLES_PER_INPUT", "2")
    with pytest.raises(QueryError, match="between 1 and 2"):
        validate_query(example(BULK), BULK)
    monkeypatch.setenv("OPENGEM_MAX_SAMPLES_PER_INPUT", "many")
    with pytest.raises(ValueError, match="OPENGEM_MAX_SAMPLES_PER_INPUT"):
        QueryLimits.from_env()


def test_normalised_values_are_canonical() -> None:
    query = {
        "mode": "mean estimation",
        "seed": 7.0,
        "inputs": [
            {
                "metadata": {
                    "sex": "Female",
                    "age_years": 65.0,
                    "perturbation_type": "SHRNA",
                    "perturbation_ontology_id": "ENSG00000141510.17",
                    "perturbation_dose": "10 µM",
                    "perturbation_time": "24h",
                    "library_selection": "polya",
                    "tissue_ontology_id": "",
                },
                "num_samples": 2.0,
            }
        ],
    }
    q = validate_query(query, BULK)
    assert isinstance(q, BaselineQuery)
    assert q.sampling_strategy == "mean estimation"
    assert q.seed == 7 and q.total_count == 10_000_000 and q.deterministic_latents is False
    assert q.inputs[0].num_samples == 2
    assert q.inputs[0].metadata == {
        "sex": "female",
        "age_years": "65",
        "perturbation_type": "shrna",
        "perturbation_ontology_id": "ENSG00000141510",
        "perturbation_dose": "10 uM",
        "perturbation_time": "24 hours",
        "library_selection": "PolyA",
    }
    infection = {
        "inputs": [{"metadata": {"perturbation_ontology_id": "9606"}, "num_samples": 1}],
        "sampling_strategy": "mean estimation",
    }
    assert validate_query(infection, BULK).inputs[0].metadata == {
        "perturbation_ontology_id": "NCBITaxon:9606"
    }


def test_reference_defaults_and_counts_vector() -> None:
    query = example(SC_REF)
    query.pop("conditioning")
    q = validate_query(query, SC_REF)
    assert isinstance(q, ReferenceQuery)
    assert q.conditioning == ["biological", "technical"]
    assert q.total_count == 10_000 and q.fixed_total_count is False
    counts = q.inputs[0].counts
    assert counts.dtype == np.int64 and counts.shape == (N_GENES,)
    assert counts.tolist() == query["inputs"][0]["counts"]
    # JSON round trip keeps the counts as plain integers
    dumped = q.model_dump(mode="json")
    assert dumped["inputs"][0]["counts"] == query["inputs"][0]["counts"]


def test_conditioning_string_and_duplicates() -> None:
    query = example(REF)
    query["conditioning"] = ["technical", "technical", "perturbation"]
    assert validate_query(query, REF).conditioning == ["technical", "perturbation"]
    query["conditioning"] = "Biological"
    assert validate_query(query, REF).conditioning == ["biological"]


def test_sample_ids_are_normalised_and_checked_against_the_model() -> None:
    query = example(IDS)
    q = validate_query(query, IDS)
    assert isinstance(q, SampleIdsQuery) and q.inputs[0].sample_ids == ["SRR1039508"]
    with pytest.raises(QueryError) as err:
        validate_query(query, IDS, known_sample_ids={"SRR1039509", "SRR1039512"})
    (problem,) = err.value.problems
    assert problem.location == "inputs[0].sample_ids[0]"
    assert "SRR1039509" in problem.suggestions


VOCAB = {
    "tissue_ontology_id": {"UBERON:0000945": "stomach", "UBERON:0001155": "colon"},
    "sex": {"female": "female", "male": "male"},
    "perturbation_ontology_id": {"CHEMBL25": "ASPIRIN"},
}


def test_vocabulary_membership() -> None:
    base = {"sampling_strategy": "mean estimation", "inputs": [{"metadata": {}, "num_samples": 1}]}

    def run(**metadata: str) -> Any:
        q = copy.deepcopy(base)
        q["inputs"][0]["metadata"] = metadata
        return validate_query(q, BULK, vocabulary=VOCAB)

    assert run(tissue_ontology_id="UBERON:0000945").inputs[0].metadata
    # an unseen child term (transverse colon) is accepted through its known ancestor
    assert run(tissue_ontology_id="UBERON:0001157").inputs[0].metadata
    with pytest.raises(QueryError) as err:
        run(tissue_ontology_id="UBERON:0002107")  # liver: real, but unknown to the model
    (problem,) = err.value.problems
    assert "not in this model's vocabulary" in problem.reason
    assert set(problem.suggestions) <= {"UBERON:0000945 (stomach)", "UBERON:0001155 (colon)"}
    # an unseen compound (doxorubicin) is modelled as an unseen perturbation of its type ...
    assert run(perturbation_ontology_id="CHEMBL53463", perturbation_type="compound")
    # ... which needs the type; an unseen gene target always works (on-target term)
    with pytest.raises(QueryError, match="give its perturbation_type"):
        run(perturbation_ontology_id="CHEMBL53463")
    assert run(perturbation_ontology_id="ENSG00000141510").inputs[0].metadata


def test_fields_a_model_was_not_trained_with_are_refused_by_name() -> None:
    trained = [f for f in opengem.contract.FIELDS if f != "genotype"]
    query = example(BULK)
    query["inputs"][1]["metadata"]["genotype"] = "wild type"
    with pytest.raises(QueryError) as err:
        validate_query(query, BULK, trained_fields=trained)
    (problem,) = err.value.problems
    assert problem.location == "inputs[1].metadata.genotype"
    assert problem.value == "wild type"
    assert f"{BULK} was not trained with" in problem.reason
    listed = problem.reason.split("trained with: ")[1].split(", ")
    assert listed == trained
    # unset, or with every field trained, the query passes as before
    query["inputs"][1]["metadata"]["genotype"] = ""
    assert validate_query(query, BULK, trained_fields=trained)
    query["inputs"][1]["metadata"]["genotype"] = "wild type"
    assert validate_query(query, BULK, trained_fields=opengem.contract.FIELDS)


def test_unseen_terms_need_an_informative_shared_ancestor() -> None:
    base = {
        "sampling_strategy": "mean estimation",
        "inputs": [{"metadata": {"tissue_ontology_id": "UBERON:0002371"}, "num_samples": 1}],
    }
    vocab = {"tissue_ontology_id": {"UBERON:0000178": "blood"}}
    with pytest.raises(QueryError, match="not in this model's vocabulary"):
        validate_query(base, BULK, vocabulary=vocab)
    # bone marrow and blood are both parts of the hematopoietic system
    tokens = {"tissue_ontology_id": ["UBERON:0002390"]}
    assert validate_query(base, BULK, vocabulary=vocab, ancestor_tokens=tokens)


def test_problems_serialise_for_apis() -> None:
    query = example(BULK)
    query["inputs"][0]["metadata"] = {"sex": "x"}
    with pytest.raises(QueryError) as err:
        validate_query(query, BULK)
    body = err.value.to_dict()
    assert body["problems"][0]["location"] == "inputs[0].metadata.sex"
    assert body["problems"][0]["value"] == "'x'"
    assert "female" in body["problems"][0]["suggestions"]
    assert "inputs[0].metadata.sex" in body["detail"]


def test_top_level_api_reexports() -> None:
    assert opengem.validate_query is validate_query
    assert issubclass(opengem.QueryError, ValueError)


# --------------------------------------------------------------- combinations of perturbations
TP53, SRF, EGR1 = "ENSG00000141510", "ENSG00000112658", "ENSG00000120738"
PAIR_AS_LISTS = {
    "perturbation_ontology_id": [SRF, EGR1],
    "perturbation_type": ["shrna", "shrna"],
    "perturbation_time": ["48 hours", "72h"],
    "perturbation_dose": "",
}
PAIR_JOINED = {
    "perturbation_ontology_id": f"{SRF}|{EGR1}",
    "perturbation_type": "shRNA|shrna",
    "perturbation_time": "48 hours|72 hr",
}
PAIR_NORMALISED = {
    "perturbation_ontology_id": f"{SRF}|{EGR1}",
    "perturbation_type": "shrna|shrna",
    "perturbation_time": "48 hours|72 hours",
}


def _first_metadata(model_id: str, metadata: dict[str, Any], **kw: Any) -> dict[str, str]:
    query = example(model_id)
    query["inputs"][0]["metadata"] = metadata
    return dict(validate_query(query, model_id, **kw).inputs[0].metadata)


@pytest.mark.parametrize("model_id", [BULK, REF, IDS])
def test_combinations_normalise_to_aligned_joined_strings(model_id: str) -> None:
    as_lists = _first_metadata(model_id, copy.deepcopy(PAIR_AS_LISTS))
    assert as_lists == PAIR_NORMALISED
    assert _first_metadata(model_id, dict(PAIR_JOINED)) == PAIR_NORMALISED
    # list and joined forms give the same normalised query, byte for byte
    q_lists, q_joined = example(model_id), example(model_id)
    q_lists["inputs"][0]["metadata"] = copy.deepcopy(PAIR_AS_LISTS)
    q_joined["inputs"][0]["metadata"] = dict(PAIR_JOINED)
    assert (
        validate_query(q_lists, model_id).model_dump_json()
        == validate_query(q_joined, model_id).model_dump_json()
    )


def test_combination_dose_and_time_may_be_one_value_for_all() -> None:
    metadata = {
        "perturbation_ontology_id": ["CHEMBL25", "CHEBI:15365"],
        "perturbation_type": ["compound", "compound"],
        "perturbation_dose": "10uM",
        "perturbation_time": ["24h", None],
    }
    assert _first_metadata(REF, metadata) == {
        "perturbation_ontology_id": "CHEMBL25|CHEBI:15365",
        "perturbation_type": "compound|compound",
        "perturbation_dose": "10 uM",
        "perturbation_time": "24 hours|",
    }
    # mixed kinds: a gene target and an infection
    mixed = {
        "perturbation_ontology_id": [TP53, "2697049"],
        "perturbation_type": ["crispr", "infection"],
    }
    assert _first_metadata(BULK, mixed)["perturbation_ontology_id"] == (f"{TP53}|NCBITaxon:2697049")


def test_single_perturbations_are_unchanged() -> None:
    single = {
        "perturbation_ontology_id": "CHEMBL25",
        "perturbation_type": "Compound",
        "perturbation_dose": "10uM",
    }
    expected = {
        "perturbation_ontology_id": "CHEMBL25",
        "perturbation_type": "compound",
        "perturbation_dose": "10 uM",
    }
    assert _first_metadata(REF, dict(single)) == expected
    # a one-item list (R without auto_unbox) is the single perturbation
    assert _first_metadata(REF, {**single, "perturbation_ontology_id": ["CHEMBL25"]}) == expected


BAD_COMBINATIONS: list[tuple[str, dict[str, Any], str, str]] = [
    # (name, metadata, expected location, expected words in the reason)
    (
        "a component of the wrong id space",
        {"perturbation_ontology_id": [SRF, "CHEMBL25"], "perturbation_type": ["shrna", "shrna"]},
        "inputs[0].metadata.perturbation_ontology_id[1]",
        "must be an Ensembl gene id",
    ),
    (
        "a component that is not an id",
        {"perturbation_ontology_id": f"{SRF}|TP53", "perturbation_type": "shrna|shrna"},
        "inputs[0].metadata.perturbation_ontology_id[1]",
        f"{TP53} (TP53)",
    ),
    (
        "a misspelled component type",
        {"perturbation_ontology_id": [SRF, EGR1], "perturbation_type": ["shrna", "shRNAi"]},
        "inputs[0].metadata.perturbation_type[1]",
        "not a valid perturbation_type",
    ),
    (
        "a bad component dose",
        {
            "perturbation_ontology_id": ["CHEMBL25", "CHEBI:15365"],
            "perturbation_type": ["compound", "compound"],
            "perturbation_dose": ["10 uM", "ten"],
        },
        "inputs[0].metadata.perturbation_dose[1]",
        "uM",
    ),
    (
        "list lengths differ",
        {"perturbation_ontology_id": [SRF, EGR1, TP53], "perturbation_type": ["shrna", "shrna"]},
        "inputs[0].metadata.perturbation_type",
        "has 2 values but perturbation_ontology_id has 3",
    ),
    (
        "joined lengths differ",
        {
            "perturbation_ontology_id": f"{SRF}|{EGR1}",
            "perturbation_type": "shrna|shrna",
            "perturbation_time": "1 h|2 h|3 h",
        },
        "inputs[0].metadata.perturbation_time",
        "has 3 values but perturbation_ontology_id has 2",
    ),
    (
        "one type for several ids",
        {"perturbation_ontology_id": [SRF, EGR1], "perturbation_type": "shrna"},
        "inputs[0].metadata.perturbation_type",
        "give a list of 2 values",
    ),
    (
        "control combined",
        {"perturbation_ontology_id": [SRF, ""], "perturbation_type": ["shrna", "control"]},
        "inputs[0].metadata.perturbation_type[1]",
        "cannot be combined with other perturbations",
    ),
    (
        "an empty component",
        {"perturbation_ontology_id": [SRF, ""], "perturbation_type": ["shrna", None]},
        "inputs[0].metadata.perturbation_ontology_id[1]",
        "needs an id or a type",
    ),
    (
        "a repeated component",
        {"perturbation_ontology_id": [SRF, SRF], "perturbation_type": ["shrna", "shrna"]},
        "inputs[0].metadata.perturbation_ontology_id[1]",
        "repeats perturbation 0",
    ),
    (
        "a joined value inside a list",
        {"perturbation_ontology_id": [f"{SRF}|{EGR1}"], "perturbation_type": ["shrna"]},
        "inputs[0].metadata.perturbation_ontology_id[0]",
        "in a list each value is one perturbation",
    ),
    (
        "an empty list",
        {"perturbation_ontology_id": [], "perturbation_type": "shrna"},
        "inputs[0].metadata.perturbation_ontology_id",
        "empty list",
    ),
]


@pytest.mark.parametrize("model_id", [BULK, REF])
@pytest.mark.parametrize(
    ("name", "metadata", "location", "words"),
    BAD_COMBINATIONS,
    ids=[b[0] for b in BAD_COMBINATIONS],
)
def test_bad_combinations_name_the_component(
    model_id: str, name: str, metadata: dict[str, Any], location: str, words: str
) -> None:
    with pytest.raises(QueryError) as err:
        _first_metadata(model_id, copy.deepcopy(metadata))
    hits = [p for p in err.value.problems if p.location == location]
    assert hits, f"no problem at {location}: {err.value}"
    assert any(words in p.reason + " ".join(p.suggestions) for p in hits), str(err.value)


def test_every_bad_component_is_reported() -> None:
    metadata = {
        "perturbation_ontology_id": ["CHEMBL25", "nope", TP53],
        "perturbation_type": ["compund", "compound", "crispr"],
        "perturbation_time": ["24 hours", "24 hours", "soon"],
    }
    with pytest.raises(QueryError) as err:
        _first_metadata(REF, metadata)
    locations = {p.location for p in err.value.problems}
    assert locations == {
        "inputs[0].metadata.perturbation_type[0]",
        "inputs[0].metadata.perturbation_ontology_id[1]",
        "inputs[0].metadata.perturbation_time[2]",
    }


def test_combination_components_meet_the_model_vocabulary() -> None:
    vocab = {
        "perturbation_ontology_id": {"CHEMBL25": "ASPIRIN", SRF: "SRF"},
        "perturbation_type": {"compound": "", "shrna": "", "control": ""},
    }
    # the vocabulary's classes are single components; each is judged on its own
    known = {
        "perturbation_ontology_id": ["CHEMBL25", SRF],
        "perturbation_type": ["compound", "shrna"],
    }
    assert _first_metadata(REF, known, vocabulary=vocab)["perturbation_type"] == "compound|shrna"
    # an unseen compound with its type is an unseen perturbation of that type
    unseen = {
        "perturbation_ontology_id": [SRF, "CHEMBL53463"],
        "perturbation_type": ["shrna", "compound"],
    }
    assert _first_metadata(REF, unseen, vocabulary=vocab)
    with pytest.raises(QueryError) as err:
        _first_metadata(REF, {"perturbation_ontology_id": [SRF, "CHEMBL53463"]}, vocabulary=vocab)
    (problem,) = err.value.problems
    assert problem.location == "inputs[0].metadata.perturbation_ontology_id[1]"
    assert "give its perturbation_type" in problem.reason
    with pytest.raises(QueryError) as err:
        _first_metadata(
            REF,
            {
                "perturbation_ontology_id": [SRF, "2697049"],
                "perturbation_type": ["shrna", "infection"],
            },
            vocabulary=vocab,
        )
    (problem,) = [p for p in err.value.problems if "perturbation_type" in p.location]
    assert problem.location == "inputs[0].metadata.perturbation_type[1]"
    assert "not in this model's vocabulary" in problem.reason
    assert "compound" in problem.suggestions


@pytest.mark.parametrize(
    ("metadata", "type_location"),
    [
        (
            {"perturbation_ontology_id": "CHEMBL53463", "perturbation_type": "compund"},
            "inputs[0].metadata.perturbation_type",
        ),
        (
            {"perturbation_ontology_id": "CHEMBL53463", "perturbation_type": "infection"},
            "inputs[0].metadata.perturbation_type",
        ),
        (
            {
                "perturbation_ontology_id": ["CHEMBL25", "CHEMBL53463"],
                "perturbation_type": ["compound", "compund"],
            },
            "inputs[0].metadata.perturbation_type[1]",
        ),
    ],
)
def test_a_refused_type_is_not_called_missing(metadata: dict[str, Any], type_location: str) -> None:
    vocab = {
        "perturbation_ontology_id": {"CHEMBL25": "ASPIRIN"},
        "perturbation_type": {"compound": "", "control": ""},
    }
    with pytest.raises(QueryError) as err:
        _first_metadata(REF, metadata, vocabulary=vocab)
    assert "give its perturbation_type" not in str(err.value)
    locations = [p.location for p in err.value.problems]
    assert type_location in locations
    (id_problem,) = [p for p in err.value.problems if "perturbation_ontology_id" in p.location]
    assert f"see {type_location}" in id_problem.reason

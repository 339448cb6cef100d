"""Example queries, one per model id, with real and valid values.

They keep the shape of the examples pysynthbio/rsynthbio shipped (compat-spec
§3.2: two bulk inputs, a cell line perturbation and a tissue; two single-cell
cell types; seed 11), with values the shipped models were trained on, so every
example runs as is. Examples that need counts carry a full-length reference
vector derived from real public samples (``scripts/make_example_references.py``).
"""

from __future__ import annotations

import copy
import gzip
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from opengem.contract.models import Modality, Task, parse_model_id
from opengem.ontology.genes import GeneSpace, default_gene_space

_SEED = 11

_BULK_BASELINE_INPUTS = [
    {  # K-562 cells, shRNA knock-down of SRF for 48 h (the shape of pysynthbio's example)
        "metadata": {
            "cell_line_ontology_id": "CVCL_0004",
            "perturbation_ontology_id": "ENSG00000112658",
            "perturbation_type": "shrna",
            "perturbation_time": "48 hours",
            "sample_type": "cell line",
        },
        "num_samples": 5,
    },
    {  # lung tissue of a man with COVID-19
        "metadata": {
            "disease_ontology_id": "MONDO:0100096",
            "sex": "male",
            "sample_type": "primary tissue",
            "tissue_ontology_id": "UBERON:0002048",
        },
        "num_samples": 5,
    },
]
_SC_BASELINE_INPUTS = [
    {  # blood CD14+ monocytes and B cells
        "metadata": {"cell_type_ontology_id": ct, "tissue_ontology_id": "UBERON:0000178"},
        "num_samples": 5,
    }
    for ct in ("CL:0001054", "CL:0000236")
]
#: Dexamethasone 1 µM for 18 h (the example reference is untreated airway smooth muscle).
_DRUG = {
    "perturbation_ontology_id": "CHEMBL384467",
    "perturbation_type": "compound",
    "perturbation_time": "18 hours",
    "perturbation_dose": "1 uM",
}
#: CRISPR knockout of TP53 (the reference-conditioning docs' CRISPR example).
_TP53_KO = {"perturbation_ontology_id": "ENSG00000141510", "perturbation_type": "crispr"}
#: Dexamethasone 1 µM for 18 h on an untreated airway sample (GEO GSE52778).
_DEX_ON_AIRWAY = {
    "sample_ids": ["SRR1039508"],
    "metadata": {
        "perturbation_ontology_id": "CHEMBL384467",
        "perturbation_type": "compound",
        "perturbation_dose": "1 uM",
        "perturbation_time": "18 hours",
    },
    "num_samples": 3,
}


@cache
def _reference_counts(modality: Modality, genes: GeneSpace) -> tuple[int, ...]:
    name = f"example_reference_{modality.value}.tsv.gz"
    text = gzip.decompress(resources.files("opengem.data").joinpath(name).read_bytes()).decode()
    counts = np.zeros(len(genes), dtype=np.int64)
    for line in text.splitlines():
        if not line or line.startswith("#") or line.startswith("gene_id"):
            continue
        gene_id, value = line.split("\t")
        i = genes.index_of(gene_id)
        if i is not None:
            counts[i] = int(value)
    return tuple(counts.tolist())


def reference_counts(modality: Modality | str, gene_space: GeneSpace | None = None) -> list[int]:
    """The shipped example reference vector of a modality, in the gene space's order."""
    return list(_reference_counts(Modality(modality), gene_space or default_gene_space()))


def _build(model_id: str, genes: GeneSpace) -> dict[str, Any]:
    spec = parse_model_id(model_id)
    bulk = spec.modality is Modality.BULK
    if spec.task is Task.BASELINE:
        return {
            "inputs": copy.deepcopy(_BULK_BASELINE_INPUTS if bulk else _SC_BASELINE_INPUTS),
            "sampling_strategy": "sample generation" if bulk else "mean estimation",
            "seed": _SEED,
        }
    if spec.task is Task.PREDICT_METADATA:
        return {"inputs": [{"counts": reference_counts(spec.modality, genes)}], "seed": _SEED}
    conditioning = {
        "conditioning": ["biological", "technical"],
        "sampling_strategy": "mean estimation",
        "seed": _SEED,
    }
    if spec.task is Task.CONDITION_ON_SAMPLE_IDS:
        return {"inputs": [copy.deepcopy(_DEX_ON_AIRWAY)], **conditioning}
    return {
        "inputs": [
            {
                "counts": reference_counts(spec.modality, genes),
                "metadata": dict(_DRUG if bulk else _TP53_KO),
                "num_samples": 3 if bulk else 5,
            }
        ],
        **conditioning,
    }


def get_example_query(model_id: str, gene_space: GeneSpace | None = None) -> dict[str, Any]:
    """``{"example_query": {...}}``: a valid query for ``model_id`` (a fresh copy each call).

    Raises
    ------
    UnknownModelError
        For an id opengem does not serve.
    """
    return {"example_query": _build(model_id, gene_space or default_gene_space())}

"""Synthetic corpora with planted structure, for tests that must be able to fail.

The generator writes the same AnnData layout as :func:`opengem.corpus.build_corpus`
(raw counts in ``.X``, harmonised metadata in ``obs``, the gene space in ``var``,
``varm["study_mask"]``), over the first ``n_genes`` genes of a gene space, with
effects whose size and direction are known:

- two tissues (lung vs liver) with distinct programs (``TISSUE_GENES``);
- a compound (dexamethasone) that multiplies ``PERTURBATION_UP`` genes by
  ``fold`` and divides ``PERTURBATION_DOWN`` genes by it, in every context;
- shRNA knockdowns of named target genes (their own expression ÷ ``kd_fold``);
- a per-study batch effect on a few genes; one study measures only half the genes;
- negative-binomial noise around the planted means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from opengem.contract import FIELDS
from opengem.ontology.genes import GeneSpace, default_gene_space

LUNG, LIVER = "UBERON:0002048", "UBERON:0002107"
DEX = "CHEMBL384467"


@dataclass(frozen=True)
class PlantedEffects:
    """Where the generator put its effects (indices into the gene space)."""

    tissue_genes: dict[str, np.ndarray]
    perturbation_up: np.ndarray
    perturbation_down: np.ndarray
    knockdown_targets: dict[str, int]  # Ensembl id -> gene index
    fold: float
    kd_fold: float


def synthetic_corpus(
    n_genes: int = 400,
    samples_per_condition: int = 12,
    n_studies: int = 4,
    fold: float = 4.0,
    kd_fold: float = 8.0,
    library_size: float = 2e5,
    dispersion: float = 20.0,
    seed: int = 0,
    genes: GeneSpace | None = None,
):  # type: ignore[no-untyped-def]
    """An AnnData corpus over the first ``n_genes`` genes (others unmeasured, zero).

    Returns
    -------
    (anndata.AnnData, PlantedEffects)
    """
    import anndata

    space = genes or default_gene_space()
    rng = np.random.default_rng(seed)
    base = rng.lognormal(mean=0.0, sigma=1.2, size=n_genes)
    tissue_genes = {LUNG: np.arange(0, 20), LIVER: np.arange(20, 40)}
    up, down = np.arange(40, 55), np.arange(55, 70)
    targets = {space.gene_ids[i]: i for i in (80, 81, 82)}
    batch_genes = np.arange(90, 100)

    rows: list[dict[str, str]] = []
    means: list[np.ndarray] = []
    for study in range(n_studies):
        batch = np.ones(n_genes)
        batch[batch_genes] = rng.lognormal(0.0, 0.5, size=len(batch_genes))
        for tissue in (LUNG, LIVER):
            program = base.copy()
            program[tissue_genes[tissue]] *= 6.0
            conditions: list[tuple[dict[str, str], np.ndarray]] = [
                ({"perturbation_type": "control"}, program),
            ]
            treated = program.copy()
            treated[up] *= fold
            treated[down] /= fold
            conditions.append(
                (
                    {
                        "perturbation_type": "compound",
                        "perturbation_ontology_id": DEX,
                        "perturbation_dose": "1 uM",
                        "perturbation_time": "18 hours",
                    },
                    treated,
                )
            )
            # each study knocks down one of the targets (the last target is never knocked
            # down in study 0, so it can be held out)
            target = list(targets)[study % len(targets)]
            kd = program.copy()
            kd[targets[target]] /= kd_fold
            conditions.append(
                ({"perturbation_type": "shrna", "perturbation_ontology_id": target}, kd)
            )
            for meta, mean in conditions:
                for rep in range(samples_per_condition):
                    rows.append(
                        {
                            "tissue_ontology_id": tissue,
                            "sample_type": "primary tissue",
                            "sex": "female" if rep % 2 else "male",
                            "library_layout": "PAIRED",
                            "study": f"synthetic_{study}",
                            **meta,
                        }
                    )
                    means.append(mean * batch)
    mu = np.array(means)
    mu = mu / mu.sum(axis=1, keepdims=True)
    libs = rng.lognormal(np.log(library_size), 0.3, size=len(mu))
    mu = mu * libs[:, None]
    counts = rng.negative_binomial(dispersion, dispersion / (dispersion + mu))

    half = np.arange(n_genes) < n_genes // 2
    obs = pd.DataFrame(rows).reindex(columns=list(FIELDS)).fillna("")
    studies = obs["study"].to_numpy()
    subset_study = "synthetic_0"
    counts[np.ix_(studies == subset_study, ~half)] = 0
    X = sp.lil_matrix((len(obs), len(space)), dtype=np.int32)
    X[:, :n_genes] = counts.astype(np.int32)
    obs["accession"] = "SYNTHETIC"
    obs["sample_id"] = [f"S{i}" for i in range(len(obs))]
    obs["value_type"] = "counts"
    obs["library_size"] = counts.sum(axis=1)
    obs.index = [f"{s}:{i}" for s, i in zip(obs["study"], obs["sample_id"], strict=True)]
    study_ids = sorted(set(studies))
    mask = np.zeros((len(space), len(study_ids)), dtype=np.uint8)
    for j, s in enumerate(study_ids):
        mask[:n_genes, j] = 1
        if s == subset_study:
            mask[n_genes // 2 :, j] = 0
    adata = anndata.AnnData(
        X=sp.csr_matrix(X),
        obs=obs,
        var=pd.DataFrame({"symbol": list(space.symbols)}, index=list(space.gene_ids)),
    )
    adata.varm["study_mask"] = mask
    adata.uns["study_mask_studies"] = np.array(study_ids)
    adata.uns["modality"] = "bulk"
    effects = PlantedEffects(tissue_genes, up, down, targets, fold, kd_fold)
    return adata, effects

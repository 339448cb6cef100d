"""Corpus → model inputs: metadata records, per-study gene masks, the study split."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from opengem.contract import ENTITY_FIELDS, FIELDS


def obs_records(obs: pd.DataFrame) -> list[dict[str, str]]:
    """Canonical metadata records (unset fields dropped) from corpus ``obs``."""
    table = obs.reindex(columns=list(FIELDS)).astype(str).replace({"nan": ""})
    return [{k: v for k, v in r.items() if v} for r in table.to_dict("records")]


def choose_validation_studies(obs: pd.DataFrame, fraction: float, seed: int) -> list[str]:
    """Whole studies for validation, preferring those whose contexts other studies cover.

    A study is *redundant* when every value of its entity fields (``ENTITY_FIELDS``:
    tissue, cell type, cell line, disease, perturbation) also occurs in another study,
    so holding it out loses no vocabulary. Redundant studies are drawn (seeded) until
    ``fraction`` of the samples is reached; studies hold out whole.
    """
    if fraction <= 0:
        return []
    studies = sorted(obs["study"].astype(str).unique())
    if len(studies) < 2:
        return []
    values = {
        s: {
            (f, v)
            for f in ENTITY_FIELDS
            for v in obs.loc[obs["study"].astype(str) == s, f].astype(str)
            if v
        }
        for s in studies
    }
    redundant = [
        s for s in studies if values[s] <= set().union(*(values[o] for o in studies if o != s))
    ]
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(redundant)) if redundant else list(rng.permutation(studies))
    sizes = obs["study"].astype(str).value_counts()
    chosen: list[str] = []
    total = 0
    for s in order:
        if total >= fraction * len(obs) or len(chosen) == len(studies) - 1:
            break
        if total + sizes[s] > 2 * fraction * len(obs) and chosen:
            continue
        chosen.append(str(s))
        total += int(sizes[s])
    return sorted(chosen)


def study_masks(adata: Any) -> dict[str, np.ndarray]:
    """Which genes each study measured (``varm["study_mask"]``), by study id."""
    names = [str(s) for s in adata.uns["study_mask_studies"]]
    mask = np.asarray(adata.varm["study_mask"]).astype(bool)
    return {s: mask[:, j] for j, s in enumerate(names)}


def match_groups(obs: pd.DataFrame) -> list[str]:
    """The card-declared matched groups (``obs["match_group"]``; "" when undeclared)."""
    if "match_group" not in obs:
        return [""] * len(obs)
    return obs["match_group"].astype(str).replace({"nan": ""}).tolist()

"""Held-out-context experiments: a study with the same perturbation in several contexts.

An *experiment* is a study whose samples carry a perturbation in several
contexts (donors, genotypes, cell types, shRNA constructs), each context with
its own controls. Each context is a *unit* of the held-out-context protocol:
its perturbed samples are held out, and each is predicted from its matched
control (same context; same pairing key, e.g. donor or replicate, when the
study has one).

Some studies of the bulk corpus are described by hand (:data:`CURATED`), for
what their metadata alone cannot say (the donor is a free column; the shRNA
construct is only in the sample title). Every other study is searched
automatically (:func:`find_experiments`): a non-control perturbation with
controls in at least two contexts, a context being the combination of the
study's biological metadata fields that vary within it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from opengem.contract import PERTURBATION_FIELDS

__all__ = [
    "CURATED",
    "ContextSpec",
    "Experiment",
    "Unit",
    "find_experiments",
    "perturbation_key",
]

#: biological fields that may define a context when a study has no curated description
CONTEXT_FIELDS = (
    "cell_line_ontology_id",
    "cell_type_ontology_id",
    "tissue_ontology_id",
    "disease_ontology_id",
    "genotype",
    "sample_type",
    "developmental_stage",
)

Column = str | Callable[[pd.DataFrame], pd.Series]


def _text(obs: pd.DataFrame, column: str) -> pd.Series:
    if column not in obs:
        return pd.Series([""] * len(obs), index=obs.index)
    return obs[column].astype(str).replace({"nan": "", "None": ""})


def perturbation_key(obs: pd.DataFrame) -> pd.Series:
    """One string per sample naming its perturbation metadata (type, id, dose, time)."""
    parts = [_text(obs, f) for f in PERTURBATION_FIELDS]
    key = parts[0]
    for p in parts[1:]:
        key = key + "|" + p
    return key


def regex_column(column: str, pattern: str) -> Callable[[pd.DataFrame], pd.Series]:
    """A derived column: the first group of ``pattern`` in ``column`` ("" without a match)."""
    rx = re.compile(pattern)

    def get(obs: pd.DataFrame) -> pd.Series:
        return _text(obs, column).map(lambda s: m.group(1) if (m := rx.search(s)) else "")

    get.__name__ = f"{column}~{pattern}"
    return get


@dataclass(frozen=True)
class ContextSpec:
    """How to read the held-out-context experiment of one study.

    Attributes
    ----------
    context
        Column (or function of ``obs``) whose value names a sample's context.
    perturbed
        Extra exact-match filters (column -> value) on the perturbed samples;
        by default every non-control sample is perturbed.
    pair
        Column (or function) pairing a perturbed sample with its control within
        a context (donor, replicate); controls are dealt round-robin otherwise.
    note
        Why the experiment is read this way (goes into metrics.json).
    """

    context: Column
    perturbed: Mapping[str, str] = field(default_factory=dict)
    pair: Column | None = None
    note: str = ""


#: hand-written experiment descriptions of bulk-corpus studies
CURATED: dict[str, ContextSpec] = {
    "airway": ContextSpec(
        context="donor", note="dexamethasone vs untreated airway smooth muscle, per donor"
    ),
    "srp009615_k562_shrna": ContextSpec(
        context=regex_column("title", r"targeting (\S+) gene"),
        pair=regex_column("title", r"rep(\d+)"),
        note="each shRNA target is a unit: induced (dox) vs uninduced cells of the same "
        "construct, paired by replicate (title)",
    ),
    "gse89888_t47d_e2": ContextSpec(
        context="genotype",
        pair="replicate",
        note="17beta-estradiol vs vehicle in T47D ESR1 wild-type / D538G / Y537S, paired by "
        "replicate",
    ),
    "gse64655_immune_cells": ContextSpec(
        context="cell_type_ontology_id",
        perturbed={"perturbation_time": "1 days"},
        note="influenza vaccination day 1 vs day 0 in each sorted immune cell type",
    ),
    "griss2019_melanoma_bcells": ContextSpec(
        context="b_cell_source",
        pair="patient",
        note="melanoma-conditioned medium vs mock, in blood and tumour-infiltrating B cells, "
        "paired by patient",
    ),
    "gse79027_il13_pbmc": ContextSpec(
        context="batch",
        perturbed={"group": "X24IL13"},
        note="IL-13 vs control PBMC culture per donor batch (the IL-13 + antagonist samples "
        "share the metadata and are held out with the unit, not scored)",
    ),
}


@dataclass
class Unit:
    """One held-out context of an experiment (indices are corpus rows)."""

    name: str
    study: str
    experiment: str
    context: str
    perturbed: np.ndarray  # rows scored (held out)
    references: np.ndarray  # matched control row of each scored row
    controls: np.ndarray  # every control row of the context (kept in training)
    held_out: np.ndarray  # rows removed from training (scored rows and their metadata twins)
    perturbation_keys: list[str]


@dataclass
class Experiment:
    name: str
    study: str
    units: list[Unit]
    note: str = ""
    curated: bool = False


def _values(obs: pd.DataFrame, column: Column) -> pd.Series:
    if callable(column):
        return column(obs).astype(str)
    return _text(obs, column)


def _pairing(
    pert_rows: np.ndarray,
    ctrl_rows: np.ndarray,
    pert_keys: Sequence[str] | None,
    ctrl_keys: Sequence[str] | None,
) -> np.ndarray:
    """Matched control row of each perturbed row (same key when given, else round-robin)."""
    refs = np.empty(len(pert_rows), dtype=np.intp)
    by_key: dict[str, list[int]] = {}
    if ctrl_keys is not None:
        for r, k in zip(ctrl_rows, ctrl_keys, strict=True):
            if k:
                by_key.setdefault(k, []).append(int(r))
    for i in range(len(pert_rows)):
        key = pert_keys[i] if pert_keys is not None else ""
        if key and by_key.get(key):
            refs[i] = by_key[key][0]
        else:
            refs[i] = ctrl_rows[i % len(ctrl_rows)]
    return refs


def _units_of(
    obs: pd.DataFrame,
    study: str,
    experiment: str,
    rows: np.ndarray,
    context: pd.Series,
    is_control: np.ndarray,
    is_scored: np.ndarray,
    pair: pd.Series | None,
    pkey: pd.Series,
) -> list[Unit]:
    """Units (one per context with scored and control samples), in context order."""
    units = []
    ctx = context.to_numpy()
    keys = pkey.to_numpy()
    for value in sorted({c for c in ctx if c}):
        in_ctx = ctx == value
        scored = rows[in_ctx & is_scored]
        controls = rows[in_ctx & is_control]
        if len(scored) == 0 or len(controls) == 0:
            continue
        scored_keys = sorted(set(keys[in_ctx & is_scored]))
        held = rows[in_ctx & np.isin(keys, scored_keys) & ~is_control]
        order = np.argsort(obs.index[scored].to_numpy(), kind="stable")
        scored = scored[order]
        corder = np.argsort(obs.index[controls].to_numpy(), kind="stable")
        controls = controls[corder]
        pk = None if pair is None else pair.to_numpy()
        refs = _pairing(
            scored,
            controls,
            None if pk is None else [pk[np.flatnonzero(rows == r)[0]] for r in scored],
            None if pk is None else [pk[np.flatnonzero(rows == r)[0]] for r in controls],
        )
        units.append(
            Unit(
                name=f"{experiment}/{value}",
                study=study,
                experiment=experiment,
                context=value,
                perturbed=scored,
                references=refs,
                controls=controls,
                held_out=np.sort(held),
                perturbation_keys=scored_keys,
            )
        )
    return units


def find_experiments(
    obs: pd.DataFrame,
    studies: Sequence[str] | None = None,
    curated: Mapping[str, ContextSpec] | None = None,
) -> list[Experiment]:
    """Every held-out-context experiment of a corpus (``obs`` of the AnnData).

    Parameters
    ----------
    obs
        Corpus sample table (harmonised fields, ``study``, free columns).
    studies
        Only these studies (all when None).
    curated
        Hand-written descriptions (default :data:`CURATED`); other studies are
        searched automatically.

    Returns
    -------
    list of Experiment
        Each with at least two units, sorted by name.
    """
    curated = CURATED if curated is None else curated
    study_col = _text(obs, "study").to_numpy()
    pkey_all = perturbation_key(obs)
    ptype = _text(obs, "perturbation_type").to_numpy()
    experiments: list[Experiment] = []
    for study in sorted(set(study_col)):
        if studies is not None and study not in studies:
            continue
        rows = np.flatnonzero(study_col == study)
        sub = obs.iloc[rows]
        pkey = pkey_all.iloc[rows]
        is_control = ptype[rows] == "control"
        if not is_control.any() or is_control.all():
            continue
        if study in curated:
            spec = curated[study]
            scored = ~is_control
            for col, value in spec.perturbed.items():
                scored &= _text(sub, col).to_numpy() == value
            context = _values(sub, spec.context)
            pair = None if spec.pair is None else _values(sub, spec.pair)
            name = f"{study}"
            units = _units_of(obs, study, name, rows, context, is_control, scored, pair, pkey)
            if len(units) >= 2:
                experiments.append(Experiment(name, study, units, spec.note, curated=True))
            continue
        varying = [
            f for f in CONTEXT_FIELDS if f in sub and _text(sub, f)[~is_control].nunique() > 1
        ]
        if not varying:
            continue
        context = _text(sub, varying[0])
        for f in varying[1:]:
            context = context + "+" + _text(sub, f)
        for key in sorted(set(pkey.to_numpy()[~is_control])):
            scored = (pkey.to_numpy() == key) & ~is_control
            first = int(np.flatnonzero(scored)[0])
            what = [
                _text(sub, f).iloc[first] for f in ("perturbation_type", "perturbation_ontology_id")
            ]
            name = f"{study}/{':'.join(x for x in what if x)}"
            units = _units_of(obs, study, name, rows, context, is_control, scored, None, pkey)
            if len(units) >= 2:
                experiments.append(
                    Experiment(
                        name,
                        study,
                        units,
                        f"found automatically: context = {' + '.join(varying)}",
                    )
                )
    return sorted(experiments, key=lambda e: e.name)

"""Perturbations as data: parsing a record's perturbations, keys, contexts.

A sample may carry several perturbations (Norman CRISPRa pairs, a drug plus a
cytokine). In corpus ``obs`` and in normalised query metadata the four
perturbation fields then hold the components joined by :data:`SEP`, in aligned
order (``"ENSG…|ENSG…"`` with ``"overexpression|overexpression"``); a single
perturbation is the plain value. ``control`` (or no type) means unperturbed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from opengem.contract import FIELDS, PERTURBATION_TYPE_SPECS, LatentGroup, quantity_value
from opengem.contract.fields import PERTURBATION_FIELDS

SEP = "|"
CONTROL_TYPES = ("", "control")
#: biological fields that define a context (every categorical biological field; the
#: quantities, such as age, are covariates of the prior instead)
CONTEXT_FIELDS: tuple[str, ...] = tuple(
    n for n, f in FIELDS.items() if f.group is LatentGroup.BIOLOGICAL and not f.is_quantity
)
#: biological quantities (age): numeric covariates of the prior mean
COVARIATE_FIELDS: tuple[str, ...] = tuple(
    n for n, f in FIELDS.items() if f.group is LatentGroup.BIOLOGICAL and f.is_quantity
)


def covariate_columns(name: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """The prior-mean design columns of a covariate: its log value and its known flag."""
    family = FIELDS[name].unit_kind or name
    return (family, f"log_{family}"), (family, "known")


@dataclass(frozen=True)
class Perturbation:
    """One perturbation of a sample: id, type, dose (base units) and time (hours)."""

    id: str
    type: str
    dose: float | None = None
    dose_unit: str = ""
    time: float | None = None

    @property
    def key(self) -> str:
        """What the perturbation *is* (dose and time are coordinates, not identity)."""
        return f"{self.type}:{self.id}"

    @property
    def targets_gene(self) -> bool:
        spec = PERTURBATION_TYPE_SPECS.get(self.type)
        return spec is not None and spec.targets_gene

    @property
    def log_dose(self) -> float | None:
        return None if self.dose is None or self.dose <= 0 else math.log10(self.dose)


def _split(value: str | None, n: int) -> list[str]:
    parts = (value or "").split(SEP)
    if len(parts) == 1 and n > 1:
        parts = parts * n  # one dose/time for every component
    return [p.strip() for p in parts] + [""] * (n - len(parts))


def _quantity(field: str, text: str) -> tuple[float | None, str]:
    value, unit = quantity_value(field, text)
    return value, unit or ""


def perturbations_of(record: Mapping[str, str]) -> tuple[Perturbation, ...]:
    """The perturbations of a metadata record (empty for a control / unperturbed sample)."""
    ids = [p.strip() for p in (record.get("perturbation_ontology_id") or "").split(SEP)]
    n = len(ids)
    types = _split(record.get("perturbation_type"), n)
    doses = _split(record.get("perturbation_dose"), n)
    times = _split(record.get("perturbation_time"), n)
    out = []
    for pid, ptype, dose, time in zip(ids, types, doses, times, strict=True):
        if ptype in CONTROL_TYPES and not pid:
            continue
        if ptype == "control":
            continue
        d, unit = _quantity("perturbation_dose", dose)
        t, _ = _quantity("perturbation_time", time)
        out.append(Perturbation(pid, ptype, d, unit, t))
    return tuple(out)


def combination_key(perts: Sequence[Perturbation]) -> str:
    """Order-free key of a combination (a single perturbation's key when alone)."""
    return "+".join(sorted(p.key for p in perts))


def context_key(record: Mapping[str, str]) -> str:
    """The biological context of a record: its study and biological fields."""
    parts = [record.get("study", "")]
    parts += [f"{f}={record.get(f, '')}" for f in CONTEXT_FIELDS if record.get(f)]
    return ";".join(parts)


def context_fields(key: str) -> dict[str, str]:
    """The fields of a :func:`context_key` (``study`` among them when it has one)."""
    study, *parts = key.split(";")
    out = {"study": study} if study else {}
    for part in parts:
        name, _, value = part.partition("=")
        out[name] = value
    return out


def without_perturbation(record: Mapping[str, str]) -> dict[str, str]:
    """A copy of a record with its perturbation fields removed (its control)."""
    return {k: v for k, v in record.items() if k not in PERTURBATION_FIELDS}

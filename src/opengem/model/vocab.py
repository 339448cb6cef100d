"""Metadata vocabularies: the tokens a model knows, with ontology ancestors.

A :class:`Vocabulary` is built once from training metadata (by ``opengem.train``)
and stored in the bundle as JSON. Each categorical field has *tokens*: the
training values plus, for ontology fields, their ancestors. A value is encoded
as the bag of its tokens (itself and its ancestors in the vocabulary), so an
unseen child term — a tissue subregion, a cancer subtype — shares tokens with
its parents. Missing values use the reserved ``<unknown>`` token. Doses, times
and ages are log-scaled numbers with a known/unknown flag; dose and time also
carry their unit's dimension as a token.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opengem.contract import FIELDS, QUANTITY_FIELDS, LatentGroup, quantity_value
from opengem.contract.fields import PERTURBATION_FIELDS

UNKNOWN = "<unknown>"
SEP = "|"  # several perturbations of one sample (see opengem.model.perturbations)
#: numeric fields (the contract's quantity fields) and every other, categorical, field
NUMERIC_FIELDS: tuple[str, ...] = QUANTITY_FIELDS
CATEGORICAL_FIELDS: tuple[str, ...] = tuple(f for f in FIELDS if f not in NUMERIC_FIELDS)
Ancestors = Callable[[str], Sequence[str]]


def _no_ancestors(term: str) -> Sequence[str]:
    return ()


@dataclass
class FieldVocab:
    """Tokens of one categorical field.

    Attributes
    ----------
    tokens
        Token strings; index 0 is ``<unknown>``.
    classes
        Values observed in training (the classifier head's classes), sorted.
    closure
        For each class: indices of its tokens (itself and ancestors in the vocabulary).
    labels
        Human labels of tokens, where known.
    """

    name: str
    tokens: list[str]
    classes: list[str]
    closure: dict[str, list[int]]
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index = {t: i for i, t in enumerate(self.tokens)}

    def token_indices(self, value: str | None, ancestors: Ancestors = _no_ancestors) -> list[int]:
        """Tokens a value activates; unseen values fall back to their known ancestors."""
        if not value:
            return [0]
        if value in self.closure:
            return self.closure[value]
        known = [self._index[a] for a in ancestors(value) if a in self._index]
        return sorted(set(known)) or [0]

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "classes": self.classes,
            "closure": self.closure,
            "labels": self.labels,
        }


@dataclass
class NumericScale:
    """log1p-scaled value, z-normalised with training statistics and clipped to ±4."""

    mean: float = 0.0
    std: float = 1.0

    def encode(self, value: float | None) -> tuple[float, float]:
        if value is None:
            return 0.0, 0.0
        z = (math.log1p(max(value, 0.0)) - self.mean) / (self.std or 1.0)
        return max(-4.0, min(4.0, z)), 1.0


def numeric_value(field_name: str, text: str | None) -> tuple[float | None, str | None]:
    """(value in base units, unit dimension) of a dose, time or age string."""
    return quantity_value(field_name, text)


@dataclass
class Vocabulary:
    """Everything needed to turn metadata records into model inputs."""

    fields: dict[str, FieldVocab]
    numeric: dict[str, NumericScale]
    units: list[str]  # unit dimension tokens; index 0 = unknown

    @classmethod
    def build(
        cls,
        records: Sequence[Mapping[str, str]],
        ancestors: Ancestors = _no_ancestors,
        labels: Callable[[str, str], str] | None = None,
    ) -> Vocabulary:
        """Vocabulary of training records (ontology ancestors included for ontology fields)."""
        fields: dict[str, FieldVocab] = {}
        for name in CATEGORICAL_FIELDS:
            # several perturbations on one sample: each component is a value of its own
            split = name in PERTURBATION_FIELDS
            classes = sorted(
                {
                    part.strip()
                    for r in records
                    if r.get(name)
                    for part in (r[name].split(SEP) if split else [r[name]])
                    if part.strip()
                }
            )
            ontology = FIELDS[name].uses_ancestors
            extra = sorted(
                {a for c in classes for a in (ancestors(c) if ontology else ())} - set(classes)
            )
            tokens = [UNKNOWN, *classes, *extra]
            index = {t: i for i, t in enumerate(tokens)}
            closure = {
                c: sorted(
                    {index[c]}
                    | {index[a] for a in (ancestors(c) if ontology else ()) if a in index}
                )
                for c in classes
            }
            names = {t: labels(name, t) for t in tokens[1:]} if labels else {}
            fields[name] = FieldVocab(
                name, tokens, classes, closure, {k: v for k, v in names.items() if v}
            )
        numeric: dict[str, NumericScale] = {}
        units = {UNKNOWN}
        for name in NUMERIC_FIELDS:
            values = []
            for r in records:
                text = (r.get(name) or "").split(SEP)[0]
                value, unit = numeric_value(name, text)
                if value is not None:
                    values.append(math.log1p(max(value, 0.0)))
                if unit:
                    units.add(unit)
            if values:
                mean = sum(values) / len(values)
                std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) or 1.0
                numeric[name] = NumericScale(mean, std)
            else:
                numeric[name] = NumericScale()
        return cls(fields, numeric, [UNKNOWN, *sorted(units - {UNKNOWN})])

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        return {
            "fields": {k: v.to_json() for k, v in self.fields.items()},
            "numeric": {k: [v.mean, v.std] for k, v in self.numeric.items()},
            "units": self.units,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Vocabulary:
        fields = {
            k: FieldVocab(
                k,
                v["tokens"],
                v["classes"],
                {c: list(ix) for c, ix in v["closure"].items()},
                v.get("labels", {}),
            )
            for k, v in data["fields"].items()
        }
        numeric = {k: NumericScale(*v) for k, v in data["numeric"].items()}
        return cls(fields, numeric, list(data["units"]))

    def values(self, name: str) -> dict[str, str]:
        """Training values of a categorical field with their labels (for validation, `vocab`)."""
        fv = self.fields[name]
        return {c: fv.labels.get(c, "") for c in fv.classes}

    def ancestor_tokens(self) -> dict[str, list[str]]:
        """Per field: ancestor tokens that tell known terms apart (for unseen terms).

        Tokens every training value shares (roots like "anatomical entity") carry no
        information, so an unseen term sharing only those is not accepted.
        """
        out: dict[str, list[str]] = {}
        for name, fv in self.fields.items():
            if not fv.classes:
                continue
            closures = [set(fv.closure[c]) for c in fv.classes]
            common = set.intersection(*closures) if len(closures) > 1 else set()
            out[name] = [
                fv.tokens[i]
                for i in sorted(set().union(*closures) - common)
                if fv.tokens[i] not in fv.classes
            ]
        return out

    def trained_fields(self) -> frozenset[str]:
        """The metadata fields the model was trained with (categorical and numeric).

        A field of the contract outside this set was added after the bundle was
        trained: the model has no input for it.
        """
        return frozenset(self.fields) | frozenset(self.numeric)

    def as_validation_vocabulary(self) -> dict[str, dict[str, str]]:
        """Per field: the values a query may use (fields never seen in training are open)."""
        return {name: self.values(name) for name, fv in self.fields.items() if fv.classes}


def field_group(name: str) -> LatentGroup:
    return FIELDS[name].group

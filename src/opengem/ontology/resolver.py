"""Ontology terms: existence, labels, ancestors and suggestions.

A thin layer over the cellxgene-ontology-guide package (CZ CELLxGENE's
offline, versioned copies of UBERON, CL, MONDO, Cellosaurus, ChEBI, EFO,
PATO, HANCESTRO, HsapDv). Ontologies are loaded on first use, one at a time;
NCBITaxon is never loaded (see :mod:`opengem.ontology.taxa`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

#: Ontology name (as cellxgene-ontology-guide names it) -> what a person calls it.
ONTOLOGY_NAMES: dict[str, str] = {
    "UBERON": "an UBERON anatomy term",
    "CL": "a Cell Ontology term",
    "MONDO": "a MONDO disease term",
    "CVCL": "a Cellosaurus cell line",
    "CHEBI": "a ChEBI chemical entity",
    "EFO": "an Experimental Factor Ontology term",
    "PATO": "a PATO quality term",
    "HANCESTRO": "a HANCESTRO ancestry term",
    "HsapDv": "a human developmental stage (HsapDv) term",
}

_PREFIX_RE = re.compile(r"^([A-Za-z]+)[:_]([A-Za-z0-9]+)$")


def ontology_of(term_id: str) -> str | None:
    """The supported ontology a term id's prefix names (``'CVCL_0023'`` -> ``'CVCL'``)."""
    m = _PREFIX_RE.match(term_id.strip())
    if not m:
        return None
    prefix = m.group(1)
    for name in ONTOLOGY_NAMES:
        if name.upper() == prefix.upper():
            return name
    return None


@dataclass(frozen=True)
class Term:
    """One ontology term as opengem reports it."""

    term_id: str
    label: str
    ontology: str
    deprecated: bool = False
    replaced_by: str | None = None


class TermResolver:
    """Look up ontology terms offline. Thread-safe after each ontology's first load."""

    def __init__(self, schema_version: str | None = None) -> None:
        from cellxgene_ontology_guide.supported_versions import CXGSchema

        self._schema = CXGSchema(version=schema_version)
        self._label_indexes: dict[str, dict[str, list[str]]] = {}

    @property
    def schema_version(self) -> str:
        return str(self._schema.version)

    def ontology_version(self, ontology: str) -> str:
        return str(self._schema.supported_ontologies[ontology]["version"])

    def _terms(self, ontology: str) -> dict[str, Any]:
        # CXGSchema caches each parsed file; we only add the choice of when to load.
        return self._schema.ontology(ontology)  # type: ignore[no-any-return]

    def term(self, term_id: str) -> Term | None:
        """The term behind an id, or None when no supported ontology defines it."""
        ontology = ontology_of(term_id)
        if ontology is None:
            return None
        entry = self._terms(ontology).get(term_id.strip())
        if entry is None:
            return None
        return Term(
            term_id=term_id.strip(),
            label=str(entry.get("label", "")),
            ontology=ontology,
            deprecated=bool(entry.get("deprecated", False)),
            replaced_by=entry.get("replaced_by"),
        )

    def label(self, term_id: str) -> str | None:
        t = self.term(term_id)
        return t.label if t else None

    def ancestors(self, term_id: str) -> list[str]:
        """Ancestors of a term, nearest first (is_a and part_of, as the guide computes them)."""
        ontology = ontology_of(term_id)
        if ontology is None:
            return []
        entry = self._terms(ontology).get(term_id.strip()) or {}
        anc: dict[str, int] = entry.get("ancestors", {}) or {}
        return sorted(anc, key=lambda k: (anc[k], k))

    def search(self, text: str, ontology: str, limit: int = 5) -> list[Term]:
        """Terms whose label or synonym best matches free text (exact first, then fuzzy)."""
        index = self._label_index(ontology)
        key = text.strip().lower()
        exact = index.get(key, [])
        hits: list[str] = list(exact)
        if len(hits) < limit:
            for close in difflib.get_close_matches(key, list(index), n=limit, cutoff=0.75):
                hits.extend(i for i in index[close] if i not in hits)
        out = [t for t in (self.term(h) for h in hits) if t is not None and not t.deprecated]
        return out[:limit]

    def _label_index(self, ontology: str) -> dict[str, list[str]]:
        """Lower-cased label and synonym -> term ids, built once per ontology."""
        if ontology not in self._label_indexes:
            index: dict[str, list[str]] = {}
            for term_id, entry in self._terms(ontology).items():
                if entry.get("deprecated"):
                    continue
                for name in [entry.get("label", ""), *(entry.get("synonyms") or [])]:
                    if name:
                        index.setdefault(str(name).lower(), []).append(term_id)
            self._label_indexes[ontology] = index
        return self._label_indexes[ontology]

    def similar_ids(self, term_id: str, ontology: str, limit: int = 3) -> list[Term]:
        """Existing ids close to a mistyped one: prefix case and digit padding first, then edits."""
        terms = self._terms(ontology)
        m = _PREFIX_RE.match(term_id.strip())
        sample = next(iter(terms))
        sep = "_" if ontology == "CVCL" else ":"
        hits: list[str] = []
        if m:
            width = len(sample.split(sep, 1)[1])
            digits = m.group(2)
            if digits.isdigit():
                fixed = f"{ontology}{sep}{int(digits):0{width}d}"
                if fixed in terms:
                    hits.append(fixed)
        if not hits:
            cand = [k for k in terms if len(k) == len(term_id.strip())]
            hits = difflib.get_close_matches(term_id.strip(), cand, n=limit, cutoff=0.9)
        out = [t for t in (self.term(h) for h in hits) if t is not None and not t.deprecated]
        return out[:limit]


@cache
def default_resolver() -> TermResolver:
    """The process-wide resolver over the newest schema the installed guide supports."""
    return TermResolver()

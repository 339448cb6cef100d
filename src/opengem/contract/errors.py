"""Errors a person can act on: where, what was sent, why it is wrong, what would work."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

_MAX_VALUE_CHARS = 80


def show_value(value: Any) -> str:
    """A short, unambiguous rendering of a bad value for messages."""
    if isinstance(value, list) and len(value) > 8:
        text = f"[{', '.join(repr(v) for v in value[:3])}, … {len(value):,} values]"
    else:
        text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 1] + "…"


_MAX_LOCATION_CHARS = 160
#: one step of a location: a key (up to the next "." or "[") or a list index
_PATH_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def show_location(location: str) -> str:
    """A location as echoed: cut to a fixed length (a key may be megabytes long)."""
    if len(location) <= _MAX_LOCATION_CHARS:
        return location
    return location[: _MAX_LOCATION_CHARS - 1] + f"… ({len(location):,} characters)"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a query.

    Attributes
    ----------
    location
        Path into the query, e.g. ``inputs[1].metadata.tissue_ontology_id``.
    value
        The offending value as sent (``None`` when a required key is missing).
    reason
        Why it is wrong and what is needed, in words.
    suggestions
        Up to five valid alternatives, each ``"VALUE (label)"`` or a plain value.
    """

    location: str
    value: Any
    reason: str
    suggestions: tuple[str, ...] = field(default_factory=tuple)

    @property
    def path(self) -> tuple[str | int, ...]:
        """The location as keys and list indices: ``inputs[1].metadata.sex`` is
        ``("inputs", 1, "metadata", "sex")`` (``()`` for a problem of the whole query)."""
        return tuple(
            int(index) if index else key for key, index in _PATH_STEP.findall(self.location)
        )

    def input_field(self) -> tuple[int, str] | None:
        """``(input index, metadata field)`` of a problem with one input's metadata field
        (a combination's component included), else ``None``."""
        match self.path:
            case ("inputs", int(i), "metadata", str(name), *_):
                return i, name
        return None

    def __str__(self) -> str:
        head = f"{show_location(self.location)}: " if self.location else ""
        shown = "" if self.value is None else f"{show_value(self.value)} "
        text = f"{head}{shown}{self.reason}"
        if self.suggestions:
            text += f" (did you mean: {', '.join(self.suggestions[:5])}?)"
        return text

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["location"] = show_location(self.location)
        d["value"] = show_value(self.value) if self.value is not None else None
        d["suggestions"] = list(self.suggestions[:5])
        d["message"] = str(self)
        return d


class QueryError(ValueError):
    """A query that opengem will not run, with every problem found in it."""

    def __init__(
        self, problems: Sequence[Problem], model_id: str | None = None, subject: str = "query"
    ) -> None:
        if not problems:
            raise ValueError("QueryError needs at least one problem")
        self.problems: list[Problem] = list(problems)
        self.model_id = model_id
        self.subject = subject
        super().__init__(self._message())

    def _message(self) -> str:
        n = len(self.problems)
        head = f"invalid {self.subject}" + (f" for {self.model_id}" if self.model_id else "")
        if n == 1:
            return f"{head}: {self.problems[0]}"
        return f"{head} ({n} problems):\n" + "\n".join(f"  - {p}" for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        """JSON body for APIs: ``{"detail": message, "problems": [...]}``."""
        return {"detail": str(self), "problems": [p.to_dict() for p in self.problems]}


class UnknownModelError(LookupError):
    """A model id opengem does not serve."""

    def __init__(self, model_id: object, valid: Sequence[str]) -> None:
        self.model_id = model_id
        self.valid = list(valid)
        super().__init__(f"unknown model_id {model_id!r}; valid model ids: {', '.join(self.valid)}")

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0])

"""Doses and times: ``"<number> <unit>"`` parsed into a canonical value and unit.

Unit spellings seen in the wild (``uM``, ``µM``, ``um``, ``h``, ``hr``,
``hours``…) map onto one canonical unit per quantity, so ``"10 um"`` and
``"10 µM"`` are the same dose. ``to_base`` converts to one unit per dimension
(hours for time, µM for molar concentrations, µg/mL for mass concentrations)
for the model's numeric encoding; the unit stays a token beside it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_NUMBER = r"(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
_QUANTITY_RE = re.compile(rf"^\s*{_NUMBER}\s*(?P<unit>\S.*?)?\s*$")

# canonical unit -> (dimension, factor to the dimension's base unit)
DOSE_UNITS: dict[str, tuple[str, float]] = {
    "pM": ("molar", 1e-6),
    "nM": ("molar", 1e-3),
    "uM": ("molar", 1.0),
    "mM": ("molar", 1e3),
    "M": ("molar", 1e6),
    "pg/mL": ("mass/volume", 1e-6),
    "ng/mL": ("mass/volume", 1e-3),
    "ug/mL": ("mass/volume", 1.0),
    "mg/mL": ("mass/volume", 1e3),
    "mg/kg": ("mass/mass", 1.0),
    "ug/kg": ("mass/mass", 1e-3),
    "U/mL": ("activity/volume", 1.0),
    "IU/mL": ("activity/volume", 1.0),
    "%": ("fraction", 1.0),
    "MOI": ("multiplicity of infection", 1.0),
}
TIME_UNITS: dict[str, tuple[str, float]] = {
    "seconds": ("time", 1 / 3600),
    "minutes": ("time", 1 / 60),
    "hours": ("time", 1.0),
    "days": ("time", 24.0),
    "weeks": ("time", 168.0),
}

_DOSE_ALIASES: dict[str, str] = {
    "pm": "pM",
    "picomolar": "pM",
    "nm": "nM",
    "nanomolar": "nM",
    "um": "uM",
    "µm": "uM",
    "μm": "uM",
    "micromolar": "uM",
    "mm": "mM",
    "millimolar": "mM",
    "m": "M",
    "molar": "M",
    "pg/ml": "pg/mL",
    "ng/ml": "ng/mL",
    "ug/ml": "ug/mL",
    "µg/ml": "ug/mL",
    "μg/ml": "ug/mL",
    "mg/ml": "mg/mL",
    "mg/kg": "mg/kg",
    "ug/kg": "ug/kg",
    "µg/kg": "ug/kg",
    "μg/kg": "ug/kg",
    "u/ml": "U/mL",
    "units/ml": "U/mL",
    "iu/ml": "IU/mL",
    "%": "%",
    "percent": "%",
    "moi": "MOI",
}
_TIME_ALIASES: dict[str, str] = {
    "s": "seconds",
    "sec": "seconds",
    "secs": "seconds",
    "second": "seconds",
    "seconds": "seconds",
    "min": "minutes",
    "mins": "minutes",
    "minute": "minutes",
    "minutes": "minutes",
    "h": "hours",
    "hr": "hours",
    "hrs": "hours",
    "hour": "hours",
    "hours": "hours",
    "d": "days",
    "day": "days",
    "days": "days",
    "wk": "weeks",
    "wks": "weeks",
    "week": "weeks",
    "weeks": "weeks",
}
_UNITS = {"dose": (DOSE_UNITS, _DOSE_ALIASES), "time": (TIME_UNITS, _TIME_ALIASES)}


class QuantityError(ValueError):
    """A dose or time that does not parse; the message says what would."""


@dataclass(frozen=True)
class Quantity:
    """A non-negative number with a canonical unit."""

    value: float
    unit: str
    kind: str  # "dose" or "time"

    def __str__(self) -> str:
        return f"{format_number(self.value)} {self.unit}"

    @property
    def dimension(self) -> str:
        return _UNITS[self.kind][0][self.unit][0]

    def to_base(self) -> float:
        """Value in the base unit of its dimension (hours; µM; µg/mL; mg/kg…)."""
        return self.value * _UNITS[self.kind][0][self.unit][1]


def format_number(value: float) -> str:
    """Shortest faithful text for a number: 10.0 -> '10', 0.5 -> '0.5'."""
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def valid_units(kind: str) -> list[str]:
    """Canonical units accepted for ``kind`` ("dose" or "time")."""
    return list(_UNITS[kind][0])


def parse_quantity(text: str, kind: str) -> Quantity:
    """Parse ``"<number> <unit>"`` for a dose or a time.

    Raises
    ------
    QuantityError
        When the text is not a number followed by a known unit, or the number
        is negative or not finite.
    """
    if kind not in _UNITS:
        raise ValueError(f"unknown quantity kind {kind!r}")
    canon, aliases = _UNITS[kind]
    example = "10 uM" if kind == "dose" else "24 hours"
    m = _QUANTITY_RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise QuantityError(f"is not '<number> <unit>' (for example '{example}')")
    value = float(m.group("num"))
    unit_text = (m.group("unit") or "").strip()
    if not unit_text:
        raise QuantityError(
            f"has no unit; write '<number> <unit>' (for example '{example}'); "
            f"units: {', '.join(canon)}"
        )
    if not math.isfinite(value) or value < 0:
        raise QuantityError("must be a finite, non-negative number")
    unit = unit_text if unit_text in canon else aliases.get(unit_text.lower())
    if unit is None:
        raise QuantityError(f"has an unknown {kind} unit {unit_text!r}; units: {', '.join(canon)}")
    return Quantity(value=value, unit=unit, kind=kind)


def parse_age(value: object) -> float:
    """Age in years from a number or a numeric string ("65", 65, 0.5)."""
    if isinstance(value, bool):
        raise QuantityError("must be a number of years, not true/false")
    if isinstance(value, int | float):
        age = float(value)
    elif isinstance(value, str):
        text = value.strip()
        for suffix in (" years", " year", " y"):
            if text.lower().endswith(suffix):
                text = text[: -len(suffix)].strip()
        try:
            age = float(text)
        except ValueError:
            raise QuantityError("must be a number of years, such as '65'") from None
    else:
        raise QuantityError("must be a number of years, such as '65'")
    if not math.isfinite(age) or not 0 <= age <= 150:
        raise QuantityError("must be between 0 and 150 years")
    return age

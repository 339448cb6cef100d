from __future__ import annotations

import pytest

from opengem.contract import QuantityError, parse_age, parse_quantity

DOSES = [
    ("10 uM", 10.0, "uM"),
    ("10 µM", 10.0, "uM"),
    ("10 um", 10.0, "uM"),
    ("10uM", 10.0, "uM"),
    ("1 μM", 1.0, "uM"),
    ("100 nM", 100.0, "nM"),
    ("0.5 mM", 0.5, "mM"),
    ("1 mg/kg", 1.0, "mg/kg"),
    ("50 ng/ml", 50.0, "ng/mL"),
    ("1e-3 M", 0.001, "M"),
    ("2 MOI", 2.0, "MOI"),
    ("0 uM", 0.0, "uM"),
]
TIMES = [
    ("24 hours", 24.0, "hours"),
    ("24 h", 24.0, "hours"),
    ("24h", 24.0, "hours"),
    ("6 hr", 6.0, "hours"),
    ("6 hrs", 6.0, "hours"),
    ("2 days", 2.0, "days"),
    ("1 day", 1.0, "days"),
    ("30 min", 30.0, "minutes"),
    ("90 minutes", 90.0, "minutes"),
    ("1 week", 1.0, "weeks"),
]


@pytest.mark.parametrize(("text", "value", "unit"), DOSES)
def test_dose_units_normalise(text: str, value: float, unit: str) -> None:
    q = parse_quantity(text, "dose")
    assert (q.value, q.unit) == (value, unit)


@pytest.mark.parametrize(("text", "value", "unit"), TIMES)
def test_time_units_normalise(text: str, value: float, unit: str) -> None:
    q = parse_quantity(text, "time")
    assert (q.value, q.unit) == (value, unit)


def test_canonical_text_and_base_units() -> None:
    assert str(parse_quantity("10.0 µM", "dose")) == "10 uM"
    assert str(parse_quantity("0.25 h", "time")) == "0.25 hours"
    assert parse_quantity("100 nM", "dose").to_base() == pytest.approx(0.1)  # µM
    assert parse_quantity("2 days", "time").to_base() == pytest.approx(48.0)  # hours
    assert parse_quantity("30 min", "time").to_base() == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("text", "kind", "needle"),
    [
        ("ten uM", "dose", "<number> <unit>"),
        ("10", "dose", "has no unit"),
        ("10 parsecs", "dose", "unknown dose unit"),
        ("-5 uM", "dose", "non-negative"),
        ("24 hours", "dose", "unknown dose unit"),
        ("10 uM", "time", "unknown time unit"),
        ("", "time", "<number> <unit>"),
    ],
)
def test_bad_quantities(text: str, kind: str, needle: str) -> None:
    with pytest.raises(QuantityError, match=needle):
        parse_quantity(text, kind)


@pytest.mark.parametrize(
    ("value", "years"), [("65", 65.0), (65, 65.0), (0.5, 0.5), ("65 years", 65.0)]
)
def test_age(value: object, years: float) -> None:
    assert parse_age(value) == years


@pytest.mark.parametrize("value", ["old", -1, 200, True, None, float("nan")])
def test_bad_age(value: object) -> None:
    with pytest.raises(QuantityError):
        parse_age(value)

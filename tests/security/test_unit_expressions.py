"""Units are a bounded grammar of names, products, quotients and small powers, nothing more.

pint evaluates arithmetic in unit strings, so a unit such as ``9**9**9`` would compute a
number of hundreds of millions of digits on ingest's event loop. Every unit is recognised
by the grammar first; anything else is refused, naming the unit and the rule, before pint
reads it.
"""

from __future__ import annotations

import time

import pytest

from prognos.ingest.units import UnknownUnitError, check_unit, converter

ACCEPTED = [
    "degC",
    "°C",
    "deg C",
    "℃",
    "kelvin",
    "psi",
    "kPa",
    "bar",
    "rpm",
    "Nm",
    "mil",
    "mm/s",
    "m/s^2",
    "m/s**2",
    "m s^-2",
    "m/s²",
    "m⁻²",
    "kg·m²/s³",
    "newton * meter",
    "newton meter",
    "kN*m",
    "(m/s)^2",
    "revolutions_per_minute",
    "rev/min",
    "µm",
    "1",
    "1/s",
    "%",
    "dB",
    "furlongs per fortnight squared",
]

REFUSED = [
    ("9**9**9", "a number where a unit name belongs"),
    ("m**9**9", "a power beyond 4"),
    ("m**5", "a power beyond 4"),
    ("m^-5", "a power beyond 4"),
    ("m^2^2", "a power of a power"),
    ("m²²", "a power of a power"),
    ("2*m", "a number where a unit name belongs"),
    ("0.5 m", "a number where a unit name belongs"),
    ("1e9", "run into a number"),
    ("m**1e9", "run into a number"),
    ("m**2.5", "a character no unit uses"),
    ("x⁹⁹⁹⁹", "a character no unit uses"),
    ("m + s", "a character no unit uses"),
    ("m, s", "a character no unit uses"),
    ("__import__('os')", "a character no unit uses"),
    ("(m", "unbalanced"),
    ("m)", "unbalanced"),
    ("()", "unbalanced"),
    ("m/", "ends without a unit"),
    ("/s", "an operator without a unit before it"),
    ("^2", "a power without a unit before it"),
]


@pytest.mark.parametrize("unit", ACCEPTED)
def test_names_products_quotients_and_small_powers_are_units(unit: str) -> None:
    assert check_unit(unit)


@pytest.mark.parametrize(("unit", "why"), REFUSED)
def test_anything_else_is_refused_naming_the_unit_and_the_rule(unit: str, why: str) -> None:
    with pytest.raises(UnknownUnitError) as caught:
        check_unit(unit)
    message = str(caught.value)
    assert caught.value.unit == unit
    assert repr(unit) in message
    assert why in message
    assert "integer powers from -4 to 4" in message


def test_a_unit_longer_than_64_characters_is_refused_before_it_is_read() -> None:
    unit = "meter*" * 10 + "second"
    assert len(unit) > 64
    with pytest.raises(UnknownUnitError, match="at most 64 characters"):
        check_unit(unit)


@pytest.mark.parametrize("unit", ["9**9**9", "(9**9)**9**9", "m**99999999999", "9^9^9^9"])
def test_arithmetic_is_refused_at_once(unit: str) -> None:
    started = time.monotonic()
    for to_unit in ("degC", unit):
        with pytest.raises(UnknownUnitError):
            converter(unit if to_unit != unit else "degC", to_unit)
    assert time.monotonic() - started < 0.5

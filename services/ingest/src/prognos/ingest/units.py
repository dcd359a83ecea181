"""Physical units of sensor readings: parsing, checking and fast vectorised conversion."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import TYPE_CHECKING

import numpy as np
import pint

if TYPE_CHECKING:
    from prognos.ingest.domain import AssetTypeSpec

__all__ = [
    "Conversion",
    "UnitMismatchError",
    "UnknownUnitError",
    "check_spec_units",
    "check_unit",
    "converter",
    "registry",
]

_MAX_UNIT_LENGTH = 64
_MAX_EXPONENT = 4

# Spellings seen on plant gateways that pint reads differently or not at all. Matched as whole
# tokens, so "kg" and "mg" keep their meaning.
# - "g" on a sensor is the vibration acceleration (standard gravity), not the gram: a gram
#   channel is spelled "gram" (or "kg", "mg").
# - "Nm" is torque (newton metre); pint would read it as a number-metre.
# - "mil"/"mils" in vibration work is a thousandth of an inch, not pint's angular mil.
# - "psia" is absolute pressure in psi; gauge pressure ("psig") is deliberately not accepted.
_TOKEN_ALIASES = {
    "g": "standard_gravity",
    "Nm": "newton * meter",
    "mil": "thou",
    "mils": "thou",
    "psia": "psi",
    "lbm": "pound",
    "ips": "inch / second",
    "gpm": "gallon / minute",
    "Ohm": "ohm",
    "rpm": "rotations_per_minute",
    "RPM": "rotations_per_minute",
    "pct": "percent",
}
_TOKEN_PATTERN = re.compile(
    r"(?<![\w°µ.])(" + "|".join(sorted(_TOKEN_ALIASES, key=len, reverse=True)) + r")(?![\w])"
)
_TEXT_ALIASES = (
    ("℃", "degC"),
    ("℉", "degF"),
    ("º", "°"),  # the ordinal indicator typed in place of the degree sign
    ("deg C", "degC"),
    ("deg F", "degF"),
    ("rev/min", "rpm"),
    ("r/min", "rpm"),
)


class UnknownUnitError(ValueError):
    """A unit string that names no known unit."""

    def __init__(self, unit: str, description: str = "is not a known unit") -> None:
        super().__init__(f"{unit!r} {description}")
        self.unit = unit
        self.description = description


class UnitMismatchError(ValueError):
    """Two units that measure different things, so no reading converts between them."""

    def __init__(self, from_unit: str, to_unit: str, description: str) -> None:
        super().__init__(f"cannot convert {from_unit!r} to {to_unit!r}: {description}")
        self.from_unit = from_unit
        self.to_unit = to_unit
        self.description = description


# The unit grammar, checked before pint sees a unit. pint evaluates arithmetic in unit strings
# ("9**9**9" computes a number of hundreds of millions of digits), so untrusted text may reach
# it only as names, products, quotients and small integer powers:
#   expression := factor (("*" | "·" | "/" | " ") factor)*
#   factor     := (name | "1" | "(" expression ")") [("**" | "^") integer | superscript]
_GRAMMAR_RULE = (
    "a unit is unit names joined by '*', '·', '/' or spaces, with integer powers from "
    f"-{_MAX_EXPONENT} to {_MAX_EXPONENT} ('**2', '^-1', '²'); '1' may stand for no unit, "
    "and no other number is allowed"
)
_SYMBOLS = "°℃℉º%"
_SUPERSCRIPTS = {"¹": 1, "²": 2, "³": 3, "⁴": 4}
# Superscripts, subscripts and vulgar fractions count as word characters to ``\w``, and pint
# reads some of them as numbers: they may appear only as the powers above.
_NOT_IN_NAMES = "\u00b2\u00b3\u00b9\u00bc-\u00be\u2070-\u209f\u2150-\u218f"
_NAME_START = rf"(?![{_NOT_IN_NAMES}])(?:[^\W\d]|[{_SYMBOLS}])"
_NAME_CHAR = rf"(?:(?![{_NOT_IN_NAMES}])(?:\w|[{_SYMBOLS}]))"
_LEXEME = re.compile(
    rf"(?P<space>\s+)"
    rf"|(?P<name>{_NAME_START}{_NAME_CHAR}*)"
    rf"|(?P<power>\*\*|\^)\s*(?P<exponent>[+-]?\d+)"
    rf"|(?P<superscript>⁻?[{''.join(_SUPERSCRIPTS)}])"
    rf"|(?P<number>\d+(?:\.\d*)?)"
    rf"|(?P<operator>[*·/()])"
)


def _refuse(unit: str, at: str, why: str) -> UnknownUnitError:
    return UnknownUnitError(unit, f"is not a unit expression ({why} at {at!r}): {_GRAMMAR_RULE}")


def _check_grammar(unit: str) -> None:
    """Raise ``UnknownUnitError`` unless ``unit`` follows the unit grammar.

    Recognises the whole string before anything evaluates it, so its cost is linear in a
    string whose length is already bounded.
    """
    depth = 0
    expect_factor = True  # at the start, after an operator or "("
    powered = False  # the factor just read already has its power
    previous, previous_end = "", -1
    position = 0
    while position < len(unit):
        lexeme = _LEXEME.match(unit, position)
        if lexeme is None:
            raise _refuse(unit, unit[position], "a character no unit uses")
        position = lexeme.end()
        kind, text = lexeme.lastgroup, lexeme.group()
        if kind == "space":
            continue
        if kind == "exponent":
            kind = "power"
        if (
            kind in ("name", "number")
            and previous in ("number", "power", "superscript")
            and lexeme.start() == previous_end
        ):
            # pint would read "1e9" or "m**2e5" as a number in scientific notation.
            raise _refuse(unit, text, "a name or number run into a number")
        previous, previous_end = kind, position
        if kind not in ("power", "superscript"):
            powered = False
        if kind in ("name", "number"):
            if kind == "number" and text != "1":
                raise _refuse(unit, text, "a number where a unit name belongs")
            expect_factor = False  # a factor right after another is a product ("newton meter")
        elif kind == "operator" and text == "(":
            depth += 1
            expect_factor = True
        elif kind == "operator" and text == ")":
            if expect_factor or depth == 0:
                raise _refuse(unit, text, "an unbalanced or empty parenthesis")
            depth -= 1
        elif kind == "operator":
            if expect_factor:
                raise _refuse(unit, text, "an operator without a unit before it")
            expect_factor = True
        else:  # a power, which must follow a factor and be followed by an operator or the end
            if expect_factor:
                raise _refuse(unit, text, "a power without a unit before it")
            if powered:
                raise _refuse(unit, text, "a power of a power")
            powered = True
            exponent = (
                int(lexeme.group("exponent"))
                if kind == "power"
                else -_SUPERSCRIPTS[text[-1]]
                if text.startswith("⁻")
                else _SUPERSCRIPTS[text]
            )
            if abs(exponent) > _MAX_EXPONENT:
                raise _refuse(unit, text, f"a power beyond {_MAX_EXPONENT}")
    if expect_factor:
        raise _refuse(unit, unit[-1:], "an expression that ends without a unit")
    if depth:
        raise _refuse(unit, "(", "an unbalanced or empty parenthesis")


def _rewrite_aliases(text: str) -> str:
    for old, new in _TEXT_ALIASES:
        text = text.replace(old, new)
    return _TOKEN_PATTERN.sub(lambda m: _TOKEN_ALIASES[m.group(1)], text)


@cache
def registry() -> pint.UnitRegistry:
    """The one unit registry every conversion uses, built on first use.

    Returns:
        A pint registry where ``rpm`` is a rotational frequency (60 rpm = 1 Hz), as speed
        sensors and vibration spectra use it, instead of pint's angular velocity
        (60 rpm = 2π rad/s).
    """
    ureg: pint.UnitRegistry = pint.UnitRegistry(preprocessors=[_rewrite_aliases])
    # A new unit, not a redefinition of pint's revolutions_per_minute: pint keeps root-unit
    # caches that a redefinition would leave stale. "rpm" is rewritten to this name.
    ureg.define("rotations_per_minute = 1 / minute")
    return ureg


@lru_cache(maxsize=1024)
def _parse(unit: str) -> pint.Unit:
    if not isinstance(unit, str) or not unit.strip():
        raise UnknownUnitError(str(unit), "is empty: name a unit, or '1' for a pure number")
    if len(unit) > _MAX_UNIT_LENGTH:
        raise UnknownUnitError(
            unit[:_MAX_UNIT_LENGTH] + "...",
            f"is too long to be a unit: at most {_MAX_UNIT_LENGTH} characters",
        )
    unit = unit.strip()
    _check_grammar(unit)
    try:
        parsed = registry().parse_units(unit)
    # pint's expression parser raises assorted types (PintError, ValueError, AssertionError,
    # tokenize.TokenError, ...) on malformed text; all of them mean "not a unit".
    except Exception as e:
        raise UnknownUnitError(unit, f"is not a known unit ({type(e).__name__})") from None
    for raw_exponent in dict(parsed.dimensionality).values():
        exponent = float(raw_exponent)  # type: ignore[arg-type]
        if not exponent.is_integer() or abs(exponent) > _MAX_EXPONENT:
            raise UnknownUnitError(unit, "has an implausible exponent for a sensor unit")
    return parsed


def check_unit(unit: str) -> str:
    """Check that ``unit`` names a unit.

    Args:
        unit: A unit as written by people and gateways: ``"°C"``, ``"degF"``, ``"psi"``,
            ``"kPa"``, ``"rpm"``, ``"mm/s"``, ``"g"`` (standard gravity), ``"1"``.

    Returns:
        pint's full name of the unit, e.g. ``"degree_Celsius"``.

    Raises:
        UnknownUnitError: ``unit`` is empty, malformed or names no known unit.
    """
    return str(_parse(unit))


def check_spec_units(spec: AssetTypeSpec) -> None:
    """Check every canonical unit of an asset type, at registration.

    Raises:
        AssetTypeInvalidError: naming ``asset_type.channels[i].unit`` of the first unknown unit.
    """
    from prognos.ingest.domain import AssetTypeInvalidError

    for i, channel in enumerate(spec.channels):
        try:
            _parse(channel.unit)
        except UnknownUnitError as e:
            raise AssetTypeInvalidError(f"asset_type.channels[{i}].unit", str(e)) from None


@dataclass(frozen=True)
class Conversion:
    """``canonical = raw * scale + offset``, or pint itself for non-linear units (decibels)."""

    from_unit: str
    to_unit: str
    scale: float
    offset: float
    affine: bool

    @property
    def identity(self) -> bool:
        return self.affine and self.scale == 1.0 and self.offset == 0.0

    def __call__(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if self.affine:
            with np.errstate(over="ignore", invalid="ignore"):
                return values * self.scale + self.offset
        quantity = registry().Quantity(values, _parse(self.from_unit))
        return np.asarray(quantity.to(_parse(self.to_unit)).magnitude, dtype=np.float64)


def _angle_exponent(unit: pint.Unit) -> float:
    _, root = registry().get_root_units(unit)
    return float(dict(root._units).get("radian", 0))  # type: ignore[arg-type]


def converter(from_unit: str, to_unit: str) -> Callable[[np.ndarray], np.ndarray]:
    """A vectorised converter of readings from ``from_unit`` to ``to_unit``, cached per pair.

    Offset units convert as absolute temperatures (32 degF -> 0 degC). Linear and affine
    conversions run as one multiply-add on the array; the returned object is a
    ``Conversion`` exposing ``scale`` and ``offset``.

    Args:
        from_unit: The unit the readings are in.
        to_unit: The unit wanted, typically a channel's canonical unit.

    Returns:
        A function from a float array to a new float array.

    Raises:
        UnknownUnitError: either unit is not a known unit.
        UnitMismatchError: the units measure different things (psi and degC), or one is an
            angular velocity and the other a rotational frequency (rad/s and rpm).
    """
    for unit in (from_unit, to_unit):
        if not isinstance(unit, str):
            raise UnknownUnitError(repr(unit), "is not a string")
    return _converter(from_unit, to_unit)


@lru_cache(maxsize=4096)
def _converter(from_unit: str, to_unit: str) -> Conversion:
    source, target = _parse(from_unit), _parse(to_unit)
    if source.dimensionality != target.dimensionality:
        raise UnitMismatchError(
            from_unit,
            to_unit,
            f"{source.dimensionality} is not {target.dimensionality}",
        )
    if _angle_exponent(source) != _angle_exponent(target):
        raise UnitMismatchError(
            from_unit,
            to_unit,
            "an angle-based unit cannot be converted to a plain one; use rpm or Hz on both "
            "sides for rotational speed, rad/s or deg on both for angles",
        )

    quantity = registry().Quantity

    def exact(x: float) -> float:
        return float(quantity(x, source).to(target).magnitude)

    try:
        offset = exact(0.0)
        scale = (exact(1000.0) - exact(-1000.0)) / 2000.0
        affine = all(
            math.isclose(exact(x), x * scale + offset, rel_tol=1e-9, abs_tol=1e-9)
            for x in (-273.15, 7.25, 12345.5)
        )
    except pint.PintError as e:  # e.g. a temperature difference against an absolute one
        raise UnitMismatchError(from_unit, to_unit, str(e)) from None
    if affine and math.isclose(scale, 1.0, rel_tol=1e-12) and abs(offset) < 1e-12:
        scale, offset = 1.0, 0.0
    return Conversion(from_unit, to_unit, scale, offset, affine)

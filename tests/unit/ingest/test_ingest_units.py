"""Unit parsing and conversion: spellings, offsets, caching, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from prognos.ingest.domain import (
    AssetTypeInvalidError,
    AssetTypeSpec,
    FailureHorizon,
    SensorChannel,
)
from prognos.ingest.units import (
    Conversion,
    UnitMismatchError,
    UnknownUnitError,
    check_spec_units,
    check_unit,
    converter,
)


@pytest.mark.parametrize(
    ("from_unit", "to_unit", "raw", "expected"),
    [
        ("degF", "degC", [32.0, 212.0, -40.0], [0.0, 100.0, -40.0]),
        ("°F", "°C", [98.6], [37.0]),
        ("K", "degC", [273.15, 0.0], [0.0, -273.15]),
        ("degC", "K", [-273.15, 25.0], [0.0, 298.15]),
        ("psi", "kPa", [1.0, 100.0], [6.894757293168361, 689.4757293168361]),
        ("bar", "kPa", [1.0], [100.0]),
        ("kPa", "psia", [6.894757293168361], [1.0]),
        ("rpm", "Hz", [60.0, 3000.0], [1.0, 50.0]),
        ("RPM", "rpm", [1500.0], [1500.0]),
        ("g", "m/s^2", [1.0], [9.80665]),
        ("mm/s", "in/s", [25.4], [1.0]),
        ("ips", "mm/s", [1.0], [25.4]),
        ("mil", "um", [1.0], [25.4]),
        ("Nm", "N*m", [12.5], [12.5]),
        ("%", "1", [50.0], [0.5]),
        ("min", "h", [90.0], [1.5]),
        ("℃", "degC", [21.5], [21.5]),
    ],
)
def test_converts_arrays_between_compatible_units(
    from_unit: str, to_unit: str, raw: list[float], expected: list[float]
) -> None:
    values = np.array(raw)
    converted = converter(from_unit, to_unit)(values)
    np.testing.assert_allclose(converted, expected, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(values, raw)  # the input is left alone


@pytest.mark.parametrize(
    "unit",
    ["°C", "degC", "deg C", "K", "psi", "psia", "bar", "kPa", "rpm", "Hz", "mm/s", "g", "1"],
)
def test_accepts_common_spellings(unit: str) -> None:
    assert check_unit(unit)


def test_check_unit_names_the_unit_it_understood() -> None:
    assert check_unit("°C") == "degree_Celsius"
    assert check_unit("g") == "standard_gravity"


def test_converter_is_cached_per_pair() -> None:
    assert converter("degF", "degC") is converter("degF", "degC")
    assert converter("degF", "degC") is not converter("degF", "K")


def test_offset_conversion_exposes_scale_and_offset() -> None:
    conversion = converter("degF", "degC")
    assert isinstance(conversion, Conversion)
    assert conversion.affine
    assert conversion.scale == pytest.approx(5 / 9)
    assert conversion.offset == pytest.approx(-160 / 9)


def test_same_unit_in_two_spellings_is_the_identity() -> None:
    conversion = converter("°C", "degC")
    assert isinstance(conversion, Conversion)
    assert conversion.identity


def test_logarithmic_units_fall_back_to_pint() -> None:
    conversion = converter("dB", "1")
    assert isinstance(conversion, Conversion)
    assert not conversion.affine
    np.testing.assert_allclose(conversion(np.array([0.0, 10.0, 20.0])), [1.0, 10.0, 100.0])


@pytest.mark.parametrize(
    ("from_unit", "to_unit"),
    [("psi", "degC"), ("rpm", "mm/s"), ("g", "gram"), ("rad/s", "rpm"), ("delta_degC", "degC")],
)
def test_incompatible_units_raise_a_mismatch(from_unit: str, to_unit: str) -> None:
    with pytest.raises(UnitMismatchError) as caught:
        converter(from_unit, to_unit)
    assert caught.value.from_unit == from_unit
    assert caught.value.to_unit == to_unit
    assert from_unit in str(caught.value)


@pytest.mark.parametrize(
    "unit", ["", "   ", "furlong_per_wombat", "psig", "(", "m/s/", "2*m", "m**1e9", "x" * 500]
)
def test_unknown_units_raise_unknown_unit(unit: str) -> None:
    with pytest.raises(UnknownUnitError):
        check_unit(unit)
    with pytest.raises(UnknownUnitError):
        converter(unit, "degC")


def test_a_unit_that_is_not_a_string_is_unknown() -> None:
    with pytest.raises(UnknownUnitError):
        converter(5, "degC")  # type: ignore[arg-type]


def _spec(*units: str) -> AssetTypeSpec:
    return AssetTypeSpec(
        name="pump",
        display_name="Pump",
        channels=tuple(SensorChannel(f"ch{i}", u, 0.0, 1.0, 1.0) for i, u in enumerate(units)),
        horizon=FailureHorizon(48, "hours"),
    )


def test_check_spec_units_names_the_channel_with_an_unknown_unit() -> None:
    check_spec_units(_spec("degC", "psi", "rpm"))
    with pytest.raises(AssetTypeInvalidError) as caught:
        check_spec_units(_spec("degC", "bogus_unit"))
    assert caught.value.field == "asset_type.channels[1].unit"

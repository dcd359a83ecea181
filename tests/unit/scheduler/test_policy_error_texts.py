"""A work-order policy refuses NaN and infinities as such, not as out of range."""

from __future__ import annotations

import math

import pytest

from prognos.scheduler.domain import AssetData
from prognos.scheduler.policy import PolicyInvalidError, WorkOrderPolicy


@pytest.mark.parametrize("name", ["p_open", "p_close", "hours_per_rul_unit"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_or_an_infinity_in_a_policy_is_not_a_finite_number(name: str, value: float) -> None:
    with pytest.raises(PolicyInvalidError) as error:
        WorkOrderPolicy(**{name: value})  # type: ignore[arg-type]
    assert (error.value.field, error.value.description) == (
        f"policy.{name}",
        "must be a finite number",
    )


def test_a_nan_remaining_useful_life_is_not_a_finite_number() -> None:
    with pytest.raises(PolicyInvalidError) as error:
        WorkOrderPolicy(rul_open=math.nan, rul_close=10.0)
    assert error.value.field == "policy.rul_open"
    assert error.value.description == "must be a finite number"


def test_an_asset_with_nan_criticality_is_not_called_negative() -> None:
    asset = AssetData("a" * 10_000, "E-1", "p1", "fan", "mechanical", 2.0, criticality=math.nan)
    problems = dict(asset.violations("assets[0]"))
    assert problems["assets[0].criticality"] == "must be a finite number"
    assert "(10000 characters)" in problems["assets[0].asset_id"]
    assert len(problems["assets[0].asset_id"]) < 250

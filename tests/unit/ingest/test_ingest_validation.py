"""Batch validation: structural rejection, per-reading quarantine, unit normalisation, order."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from prognos.ingest.domain import AssetTypeSpec, FailureHorizon, SensorChannel
from prognos.ingest.validation import (
    BatchRejectedError,
    BatchValidation,
    QuarantineReason,
    validate_batch,
)

S = 1_000_000  # microseconds per second
NOW = 1_700_000_000 * S

SPEC = AssetTypeSpec(
    name="pump",
    display_name="Centrifugal pump",
    channels=(
        SensorChannel("bearing_temp", "degC", -40.0, 150.0, 1.0),
        SensorChannel("discharge_pressure", "kPa", 0.0, 2_000.0, 1.0),
        SensorChannel("speed", "rpm", 0.0, 6_000.0, 1.0),
    ),
    horizon=FailureHorizon(48, "hours"),
)


def run(
    timestamps: Any,
    columns: Any,
    *,
    last_seen_us: int | None = None,
    max_lateness_us: int = 60 * S,
    max_future_us: int = 5 * S,
    **kwargs: Any,
) -> BatchValidation:
    return validate_batch(
        SPEC,
        "pump-7",
        np.asarray(timestamps, dtype=np.int64) if isinstance(timestamps, list) else timestamps,
        columns,
        now_us=NOW,
        last_seen_us=last_seen_us,
        max_lateness_us=max_lateness_us,
        max_future_us=max_future_us,
        **kwargs,
    )


def secs(*offsets: float) -> list[int]:
    return [NOW + int(o * S) for o in offsets]


def test_a_clean_batch_is_accepted_whole_in_canonical_units() -> None:
    result = run(
        secs(-3, -2, -1),
        {
            "bearing_temp": ("degF", np.array([32.0, 212.0, 98.6])),
            "discharge_pressure": ("psi", np.array([1.0, 2.0, 3.0])),
        },
    )
    np.testing.assert_array_equal(result.timestamps_us, secs(-3, -2, -1))
    np.testing.assert_allclose(result.columns["bearing_temp"], [0.0, 100.0, 37.0], atol=1e-9)
    np.testing.assert_allclose(
        result.columns["discharge_pressure"], np.array([1.0, 2.0, 3.0]) * 6.894757293168361
    )
    assert result.units == {"bearing_temp": "degC", "discharge_pressure": "kPa"}
    assert len(result.quarantine) == 0
    assert result.counts == {}
    assert result.received_values == result.accepted_values == 6
    assert result.accepted_rows == 3


def test_bad_readings_are_quarantined_and_the_rest_of_their_row_kept() -> None:
    result = run(
        secs(-4, -3, -2, -1),
        {
            "bearing_temp": ("degC", np.array([20.0, math.nan, math.inf, 21.0])),
            "speed": ("rpm", np.array([1500.0, 1500.0, 1500.0, -5.0])),
        },
    )
    assert sorted(result.quarantine, key=lambda q: q.timestamp_us) == [
        (
            QuarantineReason.NOT_A_NUMBER,
            "bearing_temp",
            secs(-3)[0],
            pytest.approx(math.nan, nan_ok=True),
        ),
        (QuarantineReason.INFINITE, "bearing_temp", secs(-2)[0], math.inf),
        (QuarantineReason.OUT_OF_RANGE, "speed", secs(-1)[0], -5.0),
    ]
    assert result.counts == {
        QuarantineReason.NOT_A_NUMBER: 1,
        QuarantineReason.INFINITE: 1,
        QuarantineReason.OUT_OF_RANGE: 1,
    }
    assert result.accepted_rows == 4
    np.testing.assert_array_equal(result.columns["speed"], [1500.0, 1500.0, 1500.0, np.nan])
    np.testing.assert_array_equal(result.columns["bearing_temp"], [20.0, np.nan, np.nan, 21.0])
    assert result.accepted_values == 5


def test_the_valid_range_applies_after_unit_conversion() -> None:
    # 300 degF = 148.9 degC is inside [-40, 150]; 310 degF = 154.4 degC is not.
    result = run(secs(-2, -1), {"bearing_temp": ("degF", np.array([300.0, 310.0]))})
    assert [(q.reason, q.raw_value) for q in result.quarantine] == [
        (QuarantineReason.OUT_OF_RANGE, 310.0)
    ]
    np.testing.assert_allclose(result.columns["bearing_temp"], [148.8888888888889])


def test_quarantine_keeps_the_raw_value_and_its_unit() -> None:
    result = run(secs(-1), {"bearing_temp": ("degF", np.array([1000.0]))})
    (reading,) = result.quarantine
    assert reading.raw_value == 1000.0
    assert result.quarantine.raw_units == {"bearing_temp": "degF"}


def test_a_row_with_no_good_reading_left_is_dropped() -> None:
    result = run(
        secs(-2, -1),
        {
            "bearing_temp": ("degC", np.array([math.nan, 20.0])),
            "speed": ("rpm", np.array([-1.0, 100.0])),
        },
    )
    np.testing.assert_array_equal(result.timestamps_us, secs(-1))
    assert len(result.quarantine) == 2


def test_future_timestamps_beyond_the_tolerance_are_quarantined() -> None:
    result = run(secs(-1, 5, 5.000001, 3600), {"speed": ("rpm", np.array([1.0, 2.0, 3.0, 4.0]))})
    np.testing.assert_array_equal(result.timestamps_us, secs(-1, 5))
    assert result.counts == {QuarantineReason.FUTURE: 2}


def test_readings_older_than_the_lateness_bound_are_late() -> None:
    last_seen = NOW - 10 * S
    result = run(
        [last_seen - 60 * S, last_seen - 60 * S - 1, last_seen + 1],
        {"speed": ("rpm", np.array([1.0, 2.0, 3.0]))},
        last_seen_us=last_seen,
    )
    np.testing.assert_array_equal(result.timestamps_us, [last_seen - 60 * S, last_seen + 1])
    (late,) = result.quarantine
    assert late.reason is QuarantineReason.LATE
    assert late.timestamp_us == last_seen - 60 * S - 1
    assert result.reordered_rows == 1  # the first row came in behind last_seen


def test_rows_out_of_order_within_the_lateness_bound_are_sorted_in() -> None:
    result = run(secs(-1, -3, -2, -10), {"speed": ("rpm", np.array([1.0, 3.0, 2.0, 10.0]))})
    np.testing.assert_array_equal(result.timestamps_us, secs(-10, -3, -2, -1))
    np.testing.assert_array_equal(result.columns["speed"], [10.0, 3.0, 2.0, 1.0])
    assert result.reordered_rows == 3
    assert len(result.quarantine) == 0


def test_a_row_far_behind_an_earlier_row_of_the_same_batch_is_late() -> None:
    result = run(
        secs(-1, -100, -30), {"speed": ("rpm", np.array([1.0, 2.0, 3.0]))}, max_lateness_us=60 * S
    )
    assert [(q.reason, q.raw_value) for q in result.quarantine] == [(QuarantineReason.LATE, 2.0)]
    np.testing.assert_array_equal(result.timestamps_us, secs(-30, -1))


def test_a_future_row_does_not_make_the_rows_after_it_late() -> None:
    result = run(secs(10**6, -2, -1), {"speed": ("rpm", np.array([1.0, 2.0, 3.0]))})
    assert result.counts == {QuarantineReason.FUTURE: 1}
    np.testing.assert_array_equal(result.timestamps_us, secs(-2, -1))


def test_a_repeated_timestamp_keeps_the_first_row() -> None:
    result = run(
        secs(-2, -1, -2, -2),
        {
            "speed": ("rpm", np.array([1.0, 2.0, 3.0, 4.0])),
            "bearing_temp": ("degC", np.array([5.0, 6.0, 7.0, 8.0])),
        },
    )
    np.testing.assert_array_equal(result.timestamps_us, secs(-2, -1))
    np.testing.assert_array_equal(result.columns["speed"], [1.0, 2.0])
    assert result.counts == {QuarantineReason.DUPLICATE_TIMESTAMP: 4}  # 2 rows x 2 channels
    assert sorted(q.raw_value for q in result.quarantine) == [3.0, 4.0, 7.0, 8.0]


def test_a_row_level_reason_takes_precedence_over_a_reading_level_one() -> None:
    result = run(secs(3600), {"speed": ("rpm", np.array([math.nan]))})
    assert result.quarantine.reasons() == [QuarantineReason.FUTURE]


def test_reason_codes_are_upper_snake_strings() -> None:
    for reason in QuarantineReason:
        assert reason.value == reason.name
        assert reason.value.replace("_", "").isalpha() and reason.value.isupper()


def test_channels_may_come_as_a_sequence_of_triples() -> None:
    result = run(secs(-1), [("speed", "Hz", np.array([25.0]))])
    np.testing.assert_allclose(result.columns["speed"], [1500.0])


def test_integer_and_boolean_values_are_accepted_as_numbers() -> None:
    result = run(secs(-2, -1), {"speed": ("rpm", np.array([1500, 1600], dtype=np.int32))})
    np.testing.assert_array_equal(result.columns["speed"], [1500.0, 1600.0])


def test_the_inputs_are_not_modified() -> None:
    ts = np.array(secs(-1, -3, -2), dtype=np.int64)
    values = np.array([1.0, math.nan, 9999.0])
    run(ts, {"speed": ("rpm", values)})
    np.testing.assert_array_equal(ts, secs(-1, -3, -2))
    np.testing.assert_array_equal(values, [1.0, math.nan, 9999.0])


def test_every_structural_fault_is_named_at_once() -> None:
    with pytest.raises(BatchRejectedError) as caught:
        validate_batch(
            SPEC,
            "",
            np.array(secs(-2, -1), dtype=np.int64),
            [
                ("speed", "rpm", np.array([1.0])),
                ("bearing_temp", "psi", np.array([1.0, 2.0])),
                ("vibration", "mm/s", np.array([1.0, 2.0])),
            ],
            now_us=NOW,
            last_seen_us=None,
            max_lateness_us=0,
            max_future_us=0,
        )
    assert [v.field for v in caught.value.violations] == [
        "asset_id",
        "columns[speed].values",
        "columns[bearing_temp].unit",
        "columns[vibration]",
    ]
    assert "columns[vibration]: unknown channel" in str(caught.value)


# A reading-by-reading reference, written for clarity, against which the vectorised
# implementation is checked on random batches.
def reference(
    ts: list[int],
    columns: dict[str, tuple[float, float, list[float]]],
    last_seen: int | None,
    lateness: int,
    future: int,
) -> tuple[list[int], dict[str, list[float]], dict[str, int]]:
    row_reason: list[str | None] = []
    seen: set[int] = set()
    watermark = last_seen
    for t in ts:
        if t > NOW + future:
            row_reason.append("FUTURE")
            continue
        reason = None
        if watermark is not None and t < watermark - lateness:
            reason = "LATE"
        elif t in seen:
            reason = "DUPLICATE_TIMESTAMP"
        else:
            seen.add(t)
        watermark = t if watermark is None else max(watermark, t)
        row_reason.append(reason)
    counts: dict[str, int] = {}
    kept: dict[int, dict[str, float]] = {}
    for i in range(len(ts)):
        for name, (low, high, values) in columns.items():
            v = values[i]
            reason = row_reason[i]
            if reason is None:
                if math.isnan(v):
                    reason = "NOT_A_NUMBER"
                elif math.isinf(v):
                    reason = "INFINITE"
                elif not low <= v <= high:
                    reason = "OUT_OF_RANGE"
            if reason is None:
                kept.setdefault(i, {})[name] = v
            else:
                counts[reason] = counts.get(reason, 0) + 1
    order = sorted(kept, key=lambda i: (ts[i], i))
    return (
        [ts[i] for i in order],
        {name: [kept[i].get(name, math.nan) for i in order] for name in columns},
        counts,
    )


@pytest.mark.parametrize("seed", range(25))
def test_matches_a_reading_by_reading_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    ts = NOW - rng.integers(0, 200, size=n) * S // 2
    ts[rng.random(n) < 0.05] += 3600 * S  # some in the future
    values = {
        "speed": rng.uniform(-500, 6500, size=n),
        "bearing_temp": rng.uniform(-50, 160, size=n),
    }
    for v in values.values():
        v[rng.random(n) < 0.05] = np.nan
        v[rng.random(n) < 0.03] = rng.choice([np.inf, -np.inf])
    last_seen = None if seed % 3 == 0 else NOW - int(rng.integers(0, 100)) * S
    result = run(
        ts,
        {name: (SPEC.channel(name).unit, v) for name, v in values.items()},  # type: ignore[union-attr]
        last_seen_us=last_seen,
        max_lateness_us=30 * S,
    )
    expected_ts, expected_columns, expected_counts = reference(
        ts.tolist(),
        {
            name: (SPEC.channel(name).min_value, SPEC.channel(name).max_value, v.tolist())  # type: ignore[union-attr]
            for name, v in values.items()
        },
        last_seen,
        30 * S,
        5 * S,
    )
    assert result.timestamps_us.tolist() == expected_ts
    for name, expected in expected_columns.items():
        np.testing.assert_array_equal(result.columns[name], expected)
    assert {r.value: c for r, c in result.counts.items()} == expected_counts
    assert result.accepted_values + len(result.quarantine) == result.received_values == 2 * n


def test_a_clean_batch_comes_out_as_the_full_checks_would_leave_it() -> None:
    # The clean batch takes the short path; the same batch with one bad row appended takes
    # the full one. Apart from that row, both must accept the same readings identically.
    rng = np.random.default_rng(3)
    stamps = secs(*range(-50, 0))
    columns = {
        "bearing_temp": ("degF", rng.uniform(0, 250, 50)),
        "discharge_pressure": ("psi", rng.uniform(0, 250, 50)),
        "speed": ("rpm", rng.uniform(0, 5_000, 50)),
    }
    clean = run(stamps, columns, last_seen_us=NOW - 100 * S)
    spoiled = {
        name: (unit, np.append(values, math.inf)) for name, (unit, values) in columns.items()
    }
    full = run([*stamps, NOW], spoiled, last_seen_us=NOW - 100 * S)

    assert clean.counts == {} and len(clean.quarantine) == 0
    assert full.counts == {QuarantineReason.INFINITE: 3}
    # The bad row has no good reading left, so the full path drops it entirely.
    assert np.array_equal(clean.timestamps_us, full.timestamps_us)
    for name in columns:
        assert np.array_equal(clean.columns[name], full.columns[name])
    assert clean.units == full.units
    assert clean.accepted_values == full.accepted_values == 150

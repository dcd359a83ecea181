"""Malformed input of every kind: no crash, a rejection naming the field or a quarantine reason."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from prognos.ingest.domain import AssetTypeSpec, FailureHorizon, SensorChannel
from prognos.ingest.formats import (
    BatchReader,
    ChannelColumn,
    ColumnMapping,
    FileFormatError,
    TimeFormat,
    read_cmapss,
    read_csv,
    read_json_lines,
)
from prognos.ingest.validation import (
    BatchRejectedError,
    BatchValidation,
    QuarantineReason,
    validate_batch,
)

S = 1_000_000
NOW = 1_700_000_000 * S
SPEC = AssetTypeSpec(
    name="compressor",
    display_name="Compressor",
    channels=(
        SensorChannel("temp", "degC", -40.0, 200.0, 1.0),
        SensorChannel("pressure", "kPa", 0.0, 5_000.0, 1.0),
        SensorChannel("vibration", "mm/s", 0.0, 100.0, 1.0),
    ),
    horizon=FailureHorizon(48, "hours"),
)
GOOD_TS = np.array([NOW - 3 * S, NOW - 2 * S, NOW - 1 * S], dtype=np.int64)


def good_columns() -> dict[str, tuple[str, Any]]:
    return {
        "temp": ("degF", np.array([100.0, 101.0, 102.0])),
        "pressure": ("psi", np.array([50.0, 51.0, 52.0])),
    }


def validate(ts: Any = None, columns: Any = None, **overrides: Any) -> BatchValidation:
    kwargs: dict[str, Any] = {
        "now_us": NOW,
        "last_seen_us": NOW - 10 * S,
        "max_lateness_us": 60 * S,
        "max_future_us": 5 * S,
        "max_rows": 1_000,
    }
    asset_id = overrides.pop("asset_id", "c-1")
    kwargs.update(overrides)
    return validate_batch(
        SPEC,
        asset_id,
        GOOD_TS if ts is None else ts,
        good_columns() if columns is None else columns,
        **kwargs,
    )


def with_column(name: str, unit: str, values: Any) -> dict[str, tuple[str, Any]]:
    columns = good_columns()
    columns[name] = (unit, values)
    return columns


# (kind, call, field expected in the rejection)
REJECTIONS: list[tuple[str, Callable[[], object], str]] = [
    ("empty batch", lambda: validate(np.array([], dtype=np.int64), {}), "timestamps_us"),
    ("no channels", lambda: validate(columns={}), "columns"),
    ("timestamps missing", lambda: validate(np.array(None)), "timestamps_us"),
    ("timestamps as floats", lambda: validate(GOOD_TS.astype(float)), "timestamps_us"),
    ("timestamps as text", lambda: validate(np.array(["2024-01-01"] * 3)), "timestamps_us"),
    ("timestamps 2-D", lambda: validate(GOOD_TS.reshape(3, 1)), "timestamps_us"),
    (
        "huge arrays",
        lambda: validate(
            np.zeros(2_000_000, dtype=np.int64), {"temp": ("degC", np.zeros(2_000_000))}
        ),
        "timestamps_us",
    ),
    (
        "mismatched lengths",
        lambda: validate(columns=with_column("vibration", "mm/s", np.ones(2))),
        "columns[vibration].values",
    ),
    (
        "unknown channel",
        lambda: validate(columns=with_column("oil_level", "mm", np.ones(3))),
        "columns[oil_level]",
    ),
    (
        "channel given twice",
        lambda: validate(columns=[("temp", "degC", np.ones(3)), ("temp", "degF", np.ones(3))]),
        "columns[temp]",
    ),
    (
        "unknown unit",
        lambda: validate(columns=with_column("vibration", "furlongs/wombat", np.ones(3))),
        "columns[vibration].unit",
    ),
    (
        "incompatible unit",
        lambda: validate(columns=with_column("pressure", "degC", np.ones(3))),
        "columns[pressure].unit",
    ),
    (
        "empty unit",
        lambda: validate(columns=with_column("pressure", "", np.ones(3))),
        "columns[pressure].unit",
    ),
    (
        "values as text",
        lambda: validate(columns=with_column("vibration", "mm/s", np.array(["1", "2", "3"]))),
        "columns[vibration].values",
    ),
    (
        "values as objects",
        lambda: validate(columns=with_column("vibration", "mm/s", [1.0, None, {"a": 1}])),
        "columns[vibration].values",
    ),
    (
        "complex values",
        lambda: validate(columns=with_column("vibration", "mm/s", np.ones(3) * 1j)),
        "columns[vibration].values",
    ),
    (
        "channel entry not a pair",
        lambda: validate(columns={"temp": np.ones(3)}),
        "columns",
    ),
    ("empty asset id", lambda: validate(asset_id="  "), "asset_id"),
    ("asset id with control characters", lambda: validate(asset_id="c-1\x00"), "asset_id"),
]


@pytest.mark.parametrize(("kind", "call", "field"), REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_malformed_batches_are_rejected_naming_the_field(
    kind: str, call: Callable[[], object], field: str
) -> None:
    with pytest.raises(BatchRejectedError) as caught:
        call()
    assert field in [v.field for v in caught.value.violations], kind
    assert all(v.description for v in caught.value.violations)


INT64 = np.iinfo(np.int64)

# (kind, timestamps, temp values in degF, reasons of the temp readings quarantined)
QUARANTINES: list[tuple[str, list[int], list[float], list[QuarantineReason]]] = [
    ("not a number", [-3, -2, -1], [100.0, math.nan, 102.0], [QuarantineReason.NOT_A_NUMBER]),
    ("infinity", [-3, -2, -1], [100.0, -math.inf, 102.0], [QuarantineReason.INFINITE]),
    (
        "out of range after conversion",
        [-3, -2, -1],
        [100.0, 500.0, 102.0],  # 500 degF = 260 degC > 200 degC
        [QuarantineReason.OUT_OF_RANGE],
    ),
    ("huge finite value", [-3, -2, -1], [100.0, 1e308, 102.0], [QuarantineReason.OUT_OF_RANGE]),
    ("future", [-3, -2, 3600], [100.0, 101.0, 102.0], [QuarantineReason.FUTURE]),
    ("late", [-3, -2, -3600], [100.0, 101.0, 102.0], [QuarantineReason.LATE]),
    ("duplicate", [-3, -2, -3], [100.0, 101.0, 102.0], [QuarantineReason.DUPLICATE_TIMESTAMP]),
    ("out of order", [-1, -3, -2], [100.0, 101.0, 102.0], []),
]


@pytest.mark.parametrize(
    ("kind", "offsets", "temps", "reasons"), QUARANTINES, ids=[q[0] for q in QUARANTINES]
)
def test_bad_readings_are_quarantined_and_good_ones_survive(
    kind: str, offsets: list[int], temps: list[float], reasons: list[QuarantineReason]
) -> None:
    ts = np.array([NOW + o * S for o in offsets], dtype=np.int64)
    result = validate(ts, with_column("temp", "degF", np.array(temps)))
    temp_reasons = [q.reason for q in result.quarantine if q.channel == "temp"]
    assert temp_reasons == reasons, kind
    # Everything not quarantined is accepted, sorted by time, in canonical units.
    assert result.accepted_values + len(result.quarantine) == result.received_values
    assert np.all(np.diff(result.timestamps_us) > 0)
    good_temps = result.columns["temp"][~np.isnan(result.columns["temp"])]
    assert good_temps.size == 3 - len(reasons)
    assert np.all((good_temps > 37.0) & (good_temps < 39.0))  # 100..102 degF in degC


def test_extreme_int64_timestamps_do_not_wrap_around() -> None:
    ts = np.array([INT64.min, INT64.max, NOW - S, INT64.min + 1], dtype=np.int64)
    result = validate(
        ts,
        {"temp": ("degC", np.ones(4))},
        last_seen_us=INT64.min + 5,
        max_lateness_us=2**62,
        max_future_us=2**63,
    )
    # Nothing is in the future (the tolerance saturates); the far-future INT64.max row moves
    # the watermark, so the rows behind it by more than 2**62 are late.
    assert result.timestamps_us.tolist() == [INT64.min, INT64.max]
    assert result.counts == {QuarantineReason.LATE: 2}
    result = validate(
        ts, {"temp": ("degC", np.ones(4))}, last_seen_us=NOW - 2 * S, max_lateness_us=S
    )
    assert result.counts == {QuarantineReason.LATE: 2, QuarantineReason.FUTURE: 1}


# --- files -------------------------------------------------------------------------------

MAPPING = ColumnMapping(
    timestamp="time",
    time_format=TimeFormat.UNIX_S,
    asset_column="asset",
    channels=(ChannelColumn("t", "temp", "degF"), ChannelColumn("p", "pressure", "psi")),
)
GOOD_CSV = b"time,asset,t,p\n1700000000,c-1,100,50\n1700000001,c-1,101,51\n"
GOOD_JSONL = (
    b'{"time": 1700000000, "asset": "c-1", "t": 100, "p": 50}\n'
    b'{"time": 1700000001, "asset": "c-1", "t": 101, "p": 51}\n'
)


def random_bytes(seed: int, size: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size=size, dtype=np.uint8).tobytes()


def drain(reader: BatchReader) -> tuple[int, list[int]]:
    rows = sum(len(b) for b in reader)
    return rows, [e.line for e in reader.errors]


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_in_a_csv_body_are_reported_not_crashed_on(seed: int) -> None:
    body = GOOD_CSV + random_bytes(seed, 20_000) + b"\n" + GOOD_CSV.split(b"\n", 1)[1]
    reader = read_csv(io.BytesIO(body), MAPPING)
    rows, lines = drain(reader)
    assert rows >= 4  # the good lines before and after the noise survive
    assert reader.error_count > 0
    assert all(line >= 4 for line in lines)


@pytest.mark.parametrize("seed", range(3))
def test_a_csv_of_random_bytes_is_rejected_or_reported(seed: int) -> None:
    try:
        rows, _ = drain(read_csv(io.BytesIO(random_bytes(seed, 5_000)), MAPPING))
    except FileFormatError as e:
        assert e.field.startswith(("file", "mapping"))
    else:
        assert rows == 0


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_in_json_lines_are_reported_not_crashed_on(seed: int) -> None:
    body = GOOD_JSONL + random_bytes(seed, 20_000) + b"\n" + GOOD_JSONL
    reader = read_json_lines(io.BytesIO(body), MAPPING)
    rows, lines = drain(reader)
    assert rows == 4
    assert reader.error_count > 0
    assert all(line >= 3 for line in lines)


@pytest.mark.parametrize("seed", range(3))
def test_random_bytes_in_cmapss_text_are_reported_not_crashed_on(seed: int) -> None:
    good = ("1 1 " + " ".join(["1.0"] * 24) + "\n").encode()
    reader = read_cmapss(
        io.BytesIO(good + random_bytes(seed, 20_000)), plant="p", start_time=datetime.now(UTC)
    )
    rows, _ = drain(reader)
    assert rows == 1
    assert reader.error_count > 0
    assert len(reader.failures) == 1


@pytest.mark.parametrize(
    ("kind", "line", "reason"),
    [
        ("too few fields", b"1700000002,c-1,1", "expected 4 fields, found 3"),
        ("too many fields", b"1700000002,c-1,1,2,3", "expected 4 fields, found 5"),
        ("not a number", b"1700000002,c-1,1,high", "is not a number"),
        ("bad timestamp", b"soon,c-1,1,2", "bad timestamp"),
        ("timestamp out of range", b"1e300,c-1,1,2", "bad timestamp"),
        ("missing asset", b"1700000002,,1,2", "missing asset id"),
        ("unterminated quote", b'1700000002,"c-1,1,2', "not a CSV row"),
        ("invalid UTF-8", b"1700000002,c\xc3\x28,1,2", "not UTF-8"),
    ],
)
def test_bad_csv_rows_are_reported_and_the_rest_kept(kind: str, line: bytes, reason: str) -> None:
    reader = read_csv(io.BytesIO(GOOD_CSV + line + b"\n" + GOOD_CSV.split(b"\n", 1)[1]), MAPPING)
    rows, lines = drain(reader)
    assert rows == 4, kind
    assert lines == [4]
    assert reason in reader.errors[0].reason


@pytest.mark.parametrize(
    ("kind", "line", "reason"),
    [
        ("not JSON", b"{'time': 1}", "not JSON"),
        ("truncated", b'{"time": 1700000002, "asset": "c-1", "t"', "not JSON"),
        ("not an object", b'"just a string"', "expected a JSON object"),
        ("no timestamp", b'{"asset": "c-1", "t": 1}', "missing timestamp"),
        ("text value", b'{"time": 1700000002, "asset": "c-1", "t": "1"}', "is not a number"),
        ("nested value", b'{"time": 1700000002, "asset": "c-1", "p": [1]}', "is not a number"),
        ("no asset", b'{"time": 1700000002, "t": 1}', "missing asset id"),
        ("NaN literal timestamp", b'{"time": NaN, "asset": "c-1"}', "bad timestamp"),
        ("invalid UTF-8", b'{"time": 1700000002, "asset": "c\xff"}', "not UTF-8"),
    ],
)
def test_bad_json_lines_are_reported_and_the_rest_kept(kind: str, line: bytes, reason: str) -> None:
    reader = read_json_lines(io.BytesIO(GOOD_JSONL + line + b"\n" + GOOD_JSONL), MAPPING)
    rows, lines = drain(reader)
    assert rows == 4, kind
    assert lines == [3]
    assert reason in reader.errors[0].reason


def test_a_file_that_ends_mid_line_keeps_its_last_line() -> None:
    reader = read_csv(io.BytesIO(GOOD_CSV + b"1700000002,c-1,102,5"), MAPPING)
    rows, lines = drain(reader)
    assert (rows, lines) == (3, [])


def test_the_reported_errors_are_capped_but_all_counted() -> None:
    body = GOOD_CSV + b"x\n" * 5_000
    reader = read_csv(io.BytesIO(body), MAPPING)
    rows, lines = drain(reader)
    assert rows == 2
    assert reader.error_count == 5_000
    assert len(lines) == 1_000


def test_a_text_stream_is_rejected_with_a_field() -> None:
    with pytest.raises(FileFormatError) as caught:
        list(read_csv(io.StringIO("time,asset,t,p\n"), MAPPING))  # type: ignore[arg-type]
    assert caught.value.field == "source"

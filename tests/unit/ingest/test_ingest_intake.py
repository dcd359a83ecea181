"""Reading a telemetry batch's shape, screening its columns, naming subjects and snapshots."""

from __future__ import annotations

import numpy as np
import pytest

from prognos.api.ingest.v1 import ingest_pb2
from prognos.ingest.domain import (
    AssetTypeSpec,
    FailureHorizon,
    SensorChannel,
    SnapshotFile,
    snapshot_content_hash,
)
from prognos.ingest.intake import (
    ColumnRejection,
    decode_subject_token,
    read_batch,
    subject_token,
)
from prognos.ingest.intake import _screen as screen
from prognos.ingest.validation import BatchRejectedError

R = ingest_pb2.QuarantineReason
SPEC = AssetTypeSpec(
    name="pump",
    display_name="Pump",
    channels=(
        SensorChannel("temp", "degC", -40.0, 150.0, 1.0),
        SensorChannel("pressure", "kPa", 0.0, 2_000.0, 1.0),
    ),
    horizon=FailureHorizon(48, "hours"),
)


def batch(rows: int = 4, **fields: object) -> ingest_pb2.TelemetryBatch:
    message = ingest_pb2.TelemetryBatch(
        batch_id="b1",
        asset_id="p-1",
        timestamps_us_le=np.arange(rows, dtype="<i8").tobytes(),
    )
    message.channels.add(name="temp", values_f64_le=np.zeros(rows).tobytes())
    for key, value in fields.items():
        setattr(message, key, value)
    return message


@pytest.mark.parametrize(
    "asset_id",
    ["pump-7", "plant 1/pump.7", "ünit*>", "a%b", "x_y-z"],
)
def test_a_subject_token_is_one_safe_token_that_decodes_back(asset_id: str) -> None:
    token = subject_token(asset_id)
    assert all(c.isascii() and (c.isalnum() or c in "-_%") for c in token)
    assert decode_subject_token(token) == asset_id


def test_a_readable_batch_keeps_its_columns_as_sent() -> None:
    message = batch()
    message.channels.add(name="pressure", unit="psi", values=[1.0, 2.0, 3.0, 4.0])
    message.channels.add(name="temp2", values_f32_le=np.ones(4, "<f4").tobytes())
    raw = read_batch(message, max_rows=10)
    assert raw.rows == 4
    assert [(i, n, u, p) for i, n, u, _, p in raw.columns] == [
        (0, "temp", "", ""),
        (1, "pressure", "psi", ""),
        (2, "temp2", "", ""),
    ]
    assert raw.columns[2][3] is not None and raw.columns[2][3].dtype == np.float64


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"batch_id": ""}, "batch_id"),
        ({"asset_id": ""}, "asset_id"),
        ({"asset_id": "a:b"}, "asset_id"),
        ({"timestamps_us_le": b"\x00" * 7}, "timestamps_us_le"),
        ({"timestamps_us_le": b""}, "timestamps_us"),
    ],
)
def test_an_unreadable_batch_is_rejected_naming_the_field(
    fields: dict[str, object], field: str
) -> None:
    with pytest.raises(BatchRejectedError) as caught:
        read_batch(batch(**fields), max_rows=10)
    assert field in [v.field for v in caught.value.violations]


def test_too_many_rows_are_rejected() -> None:
    with pytest.raises(BatchRejectedError) as caught:
        read_batch(batch(rows=11), max_rows=10)
    assert "exceed the limit of 10" in str(caught.value)


def test_unreadable_columns_are_kept_for_the_quarantine_with_their_reason() -> None:
    message = batch()
    message.channels.add(name="pressure", values=[1.0])  # 1 value for 4 rows
    message.channels.add(name="pressure", values_f64_le=b"\x00" * 9)
    message.channels.add(name="", values=[1.0] * 4)
    message.channels.add(name="temp", values=[1.0] * 4, values_f64_le=b"\x00" * 32)
    raw = read_batch(message, max_rows=10)
    problems = [p for *_, p in raw.columns]
    assert problems[0] == ""
    assert "1 values for 4 timestamps" in problems[1]
    assert "9 bytes" in problems[2]
    assert "must name a channel" in problems[3]
    assert "set one of" in problems[4]


def test_screening_quarantines_unknown_channels_and_units_and_repeats() -> None:
    message = batch()
    message.channels.add(name="humidity", values=[1.0] * 4)
    message.channels.add(name="pressure", unit="degC", values=[1.0] * 4)
    message.channels.add(name="temp", values=[1.0] * 4)
    message.channels.add(name="pressure", unit="psi", values=[1.0] * 4)
    good, rejected = screen(read_batch(message, max_rows=10), SPEC)
    assert [(name, unit) for name, unit, _ in good] == [("temp", "degC")]
    # A channel sent twice is kept out the second time, whatever became of the first.
    assert [(r.channel, r.reason, r.count) for r in rejected] == [
        ("humidity", R.QUARANTINE_REASON_UNKNOWN_CHANNEL, 4),
        ("pressure", R.QUARANTINE_REASON_INCOMPATIBLE_UNIT, 4),
        ("temp", R.QUARANTINE_REASON_MALFORMED, 4),
        ("pressure", R.QUARANTINE_REASON_MALFORMED, 4),
    ]
    assert all(
        isinstance(r, ColumnRejection) and r.detail.startswith("channels[") for r in rejected
    )


def test_a_snapshot_hash_depends_on_paths_and_contents_not_on_order() -> None:
    a = SnapshotFile("t/a.parquet", "sha256:aa", 1, 10, "telemetry", "x", 0, 1)
    b = SnapshotFile("t/b.parquet", "sha256:bb", 1, 10, "telemetry", "y", 0, 1)
    changed = SnapshotFile("t/b.parquet", "sha256:bc", 1, 10, "telemetry", "y", 0, 1)
    assert snapshot_content_hash((a, b)) == snapshot_content_hash((b, a))
    assert snapshot_content_hash((a, b)) != snapshot_content_hash((a, changed))
    assert snapshot_content_hash((a, b)).startswith("sha256:")

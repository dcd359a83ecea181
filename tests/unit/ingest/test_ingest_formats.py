"""File readers: CSV, JSON lines and C-MAPSS to columnar batches, bad lines reported."""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from prognos.ingest.domain import AssetTypeSpec, FailureHorizon, SensorChannel, validate_spec
from prognos.ingest.formats import (
    BatchReader,
    ChannelColumn,
    ColumnMapping,
    FileBatch,
    FileFormatError,
    TimeFormat,
    cmapss_asset_type,
    read_cmapss,
    read_csv,
    read_json_lines,
)
from prognos.ingest.units import check_spec_units
from prognos.ingest.validation import validate_batch

DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
CMAPSS_FD001 = DATA / "cmapss" / "train_FD001.txt"
AI4I = DATA / "ai4i2020" / "ai4i2020.csv"

T0 = datetime(2024, 5, 1, tzinfo=UTC)
T0_US = int(T0.timestamp()) * 1_000_000

MAPPING = ColumnMapping(
    timestamp="time",
    asset_column="asset",
    channels=(
        ChannelColumn("temp_f", "bearing_temp", "degF"),
        ChannelColumn("pressure", "discharge_pressure", "psi"),
    ),
)


def write(tmp_path: Path, text: str | bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def by_asset(batches: list[FileBatch]) -> dict[str, list[FileBatch]]:
    out: dict[str, list[FileBatch]] = {}
    for batch in batches:
        out.setdefault(batch.asset_id, []).append(batch)
    return out


# --- CSV ---------------------------------------------------------------------------------


def test_csv_rows_become_batches_per_asset(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "time,asset,temp_f,pressure,ignored\n"
        "2024-05-01T00:00:00Z,p1,100.5,30,x\n"
        "2024-05-01T00:00:01Z,p2,101.5,31,y\n"
        "2024-05-01T02:00:02+02:00,p1,102.5,,z\n",
    )
    reader = read_csv(path, MAPPING)
    batches = by_asset(list(reader))
    assert reader.errors == []
    assert reader.rows == 3
    (p1,) = batches["p1"]
    np.testing.assert_array_equal(p1.timestamps_us, [T0_US, T0_US + 2_000_000])
    assert p1.columns["bearing_temp"][0] == "degF"
    np.testing.assert_array_equal(p1.columns["bearing_temp"][1], [100.5, 102.5])
    np.testing.assert_array_equal(p1.columns["discharge_pressure"][1], [30.0, np.nan])
    np.testing.assert_array_equal(p1.lines, [2, 4])
    np.testing.assert_array_equal(batches["p2"][0].lines, [3])


@pytest.mark.parametrize(
    ("time_format", "cell"),
    [
        (TimeFormat.UNIX_S, "1714521600"),
        (TimeFormat.UNIX_S, "1714521600.0"),
        (TimeFormat.UNIX_MS, "1714521600000"),
        (TimeFormat.UNIX_US, "1714521600000000"),
        (TimeFormat.ISO_8601, "2024-05-01T00:00:00"),
        (TimeFormat.ISO_8601, "2024-05-01 00:00:00.000"),
        (TimeFormat.ISO_8601, "2024-05-01T00:00:00.000000Z"),
        (TimeFormat.ISO_8601, "2024-05-01T03:00:00+03:00"),
    ],
)
def test_csv_timestamps_in_every_supported_format(
    tmp_path: Path, time_format: TimeFormat, cell: str
) -> None:
    mapping = ColumnMapping(
        timestamp="t",
        time_format=time_format,
        asset_id="pump-1",
        channels=(ChannelColumn("v", "speed", "rpm"),),
    )
    for body in (f"t,v\n{cell},1\n", f't,v\n"{cell}",1\n'):  # the Arrow and the careful path
        (batch,) = list(read_csv(write(tmp_path, body), mapping))
        assert batch.asset_id == "pump-1"
        assert batch.timestamps_us.tolist() == [T0_US]


def test_csv_cuts_batches_of_at_most_max_rows(tmp_path: Path) -> None:
    rows = "".join(f"{T0_US // 1000 + i},p{i % 3},{i},{i}\n" for i in range(100))
    mapping = ColumnMapping(
        timestamp="time",
        time_format=TimeFormat.UNIX_MS,
        asset_column="asset",
        channels=MAPPING.channels,
    )
    reader = read_csv(write(tmp_path, "time,asset,temp_f,pressure\n" + rows), mapping, max_rows=7)
    batches = list(reader)
    assert all(1 <= len(b) <= 7 for b in batches)
    assert reader.rows == 100
    sizes: Counter[str] = Counter()
    for batch in batches:
        sizes[batch.asset_id] += len(batch)
        assert {int(v) % 3 for v in batch.columns["bearing_temp"][1]} == {int(batch.asset_id[1])}
    assert sizes == {"p0": 34, "p1": 33, "p2": 33}


def test_csv_bad_lines_are_reported_with_their_line_number(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        b"time,asset,temp_f,pressure\n"
        b"2024-05-01T00:00:00Z,p1,100,30\n"  # 2 good
        b"2024-05-01T00:00:01Z,p1,100\n"  # 3 too few fields
        b"2024-05-01T00:00:02Z,p1,hot,30\n"  # 4 not a number
        b"yesterday,p1,100,30\n"  # 5 bad timestamp
        b",p1,100,30\n"  # 6 missing timestamp
        b"2024-05-01T00:00:03Z,,100,30\n"  # 7 missing asset
        b"\n"  # 8 blank: ignored
        b"2024-05-01T00:00:04Z,p\xff\xfe,100,30\n"  # 9 not UTF-8
        b"2024-05-01T00:00:05Z,p1,100,30,extra\n"  # 10 too many fields
        b'2024-05-01T00:00:06Z,"p1",101,"31"\n'  # 11 good, quoted
        b"2024-05-01T00:00:07Z,p1,102,32",  # 12 good, no final newline
    )
    reader = read_csv(path, MAPPING)
    (batch,) = list(reader)
    np.testing.assert_array_equal(batch.lines, [2, 11, 12])
    np.testing.assert_array_equal(batch.columns["bearing_temp"][1], [100.0, 101.0, 102.0])
    assert [e.line for e in reader.errors] == [3, 4, 5, 6, 7, 9, 10]
    reasons = {e.line: e.reason for e in reader.errors}
    assert "expected 4 fields, found 3" in reasons[3]
    assert "'hot' is not a number" in reasons[4]
    assert "bad timestamp 'yesterday'" in reasons[5]
    assert reasons[6] == "missing timestamp"
    assert reasons[7] == "missing asset id"
    assert reasons[9] == "not UTF-8 text"
    assert reader.error_count == 7


def test_csv_bad_line_numbers_stay_right_across_blocks(tmp_path: Path) -> None:
    # About 2.5 MB: several 1 MiB blocks, each read by Arrow, with bad lines in between.
    n = 60_000
    lines = [f"{T0_US // 1_000_000 + i},{i * 0.5},{i}.25,padding-{i:08d}" for i in range(n)]
    bad = {7: "x,1,2,3", 31_000: "1,2", 59_998: f"{T0_US},oops,1,2"}
    for index, text in bad.items():
        lines[index] = text
    path = write(tmp_path, "time,temp_f,pressure,note\n" + "\n".join(lines) + "\n")
    mapping = ColumnMapping(
        timestamp="time",
        time_format=TimeFormat.UNIX_S,
        asset_id="pump-1",
        channels=MAPPING.channels,
    )
    progress: list[tuple[int, int | None]] = []
    reader = read_csv(path, mapping, max_rows=50_000, on_progress=lambda *p: progress.append(p))
    batches = list(reader)
    assert [e.line for e in reader.errors] == [i + 2 for i in sorted(bad)]
    assert reader.rows == n - len(bad)
    lines_seen = np.concatenate([b.lines for b in batches])
    values = np.concatenate([b.columns["bearing_temp"][1] for b in batches])
    np.testing.assert_array_equal(values, (lines_seen - 2) * 0.5)
    size = path.stat().st_size
    assert progress[-1] == (size, size)
    assert [p[0] for p in progress] == sorted(p[0] for p in progress)
    assert len(progress) >= 3


def test_csv_reads_from_a_binary_stream(tmp_path: Path) -> None:
    body = b"time,asset,temp_f,pressure\n2024-05-01T00:00:00Z,p1,1,2\n"
    progress: list[tuple[int, int | None]] = []
    reader = read_csv(io.BytesIO(body), MAPPING, on_progress=lambda *p: progress.append(p))
    (batch,) = list(reader)
    assert batch.asset_id == "p1"
    assert progress[-1] == (len(body), len(body))


def test_csv_header_without_a_mapped_column_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "time,asset,temp_f\n2024-05-01T00:00:00Z,p1,1\n")
    with pytest.raises(FileFormatError) as caught:
        list(read_csv(path, MAPPING))
    assert caught.value.field == "mapping.channels[1].column"
    assert "'pressure' is not in the header" in str(caught.value)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"", "file"),
        (b"\xff\xfe\x00t\x00i\x00m\x00e\n", "file.header"),
        (b"time,asset,temp_f,pressure,pressure\n", "mapping.channels[1].column"),
    ],
)
def test_csv_unusable_files_are_rejected_with_a_field(
    tmp_path: Path, body: bytes, field: str
) -> None:
    with pytest.raises(FileFormatError) as caught:
        list(read_csv(write(tmp_path, body), MAPPING))
    assert caught.value.field == field


def test_mapping_errors_name_the_field() -> None:
    with pytest.raises(FileFormatError) as caught:
        ColumnMapping(timestamp="t", channels=(ChannelColumn("v", "speed", "rpm"),))
    assert caught.value.field == "mapping.asset"
    with pytest.raises(FileFormatError) as caught:
        ColumnMapping(
            timestamp="t", asset_id="a", channels=(ChannelColumn("v", "speed", "furlongs/wombat"),)
        )
    assert caught.value.field == "mapping.channels[0].unit"
    with pytest.raises(FileFormatError) as caught:
        ColumnMapping(
            timestamp="t",
            asset_id="a",
            channels=(ChannelColumn("v", "speed", "rpm"), ChannelColumn("w", "speed", "rpm")),
        )
    assert caught.value.field == "mapping.channels[1].channel"


# --- JSON lines --------------------------------------------------------------------------

JSON_MAPPING = ColumnMapping(
    timestamp="ts",
    time_format=TimeFormat.UNIX_MS,
    asset_column="asset",
    channels=(
        ChannelColumn("temp", "bearing_temp", "degC"),
        ChannelColumn("rpm", "speed", "rpm"),
    ),
)


def test_json_lines_become_batches_and_bad_lines_are_reported(tmp_path: Path) -> None:
    ms = T0_US // 1000
    lines = [
        json.dumps({"ts": ms, "asset": "p1", "temp": 20.5, "rpm": 1500}),  # 1
        json.dumps({"ts": ms + 1, "asset": "p1", "temp": None}),  # 2 missing readings: NaN
        "{not json",  # 3
        json.dumps([1, 2, 3]),  # 4
        json.dumps({"asset": "p1", "temp": 1}),  # 5 no timestamp
        json.dumps({"ts": ms + 2, "asset": "p1", "temp": "hot"}),  # 6
        json.dumps({"ts": ms + 3, "asset": "p1", "temp": True}),  # 7
        json.dumps({"ts": "2024-05-01", "asset": "p1"}),  # 8 ISO in a unix file
        json.dumps({"ts": ms + 4, "temp": 1}),  # 9 no asset
        "",  # 10 blank: ignored
        "[" * 100_000,  # 11 nested too deep
        json.dumps({"ts": ms + 5, "asset": 42, "temp": 21.0, "extra": {"a": 1}}),  # 12
    ]
    path = write(tmp_path, "\ufeff" + "\n".join(lines) + "\n", "data.jsonl")
    reader = read_json_lines(path, JSON_MAPPING)
    batches = by_asset(list(reader))
    (p1,) = batches["p1"]
    np.testing.assert_array_equal(p1.lines, [1, 2])
    np.testing.assert_array_equal(p1.columns["bearing_temp"][1], [20.5, np.nan])
    np.testing.assert_array_equal(p1.columns["speed"][1], [1500.0, np.nan])
    assert p1.columns["speed"][0] == "rpm"
    (p42,) = batches["42"]
    np.testing.assert_array_equal(p42.timestamps_us, [T0_US + 5000])
    assert [e.line for e in reader.errors] == [3, 4, 5, 6, 7, 8, 9, 11]
    reasons = {e.line: e.reason for e in reader.errors}
    assert reasons[3].startswith("not JSON")
    assert reasons[4] == "expected a JSON object, found list"
    assert reasons[5] == "missing timestamp"
    assert reasons[6] == "key 'temp': 'hot' is not a number"


def test_json_lines_with_iso_timestamps_and_a_fixed_asset(tmp_path: Path) -> None:
    mapping = ColumnMapping(
        timestamp="time", asset_id="pump-1", channels=(ChannelColumn("t", "bearing_temp", "K"),)
    )
    path = write(tmp_path, '{"time": "2024-05-01T00:00:00Z", "t": 300}\n', "x.jsonl")
    (batch,) = list(read_json_lines(path, mapping))
    assert batch.asset_id == "pump-1"
    assert batch.timestamps_us.tolist() == [T0_US]


# --- C-MAPSS -----------------------------------------------------------------------------


def cmapss_line(unit: int, cycle: int, base: float = 1.0) -> str:
    return f"{unit} {cycle} " + " ".join(f"{base + k:.4f}" for k in range(24)) + "  "


def test_cmapss_units_become_assets_and_their_last_cycle_a_failure(tmp_path: Path) -> None:
    text = "\n".join([cmapss_line(1, c) for c in (1, 2, 3)] + [cmapss_line(2, c) for c in (1, 2)])
    reader = read_cmapss(
        write(tmp_path, text + "\n", "train.txt"),
        plant="ham",
        start_time=T0,
        cycle_interval=timedelta(hours=2),
    )
    first, second = list(reader)
    assert (first.asset_id, second.asset_id) == ("ham-unit-1", "ham-unit-2")
    hour = 3600 * 1_000_000
    np.testing.assert_array_equal(first.timestamps_us, [T0_US + 2 * hour * c for c in (1, 2, 3)])
    assert first.failure is not None
    assert (first.failure.asset_id, first.failure.cycle) == ("ham-unit-1", 3)
    assert first.failure.timestamp_us == T0_US + 6 * hour
    assert reader.failures == [first.failure, second.failure]
    assert list(first.columns) == [c.name for c in cmapss_asset_type().channels]
    assert first.columns["sensor_2"][0] == "degR"
    np.testing.assert_array_equal(first.columns["op_setting_1"][1], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(first.columns["sensor_21"][1], [24.0, 24.0, 24.0])


def test_cmapss_bad_lines_are_reported(tmp_path: Path) -> None:
    lines = [
        cmapss_line(1, 1),  # 1
        "1 2 3.0",  # 2 too few fields
        cmapss_line(1, 2).replace("3.0000", "abc"),  # 3 not a number
        cmapss_line(1, 1),  # 4 cycle goes back
        "1.5 " + cmapss_line(1, 3).split(" ", 1)[1],  # 5 unit not an integer
        "\xe9\xe8",  # 6 not ASCII
        cmapss_line(1, 3),  # 7
        cmapss_line(2, 1),  # 8
        cmapss_line(1, 4),  # 9 unit 1 again
        "",  # 10 blank
        cmapss_line(2, 2),  # 11
    ]
    reader = read_cmapss(
        write(tmp_path, "\n".join(lines) + "\n", "t.txt"), plant="p", start_time=T0
    )
    batches = list(reader)
    assert [(b.asset_id, b.lines.tolist()) for b in batches] == [
        ("p-unit-1", [1, 7]),
        ("p-unit-2", [8, 11]),
    ]
    assert [e.line for e in reader.errors] == [2, 3, 4, 5, 6, 9]
    assert "unit 1 appears again" in reader.errors[-1].reason


def test_cmapss_asset_type_is_a_valid_spec() -> None:
    spec = cmapss_asset_type()
    validate_spec(spec)
    check_spec_units(spec)
    assert len(spec.channels) == 24
    assert spec.horizon == FailureHorizon(30, "cycles")


@pytest.mark.skipif(not CMAPSS_FD001.exists(), reason=f"C-MAPSS data not present at {CMAPSS_FD001}")
def test_reads_the_real_cmapss_fd001_training_file() -> None:
    reader = read_cmapss(CMAPSS_FD001, plant="ham", start_time=T0, max_rows=100)
    batches = list(reader)
    assert reader.errors == []
    assert reader.rows == 20_631
    assert len({b.asset_id for b in batches}) == 100
    assert len(reader.failures) == 100
    assert all(len(b) <= 100 for b in batches)
    # Only the last batch of each engine carries its failure, at its last cycle.
    last = {b.asset_id: b for b in batches}
    for batch in batches:
        assert (batch.failure is not None) == (batch is last[batch.asset_id])
    unit_1 = last["ham-unit-1"]
    assert unit_1.failure is not None and unit_1.failure.cycle == 192
    assert unit_1.failure.timestamp_us == int(unit_1.timestamps_us[-1])

    spec = cmapss_asset_type()
    quarantined = 0
    for batch in batches:
        result = validate_batch(
            spec,
            batch.asset_id,
            batch.timestamps_us,
            batch.columns,
            now_us=T0_US + 10**15,
            last_seen_us=None,
            max_lateness_us=0,
            max_future_us=0,
        )
        quarantined += len(result.quarantine)
    assert quarantined == 0


@pytest.mark.skipif(not AI4I.exists(), reason=f"AI4I 2020 data not present at {AI4I}")
def test_reads_the_real_ai4i_csv_with_its_byte_order_mark() -> None:
    # Rows are independent snapshots: the row number UDI stands in for a time in seconds.
    mapping = ColumnMapping(
        timestamp="UDI",
        time_format=TimeFormat.UNIX_S,
        asset_column="Type",
        channels=(
            ChannelColumn("Air temperature [K]", "air_temp", "K"),
            ChannelColumn("Process temperature [K]", "process_temp", "K"),
            ChannelColumn("Rotational speed [rpm]", "speed", "rpm"),
            ChannelColumn("Torque [Nm]", "torque", "Nm"),
            ChannelColumn("Tool wear [min]", "tool_wear", "min"),
            ChannelColumn("Machine failure", "failed", "1"),
        ),
    )
    reader = read_csv(AI4I, mapping, max_rows=5_000)
    batches = list(reader)
    assert reader.errors == []
    assert reader.rows == 10_000
    sizes: Counter[str] = Counter()
    failures = 0.0
    for batch in batches:
        sizes[batch.asset_id] += len(batch)
        failures += float(batch.columns["failed"][1].sum())
    assert sizes == {"L": 6000, "M": 2997, "H": 1003}
    assert failures == 339

    mill = AssetTypeSpec(
        name="mill",
        display_name="Milling machine",
        channels=(
            SensorChannel("air_temp", "degC", -20.0, 60.0, 1.0),
            SensorChannel("process_temp", "degC", 0.0, 80.0, 1.0),
            SensorChannel("speed", "Hz", 0.0, 100.0, 1.0),
            SensorChannel("torque", "N*m", 0.0, 100.0, 1.0),
            SensorChannel("tool_wear", "h", 0.0, 10.0, 1.0),
            SensorChannel("failed", "1", 0.0, 1.0, 1.0),
        ),
        horizon=FailureHorizon(48, "hours"),
    )
    for batch in batches:
        result = validate_batch(
            mill,
            batch.asset_id,
            batch.timestamps_us,
            batch.columns,
            now_us=T0_US,
            last_seen_us=None,
            max_lateness_us=10**12,
            max_future_us=0,
        )
        assert len(result.quarantine) == 0
        assert float(result.columns["air_temp"].max()) < 40.0  # 300 K is about 27 degC


def test_reader_is_an_iterator_with_its_own_report() -> None:
    reader = read_json_lines(io.BytesIO(b""), JSON_MAPPING)
    assert isinstance(reader, BatchReader)
    assert list(reader) == []
    assert (reader.rows, reader.errors, reader.error_count) == (0, [], 0)


def assert_same_batches(left: list[FileBatch], right: list[FileBatch]) -> None:
    assert [(b.asset_id, b.lines.tolist(), b.timestamps_us.tolist()) for b in left] == [
        (b.asset_id, b.lines.tolist(), b.timestamps_us.tolist()) for b in right
    ]
    for a, b in zip(left, right, strict=True):
        assert a.columns.keys() == b.columns.keys()
        for name, (unit, values) in a.columns.items():
            assert b.columns[name][0] == unit
            np.testing.assert_array_equal(values, b.columns[name][1])


def test_csv_arrow_and_line_by_line_paths_agree(tmp_path: Path) -> None:
    rows = [
        f"2024-05-01T00:00:{i:02d}Z,p{i % 2},{i * 1.5},{'' if i % 5 == 0 else i}" for i in range(40)
    ]
    rows[7] = "2024-05-01T00:00:07Z,,1,2"  # no asset
    rows[9] = "2024-05-01T00:00:09Z,p1,1"  # too few fields
    rows[11] = "not-a-time,p1,1,2"
    header = "time,asset,temp_f,pressure\n"
    fast = read_csv(write(tmp_path, header + "\n".join(rows) + "\n", "a.csv"), MAPPING)
    # A quoted field sends the block down the line-by-line path.
    slow = read_csv(
        write(tmp_path, header + "\n".join(rows) + '\n"2024-05-01",p1,,x\n', "b.csv"), MAPPING
    )
    fast_batches, slow_batches = list(fast), list(slow)
    assert_same_batches(fast_batches, slow_batches)
    assert [e.line for e in fast.errors] == [e.line for e in slow.errors][:-1] == [9, 11, 13]
    assert [e.reason for e in fast.errors] == [e.reason for e in slow.errors][:-1]


def test_json_lines_arrow_and_line_by_line_paths_agree(tmp_path: Path) -> None:
    ms = T0_US // 1000
    records = [
        {"ts": ms + i, "asset": f"p{i % 3}", "temp": i * 0.5, "rpm": None if i % 4 else i}
        for i in range(40)
    ]
    records[5] = {"asset": "p1", "temp": 1.0}  # no timestamp
    records[6] = {"ts": ms, "asset": " ", "temp": 1.0}  # blank asset
    body = "\n".join(json.dumps(r) for r in records) + "\n"
    fast = read_json_lines(write(tmp_path, body, "a.jsonl"), JSON_MAPPING)
    # A blank line sends the block down the line-by-line path.
    slow = read_json_lines(write(tmp_path, body + "\n", "b.jsonl"), JSON_MAPPING)
    assert_same_batches(list(fast), list(slow))
    assert fast.errors == slow.errors
    assert [(e.line, e.reason) for e in fast.errors] == [
        (6, "missing timestamp"),
        (7, "missing asset id"),
    ]

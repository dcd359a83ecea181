"""Malformed telemetry of every kind, over gRPC to a real ingest process: never a crash.

Each case sends a good batch and then a bad one on one stream. A batch that cannot be read
ends the stream with INVALID_ARGUMENT whose BadRequest names the field (the good batch
before it has its receipt); a batch that can be read is stored minus its bad readings,
which are quarantined with their reason. Either way the service keeps serving, and the
quarantine lists what it kept out, counted per asset and reason.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio

from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.cli.client import open_channel
from prognos.core.errors import InvalidArgumentError, from_grpc_error
from prognos.core.natsserver import EmbeddedNats
from prognos.core.testing.waiting import assert_eventually

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

S = 1_000_000
ROWS = 10
MAX_ROWS = 5_000
R = ingest_pb2.QuarantineReason
STREAM = "/prognos.api.ingest.v1.IngestService/StreamTelemetry"


@dataclass
class Case:
    """One kind of bad input: how to spoil a good batch, and what must come of it."""

    name: str
    spoil: Callable[[ingest_pb2.TelemetryBatch], Any]
    field: str = ""  # for a rejected batch: the field the BadRequest names
    reasons: tuple[int, ...] = ()  # for a stored batch: the quarantine reasons
    good_values: int = 0  # for a stored batch: readings still accepted


def _now() -> int:
    return time.time_ns() // 1000


def good_batch(batch_id: str, asset_id: str = "m-1", start_us: int | None = None) -> Any:
    first = start_us if start_us is not None else _now() - 600 * S
    stamps = np.arange(first, first + ROWS * S, S, dtype="<i8")
    batch = ingest_pb2.TelemetryBatch(
        batch_id=batch_id, asset_id=asset_id, timestamps_us_le=stamps.tobytes()
    )
    batch.channels.add(name="temp", unit="degC", values_f64_le=np.full(ROWS, 40.0).tobytes())
    batch.channels.add(name="pressure", unit="kPa", values=[500.0] * ROWS)
    return batch


def _set(**fields: Any) -> Callable[[Any], None]:
    def spoil(batch: Any) -> None:
        for key, value in fields.items():
            setattr(batch, key, value)

    return spoil


def _column(index: int, **fields: Any) -> Callable[[Any], None]:
    def spoil(batch: Any) -> None:
        column = batch.channels[index]
        column.ClearField("values")
        column.ClearField("values_f64_le")
        for key, value in fields.items():
            if key == "values":
                column.values.extend(value)
            else:
                setattr(column, key, value)

    return spoil


def _add(**fields: Any) -> Callable[[Any], None]:
    def spoil(batch: Any) -> None:
        batch.channels.add(**fields)

    return spoil


def _temp(values: list[float]) -> Callable[[Any], None]:
    return _column(0, values_f64_le=np.array(values, dtype="<f8").tobytes())


def _timestamps(stamps: Callable[[np.ndarray], np.ndarray]) -> Callable[[Any], None]:
    def spoil(batch: Any) -> None:
        current = np.frombuffer(batch.timestamps_us_le, "<i8")
        batch.timestamps_us_le = stamps(current.copy()).astype("<i8").tobytes()

    return spoil


def _many_rows(batch: Any) -> None:
    rows = MAX_ROWS + 1
    first = _now() - 3_600 * S
    batch.timestamps_us_le = np.arange(first, first + rows, dtype="<i8").tobytes()
    del batch.channels[:]
    batch.channels.add(name="temp", values_f32_le=np.zeros(rows, "<f4").tobytes())


def _clear_timestamps(batch: Any) -> None:
    batch.ClearField("timestamps_us_le")


def _no_channels(batch: Any) -> None:
    del batch.channels[:]


def _both_timestamp_encodings(batch: Any) -> None:
    batch.timestamps_us.extend(np.frombuffer(batch.timestamps_us_le, "<i8").tolist())


def _two_encodings(batch: Any) -> None:
    batch.channels[1].values_f64_le = np.full(ROWS, 1.0).tobytes()


NAN = float("nan")
INF = float("inf")
GOOD_PRESSURE = ROWS  # the pressure column's readings

CASES = [
    Case("no batch id", _set(batch_id=""), field="batch_id"),
    Case("batch id too long", _set(batch_id="b" * 300), field="batch_id"),
    Case("no asset id", _set(asset_id=""), field="asset_id"),
    Case("asset id with a colon", _set(asset_id="m:1"), field="asset_id"),
    Case("empty batch: no timestamps", _clear_timestamps, field="timestamps_us"),
    Case("empty batch: no channels", _no_channels, field="channels"),
    Case(
        "timestamp bytes of a wrong length",
        _set(timestamps_us_le=b"\x00" * 13),
        field="timestamps_us_le",
    ),
    Case("both timestamp encodings", _both_timestamp_encodings, field="timestamps_us"),
    Case("a huge array: too many rows", _many_rows, field="timestamps_us"),
    Case(
        "unknown asset",
        _set(asset_id="no-such-machine"),
        reasons=(R.QUARANTINE_REASON_UNKNOWN_ASSET,),
    ),
    Case(
        "unknown channel",
        _add(name="humidity", values=[1.0] * ROWS),
        reasons=(R.QUARANTINE_REASON_UNKNOWN_CHANNEL,),
        good_values=2 * ROWS,
    ),
    Case(
        "wrong unit: pressure for a temperature",
        _column(0, unit="psi", values_f64_le=np.full(ROWS, 1.0).tobytes()),
        reasons=(R.QUARANTINE_REASON_INCOMPATIBLE_UNIT,),
        good_values=GOOD_PRESSURE,
    ),
    Case(
        "a unit that does not exist",
        _column(0, unit="furlongs per fortnight squared", values=[1.0] * ROWS),
        reasons=(R.QUARANTINE_REASON_INCOMPATIBLE_UNIT,),
        good_values=GOOD_PRESSURE,
    ),
    Case(
        "mismatched lengths",
        _column(0, values=[1.0] * (ROWS - 3)),
        reasons=(R.QUARANTINE_REASON_MALFORMED,),
        good_values=GOOD_PRESSURE,
    ),
    Case(
        "value bytes of a wrong length",
        _column(0, values_f64_le=b"\x00" * (8 * ROWS - 1)),
        reasons=(R.QUARANTINE_REASON_MALFORMED,),
        good_values=GOOD_PRESSURE,
    ),
    Case(
        "two value encodings in one column",
        _two_encodings,
        reasons=(R.QUARANTINE_REASON_MALFORMED,),
        good_values=ROWS,
    ),
    Case(
        "a channel given twice",
        _add(name="temp", values=[20.0] * ROWS),
        reasons=(R.QUARANTINE_REASON_MALFORMED,),
        good_values=2 * ROWS,
    ),
    Case(
        "a column without a name",
        _add(name="", values=[20.0] * ROWS),
        reasons=(R.QUARANTINE_REASON_MALFORMED,),
        good_values=2 * ROWS,
    ),
    Case(
        "a column without values",
        _add(name="vibration", unit="mm/s"),
        reasons=(R.QUARANTINE_REASON_MALFORMED,),
        good_values=2 * ROWS,
    ),
    Case(
        "NaN readings",
        _temp([NAN, NAN] + [40.0] * (ROWS - 2)),
        reasons=(R.QUARANTINE_REASON_NOT_A_NUMBER,),
        good_values=2 * ROWS - 2,
    ),
    Case(
        "infinite readings",
        _temp([INF, -INF] + [40.0] * (ROWS - 2)),
        reasons=(R.QUARANTINE_REASON_INFINITE,),
        good_values=2 * ROWS - 2,
    ),
    Case(
        "out of range readings",
        _temp([40.0] * (ROWS - 1) + [9_999.0]),
        reasons=(R.QUARANTINE_REASON_OUT_OF_RANGE,),
        good_values=2 * ROWS - 1,
    ),
    Case(
        "timestamps in the future",
        _timestamps(lambda ts: np.where(np.arange(ts.size) < 2, _now() + 86_400 * S, ts)),
        reasons=(R.QUARANTINE_REASON_FUTURE,),
        good_values=2 * (ROWS - 2),
    ),
    Case(
        "timestamps too late",
        _timestamps(lambda ts: ts - 7_200 * S),
        reasons=(R.QUARANTINE_REASON_LATE,),
        good_values=0,
    ),
    Case(
        "duplicate timestamps",
        _timestamps(lambda ts: np.where(np.arange(ts.size) == 1, ts[0], ts)),
        reasons=(R.QUARANTINE_REASON_DUPLICATE,),
        good_values=2 * (ROWS - 1),
    ),
]


def asset_type() -> ingest_pb2.AssetType:
    message = ingest_pb2.AssetType(name="compressor", display_name="Compressor")
    for name, unit, low, high in (
        ("temp", "degC", -40, 200),
        ("pressure", "kPa", 0, 5_000),
        ("vibration", "mm/s", 0, 100),
    ):
        channel = message.channels.add(name=name, unit=unit, min_value=low, max_value=high)
        channel.expected_interval.FromSeconds(1)
    message.horizon.duration.FromSeconds(48 * 3600)
    return message


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def service(ingest_module: tuple[EmbeddedNats, Any]) -> Any:
    """The shared ingest process, with the compressor type and two assets per case.

    ``m-<i>`` is case ``i``'s own asset; ``q-<i>`` is the quarantine test's copy of it.
    """
    _, process = ingest_module
    async with open_channel(process.info, "ingest", role="admin") as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        await stub.RegisterAssetType(
            ingest_pb2.RegisterAssetTypeRequest(asset_type=asset_type()), timeout=10
        )
        await stub.RegisterAssets(
            ingest_pb2.RegisterAssetsRequest(
                assets=[
                    ingest_pb2.RegisterAssetRequest(
                        asset_id=f"m-{i}", plant="p", asset_type="compressor"
                    )
                    for i in range(len(CASES) + 10)
                ]
                + [
                    ingest_pb2.RegisterAssetRequest(
                        asset_id=f"q-{i}", plant="p", asset_type="compressor"
                    )
                    for i in range(len(CASES))
                ]
            ),
            timeout=30,
        )
    return process


async def stream(process: Any, batches: list[Any]) -> tuple[list[Any], grpc.aio.AioRpcError | None]:
    """Send the batches on one stream; the receipts, and the error that ended it if any."""
    receipts: list[Any] = []
    async with open_channel(process.info, "ingest", role="gateway") as channel:
        call = ingest_pb2_grpc.IngestServiceStub(channel).StreamTelemetry(
            iter(ingest_pb2.StreamTelemetryRequest(batch=b) for b in batches), timeout=30
        )
        try:
            async for response in call:
                receipts.append(response.receipt)
        except grpc.aio.AioRpcError as error:
            return receipts, error
    return receipts, None


async def send_case(
    process: Any, case: Case, asset_id: str, batch_prefix: str = "b"
) -> tuple[Any, list[Any], grpc.aio.AioRpcError | None]:
    """A good batch, then the same spoilt by ``case``, on one stream to ``asset_id``.

    Returns the bad batch, the receipts and the error that ended the stream if any.
    """
    start = _now() - 600 * S
    first = good_batch(f"{batch_prefix}0", asset_id, start)
    bad = good_batch(f"{batch_prefix}1", asset_id, start + ROWS * S)
    case.spoil(bad)
    receipts, error = await stream(process, [first, bad])
    return bad, receipts, error


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_a_bad_batch_is_rejected_by_field_or_quarantined_with_its_reason(
    service: Any, case: Case
) -> None:
    bad, receipts, error = await send_case(service, case, f"m-{CASES.index(case)}")

    assert receipts[0].batch_id == "b0"
    assert receipts[0].accepted_count == 2 * ROWS
    if case.field:
        assert len(receipts) == 1
        assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
        typed = from_grpc_error(error)
        assert isinstance(typed, InvalidArgumentError)
        fields = [f for f, _ in typed.violations]
        if typed.reason == "FIELD_LIMIT_EXCEEDED":
            # Over a maximum the contract declares: refused before the service reads it.
            assert f"messages[1].batch.{case.field}" in fields, typed.violations
            return
        assert typed.reason == "BATCH_UNREADABLE"
        assert f"batches[1].{case.field}" in fields, typed.violations
        return
    assert error is None, error
    receipt = receipts[1]
    assert receipt.batch_id == bad.batch_id
    assert receipt.accepted_count == case.good_values
    assert receipt.quarantined_count > 0
    assert receipt.stream_sequence > 0 or case.good_values == 0
    reasons = {r.reason for r in receipt.sample_rejections}
    assert reasons == set(case.reasons), receipt.sample_rejections
    assert all(r.detail for r in receipt.sample_rejections)


async def test_random_bytes_on_the_stream_get_invalid_argument(service: Any) -> None:
    garbage = b"\xff\xff\xff\xff\x0f" + np.random.default_rng(1).bytes(2_000)
    async with open_channel(service.info, "ingest", role="gateway") as channel:
        call = channel.stream_stream(
            STREAM,
            request_serializer=lambda b: b,
            response_deserializer=ingest_pb2.StreamTelemetryResponse.FromString,
        )(iter([garbage]), timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    typed = from_grpc_error(caught.value)
    assert isinstance(typed, InvalidArgumentError)
    assert typed.violations[0][0] == "batches[0]"


async def test_random_bytes_to_a_unary_call_get_invalid_argument(service: Any) -> None:
    async with open_channel(service.info, "ingest", role="gateway") as channel:
        call = channel.unary_unary(
            "/prognos.api.ingest.v1.IngestService/RegisterAsset",
            request_serializer=lambda b: b,
            response_deserializer=ingest_pb2.RegisterAssetResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"\x0a\xff\xff\xff\xff\xff", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    typed = from_grpc_error(caught.value)
    assert isinstance(typed, InvalidArgumentError)
    assert typed.violations[0][0] == "request"


async def test_a_message_above_the_size_limit_gets_resource_exhausted(service: Any) -> None:
    huge = good_batch("huge", "m-1")
    huge.channels[0].values_f64_le = os.urandom(5 << 20)
    receipts, error = await stream(service, [huge])
    assert receipts == []
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_an_upload_without_its_header_gets_invalid_argument(service: Any) -> None:
    async with open_channel(service.info, "ingest", role="gateway") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ingest_pb2_grpc.IngestServiceStub(channel).UploadTelemetryFile(
                iter([ingest_pb2.UploadTelemetryFileRequest(chunk=b"time,temp\n1,2\n")]),
                timeout=30,
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    typed = from_grpc_error(caught.value)
    assert isinstance(typed, InvalidArgumentError)
    assert typed.violations[0][0] == "header"


async def test_bad_lines_of_an_uploaded_file_are_quarantined_and_good_ones_stored(
    service: Any,
) -> None:
    start = _now() // S - 3_000
    lines = ["time,temp,pressure"]
    lines += [f"{start + i},{20 + i},{400}" for i in range(5)]
    lines += ["not-a-time,20,400", f"{start + 10},hot,400", f"{start + 11},20"]
    header = ingest_pb2.TelemetryFileHeader(
        file_name="gateway.csv",
        format=ingest_pb2.TELEMETRY_FILE_FORMAT_CSV,
        asset_type="compressor",
        has_header=True,
        asset_id=f"m-{len(CASES) + 1}",
        time_column="time",
        time_kind=ingest_pb2.TIME_COLUMN_KIND_UNIX_SECONDS,
        columns=[
            ingest_pb2.ColumnMapping(column="temp", channel="temp", unit="degF"),
            ingest_pb2.ColumnMapping(column="pressure", channel="pressure"),
        ],
    )
    requests = [
        ingest_pb2.UploadTelemetryFileRequest(header=header),
        ingest_pb2.UploadTelemetryFileRequest(chunk=("\n".join(lines) + "\n").encode()),
    ]
    async with open_channel(service.info, "ingest", role="gateway") as channel:
        response = await ingest_pb2_grpc.IngestServiceStub(channel).UploadTelemetryFile(
            iter(requests), timeout=60
        )
    assert response.accepted_count == 10
    assert response.quarantined_count == 3
    assert response.row_count == 8
    details = [r.detail for r in response.sample_rejections]
    assert all(r.reason == R.QUARANTINE_REASON_MALFORMED for r in response.sample_rejections)
    assert any("line 7" in d for d in details), details


async def test_the_quarantine_lists_and_counts_what_was_kept_out(service: Any) -> None:
    # Every case that is stored minus its bad readings, again, to assets of this test's own.
    stored = [(i, case) for i, case in enumerate(CASES) if case.reasons]
    for i, case in stored:
        _, _, error = await send_case(service, case, f"q-{i}", batch_prefix="q")
        assert error is None, (case.name, error)
    expected = {(f"q-{i}", reason) for i, case in stored for reason in case.reasons}
    expected = {(a, r) for a, r in expected if a != f"q-{_index('unknown asset')}"}
    expected.add(("no-such-machine", R.QUARANTINE_REASON_UNKNOWN_ASSET))

    async def listed() -> None:
        async with open_channel(service.info, "ingest", role="gateway") as channel:
            response = await ingest_pb2_grpc.IngestServiceStub(channel).ListQuarantine(
                ingest_pb2.ListQuarantineRequest(page_size=1_000), timeout=10
            )
        counted = {(c.asset_id, c.reason) for c in response.counts if c.count > 0}
        assert expected <= counted, expected - counted
        assert any(r.reason == R.QUARANTINE_REASON_OUT_OF_RANGE for r in response.readings)

    await assert_eventually(listed, timeout=20)

    async with open_channel(service.info, "ingest", role="gateway") as channel:
        only_late = await ingest_pb2_grpc.IngestServiceStub(channel).ListQuarantine(
            ingest_pb2.ListQuarantineRequest(
                asset_id=f"q-{_index('timestamps too late')}",
                reason=R.QUARANTINE_REASON_LATE,
            ),
            timeout=10,
        )
    assert [(c.reason, c.count) for c in only_late.counts] == [(R.QUARANTINE_REASON_LATE, 2 * ROWS)]
    assert len(only_late.readings) == 2 * ROWS
    assert all("lateness" in r.detail for r in only_late.readings)


def _index(name: str) -> int:
    return next(i for i, c in enumerate(CASES) if c.name == name)


async def test_a_json_lines_upload_stores_good_lines_and_quarantines_bad_ones(
    service: Any,
) -> None:
    start = _now() // S - 2_000
    asset_id = f"m-{len(CASES) + 2}"
    lines = [
        json.dumps({"t": start + i, "asset": asset_id, "temp": 21.5, "pressure": 400})
        for i in range(4)
    ]
    lines.insert(2, '{"t": "yesterday", "asset": "m-1", "temp": 1}')
    lines.insert(3, "[1, 2, 3]")
    header = ingest_pb2.TelemetryFileHeader(
        file_name="gateway.jsonl",
        format=ingest_pb2.TELEMETRY_FILE_FORMAT_JSONL,
        asset_type="compressor",
        asset_id_column="asset",
        time_column="t",
        time_kind=ingest_pb2.TIME_COLUMN_KIND_UNIX_SECONDS,
        columns=[
            ingest_pb2.ColumnMapping(column="temp", channel="temp"),
            ingest_pb2.ColumnMapping(column="pressure", channel="pressure", unit="kPa"),
        ],
    )
    requests = [
        ingest_pb2.UploadTelemetryFileRequest(header=header),
        ingest_pb2.UploadTelemetryFileRequest(chunk=("\n".join(lines) + "\n").encode()),
    ]
    async with open_channel(service.info, "ingest", role="gateway") as channel:
        response = await ingest_pb2_grpc.IngestServiceStub(channel).UploadTelemetryFile(
            iter(requests), timeout=60
        )
    assert response.accepted_count == 8
    assert response.quarantined_count == 2
    assert list(response.asset_ids) == [asset_id]
    assert {r.reason for r in response.sample_rejections} == {R.QUARANTINE_REASON_MALFORMED}


async def test_telemetry_is_audited_in_bulk_per_stream_and_per_file(service: Any) -> None:
    from prognos.api.common.v1 import audit_pb2, audit_pb2_grpc

    asset_id = f"m-{len(CASES) + 4}"
    start = _now() - 3_000 * S
    batches = [good_batch(f"audit-{k}", asset_id, start + k * ROWS * S) for k in range(5)]
    batches[3].channels[0].values_f64_le = np.full(ROWS, 9_999.0).tobytes()
    receipts, error = await stream(service, batches)
    assert error is None and len(receipts) == 5
    csv = "time,temp\n" + "".join(f"{start // S + 100 + i},{20 + i}\n" for i in range(3))
    header = ingest_pb2.TelemetryFileHeader(
        file_name="audited.csv",
        format=ingest_pb2.TELEMETRY_FILE_FORMAT_CSV,
        asset_type="compressor",
        has_header=True,
        asset_id=f"m-{len(CASES) + 5}",
        time_column="time",
        time_kind=ingest_pb2.TIME_COLUMN_KIND_UNIX_SECONDS,
        columns=[ingest_pb2.ColumnMapping(column="temp", channel="temp")],
    )
    async with open_channel(service.info, "ingest", role="gateway") as channel:
        uploaded = await ingest_pb2_grpc.IngestServiceStub(channel).UploadTelemetryFile(
            iter(
                [
                    ingest_pb2.UploadTelemetryFileRequest(header=header),
                    ingest_pb2.UploadTelemetryFileRequest(chunk=csv.encode()),
                ]
            ),
            timeout=60,
        )

    async def audited() -> None:
        async with open_channel(service.info, "ingest", role="auditor") as channel:
            entries = []
            after = 0
            while True:
                page = await audit_pb2_grpc.AuditServiceStub(channel).ListEntries(
                    audit_pb2.ListEntriesRequest(after_seq=after, limit=1_000), timeout=10
                )
                entries.extend(page.entries)
                if not page.more:
                    break
                after = page.entries[-1].seq
        mine = [
            json.loads(e.details_json)
            for e in entries
            if e.action == "telemetry.received"
            and receipts[0].stream_sequence
            <= json.loads(e.details_json)["first_stream_sequence"]
            <= receipts[-1].stream_sequence
        ]
        # One entry for the stream's five batches, with its totals by reason.
        assert len(mine) == 1, mine
        (summary,) = mine
        assert summary["outcome"] == "completed"
        assert summary["batches"] == 5
        assert summary["accepted_readings"] == 5 * 2 * ROWS - ROWS
        assert summary["quarantined_by_reason"] == {"QUARANTINE_REASON_OUT_OF_RANGE": ROWS}
        assert summary["last_stream_sequence"] == receipts[-1].stream_sequence
        (imported,) = [
            json.loads(e.details_json)
            for e in entries
            if e.action == "telemetry.file_imported"
            and e.subject == f"telemetry/file/{uploaded.content_hash}"
        ]
        assert (imported["rows"], imported["accepted_readings"]) == (3, 3)

    await assert_eventually(audited, timeout=20)


async def test_a_csv_without_a_header_is_read_by_column_number(service: Any) -> None:
    start = _now() // S - 1_000
    body = "".join(f"{start + i};{30 + i};{450}\n" for i in range(6))
    header = ingest_pb2.TelemetryFileHeader(
        file_name="no-header.csv",
        format=ingest_pb2.TELEMETRY_FILE_FORMAT_CSV,
        asset_type="compressor",
        delimiter=";",
        has_header=False,
        asset_id=f"m-{len(CASES) + 3}",
        time_column="1",
        time_kind=ingest_pb2.TIME_COLUMN_KIND_UNIX_SECONDS,
        columns=[
            ingest_pb2.ColumnMapping(column="2", channel="temp"),
            ingest_pb2.ColumnMapping(column="3", channel="pressure"),
        ],
    )
    requests = [
        ingest_pb2.UploadTelemetryFileRequest(header=header),
        ingest_pb2.UploadTelemetryFileRequest(chunk=body.encode()),
    ]
    async with open_channel(service.info, "ingest", role="gateway") as channel:
        response = await ingest_pb2_grpc.IngestServiceStub(channel).UploadTelemetryFile(
            iter(requests), timeout=60
        )
    assert (response.row_count, response.accepted_count, response.quarantined_count) == (6, 12, 0)

"""A plant's failure history imported through a real ingest process, with its bad rows.

An asset type declares its failure modes and an operating setting; a CSV export of a
maintenance system, imported with ``prognos import failures``, records its good rows as
labels (the events, and a dataset snapshot's labels file with mode and repair time) and
quarantines the others under their reasons. The same file imported again records nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import typer
from typer.testing import CliRunner

from prognos.api.common.v1 import audit_pb2, audit_pb2_grpc
from prognos.api.common.v1.envelope_pb2 import Envelope
from prognos.api.ingest.v1 import events_pb2, ingest_pb2, ingest_pb2_grpc
from prognos.cli.client import open_channel
from prognos.cli.failures import import_failure_history, import_failures
from prognos.cli.launcher import RunInfo
from prognos.core.errors import InvalidArgumentError, from_grpc_error
from prognos.core.testing.waiting import assert_eventually
from prognos.ingest.archive import read_snapshot_labels

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

_REASON = ingest_pb2.QuarantineReason


@pytest.fixture(scope="module")
def running(ingest_module: tuple[Any, Any]) -> RunInfo:
    """The module's ingest process, with the run file `prognos up` would write for it."""
    _, process = ingest_module
    process.write_run_file()
    info: RunInfo = process.info
    return info


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000


async def _register(info: RunInfo, name: str, asset_ids: list[str]) -> None:
    mill = ingest_pb2.AssetType(name=name, display_name="Milling machine")
    for channel_name, unit, setting in (
        ("torque", "newton * meter", False),
        ("speed_set_point", "revolutions_per_minute", True),
    ):
        channel = mill.channels.add(
            name=channel_name, unit=unit, min_value=0, max_value=5000, operating_setting=setting
        )
        channel.expected_interval.FromSeconds(1)
    mill.horizon.duration.FromSeconds(48 * 3600)
    mill.failure_modes.add(name="tool_wear", description="the cutting tool wore out")
    mill.failure_modes.add(name="heat_dissipation")
    async with open_channel(info, "ingest", role="ml-engineer") as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        await stub.RegisterAssetType(
            ingest_pb2.RegisterAssetTypeRequest(asset_type=mill), timeout=10
        )
        stored = (await stub.GetAssetType(ingest_pb2.GetAssetTypeRequest(name=name))).asset_type
    assert [(m.name, m.description) for m in stored.failure_modes] == [
        ("tool_wear", "the cutting tool wore out"),
        ("heat_dissipation", ""),
    ]
    assert [c.operating_setting for c in stored.channels] == [False, True]
    async with open_channel(info, "ingest", role="gateway") as channel:
        await ingest_pb2_grpc.IngestServiceStub(channel).RegisterAssets(
            ingest_pb2.RegisterAssetsRequest(
                assets=[
                    ingest_pb2.RegisterAssetRequest(asset_id=a, plant="plant-7", asset_type=name)
                    for a in asset_ids
                ]
            ),
            timeout=10,
        )


def _table_rows(output: str) -> dict[str, str]:
    """The two-column rows of the command's summary table."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 2 and all(cells):
            rows[cells[0]] = cells[1]
    return rows


async def _audited(info: RunInfo) -> list[Any]:
    entries: list[Any] = []
    async with open_channel(info, "ingest", role="auditor") as channel:
        after = 0
        while True:
            page = await audit_pb2_grpc.AuditServiceStub(channel).ListEntries(
                audit_pb2.ListEntriesRequest(after_seq=after, limit=1_000), timeout=10
            )
            entries.extend(page.entries)
            if not page.more:
                return entries
            after = page.entries[-1].seq


async def _labels_on_the_stream(
    nats_url: str, asset_ids: tuple[str, ...], stream_reader: Any
) -> list[Any]:
    """The OutcomeLabelRecorded events of these assets on the INGEST stream."""
    labels = []
    for _, subject, _, data in await stream_reader(nats_url, "INGEST"):
        if subject != "ingest.outcome.recorded":
            continue
        event = events_pb2.OutcomeLabelRecorded()
        Envelope.FromString(data).payload.Unpack(event)  # type: ignore[attr-defined]
        if event.asset_id in asset_ids:
            labels.append(event)
    return labels


async def test_a_failure_history_records_good_rows_once_and_quarantines_bad_ones(
    ingest_module: tuple[Any, Any],
    running: RunInfo,
    tmp_path: Path,
    snapshot_of: Any,
    stream_reader: Any,
) -> None:
    server, _ = ingest_module
    tag = uuid.uuid4().hex[:8]
    asset_type = f"mill-{tag}"
    m1, m2 = f"p7-{tag}-m1", f"p7-{tag}-m2"
    await _register(running, asset_type, [m1, m2])
    day = datetime.now(UTC).replace(microsecond=0) - timedelta(days=20)
    rows = [
        # good: a failure with its repair, one without, a healthy finding
        (m1, day, "tool_wear", "yes", day + timedelta(hours=5)),
        (m2, day + timedelta(days=1), "heat_dissipation", "yes", None),
        (m1, day + timedelta(days=2), "", "no", None),
        # bad: unknown asset, in the future, undeclared mode, unreadable time
        (f"p7-{tag}-ghost", day, "tool_wear", "yes", None),
        (m2, datetime.now(UTC) + timedelta(days=30), "tool_wear", "yes", None),
        (m1, day + timedelta(days=3), "spindle_crash", "yes", None),
        (m2, "last tuesday", "tool_wear", "yes", None),
    ]
    history = tmp_path / "cmms-export.csv"
    history.write_text(
        "equipment,failed_at,failure_mode,confirmed,back_in_service\n"
        + "".join(
            f"{a},{t if isinstance(t, str) else _rfc3339(t)},{mode},{ok},"
            f"{_rfc3339(r) if r else ''}\n"
            for a, t, mode, ok, r in rows
        )
    )

    app = typer.Typer()
    app.command()(import_failures)
    runner = CliRunner()
    args = [
        str(history),
        "--asset-column",
        "equipment",
        "--time-column",
        "failed_at",
        "--mode-column",
        "failure_mode",
        "--confirmed-column",
        "confirmed",
        "--repaired-column",
        "back_in_service",
        "--data-dir",
        running.data_dir,
    ]
    result = await asyncio.to_thread(runner.invoke, app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert _table_rows(out) == {
        "content hash": "sha256:" + hashlib.sha256(history.read_bytes()).hexdigest(),
        "rows read": "7",
        "labels recorded": "3",
        "labels recorded before": "0",
        "rows quarantined": "4",
        "FUTURE": "1",
        "MALFORMED": "1",
        "UNKNOWN_ASSET": "1",
        "UNKNOWN_FAILURE_MODE": "1",
    }, out
    assert "'spindle_crash' is not declared by asset type" in out, out
    for reason in ("UNKNOWN_ASSET", "FUTURE", "UNKNOWN_FAILURE_MODE", "MALFORMED"):
        assert reason in out, out
    assert "is not declared by asset type" in out, out

    source = "failure-history:sha256:"

    async def labelled() -> list[Any]:
        mine = await _labels_on_the_stream(server.url, (m1, m2), stream_reader)
        assert len(mine) == 3, mine
        return mine

    labels = await assert_eventually(labelled, timeout=30, interval=0.5)
    assert {e.source for e in labels} == {labels[0].source}
    assert labels[0].source.startswith(source)
    by_time = {e.time.ToMicroseconds(): e for e in labels}
    wear = by_time[_us(day)]
    assert (wear.asset_id, wear.failure_mode, wear.failure_confirmed) == (m1, "tool_wear", True)
    assert wear.repaired_at.ToMicroseconds() == _us(day + timedelta(hours=5))
    assert not by_time[_us(day + timedelta(days=1))].HasField("repaired_at")
    assert not by_time[_us(day + timedelta(days=2))].failure_confirmed

    # The same file again: every good row is known, nothing new is recorded.
    header = ingest_pb2.FailureHistoryHeader(
        file_name=history.name,
        format=ingest_pb2.FAILURE_HISTORY_FORMAT_CSV,
        asset_id_column="equipment",
        time_column="failed_at",
        time_kind=ingest_pb2.TIME_COLUMN_KIND_RFC3339,
        failure_mode_column="failure_mode",
        confirmed_column="confirmed",
        repaired_at_column="back_in_service",
    )
    async with open_channel(running, "ingest", role="gateway") as channel:
        again = await import_failure_history(
            ingest_pb2_grpc.IngestServiceStub(channel), history, header
        )
    assert (again.row_count, again.recorded_count, again.duplicate_count) == (7, 0, 3)
    assert again.content_hash == "sha256:" + labels[0].source.removeprefix(source)
    counts = {(c.asset_id, c.reason): c.count for c in again.counts}
    assert counts == {
        (f"p7-{tag}-ghost", _REASON.QUARANTINE_REASON_UNKNOWN_ASSET): 1,
        (m2, _REASON.QUARANTINE_REASON_FUTURE): 1,
        (m1, _REASON.QUARANTINE_REASON_UNKNOWN_FAILURE_MODE): 1,
        (m2, _REASON.QUARANTINE_REASON_MALFORMED): 1,
    }
    assert again.quarantined_count == 4
    assert [s.detail.split(":")[0] for s in again.sample_rejections] == [
        f"cmms-export.csv line {n}" for n in (5, 6, 7, 8)
    ]

    async def quarantined() -> None:
        async with open_channel(running, "ingest", role="gateway") as channel:
            listed = await ingest_pb2_grpc.IngestServiceStub(channel).ListQuarantine(
                ingest_pb2.ListQuarantineRequest(
                    reason=_REASON.QUARANTINE_REASON_UNKNOWN_FAILURE_MODE, asset_id=m1
                ),
                timeout=10,
            )
        assert [c.count for c in listed.counts] == [1]
        assert "'spindle_crash' is not declared" in listed.readings[0].detail

    await assert_eventually(quarantined, timeout=30, interval=0.5)

    snapshot = await snapshot_of(
        running,
        ingest_pb2.CreateDatasetSnapshotRequest(name=f"history-{tag}", asset_type=asset_type),
    )
    table = read_snapshot_labels(snapshot)
    assert table.num_rows == 3
    got = sorted(
        zip(
            table["asset_id"].to_pylist(),
            table["time"].cast("int64").to_pylist(),
            table["failure_mode"].to_pylist(),
            table["failure_confirmed"].to_pylist(),
            table["repaired_at"].cast("int64").to_pylist(),
            strict=True,
        )
    )
    assert got == sorted(
        [
            (m1, _us(day), "tool_wear", True, _us(day + timedelta(hours=5))),
            (m2, _us(day + timedelta(days=1)), "heat_dissipation", True, None),
            (m1, _us(day + timedelta(days=2)), "", False, None),
        ]
    )
    assert str(table.schema.field("repaired_at").type) == "timestamp[us, tz=UTC]"
    assert len(await _labels_on_the_stream(server.url, (m1, m2), stream_reader)) == 3

    entries = await _audited(running)
    imports = [
        json.loads(e.details_json)
        for e in entries
        if e.action == "failure_history.imported"
        and e.subject == f"failure_history/file/{again.content_hash}"
    ]
    assert [(i["labels_recorded"], i["labels_known_before"]) for i in imports] == [(3, 0), (0, 3)]
    assert imports[0]["quarantined_by_reason"] == {
        "QUARANTINE_REASON_FUTURE": 1,
        "QUARANTINE_REASON_MALFORMED": 1,
        "QUARANTINE_REASON_UNKNOWN_ASSET": 1,
        "QUARANTINE_REASON_UNKNOWN_FAILURE_MODE": 1,
    }
    recorded = sorted(
        e.subject
        for e in entries
        if e.action == "outcome.recorded" and e.subject in (f"asset/{m1}", f"asset/{m2}")
    )
    assert recorded == [f"asset/{m1}", f"asset/{m1}", f"asset/{m2}"]


async def test_a_failure_history_header_naming_a_missing_column_is_refused_by_field(
    running: RunInfo, tmp_path: Path
) -> None:
    history = tmp_path / "h.csv"
    history.write_text("equipment,failed_at,mode\nx,1,\n")
    header = ingest_pb2.FailureHistoryHeader(
        format=ingest_pb2.FAILURE_HISTORY_FORMAT_CSV,
        asset_id_column="equipment",
        time_column="when",
        time_kind=ingest_pb2.TIME_COLUMN_KIND_UNIX_SECONDS,
        failure_mode_column="mode",
    )
    async with open_channel(running, "ingest", role="gateway") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await import_failure_history(
                ingest_pb2_grpc.IngestServiceStub(channel), history, header
            )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    typed = from_grpc_error(raised.value)
    assert isinstance(typed, InvalidArgumentError)
    assert {field for field, _ in typed.violations} == {"header.time_column"}

"""A telemetry batch in a trail is stamped with its receipt; its reading times stay beside it.

Readings taken long before an asset was declared (a historian's backlog) are uploaded after
it: the batch step sorts after the asset's registration, by when ingest received it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from prognos.api.common.v1 import audit_pb2, audit_pb2_grpc
from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.cli.client import open_channel
from prognos.cli.launcher import RunInfo
from prognos.core.testing.waiting import assert_eventually

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

ASSET = "backlog/tank-1"
READINGS = ["2021-03-01T06:00:00+00:00", "2021-03-01T06:00:01+00:00", "2021-03-01T06:00:02+00:00"]


@pytest.fixture(scope="module")
def running(ingest_module: tuple[Any, Any]) -> RunInfo:
    """The module's ingest process, with the run file `prognos up` would write for it."""
    _, process = ingest_module
    process.write_run_file()
    info: RunInfo = process.info
    return info


async def _upload(csv: Path, data_dir: str) -> subprocess.CompletedProcess[str]:
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "prognos.cli.main", "ingest", str(csv)),
        *("--asset-type", "backlog-tank", "--asset-id", ASSET, "--data-dir", data_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("PROGNOS_")},
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    return subprocess.CompletedProcess(csv, process.returncode or 0, out.decode(), "")


async def test_a_backlog_uploaded_after_its_asset_sorts_after_the_registration(
    running: RunInfo, asset_type_of: Any, tmp_path: Path
) -> None:
    async with open_channel(running, "ingest", role="ml-engineer") as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        await stub.RegisterAssetType(
            ingest_pb2.RegisterAssetTypeRequest(
                asset_type=asset_type_of("backlog-tank", [("level", "m", 0, 10)])
            ),
            timeout=10,
        )
        await stub.RegisterAsset(
            ingest_pb2.RegisterAssetRequest(asset_id=ASSET, plant="p", asset_type="backlog-tank"),
            timeout=10,
        )
    csv = tmp_path / "backlog.csv"
    csv.write_text("time,level\n" + "".join(f"{t},{i + 1}\n" for i, t in enumerate(READINGS)))
    sent = datetime.now(UTC)

    uploaded = await _upload(csv, running.data_dir)

    assert uploaded.returncode == 0, uploaded.stdout
    done = datetime.now(UTC)

    async def part() -> audit_pb2.GetTrailResponse:
        async with open_channel(running, "ingest", role="auditor") as channel:
            reply: audit_pb2.GetTrailResponse = await audit_pb2_grpc.AuditServiceStub(
                channel
            ).GetTrail(
                audit_pb2.GetTrailRequest(asset_id=ASSET, references=[f"asset/{ASSET}"]),
                timeout=10,
            )
        # The batch reaches the ledger read here when the archive flushes it.
        assert "telemetry.batch_received" in {s.action for s in reply.steps}
        return reply

    reply = await assert_eventually(part, timeout=60, interval=0.5)

    actions = [s.action for s in reply.steps]
    assert actions == ["asset.registered", "telemetry.batch_received"], actions
    registered, batch = reply.steps
    received = batch.at.ToDatetime(tzinfo=UTC)
    assert registered.at.ToDatetime(tzinfo=UTC) <= received
    assert sent <= received <= done
    details = json.loads(batch.details_json)
    assert (details["first_time"], details["last_time"]) == (READINGS[0], READINGS[-1])
    assert datetime.fromisoformat(details["received_at"]) == received

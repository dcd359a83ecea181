"""The Node.js examples in examples/node run against the four services and do what they say."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.api.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from prognos.cli.client import address_of, open_channel, secrets_of
from prognos.cli.launcher import RunInfo
from prognos.cli.tokens import token_for
from prognos.core.busauth import OBSERVER_IDENTITY
from prognos.core.testing.identities import connect_as, seed_of
from prognos.scheduler.testing import calendar, erp_asset, prediction, publish_predictions

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node"

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(
        shutil.which("node") is None or shutil.which("npm") is None,
        reason="node and npm are needed to run the Node.js examples",
    ),
]


@pytest.fixture(scope="module")
def node_example() -> Path:
    """examples/node with the packages of its package-lock.json installed, once per module."""
    done = subprocess.run(
        ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return EXAMPLE


def _environment(fleet: RunInfo, service: str, role: str) -> dict[str, str]:
    secrets = secrets_of(fleet)
    return {
        f"PROGNOS_{service.upper()}_ADDRESS": address_of(fleet, service),
        "PROGNOS_TLS_CA_FILE": str(secrets.ca_cert),
        "PROGNOS_TLS_CERT_FILE": str(secrets.client_cert),
        "PROGNOS_TLS_KEY_FILE": str(secrets.client_key),
        "PROGNOS_TOKEN": token_for(secrets, role),
    }


async def _node(script: str, cwd: Path, env: dict[str, str]) -> str:
    """What ``node script`` printed; it must exit with 0 within a minute."""
    process = await asyncio.create_subprocess_exec(
        "node",
        script,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, out.decode()
    return out.decode()


async def test_the_erp_completes_a_work_order_and_names_a_bad_field(
    fleet: RunInfo, node_example: Path
) -> None:
    plant = f"plant-node-{uuid.uuid4().hex[:6]}"
    asset_id = f"node-{uuid.uuid4().hex[:6]}"
    start = datetime.now(UTC) + timedelta(hours=12)
    async with open_channel(fleet, "scheduler", role="erp") as channel:
        stub = scheduler_pb2_grpc.MaintenanceSchedulerStub(channel)
        await stub.UpsertAssets(
            scheduler_pb2.UpsertAssetsRequest(
                idempotency_key=str(uuid.uuid4()), assets=[erp_asset(asset_id, plant)]
            ),
            timeout=10,
        )
        await stub.UpsertCrews(
            scheduler_pb2.UpsertCrewsRequest(
                idempotency_key=str(uuid.uuid4()),
                crews=[
                    scheduler_pb2.Crew(
                        crew_id=f"{plant}/mechanical", plant=plant, skill="mechanical", capacity=2
                    )
                ],
            ),
            timeout=10,
        )
        await stub.UpsertCalendar(calendar(plant, start, 3, key=str(uuid.uuid4())), timeout=10)
    # The test stands in for inference, so it signs in as inference.
    nc = await connect_as(fleet.nats_url, seed_of(fleet.data_dir, "inference"))
    try:
        await publish_predictions(
            nc.jetstream(), [prediction(asset_id, 0.95, datetime.now(UTC), plant=plant)]
        )
    finally:
        await nc.drain()

    out = await _node(
        "erp.js",
        node_example,
        {
            **_environment(fleet, "scheduler", "erp"),
            "PROGNOS_PLANT": plant,
            "PROGNOS_WAIT_S": "45",
        },
    )

    assert "rejected: INVALID_ARGUMENT:" in out, out
    assert "error reason: INVALID_ARGUMENT (scheduler)" in out, out
    assert "field violation: idempotency_key:" in out, out
    async with open_channel(fleet, "scheduler", role="erp") as channel:
        stub = scheduler_pb2_grpc.MaintenanceSchedulerStub(channel)
        page = await stub.ListWorkOrders(
            scheduler_pb2.ListWorkOrdersRequest(plant=plant), timeout=10
        )
    (order,) = page.work_orders
    assert order.state == scheduler_pb2.WORK_ORDER_STATE_COMPLETED
    assert order.outcome.failure_mode == "bearing_wear"
    assert f"completed {order.id}: WORK_ORDER_STATE_COMPLETED" in out, out


def _pump(name: str) -> ingest_pb2.AssetType:
    asset_type = ingest_pb2.AssetType(name=name, display_name="Pump")
    for channel_name, unit, low, high in [
        ("bearing_temp", "degC", -40.0, 120.0),
        ("pressure", "kPa", 0.0, 2_000.0),
    ]:
        channel = asset_type.channels.add(
            name=channel_name, unit=unit, min_value=low, max_value=high
        )
        channel.expected_interval.FromSeconds(1)
    asset_type.horizon.duration.FromSeconds(48 * 3600)
    return asset_type


async def test_the_gateway_streams_a_batch_that_is_stored_as_sent(
    fleet: RunInfo, node_example: Path
) -> None:
    plant = f"plant-gw-{uuid.uuid4().hex[:6]}"
    asset_id = f"{plant}/pump-1"
    type_name = f"pump-{uuid.uuid4().hex[:8]}"
    # Asset types are an ML engineer's to declare; the gateway only reads its own.
    async with open_channel(fleet, "ingest", role="ml-engineer") as channel:
        await ingest_pb2_grpc.IngestServiceStub(channel).RegisterAssetType(
            ingest_pb2.RegisterAssetTypeRequest(asset_type=_pump(type_name)), timeout=10
        )

    environment = {
        **_environment(fleet, "ingest", "gateway"),
        "PROGNOS_PLANT": plant,
        "PROGNOS_ASSET_ID": asset_id,
        "PROGNOS_ASSET_TYPE": type_name,
        "PROGNOS_ROWS": "5",
    }
    out = await _node("gateway.js", node_example, environment)

    assert f"asset {asset_id} in {plant}: 1 newly registered" in out, out
    receipt = re.search(
        r"receipt batch=(\S+) accepted=(\d+) quarantined=(\d+) sequence=(\d+) duplicate=(\w+)", out
    )
    assert receipt is not None, out
    batch_id, accepted, quarantined, sequence, duplicate = receipt.groups()
    assert (int(accepted), int(quarantined), duplicate) == (10, 0, "false"), out

    async with open_channel(fleet, "ingest", role="gateway") as channel:
        stored_asset = await ingest_pb2_grpc.IngestServiceStub(channel).GetAsset(
            ingest_pb2.GetAssetRequest(asset_id=asset_id), timeout=10
        )
    assert (stored_asset.asset.plant, stored_asset.asset.asset_type) == (plant, type_name)

    nc = await connect_as(fleet.nats_url, seed_of(fleet.data_dir, OBSERVER_IDENTITY))
    try:
        message = await nc.jetstream().get_msg("TELEMETRY", int(sequence))
    finally:
        await nc.close()
    stored = ingest_pb2.TelemetryBatch.FromString(message.data or b"")
    assert (stored.batch_id, stored.asset_id, stored.asset_type) == (batch_id, asset_id, type_name)
    stamps = np.frombuffer(stored.timestamps_us_le, "<i8")
    assert len(stamps) == 5 and (np.diff(stamps) == 1_000_000).all()
    values = {c.name: np.frombuffer(c.values_f64_le, "<f8").tolist() for c in stored.channels}
    assert values == {"bearing_temp": [40.0] * 5, "pressure": [1_000.0] * 5}

    # Run again: the asset is left as registered, and a new batch gets its own receipt.
    again = await _node("gateway.js", node_example, environment)
    assert f"asset {asset_id} in {plant}: 0 newly registered" in again, again
    assert "accepted=10 quarantined=0" in again and batch_id not in again, again

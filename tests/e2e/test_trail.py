"""The trail of a work order, through the four real services, from telemetry to the ERP's reply.

An asset type and three engines are declared at ingest; a tiny model is trained by the
registry, approved and promoted by a second principal; the engines' telemetry streams in,
inference scores it with the champion, the scheduler opens, plans and releases a work order
for each engine, the ERP acknowledges them, and `prognos audit trail` tells the whole story
with every chain verified.

Each test acknowledges its own orders, in the name of its own person, so the tests share the
fleet and the story but not what they change: either runs alone or after the other.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from google.protobuf.json_format import MessageToJson

from prognos.api.common.v1 import audit_pb2, audit_pb2_grpc
from prognos.api.inference.v1 import inference_pb2, inference_pb2_grpc
from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.api.registry.v1 import registry_pb2, registry_pb2_grpc
from prognos.api.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from prognos.cli.client import open_channel, secrets_of
from prognos.cli.launcher import RunInfo
from prognos.core.auth import issue_token, load_private_key
from prognos.core.testing.waiting import assert_eventually

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600)]

S = scheduler_pb2
ASSET_TYPE = "turbofan"
PLANT = "plant-trail"
ENGINES = ["trail-engine-1", "trail-engine-2", "trail-engine-3"]
PERSON = "Erika Mustermann"
"""Who acknowledges the order of the first engine, the one near its end of life."""
ERASED = "Max Mustermann"
"""Who acknowledges the other engines' orders, and then asks to be forgotten."""
TINY = [
    "epochs=1",
    "window=12",
    "architecture=cnn",
    "members=1",
    "batch=64",
    "holdout_units=2",
    "truncations=2",
    "verification_samples=16",
]


def _load(name: str) -> ModuleType:
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "helpers" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


data = _load("registry_data")
sim = _load("inference_fleet")


def key() -> str:
    return str(uuid.uuid4())


async def prognos(fleet: RunInfo, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the command line (in a thread: it runs its own event loop) against the fleet."""
    argv = [sys.executable, "-m", "prognos.cli.main", *args, "--data-dir", fleet.data_dir]
    done = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=600, check=False
    )
    if ok:
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def turbofan() -> ingest_pb2.AssetType:
    """The C-MAPSS channels, with ranges wide enough for the simulated engines."""
    message = ingest_pb2.AssetType(name=ASSET_TYPE, display_name="Simulated turbofan")
    for name, unit, _, _ in sim.CHANNELS:
        channel = message.channels.add(name=name, unit=unit, min_value=-100, max_value=10_000)
        channel.expected_interval.FromSeconds(1)
    message.horizon.cycles = 30
    return message


async def _gateway_stream(fleet: RunInfo, batches: list[Any]) -> list[Any]:
    async with open_channel(fleet, "ingest", role="gateway") as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)

        async def requests() -> AsyncIterator[ingest_pb2.StreamTelemetryRequest]:
            for batch in batches:
                yield ingest_pb2.StreamTelemetryRequest(batch=batch)

        call = stub.StreamTelemetry(requests(), timeout=60)
        return [reply.receipt async for reply in call]


@pytest.fixture(scope="module")
def bob_token(fleet: RunInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second principal, who may approve and promote."""
    secret = load_private_key(secrets_of(fleet).token_signing_key)
    path = tmp_path_factory.mktemp("trail-tokens") / "bob.token"
    path.write_text(issue_token(secret, "user:bob", ["approver"], timedelta(hours=1)))
    return path


async def _champion(fleet: RunInfo, tmp_path: Path, bob: Path) -> str:
    source = data.write_cmapss(tmp_path / "train_trail.txt", units=8, seed=3)
    params = [arg for p in TINY for arg in ("--param", p)]
    trained = await prognos(
        fleet, "train", "--asset-type", ASSET_TYPE, "--cmapss", str(source), *params, "--json"
    )
    version = str(json.loads(trained.stdout)["id"])
    as_bob = ["--token-file", str(bob)]
    await prognos(fleet, "models", "approve", version, "--comment", "checked", *as_bob)
    await prognos(fleet, "models", "promote", version, "--reason", "first model", *as_bob)
    return version


async def _plant(fleet: RunInfo, asset_ids: list[str]) -> None:
    """ERP master data, one crew and a window from now on; a low opening threshold."""
    now = datetime.now(UTC)
    async with open_channel(fleet, "scheduler", role="erp") as channel:
        stub = scheduler_pb2_grpc.MaintenanceSchedulerStub(channel)
        assets = []
        for asset_id in asset_ids:
            asset = S.ErpAsset(
                asset_id=asset_id,
                erp_id=f"EQ-{asset_id}",
                plant=PLANT,
                asset_type=ASSET_TYPE,
                required_skill="mechanical",
                criticality=1.0,
                downtime_cost_per_hour=5000.0,
            )
            asset.service_duration.FromTimedelta(timedelta(hours=1))
            assets.append(asset)
        await stub.UpsertAssets(S.UpsertAssetsRequest(idempotency_key=key(), assets=assets))
        await stub.UpsertCrews(
            S.UpsertCrewsRequest(
                idempotency_key=key(),
                crews=[
                    S.Crew(crew_id=f"{PLANT}/mech", plant=PLANT, skill="mechanical", capacity=2)
                ],
            )
        )
        calendar = S.UpsertCalendarRequest(idempotency_key=key(), plant=PLANT)
        calendar.range_start.FromDatetime(now)
        calendar.range_end.FromDatetime(now + timedelta(days=3))
        window = calendar.windows.add(note="today")
        window.start_time.FromDatetime(now + timedelta(minutes=10))
        window.end_time.FromDatetime(now + timedelta(hours=20))
        await stub.UpsertCalendar(calendar)
    async with open_channel(fleet, "scheduler") as channel:
        policy = S.WorkOrderPolicy(open_probability=0.001, close_probability=0.0)
        policy.hours_per_cycle = 24.0
        policy.horizon.FromTimedelta(timedelta(days=30))
        await scheduler_pb2_grpc.MaintenanceSchedulerStub(channel).SetWorkOrderPolicy(
            S.SetWorkOrderPolicyRequest(idempotency_key=key(), asset_type=ASSET_TYPE, policy=policy)
        )


@dataclass
class Story:
    """What the module set up: the promoted model version, the batches sent, the orders."""

    version: str
    batches: list[Any]
    orders: dict[str, S.WorkOrder]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def story(fleet: RunInfo, tmp_path_factory: pytest.TempPathFactory, bob_token: Path) -> Story:
    """Three engines' telemetry through the four services, up to a released work order each."""
    async with open_channel(fleet, "ingest") as channel:
        ingest = ingest_pb2_grpc.IngestServiceStub(channel)
        await ingest.RegisterAssetType(ingest_pb2.RegisterAssetTypeRequest(asset_type=turbofan()))
        for engine in ENGINES:
            await ingest.RegisterAsset(
                ingest_pb2.RegisterAssetRequest(asset_id=engine, plant=PLANT, asset_type=ASSET_TYPE)
            )

    async def registry_knows_turbofan() -> None:
        async with open_channel(fleet, "registry", role="ml-engineer") as channel:
            reply = await registry_pb2_grpc.ModelRegistryStub(channel).ListAssetTypes(
                registry_pb2.ListAssetTypesRequest(), timeout=5
            )
        assert ASSET_TYPE in {t.asset_type.name for t in reply.asset_types}

    await assert_eventually(registry_knows_turbofan, timeout=30)
    version = await _champion(fleet, tmp_path_factory.mktemp("trail-model"), bob_token)
    await _plant(fleet, ENGINES)

    async def serving() -> None:
        async with open_channel(fleet, "inference", role="ml-engineer") as channel:
            state = await inference_pb2_grpc.InferenceServiceStub(channel).GetServingState(
                inference_pb2.GetServingStateRequest(), timeout=5
            )
        assert {m.asset_type: m.champion_version for m in state.models}.get(ASSET_TYPE) == version

    await assert_eventually(serving, timeout=60)

    # Engine 1 near the end of its life, the others young: 20 cycles each, in two batches.
    lives = data.fleet(len(ENGINES), seed=11)
    now_us = int(time.time() * 1_000_000)
    batches = []
    for engine, rows in zip(ENGINES, lives, strict=True):
        values = rows[-20:, 1:] if engine == ENGINES[0] else rows[:20, 1:]
        batches.append(sim.telemetry_batch(engine, np.asarray(values[:10]), now_us - 10 * sim.S))
        batches.append(sim.telemetry_batch(engine, np.asarray(values[10:]), now_us))
    receipts = await _gateway_stream(fleet, batches)
    assert [r.batch_id for r in receipts] == [b.batch_id for b in batches]
    assert all(r.accepted_count == 10 * 24 and not r.quarantined_count for r in receipts)

    async with open_channel(fleet, "scheduler", role="erp") as channel:
        erp = scheduler_pb2_grpc.MaintenanceSchedulerStub(channel)

        async def released() -> dict[str, S.WorkOrder]:
            found = {}
            for engine in ENGINES:
                reply = await erp.ListWorkOrders(
                    S.ListWorkOrdersRequest(asset_id=engine), timeout=5
                )
                assert reply.work_orders, f"no work order for {engine} yet"
                order = reply.work_orders[0]
                assert order.state == S.WORK_ORDER_STATE_RELEASED, order
                found[engine] = order
            return found

        orders = await assert_eventually(released, timeout=120, interval=0.5)
    return Story(version, batches, orders)


async def _acknowledge(fleet: RunInfo, order: S.WorkOrder, number: str, person: str) -> None:
    async with open_channel(fleet, "scheduler", role="erp") as channel:
        await scheduler_pb2_grpc.MaintenanceSchedulerStub(channel).AcknowledgeWorkOrder(
            S.AcknowledgeWorkOrderRequest(
                idempotency_key=key(),
                work_order_id=order.id,
                erp_order_number=number,
                acknowledged_by=person,
            ),
            timeout=10,
        )


async def _trail(fleet: RunInfo, order_id: str) -> tuple[dict[str, Any], str]:
    """The trail as JSON, and as the reports people read (terminal, then HTML)."""
    shown = await prognos(fleet, "audit", "trail", order_id, "--json")
    page = Path(fleet.data_dir) / f"trail-{order_id}.html"
    report = await prognos(fleet, "audit", "trail", order_id, "--html", str(page))
    return json.loads(shown.stdout), report.stdout + page.read_text()


async def test_a_work_order_from_real_telemetry_has_its_whole_trail_verified(
    fleet: RunInfo, story: Story, tmp_path: Path
) -> None:
    order = story.orders[ENGINES[0]]
    await _acknowledge(fleet, order, "SAP-4711", PERSON)

    async def with_telemetry() -> tuple[dict[str, Any], str]:
        # The batches reach ingest's ledger when the archive flushes them.
        trail, report = await _trail(fleet, order.id)
        assert any(s["action"] == "telemetry.batch_received" for s in trail["steps"])
        return trail, report

    trail, report = await assert_eventually(with_telemetry, timeout=150, interval=2)

    assert trail["verified"] is True and trail["complete"] is True and not trail["missing"]
    assert set(trail["chains"]) == {"ingest", "inference", "registry", "scheduler"}
    assert all(c["ok"] and c["entries"] > 0 for c in trail["chains"].values())
    steps = trail["steps"]
    assert [s["at"] for s in steps] == sorted(s["at"] for s in steps)
    by_action: dict[str, list[dict[str, Any]]] = {}
    for step in steps:
        by_action.setdefault(step["action"], []).append(step)
        assert step["actor"] and step["at"], step
    # Telemetry: the engine's batches of the input window, with their receipts.
    received = by_action["telemetry.batch_received"]
    mine = [b.batch_id for b in story.batches if b.asset_id == ENGINES[0]]
    assert [s["details"]["batch_id"] for s in received] == mine
    assert all(s["details"]["stream_sequence"] > 0 for s in received)
    assert all(s["details"]["accepted_count"] == 240 for s in received)
    assert trail["input_window"] and trail["asset_id"] == ENGINES[0]
    # The prediction behind the order, by the promoted model version.
    scheduler = [s for s in steps if s["service"] == "scheduler"]
    assert scheduler[0]["action"] == "work_order.proposed"
    cause = [s["details"] for s in scheduler if "prediction_id" in s["details"]][-1]
    assert cause["prediction_id"] == order.cause.prediction_id
    assert cause["model_version"] == story.version
    assert cause["input_digest"].startswith("sha256:")
    assert 0.0 < cause["failure_probability"] <= 1.0
    # The policy opens at 0.001, far below inference's alert threshold: inference heard of
    # the policy and explained the prediction all the same.
    assert cause["top_sensors"] and all(s.startswith("sensor_") for s in cause["top_sensors"])
    # The model version's lineage: trained, approved and promoted by another principal.
    assert by_action["training_run.succeeded"][0]["details"]["model_version_id"] == story.version
    registered = by_action["model_version.registered"][0]
    approved = by_action["model_version.approved"][0]
    promoted = next(s for s in by_action["alias.promoted"] if s["subject"].endswith("/champion"))
    assert registered["details"]["metrics"] and registered["details"]["training_run_id"]
    assert approved["actor"] == promoted["actor"] == "user:bob" != registered["actor"]
    # The work order's transitions and the ERP's reply, with the person by reference.
    actions = [s["action"] for s in scheduler]
    assert "work_order.released" in actions and actions[-1] == "work_order.acknowledged"
    acknowledged = scheduler[-1]
    assert acknowledged["details"]["erp_order_number"] == "SAP-4711"
    ref = acknowledged["details"]["acknowledged_by"]
    assert ref.startswith("person/") and trail["people"] == {ref: PERSON}
    # Linked by trace ids: what requests did carries the request's trace; the telemetry's
    # trace continues through inference into the scheduler, which proposed the order in it.
    for step in (*received, approved, promoted, acknowledged, scheduler[0]):
        assert len(step["trace_id"]) == 32, step
    (telemetry_trace,) = {s["trace_id"] for s in received}
    opened = next(
        s for s in scheduler if s["details"].get("prediction_id") == cause["prediction_id"]
    )
    assert opened["trace_id"] == scheduler[0]["trace_id"] == telemetry_trace
    for alert in by_action.get("prediction.alert_raised", []):
        if alert["details"]["prediction_id"] == cause["prediction_id"]:
            assert alert["trace_id"] == telemetry_trace
    # The readable report tells the same story.
    for words in ("verified", "work_order.acknowledged", story.version, PERSON, "user:bob"):
        assert words in report, words


async def _chains_text(fleet: RunInfo) -> str:
    """Every service's whole chain, as the auditor reads it."""
    texts = []
    for service in ("ingest", "inference", "registry", "scheduler"):
        async with open_channel(fleet, service, role="auditor") as channel:
            stub = audit_pb2_grpc.AuditServiceStub(channel)
            after, more = 0, True
            while more:
                page = await stub.ListEntries(
                    audit_pb2.ListEntriesRequest(after_seq=after), timeout=10
                )
                texts.extend(MessageToJson(e) for e in page.entries)
                after = page.entries[-1].seq if page.entries else after
                more = page.more
    return "\n".join(texts)


async def test_an_erasure_removes_the_name_from_every_trail_and_the_chains_still_verify(
    fleet: RunInfo, story: Story
) -> None:
    orders = [story.orders[engine] for engine in ENGINES[1:]]
    for number, order in enumerate(orders, start=4712):
        await _acknowledge(fleet, order, f"SAP-{number}", ERASED)
    for order in orders:
        trail, report = await _trail(fleet, order.id)
        assert ERASED in trail["people"].values() and ERASED in report
    assert ERASED not in await _chains_text(fleet)

    erased = await prognos(fleet, "audit", "erase", ERASED, "--reason", "request 17")

    assert "scheduler" in erased.stdout and "person/" in erased.stdout
    refs: set[str] = set()
    for order in orders:
        trail, report = await _trail(fleet, order.id)
        assert trail["verified"] is True
        assert ERASED not in json.dumps(trail) and ERASED not in report
        assert "[erased]" in report
        assert list(trail["people"].values()) == [None]
        refs |= set(trail["people"])
    (ref,) = refs  # one person, named in both trails
    await prognos(fleet, "audit", "verify")
    async with open_channel(fleet, "scheduler", role="auditor") as channel:
        page = await audit_pb2_grpc.AuditServiceStub(channel).ListEntries(
            audit_pb2.ListEntriesRequest(), timeout=10
        )
    erasures = [e for e in page.entries if e.action == "person.erased"]
    assert [(e.subject, e.reason) for e in erasures] == [(ref, "request 17")]
    assert erasures[0].actor and erasures[0].trace_id
    # Nobody is left to erase: a second request says so.
    again = await prognos(fleet, "audit", "erase", ERASED, ok=False)
    assert again.returncode == 1

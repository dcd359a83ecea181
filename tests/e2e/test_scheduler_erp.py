"""An ERP follows the work orders that predictions cause, over gRPC, against the real services.

200 assets in two plants, their predictions published on JetStream as the inference service
publishes them; the ERP client sends master data, watches work orders, disconnects,
resumes from its position, acknowledges, starts and completes some; the completions appear
as outcome labels on JetStream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc
import nats
import pytest

from prognos.api.common.v1.envelope_pb2 import Envelope
from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.api.scheduler.v1 import events_pb2, scheduler_pb2, scheduler_pb2_grpc
from prognos.cli.client import open_channel
from prognos.cli.launcher import RunInfo
from prognos.core.testing.identities import connect_as, seed_of
from prognos.core.testing.waiting import assert_eventually
from prognos.scheduler.testing import calendar, erp_asset, prediction, publish_predictions

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

S = scheduler_pb2
PLANTS = ("plant-north", "plant-south")
CREWS = {"mechanical": 3, "electrical": 2}
DAYS = 14
P_OPEN = 0.8  # the default policy's threshold


def key() -> str:
    return str(uuid.uuid4())


@dataclass
class Fleet:
    """The plant data the test sends, and what the policy must make of the predictions."""

    assets: dict[str, scheduler_pb2.ErpAsset]
    scores: dict[str, list[float]]
    windows: dict[str, list[tuple[datetime, datetime]]] = field(default_factory=dict)

    @property
    def expected(self) -> set[str]:
        # Within 24 h, with at most one open order per asset: an order iff a score crossed.
        return {a for a, s in self.scores.items() if max(s) >= P_OPEN}


def pump_type() -> ingest_pb2.AssetType:
    """The asset type the ingest archive files the labels under."""
    asset_type = ingest_pb2.AssetType(name="pump", display_name="Centrifugal pump")
    asset_type.channels.add(name="bearing_temp", unit="degC", min_value=-40, max_value=150)
    asset_type.channels.add(name="vibration", unit="mm/s", min_value=0, max_value=50)
    for channel in asset_type.channels:
        channel.expected_interval.FromSeconds(10)
    asset_type.horizon.duration.FromSeconds(48 * 3600)
    return asset_type


async def archived_labels(fleet: RunInfo, asset_ids: list[str]) -> dict[str, int]:
    """Label rows per asset in a fresh dataset snapshot of the ingest archive."""
    async with open_channel(fleet, "ingest", role="ml-engineer") as channel:
        response = await ingest_pb2_grpc.IngestServiceStub(channel).CreateDatasetSnapshot(
            ingest_pb2.CreateDatasetSnapshotRequest(
                name=f"labels-{uuid.uuid4().hex[:8]}", asset_type="pump", asset_ids=asset_ids
            ),
            timeout=60,
        )
    rows: dict[str, int] = defaultdict(int)
    for f in response.snapshot.files:
        if f.kind == ingest_pb2.DATASET_FILE_KIND_LABELS:
            rows[f.asset_id] += f.row_count
    return dict(rows)


def make_fleet(seed: int = 6) -> Fleet:
    rng = random.Random(seed)
    assets: dict[str, scheduler_pb2.ErpAsset] = {}
    scores: dict[str, list[float]] = {}
    for n in range(200):
        plant = PLANTS[n % 2]
        asset_id = f"{plant}-asset-{n:03d}"
        assets[asset_id] = erp_asset(
            asset_id,
            plant,
            skill="mechanical" if n % 3 else "electrical",
            hours=rng.choice([2, 3, 4, 6]),
            criticality=rng.choice([0.5, 1.0, 2.0]),
            downtime_cost=rng.choice([200.0, 1000.0, 5000.0]),
        )
        kind = n % 5
        if kind == 0:  # crosses and stays high
            scores[asset_id] = [0.3, 0.85, 0.95]
        elif kind == 1:  # flaps around the threshold
            scores[asset_id] = [0.79, 0.81, 0.78]
        elif kind == 2:  # close, never crossing
            scores[asset_id] = [0.7, 0.79, 0.75]
        else:
            scores[asset_id] = [rng.uniform(0, 0.5) for _ in range(3)]
    return Fleet(assets, scores)


@dataclass
class ErpWatcher:
    """The ERP's side of WatchWorkOrders: its position and its copy of every work order."""

    stub: scheduler_pb2_grpc.MaintenanceSchedulerStub
    position: int = 0
    positions: list[int] = field(default_factory=list)
    orders: dict[str, scheduler_pb2.WorkOrder] = field(default_factory=dict)
    versions: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    connections: int = 0

    async def follow(self, stop_after: int | None = None) -> None:
        self.connections += 1
        call = self.stub.WatchWorkOrders(S.WatchWorkOrdersRequest(after_position=self.position))
        received = 0
        try:
            async for change in call:
                self.positions.append(change.position)
                self.position = change.position
                order = change.work_order
                self.orders[order.id] = order
                self.versions[order.id].append(order.version)
                received += 1
                if stop_after is not None and received >= stop_after:
                    return
        finally:
            call.cancel()


def overlaps_within_capacity(slots: list[tuple[datetime, datetime]], capacity: int) -> bool:
    points = sorted([(s, 1) for s, _ in slots] + [(e, -1) for _, e in slots])
    busy = 0
    for _, delta in points:
        busy += delta
        if busy > capacity:
            return False
    return True


async def test_an_erp_follows_work_orders_from_predictions_to_labels(fleet: RunInfo) -> None:
    plan = make_fleet()
    start = datetime.now(UTC) + timedelta(hours=12)
    async with open_channel(fleet, "ingest", role="ml-engineer") as channel:
        await ingest_pb2_grpc.IngestServiceStub(channel).RegisterAssetType(
            ingest_pb2.RegisterAssetTypeRequest(asset_type=pump_type()), timeout=10
        )
    async with open_channel(fleet, "scheduler", role="erp") as channel:
        stub = scheduler_pb2_grpc.MaintenanceSchedulerStub(channel)
        upserted = await stub.UpsertAssets(
            S.UpsertAssetsRequest(idempotency_key=key(), assets=list(plan.assets.values()))
        )
        assert upserted.upserted_count == 200
        await stub.UpsertCrews(
            S.UpsertCrewsRequest(
                idempotency_key=key(),
                crews=[
                    S.Crew(crew_id=f"{p}/{skill}", plant=p, skill=skill, capacity=c)
                    for p in PLANTS
                    for skill, c in CREWS.items()
                ],
            )
        )
        for p in PLANTS:
            request = calendar(p, start, DAYS, key=key())
            await stub.UpsertCalendar(request)
            plan.windows[p] = [
                (w.start_time.ToDatetime(tzinfo=UTC), w.end_time.ToDatetime(tzinfo=UTC))
                for w in request.windows
            ]

        # The ERP starts watching before anything happens, and drops the line after a while.
        watcher = ErpWatcher(stub)
        first = asyncio.create_task(watcher.follow(stop_after=40))

        # The test stands in for inference, so it signs in as inference.
        nc = await connect_as(fleet.nats_url, seed_of(fleet.data_dir, "inference"))
        try:
            js = nc.jetstream()
            rng = random.Random(7)
            # Risky assets' models also estimate a remaining useful life of 2 to 14 days.
            rul = {a: rng.uniform(48, 24 * DAYS) for a in sorted(plan.expected)}
            now = datetime.now(UTC)
            predictions = [
                prediction(
                    asset_id,
                    score,
                    now - timedelta(hours=2 - step),
                    plant=plan.assets[asset_id].plant,
                    rul_hours=rul.get(asset_id),
                )
                for step in range(3)
                for asset_id, scores in plan.scores.items()
                for score in [scores[step]]
            ]
            await publish_predictions(js, predictions)
            await asyncio.wait_for(first, 60)
            assert watcher.connections == 1 and len(watcher.positions) == 40

            async def all_decided() -> None:
                info = await js.consumer_info("INFERENCE", "scheduler-on-prediction")
                assert info.num_pending == 0 and info.num_ack_pending == 0

            await assert_eventually(all_decided, timeout=60, interval=0.5)

            async def settled() -> list[scheduler_pb2.WorkOrder]:
                orders = await all_orders(stub)
                assert {o.asset_id for o in orders} == plan.expected
                for o in orders:
                    assert o.state != S.WORK_ORDER_STATE_PROPOSED or o.HasField("unplaced")
                return orders

            orders = await assert_eventually(settled, timeout=90, interval=0.5)
            assert len(orders) == len(plan.expected) == 80
            check_slots(plan, orders)

            # Reconnect from the stored position: the rest, nothing twice, then live changes.
            second = asyncio.create_task(watcher.follow())

            async def watch_caught_up() -> None:
                # The planner may still refine slots not yet released: compare with now.
                caught_up(watcher, await all_orders(stub))

            await assert_eventually(watch_caught_up, timeout=30, message="watch caught up")
            orders = await all_orders(stub)

            released = [o for o in orders if o.state == S.WORK_ORDER_STATE_RELEASED][:6]
            assert len(released) == 6
            labels = await nc.jetstream().subscribe(
                "scheduler.outcome.recorded", stream="SCHEDULER", ordered_consumer=True
            )
            completed: dict[str, S.CompleteWorkOrderResponse] = {}
            for n, order in enumerate(released):
                ack = S.AcknowledgeWorkOrderRequest(
                    idempotency_key=key(), work_order_id=order.id, erp_order_number=f"SAP-{n}"
                )
                acked = await stub.AcknowledgeWorkOrder(ack)
                assert await stub.AcknowledgeWorkOrder(ack) == acked  # a retry, one effect
                await stub.StartWorkOrder(
                    S.StartWorkOrderRequest(idempotency_key=key(), work_order_id=order.id)
                )
                completed[order.id] = await stub.CompleteWorkOrder(
                    S.CompleteWorkOrderRequest(
                        idempotency_key=key(),
                        work_order_id=order.id,
                        outcome=S.MaintenanceOutcome(
                            failure_found=n % 2 == 0,
                            failure_mode="bearing_wear" if n % 2 == 0 else "",
                            findings="checked",
                        ),
                    )
                )

            done = {o.id for o in released}

            def completed_live() -> None:
                states = {watcher.orders[i].state for i in done}
                assert states == {S.WORK_ORDER_STATE_COMPLETED}

            await assert_eventually(completed_live, timeout=20)
            found: dict[str, events_pb2.MaintenanceOutcomeRecorded] = {}
            while len(found) < len(done):
                msg = await labels.next_msg(timeout=20)
                envelope = Envelope.FromString(msg.data)
                label = events_pb2.MaintenanceOutcomeRecorded()
                assert envelope.payload.Unpack(label)
                assert label.work_order_id not in found
                found[label.work_order_id] = label
            assert set(found) == done
            for n, order in enumerate(released):
                label = found[order.id]
                assert label.asset_id == order.asset_id
                assert label.failure_found == (n % 2 == 0)
                cause = completed[order.id].work_order.cause
                assert label.cause.prediction_id == cause.prediction_id
            with contextlib.suppress(nats.errors.TimeoutError):
                extra = await labels.next_msg(timeout=1)
                pytest.fail(f"one label too many: {extra.subject}")
            await labels.unsubscribe()
            # The ingest service archived each label once, for retraining.
            completed_assets = sorted(o.asset_id for o in released)

            async def archived_once() -> None:
                try:
                    archived = await archived_labels(fleet, completed_assets)
                except grpc.aio.AioRpcError as error:
                    # The archive is still catching up: ask again.
                    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                    raise AssertionError(error.details()) from None
                assert archived == dict.fromkeys(completed_assets, 1)

            await assert_eventually(archived_once, timeout=120, interval=1.0)

            await assert_eventually(watch_caught_up, timeout=20)
            second.cancel()
            await asyncio.gather(second, return_exceptions=True)
        finally:
            await nc.drain()
    assert watcher.connections == 2


async def all_orders(
    stub: scheduler_pb2_grpc.MaintenanceSchedulerStub,
) -> list[scheduler_pb2.WorkOrder]:
    orders: list[scheduler_pb2.WorkOrder] = []
    token = ""
    while True:
        page = await stub.ListWorkOrders(S.ListWorkOrdersRequest(page_size=50, page_token=token))
        orders.extend(page.work_orders)
        token = page.next_page_token
        if not token:
            return orders


def caught_up(watcher: ErpWatcher, orders: list[scheduler_pb2.WorkOrder]) -> None:
    """The watcher has each order exactly once, every version of it once, in order."""
    assert watcher.positions == sorted(set(watcher.positions)), "a position came twice"
    assert set(watcher.orders) == {o.id for o in orders}
    for order in orders:
        assert watcher.versions[order.id] == list(range(1, order.version + 1)), order.id
        assert watcher.orders[order.id] == order


def check_slots(plan: Fleet, orders: list[scheduler_pb2.WorkOrder]) -> None:
    """Every slot lies in a window of its plant, fits the asset, and no crew is overbooked."""
    by_crew: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    placed = 0
    for order in orders:
        if not order.HasField("slot"):
            assert order.unplaced.reason != S.UNPLACED_REASON_UNSPECIFIED
            continue
        placed += 1
        asset = plan.assets[order.asset_id]
        slot = order.slot
        begin = slot.start_time.ToDatetime(tzinfo=UTC)
        end = slot.end_time.ToDatetime(tzinfo=UTC)
        assert end - begin == asset.service_duration.ToTimedelta()
        assert any(w0 <= begin and end <= w1 for w0, w1 in plan.windows[order.plant])
        assert end <= order.due_time.ToDatetime(tzinfo=UTC)
        assert slot.crew_id == f"{order.plant}/{asset.required_skill}"
        by_crew[slot.crew_id].append((begin, end))
    assert placed >= len(orders) * 0.9
    for crew, slots in by_crew.items():
        assert overlaps_within_capacity(slots, CREWS[crew.rsplit("/", 1)[1]]), crew


async def test_the_cli_lists_and_shows_work_orders(fleet: RunInfo) -> None:
    plant = "plant-cli"
    async with open_channel(fleet, "scheduler", role="erp") as channel:
        stub = scheduler_pb2_grpc.MaintenanceSchedulerStub(channel)
        await stub.UpsertAssets(
            S.UpsertAssetsRequest(idempotency_key=key(), assets=[erp_asset("cli-1", plant)])
        )
        # The test stands in for inference, so it signs in as inference.
        nc = await connect_as(fleet.nats_url, seed_of(fleet.data_dir, "inference"))
        try:
            await publish_predictions(
                nc.jetstream(), [prediction("cli-1", 0.9, datetime.now(UTC), plant=plant)]
            )
        finally:
            await nc.drain()

        async def unplaced() -> scheduler_pb2.WorkOrder:
            page = await stub.ListWorkOrders(S.ListWorkOrdersRequest(plant=plant))
            assert len(page.work_orders) == 1 and page.work_orders[0].HasField("unplaced")
            return page.work_orders[0]

        order = await assert_eventually(unplaced, timeout=30)

    async def prognos(*args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "prognos.cli.main",
            "workorders",
            *args,
            "--data-dir",
            fleet.data_dir,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200"},
        )
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, out.decode()
        return out.decode()

    listed = await prognos("list", "--plant", plant, "--wide")
    assert order.id[:8] in listed and "NO_WINDOW_FOR_PLANT" in listed
    shown = json.loads(await prognos("show", order.id))
    assert (
        shown["id"] == order.id
        and shown["unplaced"]["reason"] == "UNPLACED_REASON_NO_WINDOW_FOR_PLANT"
    )

"""The scheduler through its gRPC API and JetStream, in-process on real SQLite and NATS."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import grpc
import pytest
from sqlalchemy import func, select

from prognos.api.scheduler.v1 import events_pb2, scheduler_pb2
from prognos.core import audit
from prognos.core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    from_grpc_error,
)
from prognos.core.store import events_table
from prognos.core.testing.waiting import assert_eventually
from prognos.scheduler import adapters
from prognos.scheduler.testing import calendar, erp_asset, prediction, publish_predictions

if TYPE_CHECKING:
    from conftest import Scheduler

pytestmark = pytest.mark.slow

S = scheduler_pb2


def key() -> str:
    return str(uuid.uuid4())


async def setup_plant(
    s: Scheduler,
    plant: str,
    assets: list[scheduler_pb2.ErpAsset],
    *,
    capacity: int = 2,
    days: int = 3,
    start: datetime | None = None,
    hours: int = 8,
) -> None:
    await s.stub.UpsertAssets(S.UpsertAssetsRequest(idempotency_key=key(), assets=assets))
    await s.stub.UpsertCrews(
        S.UpsertCrewsRequest(
            idempotency_key=key(),
            crews=[
                S.Crew(crew_id=f"{plant}-mech", plant=plant, skill="mechanical", capacity=capacity)
            ],
        )
    )
    first = start or datetime.now(UTC) + timedelta(days=1)
    await s.stub.UpsertCalendar(calendar(plant, first, days, key=key(), hours=hours))


async def orders_of(s: Scheduler, **filters: str) -> list[scheduler_pb2.WorkOrder]:
    response = await s.stub.ListWorkOrders(S.ListWorkOrdersRequest(page_size=1000, **filters))
    return list(response.work_orders)


async def decisions_of(s: Scheduler, asset_id: str) -> list[scheduler_pb2.PolicyDecision]:
    response = await s.stub.ListPolicyDecisions(
        S.ListPolicyDecisionsRequest(asset_id=asset_id, page_size=1000)
    )
    return list(response.decisions)


async def count_events(s: Scheduler, event_type: str, stream_id: str) -> int:
    async with s.store.reader() as conn:
        return int(
            await conn.scalar(
                select(func.count()).where(
                    events_table.c.type == event_type, events_table.c.stream_id == stream_id
                )
            )
            or 0
        )


async def test_a_flapping_score_opens_one_work_order_and_a_retried_acknowledge_has_one_effect(
    scheduler: Scheduler,
) -> None:
    s = scheduler
    await setup_plant(s, "flap", [erp_asset("flap-pump", "flap")])
    t0 = datetime.now(UTC) - timedelta(hours=2)
    scores = [0.4, 0.79, 0.81, 0.78, 0.82, 0.79, 0.83, 0.8, 0.77, 0.85, 0.79, 0.81]
    await publish_predictions(
        s.inference,
        [
            prediction("flap-pump", p, t0 + timedelta(minutes=10 * n), plant="flap")
            for n, p in enumerate(scores)
        ],
    )

    async def all_decided() -> list[scheduler_pb2.PolicyDecision]:
        decided = await decisions_of(s, "flap-pump")
        assert len(decided) == len(scores)
        return decided

    decided = await assert_eventually(all_decided, timeout=20)
    kinds = [d.kind for d in reversed(decided)]
    assert kinds.count(S.POLICY_DECISION_KIND_OPEN) == 1
    assert kinds[:2] == [S.POLICY_DECISION_KIND_NONE] * 2  # 0.4 and 0.79: below threshold
    assert set(kinds[3:]) == {S.POLICY_DECISION_KIND_UPDATE}  # the open order is updated
    (order,) = await orders_of(s, asset_id="flap-pump")
    assert order.cause.model_version == "pump-model/3"
    assert order.cause.input_digest.startswith("sha256:")
    assert list(order.cause.top_sensors) == ["vibration", "bearing_temp"]

    async def released() -> scheduler_pb2.WorkOrder:
        got = (await s.stub.GetWorkOrder(S.GetWorkOrderRequest(work_order_id=order.id))).work_order
        assert got.state == S.WORK_ORDER_STATE_RELEASED
        return got

    order = await assert_eventually(released, timeout=20)
    ack = S.AcknowledgeWorkOrderRequest(
        idempotency_key=key(), work_order_id=order.id, erp_order_number="4711"
    )
    first, second = await asyncio.gather(
        s.stub.AcknowledgeWorkOrder(ack), s.stub.AcknowledgeWorkOrder(ack)
    )
    third = await s.stub.AcknowledgeWorkOrder(ack)
    assert first == second == third
    assert first.work_order.state == S.WORK_ORDER_STATE_ACKNOWLEDGED
    assert first.work_order.erp_order_number == "4711"
    stream = f"work_order-{order.id}"
    assert await count_events(s, "scheduler.WorkOrderAcknowledged", stream) == 1
    current = (await s.stub.GetWorkOrder(S.GetWorkOrderRequest(work_order_id=order.id))).work_order
    assert current.version == first.work_order.version

    # The same key for another request is refused, naming the key.
    other = S.AcknowledgeWorkOrderRequest(
        idempotency_key=ack.idempotency_key, work_order_id=order.id, erp_order_number="4712"
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await s.stub.AcknowledgeWorkOrder(other)
    typed = from_grpc_error(caught.value)
    assert isinstance(typed, InvalidArgumentError)
    assert typed.reason == "IDEMPOTENCY_KEY_REUSED"
    assert typed.violations[0][0] == "idempotency_key"
    # A second acknowledgement under a new key is a transition the state does not allow.
    other.idempotency_key = key()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await s.stub.AcknowledgeWorkOrder(other)
    typed = from_grpc_error(caught.value)
    assert isinstance(typed, FailedPreconditionError)
    assert typed.reason == "INVALID_TRANSITION"


async def test_invalid_requests_and_transitions_get_the_status_that_names_them(
    scheduler: Scheduler,
) -> None:
    s = scheduler
    bad = erp_asset("bad-asset", "bad", hours=0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await s.stub.UpsertAssets(S.UpsertAssetsRequest(idempotency_key=key(), assets=[bad]))
    typed = from_grpc_error(caught.value)
    assert isinstance(typed, InvalidArgumentError)
    assert ("assets[0].service_duration", "must be positive") in typed.violations

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await s.stub.UpsertAssets(S.UpsertAssetsRequest(assets=[erp_asset("a", "b")]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await s.stub.StartWorkOrder(
            S.StartWorkOrderRequest(idempotency_key=key(), work_order_id="nope")
        )
    assert isinstance(from_grpc_error(caught.value), NotFoundError)

    policy = S.WorkOrderPolicy(open_probability=0.6, close_probability=0.7)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await s.stub.SetWorkOrderPolicy(
            S.SetWorkOrderPolicyRequest(idempotency_key=key(), asset_type="fan", policy=policy)
        )
    typed = from_grpc_error(caught.value)
    assert isinstance(typed, InvalidArgumentError)
    assert typed.violations[0][0] == "policy.close_probability"

    # A proposed order can be cancelled once; starting or completing it is not allowed.
    await setup_plant(s, "tr", [erp_asset("tr-1", "tr")], days=0, start=datetime.now(UTC))
    await publish_predictions(
        s.inference, [prediction("tr-1", 0.95, datetime.now(UTC), plant="tr")]
    )
    orders = await assert_eventually(lambda: orders_of(s, asset_id="tr-1"), timeout=20)
    wid = orders[0].id
    for call, request in [
        (s.stub.StartWorkOrder, S.StartWorkOrderRequest(idempotency_key=key(), work_order_id=wid)),
        (
            s.stub.CompleteWorkOrder,
            S.CompleteWorkOrderRequest(
                idempotency_key=key(),
                work_order_id=wid,
                outcome=S.MaintenanceOutcome(failure_found=False),
            ),
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request)  # type: ignore[operator]
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    cancelled = await s.stub.CancelWorkOrder(
        S.CancelWorkOrderRequest(idempotency_key=key(), work_order_id=wid, reason="duplicate")
    )
    assert cancelled.work_order.state == S.WORK_ORDER_STATE_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await s.stub.CancelWorkOrder(
            S.CancelWorkOrderRequest(idempotency_key=key(), work_order_id=wid, reason="again")
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_more_work_than_capacity_places_the_riskiest_first_and_says_why_not_the_rest(
    scheduler: Scheduler,
) -> None:
    s = scheduler
    plant = "tight"
    risks = {"t-1": 0.82, "t-2": 0.99, "t-3": 0.9, "t-4": 0.95, "t-5": 0.85, "t-6": 0.97}
    assets = [erp_asset(a, plant, hours=4) for a in [*risks, "t-7"]]
    await s.stub.UpsertAssets(S.UpsertAssetsRequest(idempotency_key=key(), assets=assets))
    now = datetime.now(UTC)
    predictions = [prediction(a, p, now, plant=plant) for a, p in risks.items()]
    # Fails in an hour: no window before that.
    predictions.append(prediction("t-7", 0.9, now, plant=plant, rul_hours=1))
    # No master data at all.
    predictions.append(prediction("t-8", 0.9, now, plant=plant))
    await publish_predictions(s.inference, predictions)

    async def all_proposed() -> None:
        orders = await orders_of(s, plant=plant)
        assert len(orders) == 8
        assert all(o.HasField("unplaced") for o in orders)

    await assert_eventually(all_proposed, timeout=20)
    # Then one window of 8 h tomorrow and one crew of capacity 1: room for two 4 h jobs.
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    await s.stub.UpsertCalendar(calendar(plant, tomorrow, 0, key=key()))
    await s.stub.UpsertCrews(
        S.UpsertCrewsRequest(
            idempotency_key=key(),
            crews=[S.Crew(crew_id=f"{plant}-mech", plant=plant, skill="mechanical", capacity=1)],
        )
    )

    async def planned() -> dict[str, scheduler_pb2.WorkOrder]:
        orders = {o.asset_id: o for o in await orders_of(s, plant=plant)}
        assert len(orders) == 8
        assert len([o for o in orders.values() if o.HasField("slot")]) == 2
        assert orders["t-7"].unplaced.reason == S.UNPLACED_REASON_NO_WINDOW_BEFORE_FAILURE
        return orders

    orders = await assert_eventually(planned, timeout=30)
    placed = {a for a, o in orders.items() if o.HasField("slot")}
    assert placed == {"t-2", "t-6"}  # the two riskiest
    for asset in ("t-1", "t-3", "t-4", "t-5"):
        assert orders[asset].state == S.WORK_ORDER_STATE_PROPOSED
        assert orders[asset].unplaced.reason == S.UNPLACED_REASON_NO_CAPACITY_BEFORE_FAILURE
        assert "full" in orders[asset].unplaced.detail
    assert orders["t-7"].unplaced.reason == S.UNPLACED_REASON_NO_WINDOW_BEFORE_FAILURE
    assert orders["t-8"].unplaced.reason == S.UNPLACED_REASON_NO_MASTER_DATA
    # Both placed jobs fit the one crew lane one after the other, inside the window.
    slots = sorted((orders[a].slot for a in placed), key=lambda x: x.start_time.seconds)
    assert slots[0].end_time.seconds <= slots[1].start_time.seconds
    assert {x.crew_id for x in slots} == {f"{plant}-mech"}

    # Every unplaced order is audited with its reason.
    async with s.store.reader() as conn:
        entries = [e async for e in audit.entries(conn)]
    unplaced = {
        e.subject: e.details["unplaced_reason"]
        for e in entries
        if e.action == "work_order.unplaced"
    }
    for asset in ("t-1", "t-3", "t-4", "t-5", "t-7", "t-8"):
        assert unplaced[f"work_order/{orders[asset].id}"] == S.UnplacedReason.Name(
            orders[asset].unplaced.reason
        ).removeprefix("UNPLACED_REASON_")

    # More capacity: the waiting work is placed.
    await s.stub.UpsertCrews(
        S.UpsertCrewsRequest(
            idempotency_key=key(),
            crews=[S.Crew(crew_id=f"{plant}-mech", plant=plant, skill="mechanical", capacity=3)],
        )
    )

    async def replanned() -> None:
        orders = {o.asset_id: o for o in await orders_of(s, plant=plant)}
        assert {a for a, o in orders.items() if o.HasField("slot")} == set(risks)

    await assert_eventually(replanned, timeout=30)


async def test_decisions_that_open_nothing_are_listed_and_sealed_in_the_audit_chain(
    scheduler: Scheduler,
) -> None:
    s = scheduler
    now = datetime.now(UTC)
    await publish_predictions(
        s.inference,
        [
            prediction("quiet-1", 0.1, now - timedelta(minutes=2)),
            prediction("quiet-1", 0.2, now - timedelta(minutes=1)),
            prediction("quiet-1", 0.9, now, shadow=True),
        ],
    )

    async def sealed() -> list[audit.AuditEntry]:
        async with s.store.reader() as conn:
            entries = [e async for e in audit.entries(conn)]
        rolled = [e for e in entries if e.action == "policy.decisions.recorded"]
        assert sum(e.details["count"] for e in rolled) >= 3
        return rolled

    rolled = await assert_eventually(sealed, timeout=20)
    decided = await decisions_of(s, "quiet-1")
    assert [d.reason for d in decided] == ["SHADOW", "BELOW_THRESHOLD", "BELOW_THRESHOLD"]
    assert await orders_of(s, asset_id="quiet-1") == []
    # The digest in the audit entry covers exactly the stored rows.
    entry = rolled[0]
    async with s.store.reader() as conn:
        rows = await adapters.decisions_after(
            conn, entry.details["from_seq"] - 1, entry.details["count"]
        )
        assert adapters.digest_decisions(rows) == entry.details["sha256"]
        assert (await audit.verify(conn)).ok


async def test_a_completion_is_published_as_an_outcome_label(
    scheduler: Scheduler, listener: object
) -> None:
    s = scheduler
    labels: list[events_pb2.MaintenanceOutcomeRecorded] = []
    from prognos.api.common.v1.envelope_pb2 import Envelope

    async def on_label(msg: object) -> None:
        envelope = Envelope.FromString(msg.data)  # type: ignore[attr-defined]
        label = events_pb2.MaintenanceOutcomeRecorded()
        envelope.payload.Unpack(label)
        labels.append(label)

    await listener.subscribe("scheduler.outcome.recorded", cb=on_label)  # type: ignore[attr-defined]
    await setup_plant(s, "lab", [erp_asset("lab-1", "lab")])
    await publish_predictions(
        s.inference, [prediction("lab-1", 0.93, datetime.now(UTC), plant="lab")]
    )

    async def released() -> scheduler_pb2.WorkOrder:
        orders = await orders_of(s, asset_id="lab-1")
        assert [o.state for o in orders] == [S.WORK_ORDER_STATE_RELEASED]
        return orders[0]

    order = await assert_eventually(released, timeout=20)
    await s.stub.AcknowledgeWorkOrder(
        S.AcknowledgeWorkOrderRequest(
            idempotency_key=key(), work_order_id=order.id, erp_order_number="9"
        )
    )
    await s.stub.StartWorkOrder(
        S.StartWorkOrderRequest(idempotency_key=key(), work_order_id=order.id)
    )
    done = await s.stub.CompleteWorkOrder(
        S.CompleteWorkOrderRequest(
            idempotency_key=key(),
            work_order_id=order.id,
            outcome=S.MaintenanceOutcome(
                failure_found=True,
                failure_mode="bearing_wear",
                findings="outer race pitted",
                parts=[S.PartUsage(part_number="BRG-6205", quantity=2)],
            ),
        )
    )
    assert done.work_order.state == S.WORK_ORDER_STATE_COMPLETED
    await assert_eventually(lambda: len(labels) == 1, timeout=10)
    (label,) = labels
    assert (label.asset_id, label.asset_type, label.plant) == ("lab-1", "pump", "lab")
    assert label.failure_found and label.failure_mode == "bearing_wear"
    assert label.work_order_id == order.id
    assert label.cause.prediction_id == order.cause.prediction_id
    assert label.time == done.work_order.outcome.completed_at


async def test_a_watch_wakes_on_commit_and_resumes_after_its_position(
    start_scheduler: Callable[..., AbstractAsyncContextManager[Scheduler]],
) -> None:
    # Polling every 30 s: a change that shows within seconds was announced by its commit.
    async with start_scheduler(watch_poll_s=30.0) as s:
        call = s.stub.WatchWorkOrders(S.WatchWorkOrdersRequest())
        await publish_predictions(
            s.inference, [prediction("w-1", 0.9, datetime.now(UTC), plant="w")]
        )
        first = await asyncio.wait_for(call.read(), 10)
        call.cancel()
        assert first.event_type == "prognos.api.scheduler.v1.WorkOrderProposed"
        assert first.work_order.version == 1
        # The planner cannot place it: the next change, and only it, follows the position.
        call = s.stub.WatchWorkOrders(S.WatchWorkOrdersRequest(after_position=first.position))
        second = await asyncio.wait_for(call.read(), 10)
        call.cancel()
        assert second.position > first.position
        assert second.event_type == "prognos.api.scheduler.v1.WorkOrderUnplaced"
        assert second.work_order.id == first.work_order.id
        assert second.work_order.version == 2
        assert second.work_order.unplaced.reason == S.UNPLACED_REASON_NO_MASTER_DATA


async def test_a_policy_change_is_announced_for_inference(
    scheduler: Scheduler, listener: object
) -> None:
    s = scheduler
    announced: list[events_pb2.WorkOrderPolicySet] = []
    from prognos.api.common.v1.envelope_pb2 import Envelope

    async def on_policy(msg: object) -> None:
        envelope = Envelope.FromString(msg.data)  # type: ignore[attr-defined]
        event = events_pb2.WorkOrderPolicySet()
        assert envelope.payload.Unpack(event)
        announced.append(event)

    await listener.subscribe("scheduler.policy.set", cb=on_policy)  # type: ignore[attr-defined]
    policy = S.WorkOrderPolicy(open_probability=0.3, close_probability=0.1)
    policy.open_remaining_useful_life = 10.0
    policy.close_remaining_useful_life = 20.0
    await s.stub.SetWorkOrderPolicy(
        S.SetWorkOrderPolicyRequest(idempotency_key=key(), asset_type="press", policy=policy)
    )

    await assert_eventually(lambda: len(announced) == 1, timeout=10)
    (event,) = announced
    assert event.asset_type == "press"
    assert event.policy.open_probability == 0.3
    assert event.policy.open_remaining_useful_life == 10.0

"""Command and event handlers of the scheduler: one async function per command.

Each handler runs inside one unit of work (``UnitOfWork``): the events it appends, the read
models it projects, the outbox messages, the audit entries and the webhook deliveries it
queues all commit together or not at all.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prognos.api.inference.v1 import inference_pb2
from prognos.core import people
from prognos.core.errors import NotFoundError
from prognos.scheduler import adapters
from prognos.scheduler.domain import (
    MOVABLE_STATES,
    AssetData,
    AssetUpserted,
    Calendar,
    CrewData,
    CrewUpserted,
    EndpointData,
    MasterDataInvalidError,
    Outcome,
    PolicySet,
    Slot,
    Violation,
    WebhookEndpointConfigured,
    Window,
    WorkOrder,
    WorkOrderCompleted,
    risk_changed,
)
from prognos.scheduler.policy import (
    DecisionKind,
    Prediction,
    WorkOrderPolicy,
    decide,
    evolve,
    work_order_closed,
)
from prognos.scheduler.translate import (
    EVENT_TYPES,
    integration_event,
    outcome_label,
    policy_from_document,
    policy_set_event,
    policy_to_document,
    prediction_from_proto,
    work_order_to_proto,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from prognos.core.store import UnitOfWork

log = logging.getLogger(__name__)

DEFAULT_POLICY = WorkOrderPolicy()
_LABEL_NAMESPACE = uuid.UUID("1d7f3f0e-6b2c-4c1e-9f4e-2a6d8c9b0e51")


# --- work orders: saving ------------------------------------------------------------------


@dataclass
class WorkOrderWriter:
    """Saves work orders in one unit of work: events, read model, feed, outbox and audit.

    Call ``save`` for each changed order, then ``flush`` once to write the feed and queue
    the webhook deliveries in one go.
    """

    uow: UnitOfWork
    _erp_ids: dict[str, str] = field(default_factory=dict)
    _feed: list[adapters.FeedEntry] = field(default_factory=list)

    async def erp_id(self, asset_id: str) -> str:
        if asset_id not in self._erp_ids:
            asset = await adapters.get_asset(self.uow.conn, asset_id)
            self._erp_ids[asset_id] = asset.erp_id if asset else ""
        return self._erp_ids[asset_id]

    def known_erp_ids(self, assets: dict[str, AssetData]) -> None:
        self._erp_ids.update({k: a.erp_id for k, a in assets.items()})

    async def save(
        self, order: WorkOrder, *, reason: str, details: dict[str, Any] | None = None
    ) -> None:
        """Append the order's pending events and record what they mean."""
        events = list(order.pending)
        if not events:
            return
        base = order.base
        order.pending.clear()
        order.base = None
        expected = order.version - len(events)
        stored = await self.uow.append(adapters.stream_of("work_order", order.id), expected, events)
        erp_id = await self.erp_id(order.asset_id)
        # Fold the events one by one from the order as it was before them, so each feed
        # entry shows the order right after its event.
        replica = replace(base, pending=[]) if base is not None else None
        for record in stored:
            event = record.event
            if replica is None:
                replica = WorkOrder.replay([event])
            else:
                replica._apply(event)
            snapshot = work_order_to_proto(replica, erp_id).SerializeToString()
            self._feed.append(
                adapters.FeedEntry(
                    position=record.position,
                    event_id=record.event_id,
                    work_order_id=order.id,
                    plant=order.plant,
                    event_type=EVENT_TYPES[type(event)],
                    recorded_at=record.recorded_at,
                    snapshot=snapshot,
                )
            )
            queued = self.uow.publish(integration_event(replica, event, erp_id), cause=record)
            if isinstance(event, WorkOrderCompleted):
                label_id = str(uuid.uuid5(_LABEL_NAMESPACE, record.event_id))
                self.uow.publish(
                    outcome_label(replica, event.outcome),
                    cause=record,
                    message_id=label_id,
                )
            await self.uow.audit(
                "work_order." + queued.subject.rsplit(".", 1)[1],
                f"work_order/{order.id}",
                reason=reason,
                details={
                    "event_id": record.event_id,
                    "version": record.version,
                    "state": replica.state.value,
                    "asset_id": order.asset_id,
                    "plant": order.plant,
                    **(details or {}),
                },
            )
        await adapters.project_work_order(
            self.uow.conn, order, work_order_to_proto(order, erp_id).SerializeToString()
        )

    async def flush(self) -> int:
        """Write the collected feed entries; returns the webhook deliveries queued."""
        feed, self._feed = self._feed, []
        return await adapters.append_feed(self.uow.conn, feed)


async def load_work_order(uow: UnitOfWork, work_order_id: str) -> WorkOrder:
    """The work order folded from its events.

    Raises:
        NotFoundError: no such work order.
    """
    stored = await uow.load(adapters.stream_of("work_order", work_order_id))
    if not stored:
        raise NotFoundError("work_order", work_order_id, reason="WORK_ORDER_NOT_FOUND")
    return WorkOrder.replay([e.event for e in stored])


# --- master data -------------------------------------------------------------------------


def _raise_if(problems: list[Violation]) -> None:
    if problems:
        raise MasterDataInvalidError(problems)


async def upsert_assets(uow: UnitOfWork, assets: Sequence[AssetData], now: datetime) -> int:
    """Create or replace assets' master data; returns how many changed."""
    problems: list[Violation] = []
    seen: set[str] = set()
    for n, asset in enumerate(assets):
        problems += asset.violations(f"assets[{n}]")
        if asset.asset_id in seen:
            problems.append((f"assets[{n}].asset_id", f"{asset.asset_id!r} appears twice"))
        seen.add(asset.asset_id)
    _raise_if(problems)
    current = await adapters.all_assets(uow.conn, seen)
    changed: list[str] = []
    for asset in assets:
        if current.get(asset.asset_id) == asset:
            continue
        stream = adapters.stream_of("asset", asset.asset_id)
        version = len(await uow.load(stream)) if asset.asset_id in current else 0
        await uow.append(stream, version, [AssetUpserted(asset, now)])
        await adapters.upsert_asset(uow.conn, asset, version + 1)
        changed.append(asset.asset_id)
    if changed:
        await uow.audit(
            "asset.upserted",
            "assets",
            reason=f"ERP master data of {len(changed)} asset(s) created or changed",
            details={"count": len(changed), "asset_ids": changed[:200]},
        )
    return len(changed)


async def upsert_calendar(
    uow: UnitOfWork,
    plant: str,
    range_start: datetime,
    range_end: datetime,
    windows: Sequence[tuple[datetime, datetime, str]],
    now: datetime,
) -> list[Window]:
    """Replace a plant's windows in ``[range_start, range_end)``; returns the range's windows."""
    problems: list[Violation] = []
    if not plant:
        problems.append(("plant", "required"))
    _raise_if(problems)
    stream = adapters.stream_of("calendar", plant)
    stored = await uow.load(stream)
    calendar = Calendar.replay(plant, [e.event for e in stored])
    result = calendar.replace_range(range_start, range_end, windows, now)
    await uow.append(stream, calendar.version, calendar.pending)
    await adapters.replace_windows(uow.conn, plant, range_start, range_end, result)
    await uow.audit(
        "calendar.replaced",
        f"plant/{plant}",
        reason=f"maintenance windows from {range_start.isoformat()} to {range_end.isoformat()}",
        details={"windows": [w.id for w in result][:500], "count": len(result)},
    )
    return result


async def upsert_crews(uow: UnitOfWork, crews: Sequence[CrewData], now: datetime) -> int:
    """Create or replace crews; returns how many changed."""
    problems: list[Violation] = []
    seen: set[str] = set()
    for n, crew in enumerate(crews):
        problems += crew.violations(f"crews[{n}]")
        if crew.crew_id in seen:
            problems.append((f"crews[{n}].crew_id", f"{crew.crew_id!r} appears twice"))
        seen.add(crew.crew_id)
    _raise_if(problems)
    current = {c.crew_id: c for c in await adapters.all_crews(uow.conn)}
    changed: list[str] = []
    for crew in crews:
        if current.get(crew.crew_id) == crew:
            continue
        stream = adapters.stream_of("crew", crew.crew_id)
        version = len(await uow.load(stream)) if crew.crew_id in current else 0
        await uow.append(stream, version, [CrewUpserted(crew, now)])
        await adapters.upsert_crew(uow.conn, crew, version + 1)
        changed.append(crew.crew_id)
    if changed:
        await uow.audit(
            "crew.upserted",
            "crews",
            reason=f"{len(changed)} crew(s) created or changed",
            details={
                "crews": [
                    {
                        "crew_id": c.crew_id,
                        "plant": c.plant,
                        "skill": c.skill,
                        "capacity": c.capacity,
                    }
                    for c in crews
                    if c.crew_id in changed
                ][:200]
            },
        )
    return len(changed)


async def set_policy(
    uow: UnitOfWork, asset_type: str, policy: WorkOrderPolicy, now: datetime
) -> WorkOrderPolicy:
    if not asset_type:
        raise MasterDataInvalidError([("asset_type", "required")])
    stream = adapters.stream_of("policy", asset_type)
    version = len(await uow.load(stream))
    stored = await uow.append(stream, version, [PolicySet.of(asset_type, policy, now)])
    # Announced, so inference explains every prediction that can open a work order.
    for record in stored:
        uow.publish(policy_set_event(asset_type, policy), cause=record)
    document = policy_to_document(policy)
    await adapters.upsert_policy(uow.conn, asset_type, document, version + 1)
    await uow.audit(
        "policy.set",
        f"asset_type/{asset_type}",
        reason="work-order policy changed",
        details={"policy": document, "version": version + 1},
    )
    return policy


async def policy_for(conn: AsyncConnection, asset_type: str) -> tuple[WorkOrderPolicy, bool]:
    """The policy in force for an asset type, and whether it is the default."""
    document = await adapters.get_policy(conn, asset_type)
    if document is None:
        return DEFAULT_POLICY, True
    return policy_from_document(document), False


class PolicyBook:
    """The policies in force, read through a cache that expires after ``ttl_s``.

    Saves the decision path a query per prediction. A policy set in this process applies
    at once (``forget``); one set by another replica within ``ttl_s``.
    """

    def __init__(self, ttl_s: float = 2.0) -> None:
        self._ttl = ttl_s
        self._cache: dict[str, tuple[float, WorkOrderPolicy]] = {}

    async def get(self, conn: AsyncConnection, asset_type: str) -> WorkOrderPolicy:
        now = time.monotonic()
        cached = self._cache.get(asset_type)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        policy, _ = await policy_for(conn, asset_type)
        self._cache[asset_type] = (now, policy)
        return policy

    def forget(self, asset_type: str) -> None:
        self._cache.pop(asset_type, None)


async def upsert_endpoint(uow: UnitOfWork, endpoint: EndpointData, now: datetime) -> None:
    _raise_if(endpoint.violations("endpoint"))
    stream = adapters.stream_of("webhook_endpoint", endpoint.endpoint_id)
    version = len(await uow.load(stream))
    if version and await adapters.get_endpoint(uow.conn, endpoint.endpoint_id) == endpoint:
        return
    await uow.append(stream, version, [WebhookEndpointConfigured(endpoint, now)])
    await adapters.upsert_endpoint(uow.conn, endpoint, version + 1)
    await uow.audit(
        "webhook.configured",
        f"webhook_endpoint/{endpoint.endpoint_id}",
        reason="enabled" if endpoint.enabled else "disabled",
        details={"url": endpoint.url, "plants": list(endpoint.plants)},
    )


# --- predictions -------------------------------------------------------------------------


@dataclass(frozen=True)
class DecisionOutcome:
    """What one prediction did: the decision's kind and reason, and the order touched."""

    kind: str
    reason: str
    work_order_id: str | None = None
    changed: bool = False


async def on_prediction(
    uow: UnitOfWork,
    prediction: inference_pb2.Prediction,
    now: datetime,
    policies: PolicyBook | None = None,
) -> DecisionOutcome:
    """Decide what one prediction does: open a work order, update the open one, or nothing.

    Every prediction leaves a row in the decisions table, so each "not opened" is
    traceable; openings and updates are audited with their work order events.
    """
    p, cause = prediction_from_proto(prediction)
    common = {
        "prediction_id": p.id,
        "asset_id": p.asset_id,
        "failure_mode": p.failure_mode,
        "asset_type": p.asset_type,
        "prediction_at": p.at,
        "risk": p.risk,
        "model_version": p.model_version,
        "decided_at": now,
    }
    if not p.asset_id or not 0.0 <= p.risk <= 1.0:
        detail = "no asset id" if not p.asset_id else f"{_scored(p, digits=None)} outside [0, 1]"
        await adapters.record_decision(
            uow.conn, None, kind="NONE", reason="INVALID", detail=detail, **common
        )
        return DecisionOutcome("NONE", "INVALID")
    if prediction.shadow:
        await adapters.record_decision(
            uow.conn,
            None,
            kind="NONE",
            reason="SHADOW",
            detail="a challenger's prediction is recorded, never acted on",
            **common,
        )
        return DecisionOutcome("NONE", "SHADOW")
    if policies is not None:
        policy = await policies.get(uow.conn, p.asset_type)
    else:
        policy, _ = await policy_for(uow.conn, p.asset_type)
    state = await adapters.policy_state(uow.conn, p.asset_id, p.failure_mode)
    decision = decide(policy, state, p)
    await adapters.save_policy_state(uow.conn, p.asset_id, p.failure_mode, evolve(state, decision))
    await adapters.record_decision(uow.conn, decision, **common)
    details: dict[str, Any] = {
        "prediction_id": p.id,
        "model_version": p.model_version,
        "input_digest": p.input_digest,
        "failure_probability": p.failure_probability,
        "anomaly_score": p.anomaly_score,
        "rul": p.rul,
        "top_sensors": list(p.top_sensors),
        "time": p.at.isoformat(),
        "decision": decision.reason.value,
        "policy": policy_to_document(policy),
    }
    if prediction.HasField("window"):
        # The input window, so that an auditor finds the telemetry batches behind it.
        details["window_start"] = prediction.window.start_time.ToJsonString()
        details["window_end"] = prediction.window.end_time.ToJsonString()
    writer = WorkOrderWriter(uow)
    outcome = DecisionOutcome(decision.kind.value, decision.reason.value, decision.work_order_id)
    if decision.kind is DecisionKind.OPEN and decision.work_order_id is not None:
        existing = await adapters.versions_of(uow.conn, [decision.work_order_id])
        if existing:  # the same prediction again under another message id
            return outcome
        asset = await adapters.get_asset(uow.conn, p.asset_id)
        order = WorkOrder.propose(
            decision.work_order_id,
            asset_id=p.asset_id,
            failure_mode=p.failure_mode,
            asset_type=p.asset_type,
            plant=asset.plant if asset else prediction.plant,
            risk=decision.risk,
            due_at=decision.due_at,
            cause=cause,
            at=now,
        )
        await writer.save(
            order,
            reason=f"{decision.reason.value}: {_scored(p)}",
            details=details,
        )
        await writer.flush()
        return DecisionOutcome(outcome.kind, outcome.reason, outcome.work_order_id, True)
    if decision.kind is DecisionKind.UPDATE and decision.work_order_id is not None:
        stored = await uow.load(adapters.stream_of("work_order", decision.work_order_id))
        if not stored:
            return outcome
        order = WorkOrder.replay([e.event for e in stored])
        if not order.is_open:
            # Closed without the policy hearing of it: let the key forget the order.
            await adapters.save_policy_state(
                uow.conn,
                p.asset_id,
                p.failure_mode,
                work_order_closed(evolve(state, decision), order.id),
            )
            return outcome
        if not risk_changed(order, decision.risk, decision.due_at):
            return outcome
        order.update_risk(decision.risk, decision.due_at, cause, now)
        await writer.save(
            order,
            reason=f"later prediction: {_scored(p)}",
            details=details,
        )
        await writer.flush()
        return DecisionOutcome(outcome.kind, outcome.reason, outcome.work_order_id, True)
    return outcome


def _scored(p: Prediction, digits: int | None = 3) -> str:
    """What a prediction says, in words: its failure probability, or a health model's
    anomaly score (without the number when ``digits`` is ``None``)."""
    name, value = (
        ("failure probability", p.failure_probability)
        if p.anomaly_score is None
        else ("anomaly score", p.anomaly_score)
    )
    return name if digits is None else f"{name} {value:.{digits}f}"


# --- the ERP's transitions ---------------------------------------------------------------


async def _close_policy_key(uow: UnitOfWork, order: WorkOrder) -> None:
    state = await adapters.policy_state(uow.conn, order.asset_id, order.failure_mode)
    closed = work_order_closed(state, order.id)
    if closed != state:
        await adapters.save_policy_state(uow.conn, order.asset_id, order.failure_mode, closed)


async def acknowledge(
    uow: UnitOfWork,
    work_order_id: str,
    erp_order_number: str,
    now: datetime,
    *,
    acknowledged_by: str = "",
) -> WorkOrder:
    """The ERP took a released order over; the person who did is audited by reference only."""
    if not erp_order_number:
        raise MasterDataInvalidError([("erp_order_number", "required")])
    order = await load_work_order(uow, work_order_id)
    order.acknowledge(erp_order_number, now)
    writer = WorkOrderWriter(uow)
    details: dict[str, Any] = {"erp_order_number": erp_order_number}
    if acknowledged_by.strip():
        details["acknowledged_by"] = await people.person_ref(uow.conn, acknowledged_by.strip())
    await writer.save(
        order,
        reason=f"taken over by the ERP as order {erp_order_number}",
        details=details,
    )
    await writer.flush()
    return order


async def start(
    uow: UnitOfWork, work_order_id: str, started_at: datetime | None, now: datetime
) -> WorkOrder:
    order = await load_work_order(uow, work_order_id)
    order.start(started_at or now, now)
    writer = WorkOrderWriter(uow)
    await writer.save(order, reason="work on the asset began")
    await writer.flush()
    return order


async def complete(
    uow: UnitOfWork, work_order_id: str, outcome: Outcome, now: datetime
) -> WorkOrder:
    order = await load_work_order(uow, work_order_id)
    order.complete(outcome, now)
    writer = WorkOrderWriter(uow)
    found = "failure found" if outcome.failure_found else "no failure found"
    await writer.save(
        order,
        reason=f"work done, {found}",
        details={
            "failure_found": outcome.failure_found,
            "failure_mode": outcome.failure_mode,
            "completed_at": outcome.completed_at.isoformat(),
            "parts": [p.part_number for p in outcome.parts],
        },
    )
    await writer.flush()
    await _close_policy_key(uow, order)
    return order


async def cancel(uow: UnitOfWork, work_order_id: str, reason: str, now: datetime) -> WorkOrder:
    order = await load_work_order(uow, work_order_id)
    order.cancel(reason, now)
    writer = WorkOrderWriter(uow)
    await writer.save(order, reason=reason or "cancelled")
    await writer.flush()
    await _close_policy_key(uow, order)
    return order


# --- planning results --------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedChange:
    """What the planner wants for one work order, given the version it planned from."""

    work_order_id: str
    version: int
    slot: Slot | None = None
    unplaced_reason: str = ""
    unplaced_detail: str = ""
    release: bool = False


@dataclass(frozen=True)
class AppliedPlan:
    """How many work orders a plan scheduled, unplaced and released, and left as stale."""

    scheduled: int = 0
    unplaced: int = 0
    released: int = 0
    stale: int = 0

    def __add__(self, other: AppliedPlan) -> AppliedPlan:
        return AppliedPlan(
            self.scheduled + other.scheduled,
            self.unplaced + other.unplaced,
            self.released + other.released,
            self.stale + other.stale,
        )


async def apply_plan(
    uow: UnitOfWork,
    changes: Sequence[PlannedChange],
    now: datetime,
    plan_id: str,
    assets: dict[str, AssetData],
) -> AppliedPlan:
    """Write (part of) a plan's changes.

    Between the planner's read and this write, a work order can only have been cancelled
    (it is skipped: its time is simply left free) or had its risk updated by a prediction
    (it still takes its slot, which no other order of the plan uses, and the planner is
    asked to plan again with the new risk). Slots are only ever given out by the planner,
    so the plan's slots never collide with work committed meanwhile. Both count as stale.
    """
    streams = await adapters.load_streams(
        uow.conn, [adapters.stream_of("work_order", c.work_order_id) for c in changes]
    )
    writer = WorkOrderWriter(uow)
    writer.known_erp_ids(assets)
    counts: Counter[str] = Counter()
    for change in changes:
        events = streams.get(adapters.stream_of("work_order", change.work_order_id))
        if not events:
            continue
        order = WorkOrder.replay(events)
        if order.version != change.version:
            counts["stale"] += 1
        if order.state not in MOVABLE_STATES:
            continue
        details: dict[str, Any] = {"plan": plan_id}
        if change.slot is not None and change.slot != order.slot:
            order.schedule(change.slot, now)
            counts["scheduled"] += 1
            details.update(
                window_id=change.slot.window_id,
                crew_id=change.slot.crew_id,
                slot_start=change.slot.start.isoformat(),
                slot_end=change.slot.end.isoformat(),
                risk=order.risk,
                due_at=order.due_at.isoformat(),
            )
        if change.unplaced_reason:
            order.unplace(change.unplaced_reason, change.unplaced_detail, now)
            counts["unplaced"] += 1
            details.update(
                unplaced_reason=change.unplaced_reason,
                detail=change.unplaced_detail,
                due_at=order.due_at.isoformat(),
            )
        if change.release:
            order.release(now)
            counts["released"] += 1
        reason = (
            f"not placed: {change.unplaced_reason}"
            if change.unplaced_reason
            else "placed by the maintenance plan"
        )
        await writer.save(order, reason=reason, details=details)
    await writer.flush()
    return AppliedPlan(counts["scheduled"], counts["unplaced"], counts["released"], counts["stale"])


async def record_plan(uow: UnitOfWork, summary: dict[str, Any]) -> None:
    """Audit one planning pass: what it saw, how the solver did, what it changed."""
    await uow.audit(
        "schedule.planned", "schedule", reason="maintenance plan recomputed", details=summary
    )


# --- audit of decisions ------------------------------------------------------------------

DECISIONS_CURSOR = "decisions-audited"


async def audit_decisions(uow: UnitOfWork, limit: int = 50_000) -> int:
    """Seal the decisions recorded since the last call into one audit entry.

    The entry names the range of decision rows, counts them by kind and reason, and holds
    the SHA-256 of the rows, so an edited or deleted decision is detectable from the
    (hash-chained) audit log.

    Returns:
        The number of decisions sealed.
    """
    after = await adapters.get_cursor(uow.conn, DECISIONS_CURSOR)
    rows = await adapters.decisions_after(uow.conn, after, limit)
    if not rows:
        return 0
    by_reason = Counter(f"{r.kind}:{r.reason}" for r in rows)
    await uow.audit(
        "policy.decisions.recorded",
        "decisions",
        reason=f"{len(rows)} prediction(s) decided",
        details={
            "from_seq": rows[0].seq,
            "to_seq": rows[-1].seq,
            "count": len(rows),
            "by_reason": dict(sorted(by_reason.items())),
            "sha256": adapters.digest_decisions(rows),
        },
    )
    await adapters.set_cursor(uow.conn, DECISIONS_CURSOR, rows[-1].seq)
    return len(rows)

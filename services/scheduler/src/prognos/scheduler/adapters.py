"""The scheduler's tables: read models projected from its events, and its own records.

Projections (rebuildable from the event store): assets, windows, crews, policies, webhook
endpoints, work orders (with the serialized ``WorkOrder`` message of their latest state)
and the work order feed (one row per work order event, keyed by the event's global
position, which ``WatchWorkOrders`` and the webhooks read). Records of their own: the
policy decisions with the per-(asset, failure mode) policy state they fold into, the
idempotency keys of mutating calls, the webhook delivery outbox and named cursors.

Times are stored as integer microseconds since the epoch (UTC), which compare and index
the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

from prognos.core.events import DomainEvent, decode
from prognos.core.store import events_table, new_metadata, upsert_insert
from prognos.scheduler.domain import (
    AssetData,
    CrewData,
    EndpointData,
    Slot,
    Window,
    WorkOrder,
    WorkOrderState,
)
from prognos.scheduler.policy import Decision, PolicyState

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

metadata = new_metadata()

_Id = BigInteger().with_variant(Integer(), "sqlite")

assets = Table(
    "assets",
    metadata,
    Column("asset_id", String(200), primary_key=True),
    Column("erp_id", String(200), nullable=False),
    Column("plant", String(200), nullable=False),
    Column("asset_type", String(128), nullable=False),
    Column("required_skill", String(128), nullable=False),
    Column("service_duration_h", Float, nullable=False),
    Column("description", Text, nullable=False),
    Column("criticality", Float, nullable=False),
    Column("downtime_cost_per_h", Float, nullable=False),
    Column("version", Integer, nullable=False),
    Index("ix_assets_plant", "plant"),
)

windows = Table(
    "windows",
    metadata,
    Column("window_id", String(255), primary_key=True),
    Column("plant", String(200), nullable=False),
    Column("start_us", BigInteger, nullable=False),
    Column("end_us", BigInteger, nullable=False),
    Column("note", Text, nullable=False),
    Index("ix_windows_plant_end", "plant", "end_us"),
)

crews = Table(
    "crews",
    metadata,
    Column("crew_id", String(200), primary_key=True),
    Column("plant", String(200), nullable=False),
    Column("skill", String(128), nullable=False),
    Column("capacity", Integer, nullable=False),
    Column("version", Integer, nullable=False),
)

policies = Table(
    "policies",
    metadata,
    Column("asset_type", String(128), primary_key=True),
    Column("policy", JSON, nullable=False),
    Column("version", Integer, nullable=False),
)

work_orders = Table(
    "work_orders",
    metadata,
    Column("work_order_id", String(64), primary_key=True),
    Column("asset_id", String(200), nullable=False),
    Column("failure_mode", String(128), nullable=False),
    Column("plant", String(200), nullable=False),
    Column("state", String(16), nullable=False),
    Column("risk", Float, nullable=False),
    Column("due_us", BigInteger, nullable=False),
    Column("window_id", String(255), nullable=True),
    Column("slot_start_us", BigInteger, nullable=True),
    Column("slot_end_us", BigInteger, nullable=True),
    Column("crew_id", String(200), nullable=True),
    Column("unplaced_reason", String(64), nullable=True),
    Column("version", Integer, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("snapshot", LargeBinary, nullable=False),
    Index("ix_work_orders_state", "state"),
    Index("ix_work_orders_asset", "asset_id", "created_us"),
    Index("ix_work_orders_created", "created_us", "work_order_id"),
)

work_order_feed = Table(
    "work_order_feed",
    metadata,
    Column("position", _Id, primary_key=True, autoincrement=False),
    Column("event_id", String(36), nullable=False),
    Column("work_order_id", String(64), nullable=False),
    Column("plant", String(200), nullable=False),
    Column("event_type", String(128), nullable=False),
    Column("recorded_us", BigInteger, nullable=False),
    Column("snapshot", LargeBinary, nullable=False),
    Index("ix_work_order_feed_plant", "plant", "position"),
)

decisions = Table(
    "decisions",
    metadata,
    Column("seq", _Id, primary_key=True, autoincrement=True),
    Column("prediction_id", String(128), nullable=False),
    Column("asset_id", String(200), nullable=False),
    Column("failure_mode", String(128), nullable=False),
    Column("asset_type", String(128), nullable=False),
    Column("prediction_us", BigInteger, nullable=False),
    Column("kind", String(8), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Column("risk", Float, nullable=False),
    Column("due_us", BigInteger, nullable=False),
    Column("work_order_id", String(64), nullable=True),
    Column("model_version", String(128), nullable=False),
    Column("decided_us", BigInteger, nullable=False),
    Index("ix_decisions_asset", "asset_id", "seq"),
)

policy_states = Table(
    "policy_states",
    metadata,
    Column("asset_id", String(200), nullable=False),
    Column("failure_mode", String(128), nullable=False),
    Column("armed", Boolean, nullable=False),
    Column("last_opened_us", BigInteger, nullable=True),
    Column("open_work_order_id", String(64), nullable=True),
    Column("last_prediction_us", BigInteger, nullable=True),
    PrimaryKeyConstraint("asset_id", "failure_mode"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("actor", String(255), nullable=False),
    Column("key", String(200), nullable=False),
    Column("method", String(64), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("response", LargeBinary, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("actor", "key"),
    Index("ix_idempotency_keys_created", "created_us"),
)

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("endpoint_id", String(100), primary_key=True),
    Column("url", Text, nullable=False),
    Column("plants", JSON, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("version", Integer, nullable=False),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("delivery_id", _Id, primary_key=True, autoincrement=True),
    Column("endpoint_id", String(100), nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_us", BigInteger, nullable=False),
    Column("delivered_us", BigInteger, nullable=True),
    Column("last_status", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_us", BigInteger, nullable=False),
    UniqueConstraint("endpoint_id", "position"),
    Index("ix_webhook_deliveries_pending", "endpoint_id", "delivered_us", "delivery_id"),
)

cursors = Table(
    "scheduler_cursors",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("position", BigInteger, nullable=False),
)


# --- time --------------------------------------------------------------------------------


def to_us(value: datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def stream_of(kind: str, key: str) -> str:
    """The event stream of an aggregate, e.g. ``work_order-<id>``."""
    return f"{kind}-{key}"


# --- master data -------------------------------------------------------------------------


async def upsert_asset(conn: AsyncConnection, asset: AssetData, version: int) -> None:
    values = {
        "erp_id": asset.erp_id,
        "plant": asset.plant,
        "asset_type": asset.asset_type,
        "required_skill": asset.required_skill,
        "service_duration_h": asset.service_duration_h,
        "description": asset.description,
        "criticality": asset.criticality,
        "downtime_cost_per_h": asset.downtime_cost_per_h,
        "version": version,
    }
    await _upsert(conn, assets, {"asset_id": asset.asset_id}, values)


def _asset(row: Any) -> AssetData:
    return AssetData(
        asset_id=row.asset_id,
        erp_id=row.erp_id,
        plant=row.plant,
        asset_type=row.asset_type,
        required_skill=row.required_skill,
        service_duration_h=row.service_duration_h,
        description=row.description,
        criticality=row.criticality,
        downtime_cost_per_h=row.downtime_cost_per_h,
    )


async def get_asset(conn: AsyncConnection, asset_id: str) -> AssetData | None:
    row = (await conn.execute(select(assets).where(assets.c.asset_id == asset_id))).first()
    return _asset(row) if row else None


async def all_assets(conn: AsyncConnection, ids: Iterable[str]) -> dict[str, AssetData]:
    wanted = sorted(set(ids))
    found: dict[str, AssetData] = {}
    for chunk in _chunks(wanted, 500):
        rows = await conn.execute(select(assets).where(assets.c.asset_id.in_(chunk)))
        found.update({r.asset_id: _asset(r) for r in rows})
    return found


async def replace_windows(
    conn: AsyncConnection,
    plant: str,
    range_start: datetime,
    range_end: datetime,
    new: Iterable[Window],
) -> None:
    await conn.execute(
        delete(windows).where(
            windows.c.plant == plant,
            windows.c.start_us >= to_us(range_start),
            windows.c.start_us < to_us(range_end),
        )
    )
    rows = [
        {
            "window_id": w.id,
            "plant": plant,
            "start_us": to_us(w.start),
            "end_us": to_us(w.end),
            "note": w.note,
        }
        for w in new
    ]
    if rows:
        await conn.execute(insert(windows), rows)


async def windows_ahead(conn: AsyncConnection, after: datetime) -> dict[str, list[Window]]:
    """Every plant's windows that end after ``after``, by plant, in start order."""
    rows = await conn.execute(
        select(windows).where(windows.c.end_us > to_us(after)).order_by(windows.c.start_us)
    )
    found: dict[str, list[Window]] = {}
    for r in rows:
        found.setdefault(r.plant, []).append(
            Window(r.window_id, from_us(r.start_us), from_us(r.end_us), r.note)
        )
    return found


async def upsert_crew(conn: AsyncConnection, crew: CrewData, version: int) -> None:
    values = {
        "plant": crew.plant,
        "skill": crew.skill,
        "capacity": crew.capacity,
        "version": version,
    }
    await _upsert(conn, crews, {"crew_id": crew.crew_id}, values)


async def all_crews(conn: AsyncConnection) -> list[CrewData]:
    rows = await conn.execute(select(crews).order_by(crews.c.crew_id))
    return [CrewData(r.crew_id, r.plant, r.skill, r.capacity) for r in rows]


async def upsert_policy(
    conn: AsyncConnection, asset_type: str, document: dict[str, Any], version: int
) -> None:
    await _upsert(
        conn,
        policies,
        {"asset_type": asset_type},
        {"policy": document, "version": version},
    )


async def get_policy(conn: AsyncConnection, asset_type: str) -> dict[str, Any] | None:
    value = await conn.scalar(select(policies.c.policy).where(policies.c.asset_type == asset_type))
    if value is None:
        return None
    return value if isinstance(value, dict) else json.loads(value)


async def upsert_endpoint(conn: AsyncConnection, endpoint: EndpointData, version: int) -> None:
    await _upsert(
        conn,
        webhook_endpoints,
        {"endpoint_id": endpoint.endpoint_id},
        {
            "url": endpoint.url,
            "plants": list(endpoint.plants),
            "enabled": endpoint.enabled,
            "version": version,
        },
    )


def _endpoint(row: Any) -> EndpointData:
    plants = row.plants if isinstance(row.plants, list) else json.loads(row.plants)
    return EndpointData(row.endpoint_id, row.url, tuple(plants), bool(row.enabled))


async def endpoints(conn: AsyncConnection, *, enabled_only: bool = True) -> list[EndpointData]:
    query = select(webhook_endpoints).order_by(webhook_endpoints.c.endpoint_id)
    if enabled_only:
        query = query.where(webhook_endpoints.c.enabled.is_(True))
    return [_endpoint(r) for r in await conn.execute(query)]


async def get_endpoint(conn: AsyncConnection, endpoint_id: str) -> EndpointData | None:
    row = (
        await conn.execute(
            select(webhook_endpoints).where(webhook_endpoints.c.endpoint_id == endpoint_id)
        )
    ).first()
    return _endpoint(row) if row else None


# --- work orders and their feed ----------------------------------------------------------


@dataclass(frozen=True)
class FeedEntry:
    """One work order change for the feed: its event's position and the order after it."""

    position: int
    event_id: str
    work_order_id: str
    plant: str
    event_type: str
    recorded_at: datetime
    snapshot: bytes


async def project_work_order(conn: AsyncConnection, order: WorkOrder, snapshot: bytes) -> None:
    """Write the work order's current state (the fold of its events) to its read model."""
    slot = order.slot
    values = {
        "asset_id": order.asset_id,
        "failure_mode": order.failure_mode,
        "plant": order.plant,
        "state": order.state.value,
        "risk": order.risk,
        "due_us": to_us(order.due_at),
        "window_id": slot.window_id if slot else None,
        "slot_start_us": to_us(slot.start) if slot else None,
        "slot_end_us": to_us(slot.end) if slot else None,
        "crew_id": slot.crew_id if slot else None,
        "unplaced_reason": order.unplaced.reason if order.unplaced else None,
        "version": order.version,
        "created_us": to_us(order.created_at),
        "updated_us": to_us(order.updated_at),
        "snapshot": snapshot,
    }
    await _upsert(conn, work_orders, {"work_order_id": order.id}, values)


async def append_feed(conn: AsyncConnection, entries: Sequence[FeedEntry]) -> int:
    """Add work order changes to the feed and queue them for every webhook that wants them.

    Returns:
        The number of webhook deliveries queued.
    """
    if not entries:
        return 0
    await conn.execute(
        insert(work_order_feed),
        [
            {
                "position": e.position,
                "event_id": e.event_id,
                "work_order_id": e.work_order_id,
                "plant": e.plant,
                "event_type": e.event_type,
                "recorded_us": to_us(e.recorded_at),
                "snapshot": e.snapshot,
            }
            for e in entries
        ],
    )
    targets = await endpoints(conn)
    now = to_us(datetime.now(UTC))
    rows = [
        {
            "endpoint_id": endpoint.endpoint_id,
            "position": e.position,
            "attempts": 0,
            "next_attempt_us": now,
            "created_us": now,
        }
        for e in entries
        for endpoint in targets
        if endpoint.covers(e.plant)
    ]
    if rows:
        await conn.execute(insert(webhook_deliveries), rows)
    return len(rows)


@dataclass(frozen=True)
class FeedRow:
    position: int
    event_id: str
    event_type: str
    recorded_at: datetime
    snapshot: bytes


async def read_feed(
    conn: AsyncConnection, after: int, limit: int, plant: str = ""
) -> list[FeedRow]:
    query = (
        select(work_order_feed)
        .where(work_order_feed.c.position > after)
        .order_by(work_order_feed.c.position)
        .limit(limit)
    )
    if plant:
        query = query.where(work_order_feed.c.plant == plant)
    return [
        FeedRow(r.position, r.event_id, r.event_type, from_us(r.recorded_us), r.snapshot)
        for r in await conn.execute(query)
    ]


async def load_streams(
    conn: AsyncConnection, stream_ids: Sequence[str]
) -> dict[str, list[DomainEvent]]:
    """The events of many streams in one query per 500, each stream oldest first."""
    found: dict[str, list[DomainEvent]] = {}
    for chunk in _chunks(sorted(set(stream_ids)), 500):
        rows = await conn.execute(
            select(
                events_table.c.stream_id,
                events_table.c.type,
                events_table.c.schema_version,
                events_table.c.data,
            )
            .where(events_table.c.stream_id.in_(chunk))
            .order_by(events_table.c.stream_id, events_table.c.version)
        )
        for r in rows:
            data = r.data if isinstance(r.data, dict) else json.loads(r.data)
            found.setdefault(r.stream_id, []).append(decode(r.type, r.schema_version, data))
    return found


async def work_order_snapshot(conn: AsyncConnection, work_order_id: str) -> bytes | None:
    value = await conn.scalar(
        select(work_orders.c.snapshot).where(work_orders.c.work_order_id == work_order_id)
    )
    return bytes(value) if value is not None else None


async def list_work_orders(
    conn: AsyncConnection,
    *,
    plant: str,
    asset_id: str,
    states: Sequence[str],
    before: tuple[int, str] | None,
    limit: int,
) -> list[tuple[int, str, bytes]]:
    """Work orders newest first: ``(created_us, id, snapshot)``, after the keyset ``before``."""
    query = select(work_orders.c.created_us, work_orders.c.work_order_id, work_orders.c.snapshot)
    if plant:
        query = query.where(work_orders.c.plant == plant)
    if asset_id:
        query = query.where(work_orders.c.asset_id == asset_id)
    if states:
        query = query.where(work_orders.c.state.in_(list(states)))
    if before is not None:
        created, wid = before
        query = query.where(
            or_(
                work_orders.c.created_us < created,
                and_(work_orders.c.created_us == created, work_orders.c.work_order_id < wid),
            )
        )
    query = query.order_by(
        work_orders.c.created_us.desc(), work_orders.c.work_order_id.desc()
    ).limit(limit)
    return [(r.created_us, r.work_order_id, bytes(r.snapshot)) for r in await conn.execute(query)]


@dataclass(frozen=True)
class OrderRow:
    """What the planner needs of a work order, from its read model."""

    work_order_id: str
    asset_id: str
    plant: str
    state: WorkOrderState
    risk: float
    due_at: datetime
    slot: Slot | None
    unplaced_reason: str | None
    version: int


def _order_row(r: Any) -> OrderRow:
    slot = None
    if r.window_id is not None:
        slot = Slot(r.window_id, from_us(r.slot_start_us), from_us(r.slot_end_us), r.crew_id)
    return OrderRow(
        work_order_id=r.work_order_id,
        asset_id=r.asset_id,
        plant=r.plant,
        state=WorkOrderState(r.state),
        risk=r.risk,
        due_at=from_us(r.due_us),
        slot=slot,
        unplaced_reason=r.unplaced_reason,
        version=r.version,
    )


_PLANNING_COLUMNS = [
    work_orders.c.work_order_id,
    work_orders.c.asset_id,
    work_orders.c.plant,
    work_orders.c.state,
    work_orders.c.risk,
    work_orders.c.due_us,
    work_orders.c.window_id,
    work_orders.c.slot_start_us,
    work_orders.c.slot_end_us,
    work_orders.c.crew_id,
    work_orders.c.unplaced_reason,
    work_orders.c.version,
]


async def orders_in_states(
    conn: AsyncConnection, states: Iterable[WorkOrderState]
) -> list[OrderRow]:
    rows = await conn.execute(
        select(*_PLANNING_COLUMNS)
        .where(work_orders.c.state.in_([s.value for s in states]))
        .order_by(work_orders.c.work_order_id)
    )
    return [_order_row(r) for r in rows]


async def versions_of(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for chunk in _chunks(sorted(ids), 500):
        rows = await conn.execute(
            select(work_orders.c.work_order_id, work_orders.c.version).where(
                work_orders.c.work_order_id.in_(chunk)
            )
        )
        found.update({r.work_order_id: r.version for r in rows})
    return found


# --- policy decisions --------------------------------------------------------------------


async def policy_state(conn: AsyncConnection, asset_id: str, failure_mode: str) -> PolicyState:
    row = (
        await conn.execute(
            select(policy_states).where(
                policy_states.c.asset_id == asset_id, policy_states.c.failure_mode == failure_mode
            )
        )
    ).first()
    if row is None:
        return PolicyState()
    return PolicyState(
        armed=bool(row.armed),
        last_opened_at=from_us(row.last_opened_us) if row.last_opened_us is not None else None,
        open_work_order_id=row.open_work_order_id,
        last_prediction_at=(
            from_us(row.last_prediction_us) if row.last_prediction_us is not None else None
        ),
    )


async def save_policy_state(
    conn: AsyncConnection, asset_id: str, failure_mode: str, state: PolicyState
) -> None:
    values = {
        "armed": state.armed,
        "last_opened_us": to_us(state.last_opened_at) if state.last_opened_at else None,
        "open_work_order_id": state.open_work_order_id,
        "last_prediction_us": to_us(state.last_prediction_at) if state.last_prediction_at else None,
    }
    await _upsert(conn, policy_states, {"asset_id": asset_id, "failure_mode": failure_mode}, values)


async def record_decision(
    conn: AsyncConnection,
    decision: Decision | None,
    *,
    prediction_id: str,
    asset_id: str,
    failure_mode: str,
    asset_type: str,
    prediction_at: datetime,
    risk: float,
    model_version: str,
    decided_at: datetime,
    kind: str = "",
    reason: str = "",
    detail: str = "",
) -> None:
    """Store one policy decision (or, with ``decision`` None, a prediction set aside)."""
    await conn.execute(
        insert(decisions).values(
            prediction_id=prediction_id,
            asset_id=asset_id,
            failure_mode=failure_mode,
            asset_type=asset_type,
            prediction_us=to_us(prediction_at),
            kind=decision.kind.value if decision else kind,
            reason=decision.reason.value if decision else reason,
            detail=decision.detail if decision else detail,
            risk=risk,
            due_us=to_us(decision.due_at) if decision else to_us(prediction_at),
            work_order_id=decision.work_order_id if decision else None,
            model_version=model_version,
            decided_us=to_us(decided_at),
        )
    )


@dataclass(frozen=True)
class DecisionRow:
    seq: int
    prediction_id: str
    asset_id: str
    failure_mode: str
    asset_type: str
    prediction_at: datetime
    kind: str
    reason: str
    detail: str
    risk: float
    work_order_id: str | None
    model_version: str
    decided_at: datetime

    def canonical(self) -> str:
        """The row as canonical JSON: what the audit digest of decisions covers."""
        return json.dumps(
            [
                self.seq,
                self.prediction_id,
                self.asset_id,
                self.failure_mode,
                self.asset_type,
                to_us(self.prediction_at),
                self.kind,
                self.reason,
                self.detail,
                self.risk,
                self.work_order_id,
                self.model_version,
                to_us(self.decided_at),
            ],
            separators=(",", ":"),
        )


def _decision(r: Any) -> DecisionRow:
    return DecisionRow(
        seq=r.seq,
        prediction_id=r.prediction_id,
        asset_id=r.asset_id,
        failure_mode=r.failure_mode,
        asset_type=r.asset_type,
        prediction_at=from_us(r.prediction_us),
        kind=r.kind,
        reason=r.reason,
        detail=r.detail,
        risk=r.risk,
        work_order_id=r.work_order_id,
        model_version=r.model_version,
        decided_at=from_us(r.decided_us),
    )


async def decisions_after(conn: AsyncConnection, after_seq: int, limit: int) -> list[DecisionRow]:
    rows = await conn.execute(
        select(decisions).where(decisions.c.seq > after_seq).order_by(decisions.c.seq).limit(limit)
    )
    return [_decision(r) for r in rows]


async def decisions_of(
    conn: AsyncConnection, asset_id: str, before_seq: int | None, limit: int
) -> list[DecisionRow]:
    query = select(decisions).where(decisions.c.asset_id == asset_id)
    if before_seq is not None:
        query = query.where(decisions.c.seq < before_seq)
    rows = await conn.execute(query.order_by(decisions.c.seq.desc()).limit(limit))
    return [_decision(r) for r in rows]


def digest_decisions(rows: Sequence[DecisionRow]) -> str:
    """SHA-256 over the canonical rows, one per line."""
    h = hashlib.sha256()
    for row in rows:
        h.update(row.canonical().encode())
        h.update(b"\n")
    return h.hexdigest()


# --- cursors and idempotency -------------------------------------------------------------


async def get_cursor(conn: AsyncConnection, name: str) -> int:
    value = await conn.scalar(select(cursors.c.position).where(cursors.c.name == name))
    return int(value or 0)


async def set_cursor(conn: AsyncConnection, name: str, position: int) -> None:
    await _upsert(conn, cursors, {"name": name}, {"position": position})


@dataclass(frozen=True)
class IdempotentResult:
    method: str
    request_hash: str
    response: bytes


async def find_idempotent(conn: AsyncConnection, actor: str, key: str) -> IdempotentResult | None:
    row = (
        await conn.execute(
            select(idempotency_keys).where(
                idempotency_keys.c.actor == actor, idempotency_keys.c.key == key
            )
        )
    ).first()
    return IdempotentResult(row.method, row.request_hash, bytes(row.response)) if row else None


async def remember_idempotent(
    conn: AsyncConnection, actor: str, key: str, method: str, request_hash: str, response: bytes
) -> None:
    await conn.execute(
        insert(idempotency_keys).values(
            actor=actor,
            key=key,
            method=method,
            request_hash=request_hash,
            response=response,
            created_us=to_us(datetime.now(UTC)),
        )
    )


async def forget_idempotent_before(conn: AsyncConnection, before: datetime) -> int:
    result = await conn.execute(
        delete(idempotency_keys).where(idempotency_keys.c.created_us < to_us(before))
    )
    return int(result.rowcount or 0)


# --- webhook deliveries ------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """A queued webhook delivery, with the feed row it carries."""

    delivery_id: int
    endpoint_id: str
    position: int
    attempts: int
    next_attempt_at: datetime
    event_id: str
    event_type: str
    recorded_at: datetime
    snapshot: bytes


async def pending_deliveries(conn: AsyncConnection, endpoint_id: str, limit: int) -> list[Delivery]:
    """The oldest undelivered deliveries of one endpoint, in position order."""
    d, f = webhook_deliveries, work_order_feed
    rows = await conn.execute(
        select(
            d.c.delivery_id,
            d.c.endpoint_id,
            d.c.position,
            d.c.attempts,
            d.c.next_attempt_us,
            f.c.event_id,
            f.c.event_type,
            f.c.recorded_us,
            f.c.snapshot,
        )
        .join(f, f.c.position == d.c.position)
        .where(d.c.endpoint_id == endpoint_id, d.c.delivered_us.is_(None))
        .order_by(d.c.delivery_id)
        .limit(limit)
    )
    return [
        Delivery(
            r.delivery_id,
            r.endpoint_id,
            r.position,
            r.attempts,
            from_us(r.next_attempt_us),
            r.event_id,
            r.event_type,
            from_us(r.recorded_us),
            bytes(r.snapshot),
        )
        for r in rows
    ]


async def endpoints_with_pending(conn: AsyncConnection) -> list[str]:
    d = webhook_deliveries
    rows = await conn.execute(
        select(d.c.endpoint_id).where(d.c.delivered_us.is_(None)).group_by(d.c.endpoint_id)
    )
    return [r.endpoint_id for r in rows]


async def mark_delivered(
    conn: AsyncConnection, delivery_id: int, status: int, attempts: int, at: datetime
) -> None:
    await conn.execute(
        update(webhook_deliveries)
        .where(webhook_deliveries.c.delivery_id == delivery_id)
        .values(delivered_us=to_us(at), last_status=status, attempts=attempts, last_error=None)
    )


async def mark_failed(
    conn: AsyncConnection,
    delivery_id: int,
    *,
    attempts: int,
    status: int | None,
    error: str,
    next_attempt_at: datetime,
) -> None:
    await conn.execute(
        update(webhook_deliveries)
        .where(webhook_deliveries.c.delivery_id == delivery_id)
        .values(
            attempts=attempts,
            last_status=status,
            last_error=error[:2000],
            next_attempt_us=to_us(next_attempt_at),
        )
    )


async def delivery_counts(conn: AsyncConnection) -> dict[str, tuple[int, int]]:
    """Per endpoint: (delivered, waiting)."""
    d = webhook_deliveries
    rows = await conn.execute(
        select(
            d.c.endpoint_id,
            func.count(d.c.delivered_us),
            func.count() - func.count(d.c.delivered_us),
        ).group_by(d.c.endpoint_id)
    )
    return {r[0]: (int(r[1]), int(r[2])) for r in rows}


# --- helpers -----------------------------------------------------------------------------


def _chunks(values: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


async def _upsert(
    conn: AsyncConnection, table: Table, key: dict[str, Any], values: dict[str, Any]
) -> None:
    """Insert the row with ``key``, or update it: one statement on SQLite and PostgreSQL."""
    statement = upsert_insert(conn, table).values(**key, **values)
    await conn.execute(statement.on_conflict_do_update(index_elements=list(key), set_=values))

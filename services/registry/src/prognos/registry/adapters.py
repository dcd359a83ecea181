"""The registry's read models: tables projected from its own and other services' events.

Each table is a projection updated in the transaction of the events it reflects, so it
can always be rebuilt from the event store. Rows carry the serialized protobuf of what the
API returns, next to the columns that queries filter and sort on.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    and_,
    delete,
    func,
    select,
    update,
)

from prognos.core.store import new_metadata, upsert_insert, utcnow

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

metadata = new_metadata()

#: Asset types as announced by the ingest service; the registry trains one model per type.
known_asset_types = Table(
    "known_asset_types",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("source_version", Integer, nullable=False),
    Column("definition", LargeBinary, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: Every model version, as ``ModelVersion`` protobuf without its aliases.
model_versions = Table(
    "model_versions",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("asset_type", String(128), nullable=False),
    Column("number", Integer, nullable=False),
    Column("status", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("stream_version", Integer, nullable=False),
    Column("idempotency_key", String(200), nullable=True, unique=True),
    Column("data", LargeBinary, nullable=False),
    Index("ix_model_versions_asset_type_number", "asset_type", "number", unique=True),
)

#: Which version holds each alias of each asset type now.
alias_holders = Table(
    "alias_holders",
    metadata,
    Column("asset_type", String(128), nullable=False),
    Column("alias", String(32), nullable=False),
    Column("model_version_id", String(200), nullable=False),
    Column("moved_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("asset_type", "alias"),
)

#: Every training run, as ``TrainingRun`` protobuf.
training_runs = Table(
    "training_runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("asset_type", String(128), nullable=False),
    Column("state", String(32), nullable=False),
    Column("trigger", String(32), nullable=False),
    Column("dataset_content_hash", String(80), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("owner", String(200), nullable=False),
    Column("stream_version", Integer, nullable=False),
    Column("idempotency_key", String(200), nullable=True, unique=True),
    Column("data", LargeBinary, nullable=False),
    Index("ix_training_runs_state_created_at", "state", "created_at"),
)

#: Dataset snapshots announced by the ingest service, as ``DatasetSnapshot`` protobuf.
dataset_snapshots = Table(
    "dataset_snapshots",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("asset_type", String(128), nullable=False),
    Column("content_hash", String(80), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Index("ix_dataset_snapshots_asset_type_created_at", "asset_type", "created_at"),
)

#: When each asset type is next retrained by the schedule.
retrain_schedule = Table(
    "retrain_schedule",
    metadata,
    Column("asset_type", String(128), primary_key=True),
    Column("next_run_at", DateTime(timezone=True), nullable=False),
)


def _upsert(conn: AsyncConnection, table: Table) -> Any:
    return upsert_insert(conn, table)


def _aware(value: datetime) -> datetime:
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --- asset types ---------------------------------------------------------------------------


async def upsert_asset_type(
    conn: AsyncConnection, name: str, source_version: int, definition: bytes
) -> bool:
    """Store an asset type's definition unless a newer version is already known.

    Returns:
        True when the row changed.
    """
    current = await conn.scalar(
        select(known_asset_types.c.source_version).where(known_asset_types.c.name == name)
    )
    if current is not None and current >= source_version:
        return False
    statement = _upsert(conn, known_asset_types).values(
        name=name, source_version=source_version, definition=definition, updated_at=utcnow()
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["name"],
            set_={k: statement.excluded[k] for k in ("source_version", "definition", "updated_at")},
        )
    )
    return True


async def list_asset_types(
    conn: AsyncConnection, *, after: str = "", limit: int = 1000
) -> list[tuple[str, int, bytes]]:
    """Known asset types sorted by name, after ``after``."""
    rows = await conn.execute(
        select(known_asset_types)
        .where(known_asset_types.c.name > after)
        .order_by(known_asset_types.c.name)
        .limit(limit)
    )
    return [(r.name, r.source_version, r.definition) for r in rows]


async def asset_type_definition(conn: AsyncConnection, name: str) -> bytes | None:
    """The serialized ``AssetType`` the ingest service announced, if any."""
    value: bytes | None = await conn.scalar(
        select(known_asset_types.c.definition).where(known_asset_types.c.name == name)
    )
    return value


# --- model versions ------------------------------------------------------------------------


async def next_version_number(conn: AsyncConnection, asset_type: str) -> int:
    """1 + the highest version number of the asset type (callers hold the writer lock)."""
    highest = await conn.scalar(
        select(func.max(model_versions.c.number)).where(model_versions.c.asset_type == asset_type)
    )
    return int(highest or 0) + 1


async def put_model_version(
    conn: AsyncConnection,
    *,
    model_version_id: str,
    asset_type: str,
    number: int,
    status: str,
    created_at: datetime,
    stream_version: int,
    data: bytes,
    idempotency_key: str = "",
) -> None:
    """Insert or replace the row of a model version."""
    values = {
        "id": model_version_id,
        "asset_type": asset_type,
        "number": number,
        "status": status,
        "created_at": created_at,
        "stream_version": stream_version,
        "data": data,
    }
    statement = _upsert(conn, model_versions).values(
        **values, idempotency_key=idempotency_key or None
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["id"],
            set_={k: statement.excluded[k] for k in ("status", "stream_version", "data")},
        )
    )


async def model_version_by_key(conn: AsyncConnection, idempotency_key: str) -> str | None:
    """The id of the version registered with this idempotency key, if any."""
    value: str | None = await conn.scalar(
        select(model_versions.c.id).where(model_versions.c.idempotency_key == idempotency_key)
    )
    return value


async def get_model_version(
    conn: AsyncConnection, model_version_id: str
) -> tuple[bytes, int] | None:
    """The serialized version and its stream version."""
    row = (
        await conn.execute(
            select(model_versions.c.data, model_versions.c.stream_version).where(
                model_versions.c.id == model_version_id
            )
        )
    ).first()
    return (row.data, row.stream_version) if row else None


async def list_model_versions(
    conn: AsyncConnection, *, asset_type: str, status: str, offset: int, limit: int
) -> list[bytes]:
    """Serialized versions, newest first."""
    query = select(model_versions.c.data)
    if asset_type:
        query = query.where(model_versions.c.asset_type == asset_type)
    if status:
        query = query.where(model_versions.c.status == status)
    rows = await conn.execute(
        query.order_by(model_versions.c.created_at.desc(), model_versions.c.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return [r.data for r in rows]


# --- aliases -------------------------------------------------------------------------------


async def set_alias_holder(
    conn: AsyncConnection, asset_type: str, alias: str, model_version_id: str, moved_at: datetime
) -> None:
    statement = _upsert(conn, alias_holders).values(
        asset_type=asset_type, alias=alias, model_version_id=model_version_id, moved_at=moved_at
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["asset_type", "alias"],
            set_={k: statement.excluded[k] for k in ("model_version_id", "moved_at")},
        )
    )


async def alias_holders_of(conn: AsyncConnection, asset_type: str) -> dict[str, str]:
    """``{alias: model version id}`` of one asset type."""
    rows = await conn.execute(
        select(alias_holders.c.alias, alias_holders.c.model_version_id).where(
            alias_holders.c.asset_type == asset_type
        )
    )
    return {r.alias: r.model_version_id for r in rows}


async def holders_of_alias(conn: AsyncConnection, alias: str) -> dict[str, str]:
    """``{asset type: model version id}`` of every asset type whose ``alias`` is held."""
    rows = await conn.execute(
        select(alias_holders.c.asset_type, alias_holders.c.model_version_id)
        .where(alias_holders.c.alias == alias)
        .order_by(alias_holders.c.asset_type)
    )
    return {r.asset_type: r.model_version_id for r in rows}


async def aliases_of_version(conn: AsyncConnection, model_version_id: str) -> list[str]:
    rows = await conn.execute(
        select(alias_holders.c.alias).where(alias_holders.c.model_version_id == model_version_id)
    )
    return sorted(r.alias for r in rows)


# --- training runs -------------------------------------------------------------------------


async def put_training_run(
    conn: AsyncConnection,
    *,
    run_id: str,
    asset_type: str,
    state: str,
    trigger: str,
    dataset_content_hash: str,
    created_at: datetime,
    owner: str,
    stream_version: int,
    data: bytes,
    idempotency_key: str = "",
) -> None:
    """Insert or replace the row of a training run."""
    statement = _upsert(conn, training_runs).values(
        id=run_id,
        asset_type=asset_type,
        state=state,
        trigger=trigger,
        dataset_content_hash=dataset_content_hash,
        created_at=created_at,
        owner=owner,
        stream_version=stream_version,
        data=data,
        idempotency_key=idempotency_key or None,
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["id"],
            set_={k: statement.excluded[k] for k in ("state", "owner", "stream_version", "data")},
        )
    )


async def training_run_by_key(conn: AsyncConnection, idempotency_key: str) -> str | None:
    value: str | None = await conn.scalar(
        select(training_runs.c.id).where(training_runs.c.idempotency_key == idempotency_key)
    )
    return value


async def get_training_run(conn: AsyncConnection, run_id: str) -> bytes | None:
    value: bytes | None = await conn.scalar(
        select(training_runs.c.data).where(training_runs.c.id == run_id)
    )
    return value


async def list_training_runs(
    conn: AsyncConnection, *, asset_type: str, state: str, offset: int, limit: int
) -> list[bytes]:
    """Serialized runs, newest first."""
    query = select(training_runs.c.data)
    if asset_type:
        query = query.where(training_runs.c.asset_type == asset_type)
    if state:
        query = query.where(training_runs.c.state == state)
    rows = await conn.execute(
        query.order_by(training_runs.c.created_at.desc(), training_runs.c.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return [r.data for r in rows]


async def runs_in_state(conn: AsyncConnection, state: str) -> list[tuple[str, str]]:
    """``(run id, owner)`` of every run in ``state``, oldest first."""
    rows = await conn.execute(
        select(training_runs.c.id, training_runs.c.owner)
        .where(training_runs.c.state == state)
        .order_by(training_runs.c.created_at, training_runs.c.id)
    )
    return [(r.id, r.owner) for r in rows]


async def active_run_of(conn: AsyncConnection, asset_type: str) -> str | None:
    """A queued or running run of the asset type, if any."""
    value: str | None = await conn.scalar(
        select(training_runs.c.id)
        .where(
            training_runs.c.asset_type == asset_type,
            training_runs.c.state.in_(("queued", "running")),
        )
        .limit(1)
    )
    return value


async def latest_run(
    conn: AsyncConnection, asset_type: str, *, state: str = "", trigger: str = ""
) -> tuple[str, datetime, bytes] | None:
    """``(id, created_at, serialized run)`` of the newest matching run."""
    conditions = [training_runs.c.asset_type == asset_type]
    if state:
        conditions.append(training_runs.c.state == state)
    if trigger:
        conditions.append(training_runs.c.trigger == trigger)
    row = (
        await conn.execute(
            select(training_runs.c.id, training_runs.c.created_at, training_runs.c.data)
            .where(and_(*conditions))
            .order_by(training_runs.c.created_at.desc(), training_runs.c.id.desc())
            .limit(1)
        )
    ).first()
    return (row.id, _aware(row.created_at), row.data) if row else None


# --- dataset snapshots ---------------------------------------------------------------------


async def put_dataset_snapshot(
    conn: AsyncConnection,
    *,
    snapshot_id: str,
    name: str,
    asset_type: str,
    content_hash: str,
    created_at: datetime,
    data: bytes,
) -> None:
    """Remember a snapshot (its content never changes, so a repeat is a no-op)."""
    await conn.execute(
        _upsert(conn, dataset_snapshots)
        .values(
            id=snapshot_id,
            name=name,
            asset_type=asset_type,
            content_hash=content_hash,
            created_at=created_at,
            data=data,
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )


async def get_dataset_snapshot(conn: AsyncConnection, snapshot_id: str) -> bytes | None:
    value: bytes | None = await conn.scalar(
        select(dataset_snapshots.c.data).where(
            (dataset_snapshots.c.id == snapshot_id) | (dataset_snapshots.c.name == snapshot_id)
        )
    )
    return value


async def newest_dataset_snapshot(conn: AsyncConnection, asset_type: str) -> bytes | None:
    value: bytes | None = await conn.scalar(
        select(dataset_snapshots.c.data)
        .where(dataset_snapshots.c.asset_type == asset_type)
        .order_by(dataset_snapshots.c.created_at.desc(), dataset_snapshots.c.id.desc())
        .limit(1)
    )
    return value


# --- retraining schedule -------------------------------------------------------------------


async def schedule_retrain(conn: AsyncConnection, asset_type: str, next_run_at: datetime) -> None:
    """Put the asset type on the schedule unless it is on it already."""
    await conn.execute(
        _upsert(conn, retrain_schedule)
        .values(asset_type=asset_type, next_run_at=next_run_at)
        .on_conflict_do_nothing(index_elements=["asset_type"])
    )


async def due_retrains(conn: AsyncConnection, now: datetime) -> list[str]:
    rows = await conn.execute(
        select(retrain_schedule.c.asset_type)
        .where(retrain_schedule.c.next_run_at <= now)
        .order_by(retrain_schedule.c.next_run_at)
    )
    return [r.asset_type for r in rows]


async def reschedule(conn: AsyncConnection, asset_type: str, next_run_at: datetime) -> None:
    await conn.execute(
        update(retrain_schedule)
        .where(retrain_schedule.c.asset_type == asset_type)
        .values(next_run_at=next_run_at)
    )


async def next_retrain_at(conn: AsyncConnection) -> datetime | None:
    value = await conn.scalar(select(func.min(retrain_schedule.c.next_run_at)))
    return _aware(value) if value is not None else None


async def unschedule(conn: AsyncConnection, asset_type: str) -> None:
    await conn.execute(delete(retrain_schedule).where(retrain_schedule.c.asset_type == asset_type))

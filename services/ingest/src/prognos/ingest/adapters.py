"""The ingest service's tables: read models projected from its events, and its own records.

Besides the projections of asset types, assets, labels and dataset snapshots, the ingest
database keeps what the telemetry path needs to be exactly-once without the event store:
the ledger of stored batches, the catalog of archive files, the quarantine and the
positions of its own stream followers.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    or_,
    select,
    tuple_,
    update,
)

from prognos.core.events import DomainEvent, encode
from prognos.core.store import new_metadata, upsert_insert, utcnow
from prognos.ingest.domain import (
    AssetRegistered,
    AssetSpec,
    AssetTypeRegistered,
    AssetTypeSpec,
    AssetTypeUpdated,
    DatasetSnapshotCreated,
    OutcomeRecorded,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

metadata = new_metadata()

_Id = BigInteger().with_variant(Integer(), "sqlite")

asset_types = Table(
    "asset_types",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("spec", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

assets = Table(
    "assets",
    metadata,
    Column("asset_id", String(200), primary_key=True),
    Column("plant", String(200), nullable=False),
    Column("asset_type", String(128), nullable=False),
    Column("erp_id", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("registered_at_us", BigInteger, nullable=False),
    Index("ix_assets_asset_type", "asset_type"),
)

labels = Table(
    "labels",
    metadata,
    Column("event_id", String(64), primary_key=True),
    Column("asset_id", String(200), nullable=False),
    Column("asset_type", String(128), nullable=False),
    Column("time_us", BigInteger, nullable=False),
    Column("failure_confirmed", Boolean, nullable=False),
    Column("source", String(255), nullable=False),
    Column("failure_mode", String(128), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    # When the asset was back in service after the failure; null when unknown.
    Column("repaired_at_us", BigInteger, nullable=True),
    Column("archived_path", String(512), nullable=True),
    Index("ix_labels_archived_path", "archived_path"),
)

telemetry_batches = Table(
    "telemetry_batches",
    metadata,
    Column("asset_id", String(200), nullable=False),
    Column("batch_id", String(200), nullable=False),
    Column("stream_sequence", BigInteger, nullable=False),
    Column("accepted_count", Integer, nullable=False),
    Column("quarantined_count", Integer, nullable=False),
    Column("first_time_us", BigInteger, nullable=False),
    Column("last_time_us", BigInteger, nullable=False),
    # When the telemetry stream stored the batch; NULL for batches archived before it was kept.
    Column("received_at_us", BigInteger, nullable=True),
    PrimaryKeyConstraint("asset_id", "batch_id"),
)

archive_files = Table(
    "archive_files",
    metadata,
    Column("path", String(512), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("asset_type", String(128), nullable=False),
    Column("asset_id", String(200), nullable=False),
    Column("day", String(10), nullable=False),
    Column("min_time_us", BigInteger, nullable=False),
    Column("max_time_us", BigInteger, nullable=False),
    Column("row_count", BigInteger, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("content_hash", String(80), nullable=False),
    Column("first_sequence", BigInteger, nullable=False),
    Column("last_sequence", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_archive_files_asset_type", "asset_type", "kind", "asset_id"),
)

follower_positions = Table(
    "follower_positions",
    metadata,
    Column("follower", String(128), primary_key=True),
    Column("stream_sequence", BigInteger, nullable=False),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("asset_id", String(200), nullable=False),
    Column("batch_id", String(200), nullable=False),
    Column("time_us", BigInteger, nullable=True),
    Column("channel", String(200), nullable=False),
    Column("value", Float, nullable=True),
    Column("reason", Integer, nullable=False),
    Column("detail", Text, nullable=False),
    Column("quarantined_at_us", BigInteger, nullable=False),
    Index("ix_quarantine_asset_reason", "asset_id", "reason", "id"),
    Index("ix_quarantine_reason", "reason", "id"),
)

quarantine_counts = Table(
    "quarantine_counts",
    metadata,
    Column("asset_id", String(200), nullable=False),
    Column("reason", Integer, nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("last_at_us", BigInteger, nullable=False),
    PrimaryKeyConstraint("asset_id", "reason"),
)

dataset_snapshots = Table(
    "dataset_snapshots",
    metadata,
    Column("snapshot_id", String(36), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("asset_type", String(128), nullable=False),
    Column("data", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("name"),
)


def asset_type_stream(name: str) -> str:
    return f"asset_type-{name}"


def asset_stream(asset_id: str) -> str:
    return f"asset-{asset_id}"


def snapshot_stream(name: str) -> str:
    return f"dataset_snapshot-{name}"


def _upsert(conn: AsyncConnection) -> Any:
    return functools.partial(upsert_insert, conn)


def _json(value: Any) -> Any:
    return value if isinstance(value, dict | list) else json.loads(value)


async def project(
    conn: AsyncConnection, event: DomainEvent, version: int, event_id: str = ""
) -> None:
    """Apply one event to the read models, in the writer's transaction."""
    if isinstance(event, AssetTypeRegistered | AssetTypeUpdated):
        _, _, data = encode(event)
        values = {
            "name": event.spec.name,
            "version": version,
            "spec": data["spec"],
            "updated_at": utcnow(),
        }
        statement = _upsert(conn)(asset_types).values(**values)
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=["name"],
                set_={k: statement.excluded[k] for k in ("version", "spec", "updated_at")},
            )
        )
    elif isinstance(event, AssetRegistered):
        await conn.execute(
            assets.insert().values(
                asset_id=event.spec.asset_id,
                plant=event.spec.plant,
                asset_type=event.spec.asset_type,
                erp_id=event.spec.erp_id,
                version=version,
                registered_at_us=event.registered_at_us,
            )
        )
    elif isinstance(event, OutcomeRecorded):
        await conn.execute(
            update(assets).where(assets.c.asset_id == event.asset_id).values(version=version)
        )
        await insert_label(
            conn,
            event_id=event_id,
            asset_id=event.asset_id,
            asset_type=event.asset_type,
            time_us=event.outcome.time_us,
            failure_confirmed=event.outcome.failure_confirmed,
            source=event.outcome.source,
            failure_mode=event.outcome.failure_mode,
            repaired_at_us=event.outcome.repaired_at_us,
        )
    elif isinstance(event, DatasetSnapshotCreated):
        _, _, data = encode(event)
        await conn.execute(
            dataset_snapshots.insert().values(
                snapshot_id=event.snapshot_id,
                name=event.name,
                asset_type=event.asset_type,
                data=data,
                created_at=utcnow(),
            )
        )


# --- asset types and assets ---------------------------------------------------------------

_SPEC = TypeAdapter(AssetTypeSpec)


async def list_asset_types(conn: AsyncConnection) -> list[tuple[AssetTypeSpec, int]]:
    """Every asset type with its stream version, by name."""
    rows = await conn.execute(select(asset_types).order_by(asset_types.c.name))
    return [(_SPEC.validate_python(_json(r.spec)), r.version) for r in rows]


async def asset_type_versions(conn: AsyncConnection) -> dict[str, int]:
    """The current version of every asset type."""
    rows = await conn.execute(select(asset_types.c.name, asset_types.c.version))
    return {r.name: r.version for r in rows}


@dataclass(frozen=True)
class AssetRow:
    """An asset as the read model holds it."""

    spec: AssetSpec
    version: int
    registered_at_us: int


def _asset_row(r: Any) -> AssetRow:
    return AssetRow(
        AssetSpec(r.asset_id, r.plant, r.asset_type, r.erp_id), r.version, r.registered_at_us
    )


async def get_assets(conn: AsyncConnection, asset_ids: Iterable[str]) -> dict[str, AssetRow]:
    """The registered assets among ``asset_ids``."""
    wanted = list(set(asset_ids))
    found: dict[str, AssetRow] = {}
    for start in range(0, len(wanted), 500):
        rows = await conn.execute(
            select(assets).where(assets.c.asset_id.in_(wanted[start : start + 500]))
        )
        found.update({r.asset_id: _asset_row(r) for r in rows})
    return found


async def all_assets(conn: AsyncConnection) -> list[AssetRow]:
    """Every registered asset."""
    return [_asset_row(r) for r in await conn.execute(select(assets))]


# --- labels --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelRow:
    """An outcome label as recorded."""

    event_id: str
    asset_id: str
    asset_type: str
    time_us: int
    failure_confirmed: bool
    source: str
    failure_mode: str
    repaired_at_us: int | None = None


async def insert_label(conn: AsyncConnection, **values: Any) -> None:
    """Record a label once; a label with a known event id is ignored."""
    statement = _upsert(conn)(labels).values(**values, recorded_at=utcnow(), archived_path=None)
    await conn.execute(statement.on_conflict_do_nothing(index_elements=["event_id"]))


async def unarchived_labels(conn: AsyncConnection, limit: int = 10_000) -> list[LabelRow]:
    """Labels not yet written to an archive file."""
    rows = await conn.execute(
        select(labels)
        .where(labels.c.archived_path.is_(None))
        .order_by(labels.c.asset_id, labels.c.time_us)
        .limit(limit)
    )
    return [
        LabelRow(
            r.event_id,
            r.asset_id,
            r.asset_type,
            r.time_us,
            r.failure_confirmed,
            r.source,
            r.failure_mode,
            r.repaired_at_us,
        )
        for r in rows
    ]


async def mark_labels_archived(conn: AsyncConnection, paths: dict[str, str]) -> None:
    """Record which archive file holds each label (event id -> path)."""
    for event_id, path in paths.items():
        await conn.execute(
            update(labels).where(labels.c.event_id == event_id).values(archived_path=path)
        )


# --- the ledger of stored batches ------------------------------------------------------------


@dataclass(frozen=True)
class StoredBatch:
    """A batch on the telemetry stream, as the ledger remembers it."""

    asset_id: str
    batch_id: str
    stream_sequence: int
    accepted_count: int
    quarantined_count: int
    first_time_us: int
    last_time_us: int
    received_at_us: int | None = None
    """When the stream stored it (its receipt); the reading times are the two above."""


async def find_batches(
    conn: AsyncConnection, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], StoredBatch]:
    """The stored batches among ``(asset_id, batch_id)`` keys."""
    found: dict[tuple[str, str], StoredBatch] = {}
    for start in range(0, len(keys), 200):
        chunk = keys[start : start + 200]
        rows = await conn.execute(
            select(telemetry_batches).where(
                tuple_(telemetry_batches.c.asset_id, telemetry_batches.c.batch_id).in_(chunk)
            )
        )
        for r in rows:
            found[(r.asset_id, r.batch_id)] = StoredBatch(
                r.asset_id,
                r.batch_id,
                r.stream_sequence,
                r.accepted_count,
                r.quarantined_count,
                r.first_time_us,
                r.last_time_us,
                r.received_at_us,
            )
    return found


async def record_batches(conn: AsyncConnection, batches: Sequence[StoredBatch]) -> None:
    """Add batches to the ledger; a batch already there keeps its first record."""
    if not batches:
        return
    rows = [b.__dict__ for b in batches]
    for start in range(0, len(rows), 500):
        statement = _upsert(conn)(telemetry_batches).values(rows[start : start + 500])
        await conn.execute(
            statement.on_conflict_do_nothing(index_elements=["asset_id", "batch_id"])
        )


# --- follower positions ----------------------------------------------------------------------


async def follower_position(conn: AsyncConnection, follower: str) -> int:
    """The last stream sequence ``follower`` has fully processed (0: none)."""
    value = await conn.scalar(
        select(follower_positions.c.stream_sequence).where(
            follower_positions.c.follower == follower
        )
    )
    return int(value or 0)


async def set_follower_position(conn: AsyncConnection, follower: str, sequence: int) -> None:
    statement = _upsert(conn)(follower_positions).values(
        follower=follower, stream_sequence=sequence
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["follower"], set_={"stream_sequence": sequence}
        )
    )


# --- the archive catalog ---------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveFile:
    """One immutable Parquet file of the archive."""

    path: str
    kind: str
    asset_type: str
    asset_id: str
    day: str
    min_time_us: int
    max_time_us: int
    row_count: int
    size_bytes: int
    content_hash: str
    first_sequence: int
    last_sequence: int


async def add_archive_files(conn: AsyncConnection, files: Sequence[ArchiveFile]) -> None:
    now = utcnow()
    rows = [{**f.__dict__, "created_at": now} for f in files]
    for start in range(0, len(rows), 300):
        await conn.execute(archive_files.insert(), rows[start : start + 300])


async def archive_paths(conn: AsyncConnection) -> set[str]:
    """The path of every catalogued file."""
    return set((await conn.execute(select(archive_files.c.path))).scalars())


async def select_archive_files(
    conn: AsyncConnection,
    asset_type: str,
    asset_ids: Sequence[str],
    start_us: int | None,
    end_us: int | None,
) -> list[ArchiveFile]:
    """Catalogued files of an asset type (and assets) overlapping ``[start_us, end_us)``."""
    query = select(archive_files).where(archive_files.c.asset_type == asset_type)
    if asset_ids:
        query = query.where(archive_files.c.asset_id.in_(list(asset_ids)))
    if start_us is not None:
        query = query.where(archive_files.c.max_time_us >= start_us)
    if end_us is not None:
        query = query.where(archive_files.c.min_time_us < end_us)
    rows = await conn.execute(query.order_by(archive_files.c.path))
    return [
        ArchiveFile(**{k: getattr(r, k) for k in ArchiveFile.__dataclass_fields__}) for r in rows
    ]


# --- quarantine ------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuarantineRow:
    """One quarantined reading (or whole column, or file line) as listed."""

    id: int
    asset_id: str
    batch_id: str
    time_us: int | None
    channel: str
    value: float | None
    reason: int
    detail: str
    quarantined_at_us: int


async def add_quarantine(
    conn: AsyncConnection,
    rows: Sequence[dict[str, Any]],
    counts: dict[tuple[str, int], int],
    at_us: int,
) -> None:
    """Insert listed readings and add to the per-asset, per-reason counters."""
    for start in range(0, len(rows), 500):
        await conn.execute(quarantine.insert(), list(rows[start : start + 500]))
    for (asset_id, reason), count in counts.items():
        statement = _upsert(conn)(quarantine_counts).values(
            asset_id=asset_id, reason=reason, count=count, last_at_us=at_us
        )
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=["asset_id", "reason"],
                set_={
                    "count": quarantine_counts.c.count + statement.excluded.count,
                    "last_at_us": statement.excluded.last_at_us,
                },
            )
        )


async def list_quarantine(
    conn: AsyncConnection,
    *,
    asset_id: str,
    reason: int,
    since_us: int | None,
    before_id: int | None,
    limit: int,
) -> list[QuarantineRow]:
    """Listed quarantined readings, newest first."""
    query = select(quarantine)
    if asset_id:
        query = query.where(quarantine.c.asset_id == asset_id)
    if reason:
        query = query.where(quarantine.c.reason == reason)
    if since_us is not None:
        query = query.where(quarantine.c.quarantined_at_us >= since_us)
    if before_id is not None:
        query = query.where(quarantine.c.id < before_id)
    rows = await conn.execute(query.order_by(quarantine.c.id.desc()).limit(limit))
    return [
        QuarantineRow(
            r.id,
            r.asset_id,
            r.batch_id,
            r.time_us,
            r.channel,
            r.value,
            r.reason,
            r.detail,
            r.quarantined_at_us,
        )
        for r in rows
    ]


async def quarantine_totals(
    conn: AsyncConnection, *, asset_id: str, reason: int, since_us: int | None
) -> list[tuple[str, int, int]]:
    """Exact ``(asset_id, reason, count)`` totals, by asset and reason."""
    query = select(quarantine_counts)
    if asset_id:
        query = query.where(quarantine_counts.c.asset_id == asset_id)
    if reason:
        query = query.where(quarantine_counts.c.reason == reason)
    if since_us is not None:
        query = query.where(quarantine_counts.c.last_at_us >= since_us)
    rows = await conn.execute(
        query.order_by(quarantine_counts.c.asset_id, quarantine_counts.c.reason)
    )
    return [(r.asset_id, r.reason, r.count) for r in rows]


# --- dataset snapshots -----------------------------------------------------------------------

_SNAPSHOT = TypeAdapter(DatasetSnapshotCreated)


async def get_snapshot(
    conn: AsyncConnection, *, snapshot_id: str = "", name: str = ""
) -> DatasetSnapshotCreated | None:
    """A snapshot by id or by name."""
    query = select(dataset_snapshots.c.data).where(
        or_(
            and_(dataset_snapshots.c.snapshot_id == snapshot_id, snapshot_id != ""),
            and_(dataset_snapshots.c.name == name, name != ""),
        )
    )
    data = await conn.scalar(query)
    return None if data is None else _SNAPSHOT.validate_python(_json(data))

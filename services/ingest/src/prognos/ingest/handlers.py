"""Command handlers of the ingest service: one async function per command."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from prognos.api.ingest.v1 import events_pb2
from prognos.core.errors import AlreadyExistsError, ConcurrencyError, NotFoundError
from prognos.ingest import adapters
from prognos.ingest.domain import (
    Asset,
    AssetInvalidError,
    AssetRegistered,
    AssetSpec,
    AssetType,
    AssetTypeRegistered,
    AssetTypeSpec,
    DatasetSnapshotCreated,
    Outcome,
    OutcomeRecorded,
    validate_asset,
    validate_snapshot_name,
)
from prognos.ingest.translate import (
    asset_to_proto,
    outcome_to_proto,
    snapshot_to_proto,
    spec_to_proto,
)
from prognos.ingest.units import check_spec_units

if TYPE_CHECKING:
    from prognos.core.store import UnitOfWork


@dataclass(frozen=True)
class RegisterAssetType:
    spec: AssetTypeSpec


@dataclass(frozen=True)
class UpdateAssetType:
    spec: AssetTypeSpec
    expected_version: int


async def _load(uow: UnitOfWork, name: str) -> AssetType | None:
    stored = await uow.load(adapters.asset_type_stream(name))
    return AssetType.replay([e.event for e in stored]) if stored else None


async def _save(uow: UnitOfWork, asset_type: AssetType, expected_version: int) -> None:
    stream = adapters.asset_type_stream(asset_type.spec.name)
    stored = await uow.append(stream, expected_version, asset_type.pending)
    for record in stored:
        event = record.event
        await adapters.project(uow.conn, event, record.version, record.event_id)
        registered = isinstance(event, AssetTypeRegistered)
        message_cls = events_pb2.AssetTypeRegistered if registered else events_pb2.AssetTypeUpdated
        uow.publish(message_cls(asset_type=spec_to_proto(asset_type.spec)), cause=record)
        await uow.audit(
            "asset_type.registered" if registered else "asset_type.updated",
            f"asset_type/{asset_type.spec.name}",
            reason="asset type declared" if registered else "asset type changed",
            details={
                "version": record.version,
                "event_id": record.event_id,
                "channels": [c.name for c in asset_type.spec.channels],
            },
        )
    asset_type.pending.clear()


async def register_asset_type(uow: UnitOfWork, command: RegisterAssetType) -> int:
    """Register a new asset type; returns its stream version (1)."""
    if await _load(uow, command.spec.name) is not None:
        raise AlreadyExistsError("asset_type", command.spec.name)
    asset_type = AssetType.register(command.spec)
    check_spec_units(command.spec)
    await _save(uow, asset_type, 0)
    return asset_type.version


async def update_asset_type(uow: UnitOfWork, command: UpdateAssetType) -> int:
    """Replace an asset type's declaration, if nobody changed it since ``expected_version``."""
    asset_type = await _load(uow, command.spec.name)
    if asset_type is None:
        raise NotFoundError("asset_type", command.spec.name)
    if asset_type.version != command.expected_version:
        raise ConcurrencyError(
            adapters.asset_type_stream(command.spec.name),
            command.expected_version,
            asset_type.version,
        )
    asset_type.update(command.spec)
    check_spec_units(command.spec)
    await _save(uow, asset_type, command.expected_version)
    return asset_type.version


async def get_asset_type(uow: UnitOfWork, name: str) -> AssetType:
    asset_type = await _load(uow, name)
    if asset_type is None:
        raise NotFoundError("asset_type", name)
    return asset_type


# --- assets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisterAsset:
    spec: AssetSpec


@dataclass(frozen=True)
class RecordOutcome:
    asset_id: str
    outcome: Outcome


async def _load_asset(uow: UnitOfWork, asset_id: str) -> Asset | None:
    stored = await uow.load(adapters.asset_stream(asset_id))
    return Asset.replay([e.event for e in stored]) if stored else None


async def _save_asset(
    uow: UnitOfWork, asset: Asset, expected_version: int, *, audit: bool = True
) -> None:
    stored = await uow.append(
        adapters.asset_stream(asset.spec.asset_id), expected_version, asset.pending
    )
    for record in stored:
        event = record.event
        await adapters.project(uow.conn, event, record.version, record.event_id)
        if isinstance(event, AssetRegistered):
            uow.publish(
                events_pb2.AssetRegistered(
                    asset=asset_to_proto(event.spec, event.registered_at_us)
                ),
                cause=record,
            )
            if not audit:
                continue
            await uow.audit(
                "asset.registered",
                f"asset/{event.spec.asset_id}",
                reason="asset declared",
                details={
                    "plant": event.spec.plant,
                    "asset_type": event.spec.asset_type,
                    "event_id": record.event_id,
                },
            )
        elif isinstance(event, OutcomeRecorded):
            uow.publish(
                outcome_to_proto(event.asset_id, event.asset_type, event.outcome),
                cause=record,
            )
            await uow.audit(
                "outcome.recorded",
                f"asset/{event.asset_id}",
                reason="failure confirmed" if event.outcome.failure_confirmed else "found healthy",
                details={
                    "time_us": event.outcome.time_us,
                    "source": event.outcome.source,
                    "failure_mode": event.outcome.failure_mode,
                    "repaired_at_us": event.outcome.repaired_at_us,
                    "event_id": record.event_id,
                },
            )
    asset.pending.clear()


async def register_asset(uow: UnitOfWork, command: RegisterAsset, now_us: int) -> Asset:
    """Register a machine of a known asset type; returns the asset (version 1)."""
    if not command.spec.asset_type or await _load(uow, command.spec.asset_type) is None:
        raise NotFoundError("asset_type", command.spec.asset_type)
    if await _load_asset(uow, command.spec.asset_id) is not None:
        raise AlreadyExistsError("asset", command.spec.asset_id)
    asset = Asset.register(command.spec, now_us)
    await _save_asset(uow, asset, 0)
    return asset


async def register_assets(
    uow: UnitOfWork, commands: list[RegisterAsset], now_us: int
) -> tuple[list[adapters.AssetRow], int]:
    """Register many machines in this transaction; returns them as stored and how many are new.

    Raises:
        AssetInvalidError: an asset breaks a rule (``field`` names it by position).
        NotFoundError: an asset type is not registered.
        AlreadyExistsError: an asset is registered with another plant, type or ERP id.
    """
    ids = [c.spec.asset_id for c in commands]
    for i, command in enumerate(commands):
        try:
            validate_asset(command.spec)
        except AssetInvalidError as e:
            raise AssetInvalidError(f"assets[{i}].{e.field}", e.description) from None
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        for i, asset_id in enumerate(ids):
            if asset_id in seen:
                raise AssetInvalidError(f"assets[{i}].asset_id", f"{asset_id!r} given twice")
            seen.add(asset_id)
    known_types = {spec.name for spec, _ in await adapters.list_asset_types(uow.conn)}
    for command in commands:
        if command.spec.asset_type not in known_types:
            raise NotFoundError("asset_type", command.spec.asset_type)
    existing = await adapters.get_assets(uow.conn, ids)
    stored: list[adapters.AssetRow] = []
    created = 0
    for command in commands:
        found = existing.get(command.spec.asset_id)
        if found is not None:
            if found.spec != command.spec:
                raise AlreadyExistsError("asset", command.spec.asset_id)
            stored.append(found)
            continue
        asset = Asset.register(command.spec, now_us)
        await _save_asset(uow, asset, 0, audit=False)
        stored.append(adapters.AssetRow(asset.spec, asset.version, asset.registered_at_us))
        created += 1
    if created:
        await uow.audit(
            "asset.registered",
            "asset/*",
            reason=f"{created} assets declared together",
            details={
                "asset_ids": [row.spec.asset_id for row in stored],
                "registered": created,
            },
        )
    return stored, created


async def get_asset(uow: UnitOfWork, asset_id: str) -> Asset:
    asset = await _load_asset(uow, asset_id)
    if asset is None:
        raise NotFoundError("asset", asset_id)
    return asset


async def record_outcome(uow: UnitOfWork, command: RecordOutcome) -> bool:
    """Record an outcome label of an asset; False when that label was recorded before."""
    return await record_outcomes(uow, command.asset_id, [command.outcome]) == [True]


async def record_outcomes(uow: UnitOfWork, asset_id: str, outcomes: list[Outcome]) -> list[bool]:
    """Record labels of one asset in this transaction; for each, whether it is new.

    A label known before (or given twice) is not recorded again. Each new label is an
    ``OutcomeRecorded`` event with its audit entry.
    """
    asset = await get_asset(uow, asset_id)
    version = asset.version
    added = [asset.record_outcome(outcome) for outcome in outcomes]
    if any(added):
        await _save_asset(uow, asset, version)
    return added


# --- dataset snapshots -----------------------------------------------------------------------


async def create_snapshot(uow: UnitOfWork, event: DatasetSnapshotCreated) -> int:
    """Freeze a snapshot; ALREADY_EXISTS when its name is taken. Returns its version (1)."""
    validate_snapshot_name(event.name)
    stream = adapters.snapshot_stream(event.name)
    if await uow.load(stream):
        raise AlreadyExistsError("dataset_snapshot", event.name)
    (record,) = await uow.append(stream, 0, [event])
    await adapters.project(uow.conn, event, record.version, record.event_id)
    uow.publish(
        events_pb2.DatasetSnapshotCreated(snapshot=snapshot_to_proto(event)),
        cause=record,
    )
    await uow.audit(
        "dataset_snapshot.created",
        f"dataset_snapshot/{event.name}",
        reason="dataset frozen for training",
        details={
            "snapshot_id": event.snapshot_id,
            "asset_type": event.asset_type,
            "content_hash": event.content_hash,
            "files": len(event.files),
            "rows": event.row_count,
        },
    )
    return record.version

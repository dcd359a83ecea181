"""Command handlers of the ingest service: one async function per command."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from prognos.api.ingest.v1 import events_pb2
from prognos.core.errors import AlreadyExistsError, ConcurrencyError, NotFoundError
from prognos.ingest import adapters
from prognos.ingest.domain import AssetType, AssetTypeRegistered, AssetTypeSpec
from prognos.ingest.translate import spec_to_proto

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
        await adapters.project(uow.conn, event, record.version)
        registered = isinstance(event, AssetTypeRegistered)
        message_cls = events_pb2.AssetTypeRegistered if registered else events_pb2.AssetTypeUpdated
        subject = "ingest.asset_type." + ("registered" if registered else "updated")
        uow.publish(subject, message_cls(asset_type=spec_to_proto(asset_type.spec)), cause=record)
        await uow.audit(
            subject.removeprefix("ingest."),
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
    await _save(uow, asset_type, command.expected_version)
    return asset_type.version


async def get_asset_type(uow: UnitOfWork, name: str) -> AssetType:
    asset_type = await _load(uow, name)
    if asset_type is None:
        raise NotFoundError("asset_type", name)
    return asset_type

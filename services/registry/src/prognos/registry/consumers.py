"""JetStream subscriptions of the registry: other services' events -> its read models."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prognos.api.ingest.v1 import events_pb2 as ingest_events
from prognos.core.bus import Subscription, subscription
from prognos.registry import adapters

if TYPE_CHECKING:
    from prognos.api.common.v1.envelope_pb2 import Envelope
    from prognos.core.store import UnitOfWork


async def on_asset_type_changed(
    uow: UnitOfWork,
    envelope: Envelope,
    event: ingest_events.AssetTypeRegistered | ingest_events.AssetTypeUpdated,
) -> None:
    """Learn (or re-learn) an asset type announced by the ingest service."""
    await adapters.upsert_asset_type(
        uow.conn,
        event.asset_type.name,
        envelope.version,
        event.asset_type.SerializeToString(deterministic=True),
    )


def subscriptions() -> list[Subscription]:
    return [
        subscription(
            "INGEST",
            "registry-on-asset-type",
            "ingest.asset_type.>",
            (ingest_events.AssetTypeRegistered, on_asset_type_changed),
            (ingest_events.AssetTypeUpdated, on_asset_type_changed),
        )
    ]

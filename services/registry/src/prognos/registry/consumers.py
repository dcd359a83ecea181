"""JetStream subscriptions of the registry: other services' events -> its read models and runs."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from prognos.api import wire
from prognos.api.inference.v1 import events_pb2 as inference_events
from prognos.api.ingest.v1 import events_pb2 as ingest_events
from prognos.core.bus import Subscription, subscription
from prognos.core.store import utcnow
from prognos.registry import adapters, handlers

if TYPE_CHECKING:
    from prognos.api.common.v1.envelope_pb2 import Envelope
    from prognos.core.config import Settings
    from prognos.core.store import UnitOfWork

#: A feature whose population stability index passes this is named as drifted.
PSI_DRIFT = 0.2


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


def subscriptions(settings: Settings) -> list[Subscription]:
    """The registry's durable consumers, with the schedule and drift settings bound in."""
    period = timedelta(seconds=settings.retrain_period_s)
    min_interval = timedelta(seconds=settings.drift_retrain_min_interval_s)

    async def on_dataset_snapshot(
        uow: UnitOfWork, envelope: Envelope, event: ingest_events.DatasetSnapshotCreated
    ) -> None:
        """Remember the snapshot; its asset type joins the retraining schedule."""
        retrain_at = utcnow() + period if period > timedelta(0) else None
        await handlers.record_dataset_snapshot(uow, event.snapshot, retrain_at)

    async def on_drift(
        uow: UnitOfWork, envelope: Envelope, event: inference_events.DriftDetected
    ) -> None:
        """Retrain the drifting asset type (the runner wakes on the commit)."""
        drifted = [
            f.feature for f in sorted(event.features, key=lambda f: -f.psi) if f.psi > PSI_DRIFT
        ]
        await handlers.drift_retrain(
            uow, event.asset_type, event.model_version, drifted, utcnow(), min_interval
        )

    return [
        subscription(
            wire.stream_of(ingest_events.AssetTypeRegistered),
            "registry-on-asset-type",
            wire.wildcard(ingest_events.AssetTypeRegistered, ingest_events.AssetTypeUpdated),
            (ingest_events.AssetTypeRegistered, on_asset_type_changed),
            (ingest_events.AssetTypeUpdated, on_asset_type_changed),
        ),
        subscription(
            wire.stream_of(ingest_events.DatasetSnapshotCreated),
            "registry-on-dataset-snapshot",
            wire.subject(ingest_events.DatasetSnapshotCreated),
            (ingest_events.DatasetSnapshotCreated, on_dataset_snapshot),
        ),
        subscription(
            wire.stream_of(inference_events.DriftDetected),
            "registry-on-drift",
            wire.subject(inference_events.DriftDetected),
            (inference_events.DriftDetected, on_drift),
        ),
    ]

"""JetStream subscriptions of the ingest service: other services' outcome labels."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prognos.api import wire
from prognos.api.ingest.v1 import events_pb2
from prognos.api.scheduler.v1 import events_pb2 as scheduler_events
from prognos.core.bus import Subscription, subscription
from prognos.ingest import adapters

if TYPE_CHECKING:
    from prognos.api.common.v1.envelope_pb2 import Envelope
    from prognos.core.store import UnitOfWork


def subscriptions() -> list[Subscription]:
    """Outcome labels from the scheduler, recorded once each; the archive writes them out."""

    async def on_outcome_label(
        uow: UnitOfWork, envelope: Envelope, event: events_pb2.OutcomeLabelRecorded
    ) -> None:
        await adapters.insert_label(
            uow.conn,
            event_id=envelope.id,
            asset_id=event.asset_id,
            asset_type=event.asset_type,
            time_us=event.time.ToMicroseconds(),
            failure_confirmed=event.failure_confirmed,
            source=event.source or f"event:{envelope.id}",
            failure_mode=event.failure_mode,
        )

    async def on_maintenance_outcome(
        uow: UnitOfWork, envelope: Envelope, event: scheduler_events.MaintenanceOutcomeRecorded
    ) -> None:
        await adapters.insert_label(
            uow.conn,
            event_id=envelope.id,
            asset_id=event.asset_id,
            asset_type=event.asset_type,
            time_us=event.time.ToMicroseconds(),
            failure_confirmed=event.failure_found,
            source=f"work-order:{event.work_order_id}",
            failure_mode=event.failure_mode,
        )

    stream = wire.stream_of(scheduler_events.MaintenanceOutcomeRecorded)
    return [
        subscription(
            stream,
            "ingest-on-outcome",
            # The whole stream: outcomes came as OutcomeLabelRecorded before they had their own.
            wire.streams()[stream].subjects[0],
            (events_pb2.OutcomeLabelRecorded, on_outcome_label),
            (scheduler_events.MaintenanceOutcomeRecorded, on_maintenance_outcome),
        )
    ]

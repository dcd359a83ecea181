"""JetStream subscriptions of the scheduler: the inference service's predictions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prognos.api import wire
from prognos.api.inference.v1 import events_pb2 as inference_events
from prognos.core.bus import Subscription, subscription
from prognos.scheduler import handlers
from prognos.scheduler.scheduling import Clock

if TYPE_CHECKING:
    from prognos.api.common.v1.envelope_pb2 import Envelope
    from prognos.core.store import UnitOfWork

DURABLE = "scheduler-on-prediction"


def subscriptions(clock: Clock, policies: handlers.PolicyBook) -> list[Subscription]:
    """Predictions, each decided once by the work-order policy."""

    async def on_prediction(
        uow: UnitOfWork, envelope: Envelope, event: inference_events.PredictionMade
    ) -> None:
        await handlers.on_prediction(uow, event.prediction, clock(), policies)

    return [
        subscription(
            wire.stream_of(inference_events.PredictionMade),
            DURABLE,
            wire.subject(inference_events.PredictionMade, "made"),
            (inference_events.PredictionMade, on_prediction),
        )
    ]

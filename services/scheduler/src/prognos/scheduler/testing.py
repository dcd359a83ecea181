"""Test and benchmark support: predictions as the inference service publishes them, ERP data.

Nothing in the service imports this module. It builds the messages an inference service
and an ERP would send, so tests and benchmarks drive the scheduler through JetStream and
gRPC exactly as production does.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from prognos.api.inference.v1 import events_pb2 as inference_events
from prognos.api.inference.v1 import inference_pb2
from prognos.api.scheduler.v1 import scheduler_pb2
from prognos.core import messaging

if TYPE_CHECKING:
    from nats.js import JetStreamContext


def prediction(
    asset_id: str,
    probability: float,
    at: datetime,
    *,
    asset_type: str = "pump",
    plant: str = "",
    prediction_id: str | None = None,
    model_version: str = "pump-model/3",
    rul_hours: float | None = None,
    shadow: bool = False,
) -> inference_pb2.Prediction:
    """A prediction as the inference service makes it."""
    message = inference_pb2.Prediction(
        prediction_id=prediction_id or str(uuid.uuid4()),
        asset_id=asset_id,
        asset_type=asset_type,
        plant=plant,
        failure_probability=probability,
        model_version=model_version,
        input_digest="sha256:" + uuid.uuid5(uuid.NAMESPACE_OID, f"{asset_id}{at}").hex * 2,
        shadow=shadow,
    )
    message.time.FromDatetime(at)
    message.made_at.FromDatetime(at)
    message.horizon.duration.FromTimedelta(timedelta(hours=48))
    message.top_sensors.add(channel="vibration", contribution=0.6, value=7.1)
    message.top_sensors.add(channel="bearing_temp", contribution=0.3, value=81.0)
    if rul_hours is not None:
        message.rul.duration.FromTimedelta(timedelta(hours=rul_hours))
    return message


def prediction_envelope(p: inference_pb2.Prediction) -> tuple[str, bytes]:
    """``(message id, bytes)`` of a PredictionMade in an Envelope, as inference sends it."""
    outgoing = _prediction_message(p)
    return outgoing.message_id, outgoing.data


def _prediction_message(p: inference_pb2.Prediction) -> messaging.Outgoing:
    return messaging.encode(
        inference_events.PredictionMade(prediction=p),
        producer="inference",
        kind="made",
        message_id=str(uuid.uuid4()),
        stream=f"asset-{p.asset_id}",
        actor="service:inference",
        correlation_id=str(uuid.uuid4()),
    )


async def publish_predictions(
    js: JetStreamContext, predictions: Iterable[inference_pb2.Prediction]
) -> int:
    """Publish predictions to JetStream and wait until it has stored every one."""
    futures = []
    for p in predictions:
        outgoing = _prediction_message(p)
        futures.append(
            await js.publish_async(outgoing.subject, outgoing.data, headers=outgoing.headers)
        )
    for future in futures:
        await future
    return len(futures)


def erp_asset(
    asset_id: str,
    plant: str,
    *,
    skill: str = "mechanical",
    hours: float = 4.0,
    criticality: float = 1.0,
    downtime_cost: float = 1000.0,
    asset_type: str = "pump",
) -> scheduler_pb2.ErpAsset:
    asset = scheduler_pb2.ErpAsset(
        asset_id=asset_id,
        erp_id=f"EQ-{asset_id}",
        plant=plant,
        asset_type=asset_type,
        required_skill=skill,
        criticality=criticality,
        downtime_cost_per_hour=downtime_cost,
    )
    asset.service_duration.FromTimedelta(timedelta(hours=hours))
    return asset


def calendar(
    plant: str,
    start: datetime,
    days: int,
    *,
    key: str,
    first_hour: int = 6,
    hours: int = 8,
) -> scheduler_pb2.UpsertCalendarRequest:
    """One maintenance window a day, ``hours`` long from ``first_hour`` (UTC), for ``days``."""
    day0 = start.replace(hour=0, minute=0, second=0, microsecond=0)
    request = scheduler_pb2.UpsertCalendarRequest(idempotency_key=key, plant=plant)
    request.range_start.FromDatetime(day0)
    request.range_end.FromDatetime(day0 + timedelta(days=days + 1))
    for d in range(days + 1):
        begin = day0 + timedelta(days=d, hours=first_hour)
        window = request.windows.add(note=f"day {d}")
        window.start_time.FromDatetime(begin)
        window.end_time.FromDatetime(begin + timedelta(hours=hours))
    return request

"""Publishing predictions straight to JetStream, and auditing the alerts they raise.

Predictions do not go through the outbox. They are the high-volume output of the service
(one per asset and reading), they change no aggregate, and they are a pure function of
the stream: the same window scored by the same model gives the same prediction, whose id
(the envelope id and ``Nats-Msg-Id``) is derived from the asset, model version and input
digest. So a prediction lost in a crash is made again, with the same id, by whoever
rebuilds the window from the stream, and JetStream drops a duplicate; meanwhile each one
costs a publish and an asynchronous acknowledgement instead of two database writes.

What the outbox guarantees for decisions is kept where a decision is made: a champion
prediction crossing the alert threshold writes an audit entry (prediction id, model
version, input digest, score, top sensors), batched per scoring round on a task of its
own, so scoring never waits for the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prognos.api import wire
from prognos.api.inference.v1 import events_pb2, inference_pb2
from prognos.core import messaging
from prognos.core.telemetry import trace_id_of

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from prognos.core.store import EventStore

log = logging.getLogger(__name__)

PRODUCER = "inference"
ACTOR = f"service:{PRODUCER}"
#: A champion's and a challenger's prediction subjects, rendered once: this is the hot path.
_SUBJECTS = {
    shadow: wire.subject(events_pb2.PredictionMade, "shadow" if shadow else "made")
    for shadow in (False, True)
}
_ACK_TIMEOUT_S = 10.0
_RETRIES = 3


@dataclass(frozen=True)
class OutgoingMessage:
    """A serialised event and its JetStream subject and headers."""

    subject: str
    data: bytes
    headers: dict[str, str]


def encode_prediction(
    prediction: inference_pb2.Prediction,
    *,
    causation_id: str = "",
    traceparent: str = "",
) -> OutgoingMessage:
    """The ``PredictionMade`` envelope of a prediction, ready to publish (thread-safe)."""
    outgoing = messaging.encode(
        events_pb2.PredictionMade(prediction=prediction),
        producer=PRODUCER,
        subject=_SUBJECTS[prediction.shadow],
        message_id=prediction.prediction_id,
        stream=f"asset/{prediction.asset_id}",
        actor=ACTOR,
        correlation_id=prediction.prediction_id,
        causation_id=causation_id,
        time=prediction.made_at,
        traceparent=traceparent,
    )
    return OutgoingMessage(outgoing.subject, outgoing.data, outgoing.headers)


class PredictionPublisher:
    """Publishes prediction events asynchronously and republishes what was not acknowledged.

    Args:
        js: JetStream context.
    """

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._confirming: set[asyncio.Task[None]] = set()
        self.published = 0
        self.failed = 0

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Send ``messages``; their acknowledgements are awaited on a task of their own."""
        if not messages:
            return
        futures = [
            await self._js.publish_async(m.subject, m.data, headers=m.headers) for m in messages
        ]
        task = asyncio.create_task(self._confirm(list(messages), futures))
        self._confirming.add(task)
        task.add_done_callback(self._confirming.discard)

    async def _confirm(self, messages: list[OutgoingMessage], futures: list[Any]) -> None:
        for attempt in range(1, _RETRIES + 1):
            results = await asyncio.gather(
                *(asyncio.wait_for(f, _ACK_TIMEOUT_S) for f in futures), return_exceptions=True
            )
            retry = [m for m, r in zip(messages, results, strict=True) if isinstance(r, Exception)]
            self.published += len(messages) - len(retry)
            if not retry:
                return
            if attempt == _RETRIES:
                self.failed += len(retry)
                log.error(
                    "%d predictions not acknowledged by JetStream after %d tries; they are "
                    "made again when their windows are rebuilt",
                    len(retry),
                    attempt,
                )
                return
            # The same Nats-Msg-Id: JetStream drops any that did arrive after all.
            messages = retry
            futures = [
                await self._js.publish_async(m.subject, m.data, headers=m.headers) for m in retry
            ]

    async def drain(self) -> None:
        """Wait for the acknowledgements still outstanding."""
        if self._confirming:
            await asyncio.gather(*list(self._confirming), return_exceptions=True)


@dataclass(frozen=True)
class Alert:
    """A champion prediction that crossed the alert threshold."""

    prediction: inference_pb2.Prediction
    previous_probability: float | None
    threshold: float
    traceparent: str = ""
    """The trace the prediction continues (its audit entry records that trace's id)."""


class AlertAuditor:
    """Writes an audit entry per alert, in one transaction per batch, off the scoring path."""

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._queue: asyncio.Queue[list[Alert]] = asyncio.Queue()
        self.audited = 0

    def submit(self, alerts: list[Alert]) -> None:
        """Queue alerts for auditing."""
        if alerts:
            self._queue.put_nowait(alerts)

    async def run(self) -> None:
        """Audit queued alerts until cancelled."""
        while True:
            batch = await self._queue.get()
            while not self._queue.empty():
                batch.extend(self._queue.get_nowait())
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("auditing %d alerts failed; retrying", len(batch))
                self._queue.put_nowait(batch)
                await asyncio.sleep(1.0)

    async def _write(self, alerts: list[Alert]) -> None:
        async with self._store.transaction(actor=ACTOR) as uow:
            for alert in alerts:
                p = alert.prediction
                await uow.audit(
                    "prediction.alert_raised",
                    f"asset/{p.asset_id}",
                    trace_id=trace_id_of(alert.traceparent),
                    reason=(
                        f"failure probability {p.failure_probability:.3f} reached the alert "
                        f"threshold {alert.threshold:g}"
                    ),
                    details={
                        "prediction_id": p.prediction_id,
                        "asset_type": p.asset_type,
                        "model_version": p.model_version,
                        "input_digest": p.input_digest,
                        "failure_probability": p.failure_probability,
                        "previous_probability": alert.previous_probability,
                        "time": p.time.ToJsonString(),
                        "window_start": p.window.start_time.ToJsonString(),
                        "window_end": p.window.end_time.ToJsonString(),
                        "top_sensors": [
                            {"channel": s.channel, "contribution": s.contribution}
                            for s in p.top_sensors
                        ],
                    },
                )
        self.audited += len(alerts)

    async def drain(self) -> None:
        """Write what is queued."""
        batch: list[Alert] = []
        while not self._queue.empty():
            batch.extend(self._queue.get_nowait())
        if batch:
            await self._write(batch)

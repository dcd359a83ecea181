"""The event bus: JetStream streams, the outbox relay and idempotent durable consumers.

Integration events leave a service only through its outbox. The relay publishes outbox rows
in order with ``Nats-Msg-Id`` set to the message id and marks them published once JetStream
has acknowledged them; a crash between the two re-publishes, and JetStream drops the
duplicate. Consumers pull from durable consumers with explicit acks and record every
processed message id in the same transaction as its effect, so a redelivery is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nats
from google.protobuf.message import DecodeError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from prognos.api.common.v1.envelope_pb2 import Envelope
from prognos.core.context import reset_actor, set_actor
from prognos.core.telemetry import extract_context

if TYPE_CHECKING:
    from google.protobuf.message import Message
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from prognos.core.config import Settings
    from prognos.core.store import EventStore, UnitOfWork

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("prognos.core.bus")

#: One stream per producing service, plus raw telemetry on its own.
STREAMS: dict[str, list[str]] = {
    "INGEST": ["ingest.>"],
    "REGISTRY": ["registry.>"],
    "INFERENCE": ["inference.>"],
    "SCHEDULER": ["scheduler.>"],
    "TELEMETRY": ["telemetry.>"],
}

DUPLICATE_WINDOW_S = 120.0


async def connect(settings: Settings, url: str | None = None, *, name: str | None = None) -> Client:
    """Connect to NATS with the service's credentials, retrying the first connection."""
    options: dict[str, Any] = {
        "servers": (url or settings.nats_url or "").split(","),
        "name": name or f"prognos-{settings.service}",
        "connect_timeout": 5,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
    }
    if settings.nats_user:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password
    return await nats.connect(**options)


async def ensure_stream(js: JetStreamContext, name: str, subjects: list[str] | None = None) -> None:
    """Create the stream if it does not exist (file storage, dedup window of two minutes)."""
    config = api.StreamConfig(
        name=name,
        subjects=subjects or STREAMS[name],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        duplicate_window=DUPLICATE_WINDOW_S,
    )
    try:
        await js.stream_info(name)
    except NotFoundError:
        await js.add_stream(config)


class _CrashPoint:
    """Fault injection for crash tests: SIGKILL this process at the n-th pass of a point."""

    def __init__(self, spec: str | None) -> None:
        self.point, self.at = None, 0
        if spec:
            point, _, count = spec.partition(":")
            self.point, self.at = point, int(count or 1)
        self.passes = 0

    def reached(self, point: str) -> None:
        if point != self.point:
            return
        self.passes += 1
        if self.passes >= self.at:
            os.kill(os.getpid(), signal.SIGKILL)


class OutboxRelay:
    """Publishes a service's outbox to JetStream, in order, exactly once per stream.

    Args:
        store: the service's event store (the outbox lives in its database).
        js: a JetStream context.
        batch_size: outbox rows published per round trip.
        poll_s: how often to look for work when not woken by a commit.
        crash_at: fault injection (``"before_publish:N"`` / ``"after_publish:N"``), tests only.
    """

    def __init__(
        self,
        store: EventStore,
        js: JetStreamContext,
        *,
        batch_size: int = 500,
        poll_s: float = 0.2,
        publish_timeout_s: float = 10.0,
        crash_at: str | None = None,
    ) -> None:
        self._store = store
        self._js = js
        self._batch_size = batch_size
        self._poll_s = poll_s
        self._timeout = publish_timeout_s
        self._crash = _CrashPoint(crash_at)
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        store.on_commit.append(self.notify)

    def notify(self) -> None:
        """Wake the relay: a transaction just queued messages."""
        self._wake.set()

    async def relay_once(self) -> int:
        """Publish one batch of unpublished messages; returns how many were published."""
        pending = await self._store.unpublished(self._batch_size)
        if not pending:
            return 0
        futures = []
        for _position, message in pending:
            self._crash.reached("before_publish")
            futures.append(
                await self._js.publish_async(
                    message.subject, message.payload, headers=dict(message.headers)
                )
            )
        acks = await asyncio.wait_for(asyncio.gather(*futures), self._timeout)
        for _ in acks:
            self._crash.reached("after_publish")
        await self._store.mark_published([position for position, _ in pending])
        self.published += len(pending)
        return len(pending)

    async def run(self) -> None:
        """Relay until ``stop``; transient NATS or database failures are retried."""
        backoff = self._poll_s
        while not self._stopping:
            try:
                while await self.relay_once() == self._batch_size:
                    pass
                backoff = self._poll_s
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("outbox relay failed; retrying in %.1fs", backoff, exc_info=True)
                backoff = min(backoff * 2, 5.0)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), backoff)
            except TimeoutError:
                pass

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="outbox-relay")

    async def stop(self) -> None:
        """Finish the round in flight, publish what is left once, and stop."""
        self._stopping = True
        self._wake.set()
        if self._task:
            await self._task
        try:
            await self.relay_once()
        except Exception:
            log.warning("final outbox relay round failed; messages stay queued", exc_info=True)


Handler = Callable[["UnitOfWork", "Envelope", "Message"], Awaitable[None]]


@dataclass(frozen=True)
class Subscription:
    """Which messages a durable consumer takes, and the handler of each payload type."""

    stream: str
    durable: str
    filter_subject: str
    handlers: Mapping[str, tuple[type[Message], Handler]]


def subscription(
    stream: str, durable: str, filter_subject: str, *handlers: tuple[type[Message], Handler]
) -> Subscription:
    """Build a ``Subscription`` from ``(message class, handler)`` pairs."""
    return Subscription(
        stream, durable, filter_subject, {cls.DESCRIPTOR.full_name: (cls, h) for cls, h in handlers}
    )


class Consumer:
    """A durable pull consumer that applies each integration event exactly once.

    Each message is handled inside one store transaction that also records its id in the
    tracking table; a message seen before is acknowledged without effect. Transient
    failures are negatively acknowledged with a growing delay; a message that cannot be
    read, or fails ``max_deliver`` times, is terminated and audited as poison.
    """

    def __init__(
        self,
        store: EventStore,
        js: JetStreamContext,
        sub: Subscription,
        *,
        batch_size: int = 100,
        max_deliver: int = 10,
        ack_wait_s: float = 30.0,
    ) -> None:
        self._store = store
        self._js = js
        self._sub = sub
        self._batch_size = batch_size
        self._max_deliver = max_deliver
        self._ack_wait = ack_wait_s
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.processed = 0

    @property
    def durable(self) -> str:
        return self._sub.durable

    async def run(self) -> None:
        await ensure_stream(self._js, self._sub.stream)
        psub = await self._js.pull_subscribe(
            self._sub.filter_subject,
            durable=self._sub.durable,
            stream=self._sub.stream,
            config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.EXPLICIT,
                max_deliver=self._max_deliver,
                ack_wait=self._ack_wait,
            ),
        )
        try:
            while not self._stopping:
                try:
                    messages = await psub.fetch(self._batch_size, timeout=0.5)
                except (NatsTimeoutError, TimeoutError):
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("fetch from %s failed", self._sub.durable, exc_info=True)
                    await asyncio.sleep(0.5)  # back off before asking the server again
                    continue
                for msg in messages:
                    await self._handle(msg)
        finally:
            try:
                await psub.unsubscribe()
            except Exception:  # the connection may already be closing
                log.debug("unsubscribe of %s failed", self._sub.durable, exc_info=True)

    async def _handle(self, msg: Msg) -> None:
        envelope = Envelope()
        try:
            envelope.ParseFromString(msg.data)
            entry = self._sub.handlers.get(envelope.type)
            if entry is None:
                await msg.ack()  # not for us: another event type on the same subject filter
                return
            cls, handler = entry
            payload = cls()
            if not envelope.payload.Unpack(payload):
                raise DecodeError(f"payload is not a {envelope.type}")
        except DecodeError as exc:
            await self._poison(msg, envelope.id or "", f"unreadable message: {exc}")
            return
        ctx = extract_context(msg.headers)
        with _tracer.start_as_current_span(
            f"{self._sub.durable} process", context=ctx, kind=SpanKind.CONSUMER
        ) as span:
            span.set_attribute("messaging.system", "nats")
            span.set_attribute("messaging.destination.name", msg.subject)
            span.set_attribute("messaging.message.id", envelope.id)
            span.set_attribute("messaging.consumer.group.name", self._sub.durable)
            token = set_actor(envelope.actor or None)
            try:
                async with self._store.transaction(
                    actor=envelope.actor or None,
                    correlation_id=envelope.correlation_id or None,
                    causation_id=envelope.id,
                ) as uow:
                    if await uow.track(self._sub.durable, envelope.id):
                        await handler(uow, envelope, payload)
                    else:
                        span.set_attribute("prognos.duplicate", True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                delivered = msg.metadata.num_delivered if msg.metadata else 1
                if delivered >= self._max_deliver:
                    await self._poison(msg, envelope.id, f"failed {delivered} times: {exc!r}")
                else:
                    log.warning("handler of %s failed; redelivering", envelope.type, exc_info=True)
                    await msg.nak(delay=min(0.2 * 2**delivered, 30.0))
                return
            finally:
                reset_actor(token)
        await msg.ack()
        self.processed += 1

    async def _poison(self, msg: Msg, message_id: str, reason: str) -> None:
        log.error("poison message on %s (%s): %s", msg.subject, self._sub.durable, reason)
        async with self._store.transaction() as uow:
            await uow.audit(
                "message.poisoned",
                f"consumer/{self._sub.durable}",
                reason=reason,
                details={"subject": msg.subject, "message_id": message_id},
            )
        await msg.term()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"consumer-{self._sub.durable}")

    async def stop(self) -> None:
        """Stop pulling; the message in hand is finished (and acked) first."""
        self._stopping = True
        if self._task:
            await self._task

"""The event bus: JetStream streams, the outbox relay and idempotent durable consumers.

Integration events leave a service only through its outbox. The relay publishes outbox rows
in order with ``Nats-Msg-Id`` set to the message id and marks them published once JetStream
has acknowledged them; a crash between the two re-publishes, and JetStream drops the
duplicate. A message the server refuses for good (larger than its max_payload, say) is
dead-lettered instead of retried forever: its row is kept with the reason and audited, and a
small record (never the payload) goes to ``<service>.outbox.dead_lettered``.

Consumers pull from durable consumers with explicit acks and record every processed message
id in the same transaction as its effect, so a redelivery is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nats
from nats.errors import MaxPayloadError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api
from nats.js.errors import APIError, BadRequestError, NotFoundError
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from prognos.api import wire
from prognos.api.common.v1.envelope_pb2 import Envelope, OutboxMessageDeadLettered
from prognos.core import messaging
from prognos.core.context import reset_actor, set_actor
from prognos.core.telemetry import extract_context

if TYPE_CHECKING:
    from google.protobuf.message import Message
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from prognos.core.config import Settings
    from prognos.core.store import EventStore, OutboxMessage, UnitOfWork

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("prognos.core.bus")

DUPLICATE_WINDOW_S = 120.0


async def connect(settings: Settings, url: str | None = None, *, name: str | None = None) -> Client:
    """Connect to NATS with the service's credentials, retrying the first connection.

    The credentials are the process's nkey seed file (its bus identity, see
    :mod:`prognos.core.busauth`) when one is configured, else a user and password; the
    seed is read by the client when the server asks for a signature and never logged.
    """
    options: dict[str, Any] = {
        "servers": (url or settings.nats_url or "").split(","),
        "name": name or f"prognos-{settings.service}",
        "connect_timeout": 5,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
    }
    if settings.nats_nkey_seed_file:
        options["nkeys_seed"] = str(settings.nats_nkey_seed_file)
    elif settings.nats_user:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password
    return await nats.connect(**options)


async def ensure_stream(js: JetStreamContext, name: str, subjects: list[str] | None = None) -> None:
    """Create the stream if it does not exist (file storage, dedup window of two minutes)."""
    config = api.StreamConfig(
        name=name,
        subjects=subjects or list(wire.streams()[name].subjects),
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        duplicate_window=DUPLICATE_WINDOW_S,
    )
    try:
        await js.stream_info(name)
    except NotFoundError:
        await js.add_stream(config)


#: JetStream's error code for a message larger than the stream's max_msg_size.
_JS_MESSAGE_TOO_LARGE = 10054


def dead_letter_subject(service: str) -> str:
    """Where a service's relay reports the outbox messages it dead-lettered.

    Under the service's own subjects, so its stream keeps the records.
    """
    return wire.subject(OutboxMessageDeadLettered, service=service)


def _wire_size(message: OutboxMessage) -> int:
    """Bytes the server counts against max_payload: the headers block and the payload."""
    if not message.headers:
        return len(message.payload)
    headers = sum(len(k) + len(v) + 4 for k, v in message.headers.items())  # "k: v\r\n"
    return len(b"NATS/1.0\r\n") + headers + 2 + len(message.payload)


def _permanent_refusal(error: BaseException) -> str | None:
    """Why the server will refuse this message on every retry too; None when it may not."""
    if isinstance(error, MaxPayloadError):
        return "larger than the server's max_payload"
    if isinstance(error, APIError) and (
        error.err_code == _JS_MESSAGE_TOO_LARGE or isinstance(error, BadRequestError)
    ):
        return f"refused by JetStream: {error.description} (error code {error.err_code})"
    return None


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
        poll_s: how often to look for work when no commit woke it. Every commit of this
            process that queues messages wakes the relay at once, so this is a safety net
            (rows written by another process); polling often costs an idle service a
            database round trip each time.
        crash_at: fault injection (``"before_publish:N"`` / ``"after_publish:N"``), tests only.
    """

    def __init__(
        self,
        store: EventStore,
        js: JetStreamContext,
        *,
        batch_size: int = 500,
        poll_s: float = 2.0,
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
        self.dead_lettered = 0
        store.on_commit.append(self.notify)

    def notify(self) -> None:
        """Wake the relay: a transaction just queued messages."""
        self._wake.set()

    async def relay_once(self) -> int:
        """Publish one batch of unpublished messages; returns how many it settled.

        Settled means published, or dead-lettered when the server refuses a message for good.
        A transient failure (no connection, a timeout) is raised after the rest of the batch
        is settled, and the messages it hit are retried.
        """
        pending = await self._store.unpublished(self._batch_size)
        if not pending:
            return 0
        # nats-py checks the payload alone against the server's max_payload, and a message
        # over it leaks the JetStream publisher's pending slot; the server counts headers too.
        max_payload = self._js._nc.max_payload
        sent: list[tuple[int, OutboxMessage]] = []
        futures = []
        refused: list[tuple[int, OutboxMessage, str]] = []
        for position, message in pending:
            size = _wire_size(message)
            if size > max_payload:
                reason = f"{size} bytes is larger than the server's max_payload of {max_payload}"
                refused.append((position, message, reason))
                continue
            self._crash.reached("before_publish")
            futures.append(
                await self._js.publish_async(
                    message.subject, message.payload, headers=dict(message.headers)
                )
            )
            sent.append((position, message))
        if futures:
            await asyncio.wait(futures, timeout=self._timeout)
        outcomes: list[tuple[int, OutboxMessage, object]] = []
        late: list[tuple[int, OutboxMessage]] = []
        for future, (position, message) in zip(futures, sent, strict=True):
            if future.done() and not future.cancelled():
                outcomes.append((position, message, future.exception() or future.result()))
            else:
                future.cancel()
                late.append((position, message))
        # nats-py drops JetStream's error replies to asynchronous publishes (a message over the
        # stream's max_msg_size), so the unanswered ones go again one at a time, where the
        # error is raised; JetStream drops any that it had stored after all as duplicates.
        for position, message in late:
            result: object
            try:
                result = await self._js.publish(
                    message.subject,
                    message.payload,
                    timeout=self._timeout,
                    headers=dict(message.headers),
                )
            except asyncio.CancelledError:
                raise
            except Exception as error:
                result = error
            outcomes.append((position, message, result))
            if isinstance(result, Exception) and _permanent_refusal(result) is None:
                break  # a transient failure: the rest waits for the next round
        published: list[int] = []
        transient: Exception | None = None
        for position, message, result in outcomes:
            if not isinstance(result, BaseException):
                self._crash.reached("after_publish")
                published.append(position)
            elif (reason := _permanent_refusal(result)) is not None:
                refused.append((position, message, reason))
            elif transient is None:
                transient = result if isinstance(result, Exception) else RuntimeError(repr(result))
        await self._store.mark_published(published)
        self.published += len(published)
        for position, message, reason in refused:
            await self._dead_letter(position, message, reason)
        if transient is not None:
            raise transient
        return len(pending)

    async def _dead_letter(self, position: int, message: OutboxMessage, reason: str) -> None:
        """Keep a refused message out of publication for good, and say so (never its payload)."""
        size = _wire_size(message)
        log.warning(
            "outbox message %s on %s (%d bytes) dead-lettered: %s",
            message.message_id,
            message.subject,
            size,
            reason,
        )
        await self._store.mark_dead_lettered(position, message, reason, size)
        self.dead_lettered += 1
        record = OutboxMessageDeadLettered(
            message_id=message.message_id,
            subject=message.subject,
            bytes=size,
            reason=reason,
            service=self._store.service,
        )
        # Same id on every try, so JetStream keeps one record however often this runs.
        outgoing = messaging.encode(
            record,
            producer=self._store.service,
            message_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"dead-lettered/{message.message_id}")),
            actor=f"service:{self._store.service}",
            causation_id=message.message_id,
        )
        # The row and its audit entry are the record that counts; this one tells watchers.
        try:
            await self._js.publish(
                outgoing.subject, outgoing.data, timeout=self._timeout, headers=outgoing.headers
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning(
                "dead-letter record of %s not published; the outbox row keeps it",
                message.message_id,
                exc_info=True,
            )

    async def run(self) -> None:
        """Relay until ``stop``; transient NATS or database failures are retried."""
        backoff = self._poll_s
        while not self._stopping:
            # Cleared before the round, not after: a commit during the round wakes the next.
            self._wake.clear()
            try:
                while await self.relay_once() == self._batch_size:
                    pass
                backoff = self._poll_s
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("outbox relay failed; retrying in %.1fs", backoff, exc_info=True)
                backoff = min(backoff * 2, 5.0)
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


@dataclass(frozen=True)
class _Work:
    """One decoded message and the handler of its event type."""

    msg: Msg
    envelope: Envelope
    handler: Handler
    payload: Message


class Consumer:
    """A durable pull consumer that applies each integration event exactly once.

    Each message is handled in a savepoint of the batch's store transaction that also
    records its id in the tracking table, and is acknowledged after the commit; a message
    seen before is acknowledged without effect. Transient failures are negatively
    acknowledged with a growing delay; a message that cannot be read, or fails
    ``max_deliver`` times, is terminated and audited as poison.
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
        self._types = {name: cls for name, (cls, _) in sub.handlers.items()}
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
                await self._handle_batch(messages)
        finally:
            try:
                await psub.unsubscribe()
            except Exception:  # the connection may already be closing
                log.debug("unsubscribe of %s failed", self._sub.durable, exc_info=True)

    async def _decode(self, msg: Msg) -> _Work | None:
        """The message's work, or ``None`` when it was settled here (not ours, refused)."""
        try:
            decoded = messaging.decode(msg.data, msg.subject, self._types)
        except messaging.EventRefusedError as refused:
            await self._poison(msg, refused.message_id, refused.reason)
            return None
        if decoded is None:
            await msg.ack()  # not for us: another event type on the same subject filter
            return None
        envelope, payload = decoded
        return _Work(msg, envelope, self._sub.handlers[envelope.type][1], payload)

    async def _handle_batch(self, messages: Sequence[Msg]) -> None:
        """Apply a fetched batch in one transaction, each message in a savepoint of its own.

        One commit for the batch instead of one per message; a message whose handler fails
        is rolled back alone and redelivered (or poisoned), the others commit. If the commit
        itself fails, every message of the batch is redelivered.
        """
        work = [w for w in [await self._decode(m) for m in messages] if w is not None]
        if not work:
            return
        failures: dict[int, Exception] = {}
        try:
            async with self._store.transaction() as uow:
                for i, item in enumerate(work):
                    error = await self._apply(uow, item)
                    if error is not None:
                        failures[i] = error
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("a batch of %s could not commit; redelivering", len(work), exc_info=True)
            failures = dict.fromkeys(range(len(work)), exc)
        for i, item in enumerate(work):
            error = failures.get(i)
            if error is None:
                await item.msg.ack()
                self.processed += 1
            else:
                await self._retry_or_poison(item, error)

    async def _apply(self, uow: UnitOfWork, item: _Work) -> Exception | None:
        """Run one message's handler in a savepoint, in the message's trace; its error, if any."""
        msg, envelope = item.msg, item.envelope
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
                async with uow.savepoint(
                    actor=envelope.actor or None,
                    correlation_id=envelope.correlation_id or None,
                    causation_id=envelope.id,
                ) as scoped:
                    if await scoped.track(self._sub.durable, envelope.id):
                        await item.handler(scoped, envelope, item.payload)
                    else:
                        span.set_attribute("prognos.duplicate", True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                return exc
            finally:
                reset_actor(token)
        return None

    async def _retry_or_poison(self, item: _Work, error: Exception) -> None:
        msg, envelope = item.msg, item.envelope
        delivered = msg.metadata.num_delivered if msg.metadata else 1
        if delivered >= self._max_deliver:
            await self._poison(msg, envelope.id, f"failed {delivered} times: {error!r}")
        else:
            log.warning(
                "handler of %s failed; redelivering",
                envelope.type,
                exc_info=(type(error), error, error.__traceback__),
            )
            await msg.nak(delay=min(0.2 * 2**delivered, 30.0))

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

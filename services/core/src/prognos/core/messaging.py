"""One way to put an integration event on the wire and one way to read it back.

Every integration event travels as a ``prognos.api.common.v1.Envelope`` whose payload is
the event message. ``encode`` builds the envelope, its subject (from the route the
contracts declare, ``prognos.api.wire``) and its headers (the message id JetStream
de-duplicates by, the payload type, and the current trace context, injected here and
nowhere else). ``decode`` reads one back and refuses, with a reason, an envelope that
cannot be read, that carries another payload than it names, or that claims a producer
other than the owner of its subject: a consumer never acts on a forged event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import DecodeError

from prognos.api import wire
from prognos.api.common.v1.envelope_pb2 import Envelope
from prognos.core.telemetry import current_traceparent

if TYPE_CHECKING:
    from collections.abc import Mapping

    from google.protobuf.message import Message
    from google.protobuf.timestamp_pb2 import Timestamp

__all__ = ["EventRefusedError", "Outgoing", "decode", "encode", "read_envelope"]

_TYPE_URL_PREFIX = "type.googleapis.com/"


@dataclass(frozen=True)
class Outgoing:
    """A serialised envelope, its subject and its NATS headers."""

    message_id: str
    subject: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


class EventRefusedError(ValueError):
    """An incoming message is not an event a consumer may act on; ``reason`` says why."""

    def __init__(self, reason: str, message_id: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.message_id = message_id


def encode(
    message: Message,
    *,
    producer: str,
    message_id: str,
    subject: str | None = None,
    kind: str | None = None,
    actor: str = "",
    correlation_id: str = "",
    causation_id: str = "",
    stream: str = "",
    version: int = 0,
    time: datetime | Timestamp | None = None,
    traceparent: str | None = None,
    tracestate: str = "",
) -> Outgoing:
    """The envelope of one event, ready to publish directly or through an outbox.

    Args:
        message: the public event message (one with a route in the contracts).
        producer: the publishing service; must own the subject.
        message_id: the envelope id and ``Nats-Msg-Id``: the same id for a retry.
        subject: the subject when the route needs more than ``kind`` to pick it.
        kind: for an event published on several subjects, the last token of this one.
        actor, correlation_id, causation_id, stream, version: the envelope's fields.
        time: when the change happened; now when omitted.
        traceparent: the trace context to carry; the current span's when omitted (safe to
            pass from a thread that has no span of its own).
        tracestate: W3C ``tracestate`` accompanying an explicit ``traceparent``.
    """
    if subject is None:
        subject = wire.subject(message, kind, service=producer)
    if traceparent is None:
        traceparent, tracestate = current_traceparent()
    full_name = message.DESCRIPTOR.full_name
    envelope = Envelope(
        id=message_id,
        type=full_name,
        schema_version=1,
        stream=stream,
        version=version,
        actor=actor,
        correlation_id=correlation_id,
        causation_id=causation_id,
        traceparent=traceparent,
        tracestate=tracestate,
        producer=producer,
        payload=AnyProto(type_url=_TYPE_URL_PREFIX + full_name, value=message.SerializeToString()),
    )
    if time is None:
        envelope.time.GetCurrentTime()
    elif isinstance(time, datetime):
        envelope.time.FromDatetime(time)
    else:
        envelope.time.CopyFrom(time)
    headers = {wire.MSG_ID_HEADER: message_id, wire.TYPE_HEADER: full_name}
    if traceparent:
        headers[wire.TRACEPARENT_HEADER] = traceparent
        if tracestate:
            headers[wire.TRACESTATE_HEADER] = tracestate
    return Outgoing(message_id, subject, envelope.SerializeToString(), headers)


def read_envelope(data: bytes, subject: str) -> Envelope:
    """The envelope of a message, checked against the owner of its subject.

    Raises:
        EventRefusedError: unreadable, or its producer is not the subject's owner.
    """
    envelope = Envelope()
    try:
        envelope.ParseFromString(data)
    except DecodeError as exc:
        raise EventRefusedError(f"unreadable message: {exc}") from None
    expected = wire.owner(subject)
    if expected is None or envelope.producer != expected:
        claimed = envelope.producer or "no producer"
        raise EventRefusedError(
            f"{claimed} is not the owner of {subject} ({expected or 'no service'})", envelope.id
        )
    return envelope


def decode(
    data: bytes, subject: str, types: Mapping[str, type[Message]] | None = None
) -> tuple[Envelope, Message] | None:
    """An incoming event's envelope and payload.

    Args:
        data: the message body.
        subject: the subject it came on.
        types: the payload classes wanted, by full name; another type gives ``None`` (not
            for this consumer). All routed events when omitted.

    Raises:
        EventRefusedError: unreadable, forged (producer), or a payload other than named.
    """
    envelope = read_envelope(data, subject)
    if types is None:
        try:
            cls = wire.message_class(envelope.type)
        except KeyError:
            return None
    else:
        found = types.get(envelope.type)
        if found is None:
            return None
        cls = found
    payload = cls()
    try:
        unpacked = envelope.payload.Unpack(payload)
    except DecodeError as exc:
        raise EventRefusedError(f"unreadable {envelope.type}: {exc}", envelope.id) from None
    if not unpacked:
        raise EventRefusedError(f"payload is not a {envelope.type}", envelope.id)
    return envelope, payload

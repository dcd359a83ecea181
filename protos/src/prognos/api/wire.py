"""The wire protocol of Prognos on NATS: subjects, streams, owners, headers and codecs.

Where an event travels is declared in the contracts (``prognos/api/common/v1/wire.proto``):
each ``events.proto`` names the streams of its service and each event message its route.
This module reads those declarations from the generated descriptors, so no service writes a
subject or stream name of its own, and holds what a descriptor cannot say: the header names,
the subject token codec for asset ids, and the codec of the columnar telemetry batch.

Hand-written, beside the generated code (``protos/generate.py`` leaves it alone).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import TYPE_CHECKING
from urllib.parse import unquote

import numpy as np

from prognos.api.common.v1 import audit_pb2, envelope_pb2, wire_pb2
from prognos.api.inference.v1 import events_pb2 as inference_events
from prognos.api.ingest.v1 import events_pb2 as ingest_events
from prognos.api.ingest.v1 import ingest_pb2
from prognos.api.registry.v1 import events_pb2 as registry_events
from prognos.api.scheduler.v1 import events_pb2 as scheduler_events

if TYPE_CHECKING:
    from collections.abc import Mapping

    from google.protobuf.descriptor import FileDescriptor
    from google.protobuf.message import Message

__all__ = [
    "ARCHIVE_SYNC_SUBJECT",
    "COUNTS_HEADER",
    "MEMBERSHIP_BUCKET",
    "MSG_ID_HEADER",
    "TRACEPARENT_HEADER",
    "TRACESTATE_HEADER",
    "TYPE_HEADER",
    "UNKNOWN_ASSET_TYPE",
    "WATERMARK_HEADER",
    "WEBHOOK_ENDPOINT_HEADER",
    "WEBHOOK_EVENT_TYPE_HEADER",
    "WEBHOOK_POSITION_HEADER",
    "WEBHOOK_SIGNATURE_HEADER",
    "WORK_ORDER_EVENTS",
    "ColumnError",
    "Route",
    "Stream",
    "batch_columns",
    "column_values",
    "decode_subject_token",
    "event_classes",
    "message_class",
    "owner",
    "parse_telemetry_subject",
    "quarantine_subject",
    "route",
    "stream_of",
    "streams",
    "subject",
    "subject_token",
    "subjects",
    "telemetry_subject",
    "timestamps",
    "wildcard",
]

# --- headers -------------------------------------------------------------------------------

#: JetStream's de-duplication id; the envelope id, or ``<asset_id>:<batch_id>`` for batches.
MSG_ID_HEADER = "Nats-Msg-Id"
#: Fully qualified name of the envelope's payload, to route without unpacking.
TYPE_HEADER = "Prognos-Type"
#: On a telemetry batch: the asset's watermark (newest reading accepted), in microseconds.
WATERMARK_HEADER = "Prognos-Watermark-Us"
#: On a telemetry batch: ``<accepted>,<quarantined>`` readings of the sent batch.
COUNTS_HEADER = "Prognos-Counts"
#: W3C Trace Context, carried in NATS headers as in HTTP ones.
TRACEPARENT_HEADER = "traceparent"
TRACESTATE_HEADER = "tracestate"

#: Webhook deliveries (HTTP): ``t=<unix seconds>,v1=<hex HMAC-SHA256>`` of the body.
WEBHOOK_SIGNATURE_HEADER = "Prognos-Signature"
#: Webhook deliveries: the work order event's type, its feed position and the endpoint id.
WEBHOOK_EVENT_TYPE_HEADER = "Prognos-Event-Type"
WEBHOOK_POSITION_HEADER = "Prognos-Position"
WEBHOOK_ENDPOINT_HEADER = "Prognos-Endpoint"

# --- subjects outside the event streams ----------------------------------------------------

#: Core NATS requests from ingest's servers to its archive writer: "store up to here now".
ARCHIVE_SYNC_SUBJECT = "_ingest.archive.sync"
#: Key-value bucket in which inference replicas announce themselves and split the assets.
MEMBERSHIP_BUCKET = "inference_replicas"
#: The asset type token of a quarantined batch whose asset is not registered.
UNKNOWN_ASSET_TYPE = "_unknown"

#: The events of a work order's life (scheduler replicas wake each other on them).
WORK_ORDER_EVENTS = (
    scheduler_events.WorkOrderProposed,
    scheduler_events.WorkOrderRiskUpdated,
    scheduler_events.WorkOrderScheduled,
    scheduler_events.WorkOrderUnplaced,
    scheduler_events.WorkOrderReleased,
    scheduler_events.WorkOrderAcknowledged,
    scheduler_events.WorkOrderStarted,
    scheduler_events.WorkOrderCompleted,
    scheduler_events.WorkOrderCancelled,
)

# --- streams and routes, from the contracts ------------------------------------------------

_EVENT_FILES: tuple[FileDescriptor, ...] = (
    ingest_events.DESCRIPTOR,
    ingest_pb2.DESCRIPTOR,
    registry_events.DESCRIPTOR,
    inference_events.DESCRIPTOR,
    scheduler_events.DESCRIPTOR,
    audit_pb2.DESCRIPTOR,
    envelope_pb2.DESCRIPTOR,
)
_MODULES = (
    ingest_events,
    ingest_pb2,
    registry_events,
    inference_events,
    scheduler_events,
    audit_pb2,
    envelope_pb2,
)
_PLACEHOLDER = re.compile(r"^\{(\w+)\}$")
#: The producer of a stream whose subjects each service writes under its own name.
_EACH_SERVICE = "{service}"


@dataclass(frozen=True)
class Stream:
    """A JetStream stream as the contracts declare it."""

    name: str
    subjects: tuple[str, ...]
    producer: str
    """The owning service, or ``"{service}"``: each service its own subjects."""


@dataclass(frozen=True)
class Route:
    """Where one event message travels."""

    message: str
    """Fully qualified message name."""
    stream: str
    """The stream that keeps it; empty: the stream of the service that publishes it."""
    subjects: tuple[str, ...]
    """Subject templates, ``{name}`` placeholders one token each."""


@cache
def streams() -> Mapping[str, Stream]:
    """Every stream the contracts declare, by name."""
    found: dict[str, Stream] = {}
    for file in _EVENT_FILES:
        for spec in file.GetOptions().Extensions[wire_pb2.stream]:
            if spec.name in found:
                raise ValueError(f"stream {spec.name} is declared twice")
            found[spec.name] = Stream(spec.name, tuple(spec.subjects), spec.producer)
    return MappingProxyType(found)


@cache
def _routes() -> Mapping[str, Route]:
    found: dict[str, Route] = {}
    for file in _EVENT_FILES:
        for descriptor in file.message_types_by_name.values():
            options = descriptor.GetOptions()
            if options.HasExtension(wire_pb2.route):
                spec = options.Extensions[wire_pb2.route]
                found[descriptor.full_name] = Route(
                    descriptor.full_name, spec.stream, tuple(spec.subjects)
                )
    return MappingProxyType(found)


@cache
def _classes() -> Mapping[str, type[Message]]:
    found: dict[str, type[Message]] = {}
    for module in _MODULES:
        for name in module.DESCRIPTOR.message_types_by_name:
            cls = getattr(module, name)
            if cls.DESCRIPTOR.full_name in _routes():
                found[cls.DESCRIPTOR.full_name] = cls
    return MappingProxyType(found)


def event_classes() -> tuple[type[Message], ...]:
    """Every message class that declares a route, in declaration order."""
    return tuple(_classes().values())


def message_class(full_name: str) -> type[Message]:
    """The event class of a fully qualified message name (``Prognos-Type``, envelope type)."""
    try:
        return _classes()[full_name]
    except KeyError:
        raise KeyError(f"{full_name} is not a routed Prognos event") from None


def route(message: type[Message] | Message) -> Route:
    """The route of an event class or instance.

    Raises:
        KeyError: the message declares no route.
    """
    full_name = message.DESCRIPTOR.full_name
    try:
        return _routes()[full_name]
    except KeyError:
        raise KeyError(f"{full_name} declares no route") from None


def _render(template: str, tokens: Mapping[str, str]) -> str:
    parts = []
    for part in template.split("."):
        match = _PLACEHOLDER.match(part)
        if match is None:
            parts.append(part)
            continue
        name = match.group(1)
        if name not in tokens:
            raise ValueError(f"subject {template} needs {name}=")
        value = tokens[name]
        if not value or any(c in value for c in ". *>\t\r\n"):
            raise ValueError(f"{name}={value!r} is not one subject token")
        parts.append(value)
    return ".".join(parts)


def subject(message: type[Message] | Message, kind: str | None = None, **tokens: str) -> str:
    """The subject an event is published on.

    Args:
        message: the event class or an instance.
        kind: for an event with several subjects, the last token of the one wanted
            (``subject(PredictionMade, "shadow")``).
        tokens: values of the route's placeholders (``service="ingest"``); an ``asset``
            token is given as the asset id and encoded here.

    Raises:
        KeyError: the message declares no route.
        ValueError: ``kind`` is missing or unknown, or a placeholder has no value.
    """
    found = route(message)
    templates = found.subjects
    if kind is not None:
        templates = tuple(t for t in templates if t.rsplit(".", 1)[-1] == kind)
    if len(templates) != 1:
        raise ValueError(
            f"{found.message} is published on {', '.join(found.subjects)}: name one with kind="
        )
    if "asset" in tokens:
        tokens = {**tokens, "asset": subject_token(tokens["asset"])}
    return _render(templates[0], tokens)


def subjects(*messages: type[Message]) -> list[str]:
    """Every subject of the given events (each one placeholder-free), for a consumer filter."""
    return [s for message in messages for s in route(message).subjects]


def wildcard(*messages: type[Message]) -> str:
    """The narrowest ``prefix.>`` filter that takes every subject of the given events."""
    split = [s.split(".") for s in subjects(*messages)]
    prefix: list[str] = []
    for tokens in zip(*split, strict=False):
        if len(set(tokens)) != 1 or _PLACEHOLDER.match(tokens[0]):
            break
        prefix.append(tokens[0])
    if not prefix:
        raise ValueError("the events share no subject prefix")
    return ".".join(prefix) + ".>"


def stream_of(message: type[Message] | Message) -> str:
    """The stream that keeps an event.

    Raises:
        ValueError: the event is kept by whichever service publishes it.
    """
    found = route(message)
    if not found.stream:
        raise ValueError(f"{found.message} is kept by the stream of its publisher")
    return found.stream


def _filter_matches(pattern: str, subject: str) -> bool:
    pattern_tokens, tokens = pattern.split("."), subject.split(".")
    for i, token in enumerate(pattern_tokens):
        if token == ">":
            return len(tokens) > i
        if i >= len(tokens) or (token != "*" and token != tokens[i]):
            return False
    return len(tokens) == len(pattern_tokens)


def _template_tokens(template: str, subject: str) -> dict[str, str] | None:
    parts, tokens = template.split("."), subject.split(".")
    if len(parts) != len(tokens):
        return None
    values: dict[str, str] = {}
    for part, token in zip(parts, tokens, strict=True):
        match = _PLACEHOLDER.match(part)
        if match is not None:
            values[match.group(1)] = token
        elif part != token:
            return None
    return values


def owner(subject: str) -> str | None:
    """The service that alone may publish on a concrete subject; ``None`` if none does.

    Routes are matched first (``audit.head.ingest`` belongs to ingest,
    ``scheduler.outbox.dead_lettered`` to the scheduler), then the streams' filters.
    """
    for found in _routes().values():
        for template in found.subjects:
            values = _template_tokens(template, subject)
            if values is None:
                continue
            if "service" in values:
                return values["service"]
            return streams()[found.stream].producer
    for stream in streams().values():
        if stream.producer != _EACH_SERVICE and any(
            _filter_matches(f, subject) for f in stream.subjects
        ):
            return stream.producer
    return None


# --- subject tokens ------------------------------------------------------------------------

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def subject_token(asset_id: str) -> str:
    """An asset id as one NATS subject token: other than ``[A-Za-z0-9_-]`` becomes ``%XX``."""
    raw = asset_id.encode()
    if all(b in _SAFE for b in raw):
        return asset_id
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in raw)


def decode_subject_token(token: str) -> str:
    """The asset id of a subject token (inverse of ``subject_token``)."""
    return unquote(token)


def telemetry_subject(asset_type: str, asset_id: str) -> str:
    """Where one asset's accepted telemetry batches go."""
    return subject(ingest_pb2.TelemetryBatch, asset_type=asset_type, asset=asset_id)


@cache
def _telemetry_layout() -> tuple[str, int, int, int]:
    """The telemetry template as ``(template, token count, asset type index, asset index)``."""
    (template,) = route(ingest_pb2.TelemetryBatch).subjects
    parts = template.split(".")
    return template, len(parts), parts.index("{asset_type}"), parts.index("{asset}")


def parse_telemetry_subject(value: str) -> tuple[str, str]:
    """``(asset type, asset token)`` of a telemetry subject (the token still encoded).

    Raises:
        ValueError: not a telemetry subject.
    """
    template, count, type_at, asset_at = _telemetry_layout()
    tokens = value.split(".")
    if len(tokens) != count or _template_tokens(template, value) is None:
        raise ValueError(f"{value} is not a telemetry subject ({template})")
    return tokens[type_at], tokens[asset_at]


def quarantine_subject(asset_type: str, asset_id: str) -> str:
    """Where the quarantined readings of one asset's batch go (``_unknown`` type if none)."""
    return subject(
        ingest_events.QuarantinedBatch, asset_type=asset_type or UNKNOWN_ASSET_TYPE, asset=asset_id
    )


# --- the columnar batch --------------------------------------------------------------------


class ColumnError(ValueError):
    """A column or the timestamps of a batch cannot be read; ``field`` names where."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def timestamps(batch: ingest_pb2.TelemetryBatch) -> np.ndarray:
    """A batch's timestamps (microseconds) from whichever encoding it uses.

    Raises:
        ColumnError: both or neither encoding is set, or the bytes are not whole int64s.
    """
    packed, raw = batch.timestamps_us, batch.timestamps_us_le
    if len(packed) and raw:
        raise ColumnError("timestamps_us", "set timestamps_us or timestamps_us_le, not both")
    if raw:
        if len(raw) % 8:
            raise ColumnError(
                "timestamps_us_le", f"{len(raw)} bytes is not a whole number of int64 values"
            )
        return np.frombuffer(raw, dtype="<i8")
    if len(packed):
        return np.array(packed, dtype=np.int64)
    raise ColumnError("timestamps_us", "empty batch: no timestamps")


def column_values(channel: ingest_pb2.ChannelColumn, where: str = "channel") -> np.ndarray:
    """One column's numbers as float64, from whichever of its three encodings is set.

    Raises:
        ColumnError: more than one encoding, none, or bytes that are not whole values.
    """
    packed, f64, f32 = channel.values, channel.values_f64_le, channel.values_f32_le
    if (len(packed) > 0) + (len(f64) > 0) + (len(f32) > 0) > 1:
        raise ColumnError(where, "set one of values, values_f64_le and values_f32_le")
    if f64:
        if len(f64) % 8:
            raise ColumnError(
                f"{where}.values_f64_le", f"{len(f64)} bytes is not a whole number of float64"
            )
        return np.frombuffer(f64, dtype="<f8")
    if f32:
        if len(f32) % 4:
            raise ColumnError(
                f"{where}.values_f32_le", f"{len(f32)} bytes is not a whole number of float32"
            )
        return np.frombuffer(f32, dtype="<f4").astype(np.float64)
    if len(packed):
        return np.array(packed, dtype=np.float64)
    raise ColumnError(where, "no values")


def batch_columns(
    batch: ingest_pb2.TelemetryBatch,
) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    """Times and channel values of a batch as the telemetry stream carries it.

    Every channel of an accepted batch is little-endian float64 bytes of the same length:
    those are read in one piece. Columns that cannot be read or have the wrong length are
    left out; rows are sorted by time and repeated times dropped.

    Returns:
        ``(times_us, channel names, (rows, channels) float64 values)``.
    """
    if batch.timestamps_us_le:
        times = np.frombuffer(batch.timestamps_us_le, "<i8")
    else:
        times = np.asarray(batch.timestamps_us, np.int64)
    n = len(times)
    channels = batch.channels
    encoded = [c.values_f64_le for c in channels]
    if all(len(e) == 8 * n for e in encoded):
        names = tuple(c.name for c in channels)
        values = np.frombuffer(b"".join(encoded), "<f8").reshape(len(encoded), n).T
    else:
        kept, columns = [], []
        for channel in channels:
            try:
                column = column_values(channel)
            except ColumnError:
                continue
            if len(column) == n:
                kept.append(channel.name)
                columns.append(column)
        names = tuple(kept)
        values = np.column_stack(columns) if columns else np.zeros((n, 0))
    if n > 1 and np.any(times[1:] <= times[:-1]):
        order = np.argsort(times, kind="stable")
        times, values = times[order], values[order]
        keep = np.r_[True, times[1:] > times[:-1]]
        times, values = times[keep], values[keep]
    return times, names, values

"""Request limits declared in the contracts, enforced on every call by one server interceptor.

Every string, bytes, repeated and map field that a request can carry declares its maximum in
the ``.proto`` files with protovalidate (``(buf.validate.field).string.max_len = 200``), so
integrators in any language see the rules the servers enforce. ``ValidationInterceptor``
checks each request (each message of a client stream) with the ``protovalidate`` package
before the servicer sees it, and answers INVALID_ARGUMENT with a ``BadRequest`` whose field
violations name the field path and the limit, never the value::

    description: at most 4096 characters (got 2000000)

The engine is protovalidate's native one and reads the messages in place: a ``Predict``
request costs a few microseconds, a columnar telemetry batch of 16 channels of 1,000 rows
about 60 (see ``tests/benchmarks/bench_validation.py``).

Place the interceptor after authentication (``GrpcServer(extra_interceptors=[auth, this])``):
a denied call is answered before its request is read, so an unauthenticated caller learns
nothing about the limits.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
import grpc.aio
import protovalidate
from buf.validate import validate_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf.message import Message

from prognos.core.errors import InvalidArgumentError
from prognos.core.handlers import responses
from prognos.core.quoting import shorten

__all__ = [
    "LIMIT_REASON",
    "RULE_REASON",
    "SIZE_RULES",
    "ValidationInterceptor",
    "check_request",
    "unbounded_fields",
]

LIMIT_REASON = "FIELD_LIMIT_EXCEEDED"
"""``ErrorInfo.reason`` when every violation is a declared maximum."""
RULE_REASON = "FIELD_RULE_VIOLATED"
"""``ErrorInfo.reason`` when some violation is another protovalidate rule."""
SIZE_RULES: frozenset[str] = frozenset(
    {"string.max_len", "bytes.max_len", "repeated.max_items", "map.max_pairs"}
)
"""The protovalidate rule ids that bound a field's size."""

_UNITS = {
    "string.max_len": "characters",
    "bytes.max_len": "bytes",
    "repeated.max_items": "items",
    "map.max_pairs": "entries",
}
_MAX_VIOLATIONS = 20  # a request breaking a thousand limits is told about the first ones

Violation = tuple[str, str, str]
"""``(field path, description, rule id)``."""


def _describe(rule_id: str, limit: Any, size: int | None, fallback: str) -> str:
    unit = _UNITS.get(rule_id)
    if unit is None:
        return fallback
    got = f" (got {size})" if size is not None else ""
    return f"at most {limit} {unit}{got}"


def _element(name: str, subscript: str) -> str:
    return f"{name}[{subscript}]" if subscript else name


def _path(violation: Any) -> str:
    parts: list[str] = []
    for element in violation.proto.field.elements:
        # protobuf-py messages: a oneof is a value with ``field`` and ``value``, or None.
        which = getattr(element.subscript, "field", None)
        value = getattr(element.subscript, "value", None)
        subscript = ""
        if which == "string_key":
            subscript = repr(shorten(str(value)))
        elif which is not None:
            subscript = str(value)
        parts.append(_element(element.field_name, subscript))
    return ".".join(parts)


def _size(value: Any) -> int | None:
    try:
        return len(value)
    except TypeError:
        return None


def _from_protovalidate(violations: Iterable[Any], prefix: str) -> list[Violation]:
    found: list[Violation] = []
    for violation in violations:
        rule_id = violation.proto.rule_id
        path = _path(violation)
        # protovalidate's own message for a repeated item names the rule, not the size.
        description = _describe(
            rule_id, violation.rule_value, _size(violation.field_value), violation.proto.message
        )
        found.append((f"{prefix}{path}" if path else prefix.rstrip("."), description, rule_id))
    return found


# --- which fields lack a limit ----------------------------------------------------------


def _is_repeated(field: _descriptor.FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _rules(field: _descriptor.FieldDescriptor) -> validate_pb2.FieldRules | None:
    options = field.GetOptions()
    if not options.HasExtension(validate_pb2.field):
        return None
    rules: validate_pb2.FieldRules = options.Extensions[validate_pb2.field]
    return rules


def _scalar_max(rules: validate_pb2.FieldRules) -> tuple[str, int] | None:
    if rules.HasField("string") and rules.string.HasField("max_len"):
        return "string.max_len", rules.string.max_len
    if rules.HasField("bytes") and rules.bytes.HasField("max_len"):
        return "bytes.max_len", rules.bytes.max_len
    return None


def unbounded_fields(service: _descriptor.ServiceDescriptor) -> list[str]:
    """The text, bytes, list and map fields a request of ``service`` can carry without a maximum.

    Walks every method's request message and the messages nested in it (well-known types
    aside), so that a field added without a declared limit shows up here.

    Returns:
        ``"<Message>.<field>"`` names, sorted; empty when every such field is bounded.
    """
    missing: set[str] = set()
    seen: set[str] = set()

    def walk(message: _descriptor.Descriptor) -> None:
        if message.full_name in seen or message.full_name.startswith("google.protobuf."):
            return
        seen.add(message.full_name)
        for field in message.fields:
            rules = _rules(field)
            message_type = field.message_type
            is_map = message_type is not None and message_type.GetOptions().map_entry
            name = f"{message.full_name}.{field.name}"
            if is_map:
                if rules is None or not rules.map.HasField("max_pairs"):
                    missing.add(name)
                elif not (rules.map.keys.string.HasField("max_len")):
                    missing.add(f"{name} (keys)")
                else:
                    value = message_type.fields_by_name["value"]
                    text = value.type in (value.TYPE_STRING, value.TYPE_BYTES)
                    if text and not rules.map.values.string.HasField("max_len"):
                        missing.add(f"{name} (values)")
                continue
            if _is_repeated(field):
                if rules is None or not rules.repeated.HasField("max_items"):
                    missing.add(name)
                elif field.type in (field.TYPE_STRING, field.TYPE_BYTES) and (
                    _scalar_max(rules.repeated.items) is None
                ):
                    missing.add(f"{name} (items)")
            elif field.type in (field.TYPE_STRING, field.TYPE_BYTES):
                if rules is None or _scalar_max(rules) is None:
                    missing.add(name)
            if message_type is not None:
                walk(message_type)

    for method in service.methods:
        walk(method.input_type)
    return sorted(missing)


# --- the check and the interceptor -------------------------------------------------------


def check_request(
    message: Message,
    *,
    prefix: str = "",
    validator: protovalidate.Validator | None = None,
) -> None:
    """Raise INVALID_ARGUMENT when ``message`` breaks a rule its contract declares.

    Args:
        message: The request (or one message of a client stream).
        prefix: Put in front of every field path (``"messages[3]."`` for a stream).
        validator: The protovalidate validator to use; a shared one by default.

    Raises:
        InvalidArgumentError: With one field violation per broken rule; reason
            ``FIELD_LIMIT_EXCEEDED`` when all of them are maxima.
    """
    engine = validator or _shared_validator()
    found = _from_protovalidate(engine.collect_violations(message), prefix)
    if not found:
        return
    found = found[:_MAX_VIOLATIONS]
    only_limits = all(rule in SIZE_RULES for _, _, rule in found)
    first_field, first_description, _ = found[0]
    raise InvalidArgumentError(
        [(path, description) for path, description, _ in found],
        reason=LIMIT_REASON if only_limits else RULE_REASON,
        metadata={"field": first_field, "violation": first_description},
    )


_validator: protovalidate.Validator | None = None


def _shared_validator() -> protovalidate.Validator:
    global _validator
    if _validator is None:
        _validator = protovalidate.Validator()
    return _validator


Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class ValidationInterceptor(grpc.aio.ServerInterceptor):
    """Checks every request against its contract's protovalidate rules before the servicer.

    Unary requests are checked before the handler runs; a client stream's messages are
    checked one by one as the servicer reads them, each path prefixed ``messages[<n>].``, so
    a bad message ends the call with INVALID_ARGUMENT however far into the stream it comes.
    A request that is not a protobuf message (a servicer's tolerant deserializer can hand
    over a marker for unreadable bytes) is left to the servicer. Place it inside the error
    interceptor, which turns the ``InvalidArgumentError`` into the status, and after
    authentication.
    """

    def __init__(self) -> None:
        """Create the interceptor with a validator of its own (it caches compiled rules)."""
        self._validator = protovalidate.Validator()

    def _check(self, request: Any, prefix: str = "") -> None:
        if isinstance(request, Message):
            check_request(request, prefix=prefix, validator=self._validator)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        """Wrap the handler so that its requests are checked first."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        options = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary(handler.unary_unary), **options)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._unary_stream(handler.unary_stream), **options
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._stream(handler.stream_unary), **options
            )
        return grpc.stream_stream_rpc_method_handler(self._stream(handler.stream_stream), **options)

    def _unary(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self._check(request)
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result

        return checked

    def _unary_stream(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self._check(request)
            async for response in responses(behavior(request, context)):
                yield response

        return checked

    def _stream(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        check = self._check

        def checked(request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            async def requests() -> AsyncIterator[Any]:
                index = 0
                async for request in request_iterator:
                    check(request, f"messages[{index}].")
                    index += 1
                    yield request

            return behavior(requests(), context)

        return checked

"""OpenTelemetry for every Prognos process: tracer provider, exporters, propagation, logs.

``setup(settings)`` runs once in ``main``. Spans go to an OTLP collector when
``settings.otlp_endpoint`` is set, otherwise to ``<spans_dir>/<service>.jsonl``, one JSON
object per line, which ``read_spans`` (and ``prognos trace show``) reads back. gRPC calls are
traced by ``ServerTracingInterceptor`` on servers and opentelemetry-instrumentation-grpc's
grpc.aio interceptors on clients, database statements by
opentelemetry-instrumentation-sqlalchemy, and NATS messages carry the W3C trace context in
their headers through ``inject_headers`` / ``extract_context``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import grpc
import grpc.aio
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from prognos.core.handlers import responses, rewrap

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from sqlalchemy.ext.asyncio import AsyncEngine

    from prognos.core.config import Settings

__all__ = [
    "LOG_FORMAT",
    "JsonLinesSpanExporter",
    "ServerTracingInterceptor",
    "SpanRecord",
    "TraceContextFilter",
    "client_interceptors",
    "configure_logging",
    "current_trace_id",
    "current_traceparent",
    "extract_context",
    "flush",
    "inject_headers",
    "insecure_channel",
    "instrument_engine",
    "links_to",
    "read_spans",
    "server_interceptors",
    "setup",
    "shutdown",
    "span_context_of",
    "trace_id_of",
    "tracer",
]

_log = logging.getLogger(__name__)

# Health checks and reflection are polled by launchers and load balancers; tracing them
# would bury the calls that matter.
_UNTRACED_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)


# --- local span files -------------------------------------------------------------------


@dataclass(frozen=True)
class SpanRecord:
    """One finished span as written to, and read back from, a local span file.

    Attributes:
        trace_id: 32 hex digits.
        span_id: 16 hex digits.
        parent_span_id: 16 hex digits, or "" for a root span.
        name: Span name (for gRPC: ``/package.Service/Method``).
        kind: ``INTERNAL``, ``SERVER``, ``CLIENT``, ``PRODUCER`` or ``CONSUMER``.
        service: The service that recorded the span.
        start_unix_ns: Start time, nanoseconds since the epoch.
        end_unix_ns: End time, nanoseconds since the epoch.
        status: ``UNSET``, ``OK`` or ``ERROR``.
        status_message: The status description, or "".
        attributes: Span attributes.
        events: Span events, each ``{"name", "time_unix_ns", "attributes"}``.
        links: Spans of other traces this one links to, each ``{"trace_id", "span_id"}``
            (a batch that scored many traces' telemetry links each of them).
    """

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    service: str
    start_unix_ns: int
    end_unix_ns: int
    status: str
    status_message: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, str]] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        """Duration in milliseconds."""
        return (self.end_unix_ns - self.start_unix_ns) / 1e6

    def to_json(self) -> str:
        """The one-line JSON form written to span files."""
        return json.dumps(
            {
                "trace_id": self.trace_id,
                "span_id": self.span_id,
                "parent_span_id": self.parent_span_id,
                "name": self.name,
                "kind": self.kind,
                "service": self.service,
                "start_unix_ns": self.start_unix_ns,
                "end_unix_ns": self.end_unix_ns,
                "status": self.status,
                "status_message": self.status_message,
                "attributes": self.attributes,
                "events": self.events,
                "links": self.links,
            },
            separators=(",", ":"),
            default=str,
        )

    @classmethod
    def from_json(cls, line: str) -> SpanRecord:
        """Parse one line written by ``to_json``."""
        data = json.loads(line)
        return cls(
            trace_id=data["trace_id"],
            span_id=data["span_id"],
            parent_span_id=data.get("parent_span_id") or "",
            name=data["name"],
            kind=data["kind"],
            service=data["service"],
            start_unix_ns=int(data["start_unix_ns"]),
            end_unix_ns=int(data["end_unix_ns"]),
            status=data["status"],
            status_message=data.get("status_message") or "",
            attributes=dict(data.get("attributes") or {}),
            events=list(data.get("events") or []),
            links=list(data.get("links") or []),
        )

    @classmethod
    def from_span(cls, span: ReadableSpan, service: str) -> SpanRecord:
        """Describe a finished SDK span."""
        ctx = span.get_span_context()
        assert ctx is not None  # every SDK span has one
        parent = span.parent
        return cls(
            trace_id=format(ctx.trace_id, "032x"),
            span_id=format(ctx.span_id, "016x"),
            parent_span_id=format(parent.span_id, "016x") if parent is not None else "",
            name=span.name,
            kind=span.kind.name,
            service=service,
            start_unix_ns=span.start_time or 0,
            end_unix_ns=span.end_time or 0,
            status=span.status.status_code.name,
            status_message=span.status.description or "",
            attributes=_plain(span.attributes),
            events=[
                {
                    "name": event.name,
                    "time_unix_ns": event.timestamp,
                    "attributes": _plain(event.attributes),
                }
                for event in span.events
            ],
            links=[
                {
                    "trace_id": format(link.context.trace_id, "032x"),
                    "span_id": format(link.context.span_id, "016x"),
                }
                for link in span.links
            ],
        )


def _plain(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in (attributes or {}).items()
    }


_json = json.JSONEncoder(separators=(",", ":"), default=str).encode


def _span_line(span: ReadableSpan, service: str) -> str:
    """``SpanRecord.from_span(span, service).to_json() + "\\n"``, written directly.

    The span exporter runs on a thread of the serving process and holds the GIL while it
    formats; building the line from the span's fields, without the record and its dict,
    takes under half the time (``tests/integration/core/test_tracing.py`` checks that the
    two agree).
    """
    ctx = span.context
    assert ctx is not None  # every SDK span has one
    parent = span.parent
    status = span.status
    attributes = span.attributes
    events = span.events
    links = span.links
    return (
        f'{{"trace_id":"{ctx.trace_id:032x}","span_id":"{ctx.span_id:016x}",'
        f'"parent_span_id":"{"" if parent is None else format(parent.span_id, "016x")}",'
        f'"name":{_json(span.name)},"kind":"{span.kind.name}","service":{_json(service)},'
        f'"start_unix_ns":{span.start_time or 0},"end_unix_ns":{span.end_time or 0},'
        f'"status":"{status.status_code.name}","status_message":{_json(status.description or "")},'
        f'"attributes":{_json(dict(attributes)) if attributes else "{}"},'
        f'"events":{_events_json(events) if events else "[]"},'
        f'"links":{_links_json(links) if links else "[]"}}}\n'
    )


def _events_json(events: Sequence[Any]) -> str:
    return _json(
        [
            {"name": e.name, "time_unix_ns": e.timestamp, "attributes": dict(e.attributes or {})}
            for e in events
        ]
    )


def _links_json(links: Sequence[Any]) -> str:
    return _json(
        [
            {
                "trace_id": format(link.context.trace_id, "032x"),
                "span_id": format(link.context.span_id, "016x"),
            }
            for link in links
        ]
    )


_EXPORT_BATCH = 16
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span as one JSON line to a file.

    Each batch is written with a single ``write`` on a file opened in append mode, so
    replicas of one service may share the file without interleaving lines.
    """

    def __init__(self, path: Path, service: str) -> None:
        """Create the exporter.

        Args:
            path: The ``.jsonl`` file; its directory is created if missing.
            service: The service name recorded in every line.
        """
        self.path = path
        self.service = service
        self._lock = threading.Lock()
        self._closed = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Append the spans to the file."""
        if self._closed:
            return SpanExportResult.FAILURE
        data = "".join([_span_line(s, self.service) for s in spans])
        try:
            with self._lock:
                try:
                    fd = os.open(self.path, _APPEND, 0o644)
                except FileNotFoundError:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    fd = os.open(self.path, _APPEND, 0o644)
                try:
                    os.write(fd, data.encode())
                finally:
                    os.close(fd)
        except OSError:
            _log.exception("cannot write spans to %s", self.path)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Refuse further exports."""
        self._closed = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is buffered here: every export is written at once."""
        return True


def read_spans(spans_dir: Path, trace_id: str | None = None) -> list[SpanRecord]:
    """Read the spans written locally by every service, oldest first.

    Lines that do not parse (the tail of a file whose writer was killed mid-line) are
    skipped.

    Args:
        spans_dir: The directory holding ``<service>.jsonl`` files.
        trace_id: Only spans of this trace (32 hex digits, any case) when given.

    Returns:
        The spans, sorted by start time then span id; an empty list when the directory is
        missing.
    """
    wanted = trace_id.lower() if trace_id else None
    records: list[SpanRecord] = []
    if not spans_dir.is_dir():
        return records
    for path in sorted(spans_dir.glob("*.jsonl")):
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if wanted is not None and wanted not in line:
                    continue
                try:
                    record = SpanRecord.from_json(line)
                except (ValueError, KeyError, TypeError):
                    continue
                if wanted is None or record.trace_id == wanted:
                    records.append(record)
    records.sort(key=lambda r: (r.start_unix_ns, r.span_id))
    return records


# --- provider set-up --------------------------------------------------------------------


class _SwitchableSpanProcessor(SpanProcessor):
    """Delegates to the processor of the latest ``setup``.

    The global tracer provider can be set only once per process, so a second ``setup``
    (tests, a process that changes its exporter) swaps the processor behind it instead.
    """

    def __init__(self) -> None:
        self.delegate: SpanProcessor | None = None

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        delegate = self.delegate
        if delegate is not None:
            delegate.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        delegate = self.delegate
        if delegate is not None:
            delegate.on_end(span)

    def shutdown(self) -> None:
        delegate, self.delegate = self.delegate, None
        if delegate is not None:
            delegate.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        delegate = self.delegate
        return delegate.force_flush(timeout_millis) if delegate is not None else True


@dataclass
class _State:
    provider: TracerProvider
    processor: _SwitchableSpanProcessor
    config: tuple[str, str | None, Path] | None = None


_state: _State | None = None
_state_lock = threading.Lock()


def setup(settings: Settings) -> TracerProvider:
    """Install the global tracer provider and this process's span exporter.

    Call once in ``main``. Calling again with the same settings changes nothing; with
    other settings (tests) it flushes the previous exporter and switches to the new one.
    The provider's resource (``service.name``) is fixed by the first call; the local span
    files always name the service of the latest call.

    Args:
        settings: Uses ``service``, ``otlp_endpoint`` and ``spans_dir``.

    Returns:
        The process's tracer provider.
    """
    global _state
    config = (settings.service, settings.otlp_endpoint, settings.spans_dir)
    with _state_lock:
        if _state is None:
            processor = _SwitchableSpanProcessor()
            current = trace.get_tracer_provider()
            if isinstance(current, TracerProvider):
                provider = current  # someone installed an SDK provider first: join it
            else:
                provider = TracerProvider(
                    resource=Resource.create({SERVICE_NAME: settings.service})
                )
                trace.set_tracer_provider(provider)
            provider.add_span_processor(processor)
            _state = _State(provider, processor)
        if _state.config == config and _state.processor.delegate is not None:
            return _state.provider
        _state.processor.shutdown()
        exporter: SpanExporter
        if settings.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter,
            )

            exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
        else:
            path = settings.spans_dir / f"{settings.service}.jsonl"
            exporter = JsonLinesSpanExporter(path, settings.service)
        # Exporting holds the GIL (17 us a span for the JSON lines on a slow 2 GHz core),
        # and a call that arrives meanwhile waits for the whole batch: 16 spans a batch
        # keep each hold near 0.3 ms there, instead of ~9 ms for the default 512.
        _state.processor.delegate = BatchSpanProcessor(
            exporter, schedule_delay_millis=500, max_export_batch_size=_EXPORT_BATCH
        )
        _state.config = config
        return _state.provider


def flush(timeout_s: float = 5.0) -> bool:
    """Export every finished span now.

    Args:
        timeout_s: How long to wait for the exporter.

    Returns:
        ``True`` when everything was exported in time (or nothing is set up).
    """
    state = _state
    if state is None:
        return True
    return state.processor.force_flush(int(timeout_s * 1000))


def shutdown() -> None:
    """Flush and close the exporter; ``setup`` may be called again afterwards."""
    with _state_lock:
        if _state is not None:
            _state.processor.shutdown()
            _state.config = None


def tracer(name: str) -> trace.Tracer:
    """The tracer for instrumentation scope ``name`` (usually ``__name__``)."""
    return trace.get_tracer(name)


# --- context propagation ----------------------------------------------------------------


def inject_headers(headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """Add the current trace context to message headers with the global propagator.

    Args:
        headers: Headers to start from; not modified.

    Returns:
        A copy of ``headers`` with ``traceparent`` (and ``tracestate`` if any) added;
        unchanged when no span is current.
    """
    carrier = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(headers: Mapping[str, str] | None) -> Context:
    """The trace context carried by message headers, to start a consumer span in.

    Args:
        headers: Message headers, or ``None``.

    Returns:
        A context whose current span is the remote parent; an empty context when the
        headers carry none. Use as ``tracer.start_as_current_span(name, context=ctx)``.
    """
    return propagate.extract(dict(headers or {}))


_MAX_LINKS = 128
"""Links per span kept by ``links_to`` (the SDK's default span link limit)."""


def span_context_of(traceparent: str) -> trace.SpanContext | None:
    """The remote span a W3C ``traceparent`` names; ``None`` when it is not a valid one.

    A plain parse of the fixed layout ``00-<32 hex>-<16 hex>-<2 hex>``, cheap enough to run
    for every asset of a scoring batch.
    """
    if len(traceparent) != 55 or traceparent[2] != "-" or traceparent[35] != "-":
        return None
    try:
        trace_id = int(traceparent[3:35], 16)
        span_id = int(traceparent[36:52], 16)
        flags = int(traceparent[53:55], 16)
    except ValueError:
        return None
    if not trace_id or not span_id or traceparent[:2] == "ff":
        return None
    return trace.SpanContext(trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(flags))


def links_to(traceparents: Sequence[str], limit: int = _MAX_LINKS) -> list[trace.Link]:
    """Links to the distinct valid spans among ``traceparents``, at most ``limit``.

    For a span that works on behalf of many traces at once (fan-in), as a batch does.
    """
    links: list[trace.Link] = []
    seen: set[str] = set()
    for traceparent in traceparents:
        if traceparent in seen:
            continue
        seen.add(traceparent)
        context = span_context_of(traceparent)
        if context is not None:
            links.append(trace.Link(context))
            if len(links) >= limit:
                break
    return links


def trace_id_of(traceparent: str) -> str | None:
    """The trace id (32 hex digits) of a W3C ``traceparent``; ``None`` when it is not valid."""
    context = span_context_of(traceparent)
    return format(context.trace_id, "032x") if context is not None else None


def current_trace_id() -> str:
    """The hex trace id of the current span, or "" when there is none."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else ""


def current_traceparent() -> tuple[str, str]:
    """The W3C ``(traceparent, tracestate)`` of the current span; ``("", "")`` if none."""
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=otel_context.get_current())
    return carrier.get("traceparent", ""), carrier.get("tracestate", "")


# --- gRPC -------------------------------------------------------------------------------


_UNTRACED_PREFIXES = tuple(f"/{name}/" for name in _UNTRACED_SERVICES)


def _traced(details: Any) -> bool:
    """Whether a call is traced: all but health and reflection.

    The instrumentation's own ``negate(any_of(service_name(...)))`` filter checks the call
    details against runtime protocols on every call (tens of microseconds); a prefix test
    on the method name decides the same thing. Client call details may carry the method
    as bytes (grpc/grpc#31092).
    """
    method = details.method
    if isinstance(method, bytes):
        method = method.decode()
    return not method.startswith(_UNTRACED_PREFIXES)


# The span status of a server call by its gRPC code, as OpenTelemetry's semantic
# conventions (and opentelemetry-instrumentation-grpc) have it: only these codes are
# the server's fault; the others are the caller's and leave the status unset.
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class ServerTracingInterceptor(grpc.aio.ServerInterceptor):
    """One SERVER span per call (health and reflection excepted), child of the caller's.

    The span carries what opentelemetry-instrumentation-grpc's server interceptor records
    (``rpc.system``, ``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code``, the peer
    and its user agent) and the same status rule, and it is current while the handler
    runs. It is built on the OpenTelemetry API directly: the instrumentation spends about
    0.2 ms of every call in layers of context managers and a proxy around the servicer
    context (``bench_inference.py`` measures a call on a hot path), while the code and
    details a handler set are read back from the context once the call is done.
    """

    def __init__(self) -> None:
        self._tracer = trace.get_tracer("prognos.core.grpc")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or not _traced(handler_call_details):
            return handler
        method = handler_call_details.method
        return rewrap(
            handler,
            unary=lambda behavior: self._unary(behavior, method),
            stream=lambda behavior: self._stream(behavior, method),
        )

    def _unary(self, behavior: Callable[..., Any], method: str) -> Callable[..., Awaitable[Any]]:
        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with _CallSpan(self._tracer, method, context):
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result

        return traced

    def _stream(
        self, behavior: Callable[..., Any], method: str
    ) -> Callable[..., AsyncIterator[Any]]:
        async def traced(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            with _CallSpan(self._tracer, method, context):
                async with contextlib.aclosing(responses(behavior(request, context))) as stream:
                    async for response in stream:
                        yield response

        return traced


class _CallSpan:
    """The SERVER span of one call, current from entry to exit (a plain class: it is cheaper
    on every call than a generator-based context manager)."""

    __slots__ = ("_context", "_method", "_span", "_token", "_tracer")

    def __init__(self, tracer: trace.Tracer, method: str, context: grpc.aio.ServicerContext):
        self._tracer, self._method, self._context = tracer, method, context

    def __enter__(self) -> None:
        method, context = self._method, self._context
        metadata = {item.key: item.value for item in context.invocation_metadata() or ()}
        service, _, name = method.lstrip("/").partition("/")
        attributes: dict[str, Any] = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": name,
            "rpc.grpc.status_code": grpc.StatusCode.OK.value[0],
        }
        agent = metadata.get("user-agent")
        if agent:
            attributes["rpc.user_agent"] = agent
        peer = context.peer()  # ipv4:127.0.0.1:57284, ipv6:[::1]:57284, unix:...
        if peer and not peer.startswith("unix:"):
            ip, _, port = peer.split(",")[0].partition(":")[2].rpartition(":")
            attributes["net.peer.ip"] = unquote(ip)
            attributes["net.peer.port"] = port
        parent = propagate.extract(metadata)
        span = self._tracer.start_span(
            method, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
        )
        self._span = span
        self._token = otel_context.attach(trace.set_span_in_context(span, parent))

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        span, context = self._span, self._context
        # An abort is a status, read from the context below; a cancel is the caller's.
        if error is not None and not isinstance(
            error, grpc.aio.AbortError | asyncio.CancelledError
        ):
            span.record_exception(error)
        try:
            code = context.code()
            if code is not None and code != grpc.StatusCode.OK:
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                # A status the error interceptor already set (an unexpected exception,
                # named by its type) is more telling than the code's.
                unset = getattr(span, "status", None) is None or span.status.is_unset
                if code in _SERVER_FAULTS and unset:
                    span.set_status(trace.StatusCode.ERROR, f"{code}:{context.details()}")
        finally:
            otel_context.detach(self._token)
            span.end()


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The grpc.aio server interceptors that trace each call (health and reflection excepted).

    Put them first so that the span is current in every later interceptor and handler.
    """
    return [ServerTracingInterceptor()]


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """The grpc.aio client interceptors that trace each call and send its trace context."""
    result: list[grpc.aio.ClientInterceptor] = aio_client_interceptors(filter_=_traced)
    return result


def channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    """A grpc.aio channel whose calls are traced: TLS with ``credentials``, else plaintext.

    Args:
        target: ``host:port``.
        credentials: Channel credentials (``tls.client_credentials``), or ``None``.

    Returns:
        The channel; close it with ``await channel.close()`` or ``async with``.
    """
    if credentials is None:
        return insecure_channel(target)
    return grpc.aio.secure_channel(target, credentials, interceptors=client_interceptors())


def insecure_channel(
    target: str, *, options: Sequence[tuple[str, Any]] | None = None
) -> grpc.aio.Channel:
    """A plaintext grpc.aio channel whose calls are traced.

    Args:
        target: ``host:port``.
        options: Extra channel options.

    Returns:
        The channel; close it with ``await channel.close()`` or ``async with``.
    """
    return grpc.aio.insecure_channel(
        target, options=list(options or ()), interceptors=client_interceptors()
    )


# --- SQLAlchemy -------------------------------------------------------------------------

_instrumented_engines: weakref.WeakSet[Any] = weakref.WeakSet()


def instrument_engine(engine: AsyncEngine) -> None:
    """Trace every statement run through ``engine``, as children of the current span.

    Safe to call more than once, for as many engines as the process has.

    Args:
        engine: An async engine; its ``sync_engine`` receives the event listeners.
    """
    # The instrumentor's instrument() works once per process; EngineTracer is what it
    # attaches to each engine, so attaching it directly serves any number of engines.
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.instrumentation.sqlalchemy.version import (
        __version__ as instrumentation_version,
    )

    sync_engine = engine.sync_engine
    if sync_engine in _instrumented_engines:
        return
    scope = "opentelemetry.instrumentation.sqlalchemy"
    connections_usage = metrics.get_meter(scope, instrumentation_version).create_up_down_counter(
        name="db.client.connections.usage",
        unit="connections",
        description="The number of connections that are currently in the state described.",
    )
    EngineTracer(trace.get_tracer(scope, instrumentation_version), sync_engine, connections_usage)
    _instrumented_engines.add(sync_engine)


# --- logging ----------------------------------------------------------------------------

LOG_FORMAT = "%(asctime)s %(levelname)s %(service)s %(name)s [trace_id=%(trace_id)s] %(message)s"


class TraceContextFilter(logging.Filter):
    """Adds ``service``, ``trace_id`` and ``span_id`` (hex, "-" if none) to each record."""

    def __init__(self, service: str) -> None:
        """Create the filter for the process of ``service``."""
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate the record; never drops it."""
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = format(span_context.trace_id, "032x")
            record.span_id = format(span_context.span_id, "016x")
        else:
            record.trace_id = "-"
            record.span_id = "-"
        record.service = self.service
        return True


class _PrognosLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler ``configure_logging`` installed, so a second call replaces it."""


def configure_logging(settings: Settings) -> None:
    """Send logs to stderr at ``settings.log_level``, each line with its trace id.

    Idempotent: a second call replaces the handler the first one installed.

    Args:
        settings: Uses ``service`` and ``log_level``.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _PrognosLogHandler):
            root.removeHandler(handler)
    handler = _PrognosLogHandler()
    handler.addFilter(TraceContextFilter(settings.service))
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())

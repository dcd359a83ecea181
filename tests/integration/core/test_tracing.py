"""Traces across a real gRPC call, message headers and the database, read back from span files."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import grpc
import grpc.aio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from prognos.core import telemetry
from prognos.core.config import Settings
from prognos.core.errors import NotFoundError
from prognos.core.server import GrpcServer
from prognos.core.testing.waiting import assert_eventually

ECHO = "prognos.test.v1.TracedEcho"


def _same(data: bytes) -> bytes:
    return data


async def _whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    """Answer with the trace id the handler runs in, from inside a child span of its own."""
    with telemetry.tracer("tests.handler").start_as_current_span("handler work"):
        return telemetry.current_trace_id().encode()


async def _count(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for i in range(3):
        yield str(i).encode()


async def _missing(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise NotFoundError("asset", "nowhere")


async def _broken(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise RuntimeError("the handler broke")


async def _overloaded(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.UNAVAILABLE, "come back later")
    raise AssertionError("abort returns no more")


async def _count_then_break(
    request: bytes, context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    yield b"0"
    raise RuntimeError("the stream broke")


HANDLER = grpc.method_handlers_generic_handler(
    ECHO,
    {
        "WhoAmI": grpc.unary_unary_rpc_method_handler(_whoami, _same, _same),
        "Count": grpc.unary_stream_rpc_method_handler(_count, _same, _same),
        "Missing": grpc.unary_unary_rpc_method_handler(_missing, _same, _same),
        "Broken": grpc.unary_unary_rpc_method_handler(_broken, _same, _same),
        "Overloaded": grpc.unary_unary_rpc_method_handler(_overloaded, _same, _same),
        "CountThenBreak": grpc.unary_stream_rpc_method_handler(_count_then_break, _same, _same),
    },
)


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    settings = Settings.load("tracetest", data_dir=tmp_path)
    telemetry.setup(settings)
    yield settings
    telemetry.shutdown()


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[GrpcServer]:
    async with GrpcServer(settings, version="1") as grpc_server:
        grpc_server.add_service(lambda h, s: s.add_generic_rpc_handlers((h,)), HANDLER, ECHO)
        await grpc_server.start()
        yield grpc_server


async def _with_served(settings: Settings, trace_id: str) -> list[telemetry.SpanRecord]:
    """The trace's spans, once its SERVER span is on disk.

    The server ends its span after the status has gone out, so the caller can hold the
    answer a moment before that span is written.
    """

    def served() -> list[telemetry.SpanRecord]:
        assert telemetry.flush()
        spans = telemetry.read_spans(settings.spans_dir, trace_id)
        assert any(s.kind == "SERVER" for s in spans), [s.name for s in spans]
        return spans

    return await assert_eventually(served, timeout=10, message="the server span")


def _ancestors(span: telemetry.SpanRecord, spans: list[telemetry.SpanRecord]) -> list[str]:
    by_id = {s.span_id: s for s in spans}
    chain: list[str] = []
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        chain.append(span.name)
    return chain


async def test_a_client_call_and_its_server_span_share_one_trace(
    settings: Settings, server: GrpcServer
) -> None:
    method = f"/{ECHO}/WhoAmI"
    async with telemetry.insecure_channel(server.address) as channel:
        with telemetry.tracer("tests.client").start_as_current_span("operator action") as root:
            trace_id = telemetry.current_trace_id()
            answered = await channel.unary_unary(method)(b"", timeout=5)
    assert answered.decode() == trace_id == format(root.get_span_context().trace_id, "032x")

    spans = await _with_served(settings, trace_id)
    by_kind = {(s.kind, s.name): s for s in spans}
    client = by_kind[("CLIENT", method)]
    served = by_kind[("SERVER", method)]
    work = by_kind[("INTERNAL", "handler work")]
    assert {s.trace_id for s in spans} == {trace_id}
    assert served.parent_span_id == client.span_id
    assert _ancestors(work, spans) == [method, method, "operator action"]
    assert served.service == "tracetest"
    assert served.attributes["rpc.grpc.status_code"] == 0
    assert served.start_unix_ns <= served.end_unix_ns
    assert telemetry.read_spans(settings.spans_dir, trace_id.upper()) == spans


async def test_streaming_calls_are_traced_too(settings: Settings, server: GrpcServer) -> None:
    async with telemetry.insecure_channel(server.address) as channel:
        with telemetry.tracer("tests.client").start_as_current_span("stream"):
            trace_id = telemetry.current_trace_id()
            received = [m async for m in channel.unary_stream(f"/{ECHO}/Count")(b"", timeout=5)]
    assert received == [b"0", b"1", b"2"]
    kinds = sorted(s.kind for s in await _with_served(settings, trace_id))
    assert kinds == ["CLIENT", "INTERNAL", "SERVER"]


@pytest.mark.parametrize(
    ("method", "code", "status", "message"),
    [
        # The caller's mistake: the code is recorded, the span is not an error.
        ("Missing", grpc.StatusCode.NOT_FOUND, "UNSET", ""),
        # The server's fault, named by the exception that caused it.
        ("Broken", grpc.StatusCode.INTERNAL, "ERROR", "RuntimeError: the handler broke"),
        # A handler's own abort with a server-side code: the code and its details.
        ("Overloaded", grpc.StatusCode.UNAVAILABLE, "ERROR", "come back later"),
    ],
)
async def test_a_failed_call_records_its_code_and_the_servers_faults_as_errors(
    settings: Settings,
    server: GrpcServer,
    method: str,
    code: grpc.StatusCode,
    status: str,
    message: str,
) -> None:
    async with telemetry.insecure_channel(server.address) as channel:
        with telemetry.tracer("tests.client").start_as_current_span("failing call"):
            trace_id = telemetry.current_trace_id()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await channel.unary_unary(f"/{ECHO}/{method}")(b"", timeout=5)
    assert raised.value.code() == code
    (served,) = [s for s in await _with_served(settings, trace_id) if s.kind == "SERVER"]
    assert served.attributes["rpc.grpc.status_code"] == code.value[0]
    assert served.attributes["rpc.service"] == ECHO and served.attributes["rpc.method"] == method
    assert served.status == status
    assert message in served.status_message


async def test_a_stream_that_breaks_midway_ends_its_span_as_an_error(
    settings: Settings, server: GrpcServer
) -> None:
    received = []
    async with telemetry.insecure_channel(server.address) as channel:
        with telemetry.tracer("tests.client").start_as_current_span("broken stream"):
            trace_id = telemetry.current_trace_id()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                async for message in channel.unary_stream(f"/{ECHO}/CountThenBreak")(
                    b"", timeout=5
                ):
                    received.append(message)
    assert received == [b"0"] and raised.value.code() == grpc.StatusCode.INTERNAL
    (served,) = [s for s in await _with_served(settings, trace_id) if s.kind == "SERVER"]
    assert served.status == "ERROR" and "the stream broke" in served.status_message
    assert served.end_unix_ns >= served.start_unix_ns


async def test_health_checks_are_not_traced(settings: Settings, server: GrpcServer) -> None:
    from prognos.core.server import wait_for_serving

    await wait_for_serving(server.address, deadline_s=5)
    # A traced call after it: once its span is written, a health span would be too.
    async with telemetry.insecure_channel(server.address) as channel:
        with telemetry.tracer("tests.client").start_as_current_span("after health"):
            trace_id = telemetry.current_trace_id()
            await channel.unary_unary(f"/{ECHO}/WhoAmI")(b"", timeout=5)
    await _with_served(settings, trace_id)
    assert not [s for s in telemetry.read_spans(settings.spans_dir) if "Health" in s.name]


def test_headers_carry_the_trace_context_across_a_message(settings: Settings) -> None:
    with telemetry.tracer("tests.producer").start_as_current_span("publish") as producer:
        headers = telemetry.inject_headers({"Nats-Msg-Id": "event-1"})
        traceparent, tracestate = telemetry.current_traceparent()
    assert headers["Nats-Msg-Id"] == "event-1"
    assert headers["traceparent"] == traceparent and tracestate == ""
    producer_context = producer.get_span_context()

    context = telemetry.extract_context(headers)
    with telemetry.tracer("tests.consumer").start_as_current_span(
        "process", context=context, kind=trace.SpanKind.CONSUMER
    ) as consumer:
        assert telemetry.current_trace_id() == format(producer_context.trace_id, "032x")
    assert consumer.parent is not None and consumer.parent.span_id == producer_context.span_id


def test_without_a_span_there_is_no_trace_context() -> None:
    assert telemetry.current_trace_id() == ""
    assert telemetry.current_traceparent() == ("", "")
    assert telemetry.inject_headers({"a": "b"}) == {"a": "b"}
    context = telemetry.extract_context(None)
    assert not trace.get_current_span(context).get_span_context().is_valid


def test_setup_is_idempotent_and_switches_to_new_settings(
    settings: Settings, tmp_path: Path
) -> None:
    provider = telemetry.setup(settings)
    assert telemetry.setup(settings) is provider
    other = Settings.load("tracetest", data_dir=tmp_path / "other")
    assert telemetry.setup(other) is provider
    with telemetry.tracer("tests").start_as_current_span("after switch"):
        trace_id = telemetry.current_trace_id()
    assert telemetry.flush()
    assert [s.name for s in telemetry.read_spans(other.spans_dir, trace_id)] == ["after switch"]
    assert telemetry.read_spans(settings.spans_dir, trace_id) == []


def test_read_spans_skips_a_torn_last_line(settings: Settings) -> None:
    with telemetry.tracer("tests").start_as_current_span("whole"):
        trace_id = telemetry.current_trace_id()
    assert telemetry.flush()
    path = settings.spans_dir / "tracetest.jsonl"
    with path.open("a") as fh:
        fh.write('{"trace_id": "' + trace_id + '", "span_id": "ab')
    assert [s.name for s in telemetry.read_spans(settings.spans_dir, trace_id)] == ["whole"]
    assert telemetry.read_spans(settings.spans_dir / "missing") == []


def test_span_files_hold_each_spans_record_exactly(tmp_path: Path) -> None:
    """The exporter's own line writer and ``SpanRecord`` agree on every field."""
    finished: list[ReadableSpan] = []

    class Keep(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            finished.extend(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Keep()))
    tracer = provider.get_tracer("tests")
    with tracer.start_as_current_span('root "quoted" é', kind=trace.SpanKind.SERVER) as root:
        root.set_attributes({"rpc.method": "Predict", "sensors": ("s2", "s3"), "n": 3, "ok": True})
        root.add_event("retry", {"attempt": 2, "why": "line\nbreak"})
        linked = root.get_span_context()
        with tracer.start_as_current_span("inner"):
            pass
    with tracer.start_as_current_span("child", links=[trace.Link(linked)]) as child:
        child.set_status(trace.StatusCode.ERROR, "boom: ünïcode")
    exporter = telemetry.JsonLinesSpanExporter(tmp_path / "spans" / "svc.jsonl", "svc")
    assert exporter.export(finished) == SpanExportResult.SUCCESS
    lines = (tmp_path / "spans" / "svc.jsonl").read_text(encoding="utf-8").splitlines()
    expected = [telemetry.SpanRecord.from_span(s, "svc") for s in finished]
    assert [telemetry.SpanRecord.from_json(line) for line in lines] == expected
    assert [json.loads(line) for line in lines] == [json.loads(r.to_json()) for r in expected]
    inner, root, child = expected
    assert inner.parent_span_id == root.span_id and root.events and child.links


async def test_database_statements_become_child_spans(settings: Settings, tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'traced.db'}")
    telemetry.instrument_engine(engine)
    telemetry.instrument_engine(engine)  # a second call must not trace statements twice
    try:
        with telemetry.tracer("tests").start_as_current_span("handler") as handler:
            trace_id = telemetry.current_trace_id()
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT 41 + 1"))).scalar() == 42
    finally:
        await engine.dispose()
    assert telemetry.flush()
    spans = telemetry.read_spans(settings.spans_dir, trace_id)
    statements = [s for s in spans if "SELECT 41 + 1" in str(s.attributes)]
    assert len(statements) == 1
    assert statements[0].parent_span_id == format(handler.get_span_context().span_id, "016x")


def test_log_records_carry_the_trace_id(settings: Settings) -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect()
    handler.addFilter(telemetry.TraceContextFilter("tracetest"))
    logger = logging.getLogger("tests.tracing.logs")
    logger.addHandler(handler)
    try:
        logger.warning("outside")
        with telemetry.tracer("tests").start_as_current_span("logged"):
            trace_id = telemetry.current_trace_id()
            logger.warning("inside")
    finally:
        logger.removeHandler(handler)
    assert [(r.getMessage(), r.trace_id) for r in records] == [  # type: ignore[attr-defined]
        ("outside", "-"),
        ("inside", trace_id),
    ]
    formatted = logging.Formatter(telemetry.LOG_FORMAT).format(records[1])
    assert f"[trace_id={trace_id}]" in formatted and "tracetest" in formatted

"""GrpcServer through real channels: error mapping, health, reflection, info, shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from prognos.api.common.v1 import info_pb2, info_pb2_grpc
from prognos.core import telemetry
from prognos.core.config import Settings
from prognos.core.errors import (
    AlreadyExistsError,
    ConcurrencyError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    PrognosError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    from_grpc_error,
)
from prognos.core.server import (
    HEALTH_SERVICE,
    INFO_SERVICE,
    REFLECTION_SERVICE,
    REFLECTION_V1_SERVICE,
    GrpcServer,
    wait_for_serving,
)

PROBE = "prognos.test.v1.Probe"
HELPER = Path(__file__).resolve().parents[2] / "helpers" / "core_grpc_server.py"
SECRET = "s3cret-connection-string"


class AssetMissingError(LookupError):
    """A plain domain exception, translated at the edge."""

    def __init__(self, asset_id: str) -> None:
        super().__init__(asset_id)
        self.asset_id = asset_id


CASES: dict[str, Callable[[], Exception]] = {
    "invalid": lambda: InvalidArgumentError([("batch.readings[3].value", "above max 120")]),
    "not_found": lambda: NotFoundError("asset_type", "pump", reason="ASSET_TYPE_NOT_FOUND"),
    "exists": lambda: AlreadyExistsError("asset_type", "pump"),
    "precondition": lambda: FailedPreconditionError(
        [("APPROVAL", "model_version/7", "not approved")], reason="MODEL_NOT_APPROVED"
    ),
    "conflict": lambda: ConcurrencyError("asset_type-pump", 3, 4),
    "unauthenticated": lambda: UnauthenticatedError("token expired", reason="TOKEN_EXPIRED"),
    "denied": lambda: PermissionDeniedError(
        "auditors cannot approve", metadata={"role": "auditor"}
    ),
    "exhausted": lambda: ResourceExhaustedError(
        "GPU capacity used up", retry_after_s=3.0, violations=[("gpu:a", "8 of 8 in use")]
    ),
    "unavailable": lambda: UnavailableError("NATS is down", retry_after_s=0.5),
    "translated": lambda: AssetMissingError("a-17"),
    "unmapped": lambda: RuntimeError(f"cannot connect with {SECRET}"),
}

TRANSLATORS = {
    AssetMissingError: lambda e: NotFoundError("asset", e.asset_id, reason="ASSET_NOT_FOUND")
}


def _same(data: bytes) -> bytes:
    return data


async def _fail_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise CASES[request.decode()]()


async def _fail_after_one(
    request: bytes, context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    yield b"first"
    raise CASES[request.decode()]()


async def _fail_after_write(request: bytes, context: grpc.aio.ServicerContext) -> None:
    await context.write(b"first")
    raise CASES[request.decode()]()


async def _fail_collect(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    names = [r.decode() async for r in requests]
    raise CASES[names[-1]]()


async def _fail_echo(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request
        raise CASES[request.decode()]()


async def _abort_itself(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.OUT_OF_RANGE, "page 9 of 3")
    return b""


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


PROBE_HANDLER = grpc.method_handlers_generic_handler(
    PROBE,
    {
        "Echo": grpc.unary_unary_rpc_method_handler(_echo, _same, _same),
        "FailUnary": grpc.unary_unary_rpc_method_handler(_fail_unary, _same, _same),
        "FailStream": grpc.unary_stream_rpc_method_handler(_fail_after_one, _same, _same),
        "FailWrite": grpc.unary_stream_rpc_method_handler(_fail_after_write, _same, _same),
        "FailCollect": grpc.stream_unary_rpc_method_handler(_fail_collect, _same, _same),
        "FailEcho": grpc.stream_stream_rpc_method_handler(_fail_echo, _same, _same),
        "AbortItself": grpc.unary_unary_rpc_method_handler(_abort_itself, _same, _same),
    },
)


def _add_generic(handler: grpc.GenericRpcHandler, server: grpc.aio.Server) -> None:
    server.add_generic_rpc_handlers((handler,))


@pytest.fixture(autouse=True)
def traced(tmp_path: Path) -> Iterator[None]:
    """Trace as a service does, so that errors carry trace ids."""
    telemetry.setup(Settings.load("probe", data_dir=tmp_path))
    yield
    telemetry.shutdown()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[GrpcServer]:
    settings = Settings.load("probe", data_dir=tmp_path, grpc_port=0, shutdown_grace_s=1.0)
    async with GrpcServer(settings, version="1.2.3", error_translators=TRANSLATORS) as grpc_server:
        grpc_server.add_service(_add_generic, PROBE_HANDLER, PROBE)
        await grpc_server.start()
        yield grpc_server


@pytest.fixture
async def channel(server: GrpcServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.address) as ch:
        yield ch


async def _call_failing(channel: grpc.aio.Channel, kind: str, case: str) -> grpc.aio.AioRpcError:
    """Call one failing method of the probe; return the error, and check what came first."""
    payload = case.encode()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if kind == "unary_unary":
            await channel.unary_unary(f"/{PROBE}/FailUnary")(payload, timeout=5)
        elif kind in ("unary_stream", "unary_stream_write"):
            method = "FailStream" if kind == "unary_stream" else "FailWrite"
            received = []
            try:
                async for message in channel.unary_stream(f"/{PROBE}/{method}")(payload, timeout=5):
                    received.append(message)
            finally:
                assert received == [b"first"]
        elif kind == "stream_unary":
            await channel.stream_unary(f"/{PROBE}/FailCollect")(iter([b"x", payload]), timeout=5)
        else:
            received = []
            try:
                call = channel.stream_stream(f"/{PROBE}/FailEcho")(iter([payload]), timeout=5)
                async for message in call:
                    received.append(message)
            finally:
                assert received == [payload]
    return caught.value


@pytest.mark.parametrize("case", [c for c in CASES if c not in ("translated", "unmapped")])
async def test_each_mapped_error_reaches_the_client_typed(
    channel: grpc.aio.Channel, case: str
) -> None:
    raised = CASES[case]()
    assert isinstance(raised, PrognosError)
    error = await _call_failing(channel, "unary_unary", case)
    assert error.code() == raised.code
    assert error.details() == raised.message
    typed = from_grpc_error(error)
    assert type(typed) is type(raised)
    assert (typed.reason, typed.message, typed.metadata) == (
        raised.reason,
        raised.message,
        raised.metadata,
    )
    assert typed.domain == "probe"
    assert len(typed.trace_id) == 32
    for attribute in ("violations", "resource_type", "name", "stream_id", "retry_after_s"):
        assert getattr(typed, attribute, None) == getattr(raised, attribute, None), attribute


@pytest.mark.parametrize(
    "kind", ["unary_unary", "unary_stream", "unary_stream_write", "stream_unary", "stream_stream"]
)
async def test_every_handler_kind_maps_errors(channel: grpc.aio.Channel, kind: str) -> None:
    conflict = from_grpc_error(await _call_failing(channel, kind, "conflict"))
    assert isinstance(conflict, ConcurrencyError)
    assert (conflict.stream_id, conflict.expected_version, conflict.actual_version) == (
        "asset_type-pump",
        3,
        4,
    )
    translated = from_grpc_error(await _call_failing(channel, kind, "translated"))
    assert isinstance(translated, NotFoundError)
    assert (translated.reason, translated.name) == ("ASSET_NOT_FOUND", "a-17")
    internal = from_grpc_error(await _call_failing(channel, kind, "unmapped"))
    assert isinstance(internal, InternalError)


async def test_unmapped_error_is_internal_with_the_traceback_only_in_the_log(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="prognos.core.errors"):
        error = await _call_failing(channel, "unary_unary", "unmapped")
    assert error.code() == grpc.StatusCode.INTERNAL
    everything_sent = (
        error.details() + repr(error.trailing_metadata()) + repr(error.debug_error_string())
    )
    assert SECRET not in everything_sent
    assert "RuntimeError" not in everything_sent and "Traceback" not in everything_sent
    typed = from_grpc_error(error)
    assert typed.trace_id and error.details() == f"internal error (trace_id={typed.trace_id})"
    logged = [r for r in caplog.records if r.exc_info and SECRET in str(r.exc_info[1])]
    assert len(logged) == 1
    assert typed.trace_id in logged[0].getMessage()


async def test_a_handlers_own_abort_passes_through(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(f"/{PROBE}/AbortItself")(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert caught.value.details() == "page 9 of 3"


async def test_successful_calls_are_untouched(channel: grpc.aio.Channel) -> None:
    assert await channel.unary_unary(f"/{PROBE}/Echo")(b"ping", timeout=5) == b"ping"


async def test_health_reports_serving_for_the_server_and_every_service(
    server: GrpcServer, channel: grpc.aio.Channel
) -> None:
    await wait_for_serving(server.address, deadline_s=5, service=PROBE)
    stub = health_pb2_grpc.HealthStub(channel)
    for name in (
        "",
        PROBE,
        HEALTH_SERVICE,
        INFO_SERVICE,
        REFLECTION_SERVICE,
        REFLECTION_V1_SERVICE,
    ):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, name
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_every_service(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = [r async for r in stub.ServerReflectionInfo(iter([request]), timeout=5)]
    listed = {s.name for s in responses[0].list_services_response.service}
    assert listed == {
        PROBE,
        HEALTH_SERVICE,
        INFO_SERVICE,
        REFLECTION_SERVICE,
        REFLECTION_V1_SERVICE,
    }


async def test_info_describes_the_process(server: GrpcServer, channel: grpc.aio.Channel) -> None:
    info = await info_pb2_grpc.InfoServiceStub(channel).GetInfo(
        info_pb2.GetInfoRequest(), timeout=5
    )
    assert info.service_name == "probe"
    assert info.version == "1.2.3"
    assert list(info.services) == sorted(
        [PROBE, HEALTH_SERVICE, INFO_SERVICE, REFLECTION_SERVICE, REFLECTION_V1_SERVICE]
    )
    assert info.instance_id == server.instance_id
    assert info.started_at.ToNanoseconds() == server.started_at_ns


async def test_stop_marks_not_serving_and_runs_hooks_in_order(tmp_path: Path) -> None:
    settings = Settings.load("probe", data_dir=tmp_path, grpc_port=0, shutdown_grace_s=1.0)
    calls: list[str] = []
    grpc_server = GrpcServer(settings, version="1")

    async def record(name: str) -> None:
        calls.append(name)

    async def failing() -> None:
        calls.append("failing")
        raise OSError("drain failed")

    grpc_server.on_shutdown(lambda: record("stop consumers"))
    grpc_server.on_closed(lambda: record("dispose engine"))
    grpc_server.on_closed(failing)
    grpc_server.on_closed(lambda: record("drain nats"))
    await grpc_server.start()
    async with grpc.aio.insecure_channel(grpc_server.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.ensure_future(grpc_server.stop())
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        with pytest.raises(ExceptionGroup) as caught:
            await stopping
    assert calls == ["stop consumers", "drain nats", "failing", "dispose engine"]
    assert [str(e) for e in caught.value.exceptions] == ["drain failed"]
    with pytest.raises(ExceptionGroup) as again:  # a second stop shares the first's outcome
        await grpc_server.stop()
    assert again.value is caught.value
    assert len(calls) == 4


async def test_start_refuses_a_busy_port(server: GrpcServer, tmp_path: Path) -> None:
    settings = Settings.load("probe", data_dir=tmp_path, grpc_port=server.port)
    with pytest.raises(RuntimeError):
        await GrpcServer(settings, version="1").start()


async def test_wait_for_serving_times_out_naming_the_target() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(TimeoutError, match=target):
        await wait_for_serving(target, deadline_s=0.5)


async def _read_line(stream: asyncio.StreamReader, deadline_s: float) -> str:
    line = await asyncio.wait_for(stream.readline(), timeout=deadline_s)
    return line.decode().strip()


async def test_sigterm_drains_in_flight_calls_and_exits_cleanly(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(HELPER), str(tmp_path), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        first = await _read_line(process.stdout, 60)
        assert first.startswith("PORT "), first
        target = f"127.0.0.1:{first.split()[1]}"
        await wait_for_serving(target, deadline_s=10)
        async with grpc.aio.insecure_channel(target) as channel:
            work = channel.unary_stream("/prognos.test.v1.Slow/Work")(b"", timeout=20)
            assert await work.read() == b"started"
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=20
            )
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING

            process.send_signal(signal.SIGTERM)

            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
            assert await work.read() == b"finished"  # the in-flight call completes
            assert await work.read() is grpc.aio.EOF
            assert await work.code() == grpc.StatusCode.OK
        assert await asyncio.wait_for(process.wait(), timeout=20) == 0
        rest = (await process.stdout.read()).decode().split()
        assert rest == ["SHUTDOWN_HOOK", "CLOSED_HOOK"]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

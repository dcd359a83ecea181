"""The gRPC server lifecycle that every Prognos service shares.

``GrpcServer`` builds a grpc.aio server alike for every service: tracing and error-mapping
interceptors (then any extra ones, such as auth), health checking, server reflection (both
``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``) and ``InfoService``; it binds, serves,
and on SIGTERM or SIGINT shuts down gracefully::

    async with GrpcServer(settings, version=__version__) as server:
        server.add_service(add_IngestServiceServicer_to_server, servicer, INGEST_SERVICE)
        server.on_shutdown(consumers.stop)     # stop pulling from JetStream
        server.on_closed(nats.drain)           # after the last in-flight call finished
        server.on_closed(engine.dispose)
        await server.start()
        await server.serve_until_signal()

Services are added before ``start``. Shutdown marks health NOT_SERVING, runs the shutdown
hooks, waits up to ``settings.shutdown_grace_s`` for in-flight calls, then runs the closed
hooks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as reflection_v1alpha_pb2

from prognos.api.common.v1 import info_pb2, info_pb2_grpc
from prognos.core import telemetry
from prognos.core.config import Settings
from prognos.core.errors import ErrorInterceptor, Translator

__all__ = [
    "HEALTH_SERVICE",
    "INFO_SERVICE",
    "REFLECTION_SERVICE",
    "REFLECTION_V1_SERVICE",
    "GrpcServer",
    "server_limits",
    "wait_for_serving",
]

_log = logging.getLogger(__name__)

HEALTH_SERVICE: str = health.SERVICE_NAME
"""``grpc.health.v1.Health``."""
REFLECTION_SERVICE: str = reflection.SERVICE_NAME
"""``grpc.reflection.v1alpha.ServerReflection``."""
REFLECTION_V1_SERVICE: str = "grpc.reflection.v1.ServerReflection"
"""``grpc.reflection.v1.ServerReflection``, which current tools (grpcurl, buf curl) try first."""
INFO_SERVICE: str = info_pb2.DESCRIPTOR.services_by_name["InfoService"].full_name
"""``prognos.api.common.v1.InfoService``."""

Hook = Callable[[], Awaitable[Any]]
AddServicerFn = Callable[[Any, grpc.aio.Server], None]

_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}

_REFLECTION_V1_FILE = "grpc/reflection/v1/reflection.proto"
_REFLECTION_V1ALPHA_PACKAGE = reflection_v1alpha_pb2.DESCRIPTOR.package


def _register_reflection_v1_descriptor() -> None:
    """Put ``grpc/reflection/v1/reflection.proto`` in the default pool, if nobody did yet.

    grpcio-reflection serves only v1alpha. v1 is the same file under another package (same
    messages, fields and numbers), so its descriptor is v1alpha's with the package renamed;
    with it in the pool, reflection can describe the v1 service like any other.
    """
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_REFLECTION_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_v1alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{_REFLECTION_V1ALPHA_PACKAGE}.", ".grpc.reflection.v1."
    proto.name = _REFLECTION_V1_FILE
    proto.package = "grpc.reflection.v1"
    proto.options.Clear()
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    proto.options.java_multiple_files = True
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_outer_classname = "ServerReflectionProto"
    for message in proto.message_type:
        for message_field in message.field:
            if message_field.type_name.startswith(old):
                message_field.type_name = new + message_field.type_name.removeprefix(old)
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type.removeprefix(old)
            method.output_type = new + method.output_type.removeprefix(old)
    pool.AddSerializedFile(proto.SerializeToString())


def _add_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Serve server reflection as ``grpc.reflection.v1alpha`` and ``grpc.reflection.v1``.

    One servicer answers both: the v1 messages are byte for byte the v1alpha ones, so the
    v1 method reuses the v1alpha (de)serializers under the v1 method path.
    """
    _register_reflection_v1_descriptor()
    servicer = reflection.aio.ReflectionServicer(service_names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    info = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_v1alpha_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_v1alpha_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                REFLECTION_V1_SERVICE, {"ServerReflectionInfo": info}
            ),
        )
    )


def server_limits(settings: Settings) -> list[tuple[str, int]]:
    """The grpc server options that bound what one client can hold open or send.

    Args:
        settings: Uses the ``grpc_*`` limits (streams, message size, connection age and
            keepalive).

    Returns:
        ``(option, value)`` pairs for ``grpc.aio.server(options=...)``.
    """

    def ms(seconds: float) -> int:
        return round(seconds * 1000)

    return [
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        ("grpc.max_receive_message_length", settings.grpc_max_receive_message_bytes),
        ("grpc.max_connection_age_ms", ms(settings.grpc_max_connection_age_s)),
        ("grpc.max_connection_age_grace_ms", ms(settings.grpc_max_connection_age_grace_s)),
        ("grpc.keepalive_time_ms", ms(settings.grpc_keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", ms(settings.grpc_keepalive_timeout_s)),
        # A client's keepalive pings on a connection without calls are allowed, but not
        # more often than this; faster ones are strikes, and too many close the connection.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(settings.grpc_min_ping_interval_s)),
        ("grpc.http2.max_ping_strikes", settings.grpc_max_ping_strikes),
    ]


class _InfoServicer(info_pb2_grpc.InfoServiceServicer):
    """Answers ``InfoService.GetInfo`` for this process."""

    def __init__(self, server: GrpcServer) -> None:
        self._server = server

    async def GetInfo(
        self, request: info_pb2.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> info_pb2.GetInfoResponse:
        started_at = Timestamp()
        started_at.FromNanoseconds(self._server.started_at_ns)
        return info_pb2.GetInfoResponse(
            service_name=self._server.settings.service,
            version=self._server.version,
            started_at=started_at,
            services=self._server.service_names,
            instance_id=self._server.instance_id,
        )


class GrpcServer:
    """A service's grpc.aio server with interceptors, health, reflection and graceful stop.

    An async context manager: leaving the block stops the server if it was started and
    nobody stopped it yet.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        version: str,
        extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        error_translators: Mapping[type[Exception], Translator] | None = None,
        credentials: grpc.ServerCredentials | None = None,
        instance_id: str | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """Build the server; nothing is bound until ``start``.

        Args:
            settings: Uses ``service``, ``grpc_host``, ``grpc_port``, ``shutdown_grace_s`` and
                the ``grpc_*`` limits (see ``server_limits``).
            version: The running build's version, reported by ``InfoService``.
            extra_interceptors: Interceptors run after tracing and error mapping, in order
                (auth goes here), so their errors are mapped and traced too.
            error_translators: Plain domain exception types and how to turn each into a
                ``PrognosError`` (see ``ErrorInterceptor``).
            credentials: Server credentials for TLS; plaintext when ``None``.
            instance_id: Id of this replica; ``<hostname>-<pid>`` by default.
            options: Extra grpc server options.
        """
        self.settings = settings
        self.version = version
        self.instance_id = instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self.started_at_ns = time.time_ns()
        self._credentials = credentials
        self._interceptors: list[grpc.aio.ServerInterceptor] = [
            *telemetry.server_interceptors(),
            ErrorInterceptor(settings.service, error_translators),
            *extra_interceptors,
        ]
        # SO_REUSEPORT would let a second process bind a busy port and silently share it.
        self._options = [("grpc.so_reuseport", 0), *server_limits(settings), *options]
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._services: list[tuple[AddServicerFn, Any, str]] = []
        self._started_hooks: list[Hook] = []
        self._shutdown_hooks: list[Hook] = []
        self._closed_hooks: list[Hook] = []
        self._port: int | None = None
        self._stopping: asyncio.Future[None] | None = None
        self._stop_requested = asyncio.Event()

    @property
    def health(self) -> health.aio.HealthServicer:
        """The health servicer, for a service that reports its own status changes."""
        return self._health

    @property
    def service_names(self) -> list[str]:
        """Fully qualified names of every service served, including the standard ones, sorted."""
        names = {name for _, _, name in self._services}
        names.update((HEALTH_SERVICE, REFLECTION_SERVICE, REFLECTION_V1_SERVICE, INFO_SERVICE))
        return sorted(names)

    @property
    def port(self) -> int:
        """The bound port.

        Raises:
            RuntimeError: The server has not been started.
        """
        if self._port is None:
            raise RuntimeError("the server has not been started")
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` a local client can dial (a wildcard host becomes loopback)."""
        host = self.settings.grpc_host
        if host in _WILDCARD_HOSTS:
            host = "127.0.0.1"
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"

    def add_service(self, add_fn: AddServicerFn, servicer: Any, full_name: str) -> None:
        """Serve ``servicer`` (before ``start``); it shows in health, reflection and info.

        Args:
            add_fn: The generated ``add_<Name>Servicer_to_server`` function.
            servicer: The servicer instance.
            full_name: Fully qualified service name, e.g. ``"prognos.api.ingest.v1.IngestService"``
                (``<pb2>.DESCRIPTOR.services_by_name["IngestService"].full_name``).

        Raises:
            RuntimeError: The server is already started.
        """
        if self._server is not None:
            raise RuntimeError("add services before start()")
        self._services.append((add_fn, servicer, full_name))

    def on_started(self, hook: Hook) -> None:
        """Run ``hook`` once the server listens and reports SERVING (announce the address).

        Started hooks run in the order they were added.
        """
        self._started_hooks.append(hook)

    def on_shutdown(self, hook: Hook) -> None:
        """Run ``hook`` when shutdown begins: after NOT_SERVING, before in-flight calls drain.

        Shutdown hooks run in the order they were added (stop consumers, background tasks).
        """
        self._shutdown_hooks.append(hook)

    def on_closed(self, hook: Hook) -> None:
        """Run ``hook`` after the server stopped (drain NATS, dispose the engine).

        Closed hooks run in reverse order of registration, like an exit stack.
        """
        self._closed_hooks.append(hook)

    async def start(self) -> int:
        """Bind ``settings.grpc_host:settings.grpc_port`` and start serving.

        Returns:
            The bound port (a free one when ``grpc_port`` is 0).

        Raises:
            RuntimeError: Already started, or the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("the server is already started")
        server = grpc.aio.server(interceptors=self._interceptors, options=self._options)
        for add_fn, servicer, _ in self._services:
            add_fn(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        info_pb2_grpc.add_InfoServiceServicer_to_server(_InfoServicer(self), server)
        _add_reflection(server, self.service_names)

        host = self.settings.grpc_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        bind = f"{host}:{self.settings.grpc_port}"
        if self._credentials is None:
            port = server.add_insecure_port(bind)
        else:
            port = server.add_secure_port(bind, self._credentials)
        if port == 0:
            raise RuntimeError(f"cannot bind gRPC server to {bind}")
        await server.start()
        self._server = server
        self._port = port
        self.started_at_ns = time.time_ns()
        for name in self.service_names:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        _log.info("%s serving gRPC on %s", self.settings.service, self.address)
        for hook in self._started_hooks:
            await hook()
        return port

    async def serve_until_signal(self) -> None:
        """Serve until SIGTERM or SIGINT (or until ``stop`` is called elsewhere), then ``stop``.

        Installs the signal handlers on the running loop and removes them on return.

        Raises:
            RuntimeError: The server has not been started.
        """
        if self._server is None:
            raise RuntimeError("start() the server first")
        loop = asyncio.get_running_loop()
        received = asyncio.Event()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, received.set)
        try:
            waits = {
                asyncio.ensure_future(received.wait()),
                asyncio.ensure_future(self._stop_requested.wait()),
            }
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
            if received.is_set():
                _log.info("%s received a stop signal", self.settings.service)
            await self.stop()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    async def stop(self) -> None:
        """Stop gracefully; calling it again waits for the first stop and shares its outcome.

        Marks every service NOT_SERVING, runs the shutdown hooks, lets in-flight calls
        finish for up to ``settings.shutdown_grace_s`` seconds, then runs the closed hooks.
        Every hook runs even when an earlier one fails.

        Raises:
            ExceptionGroup: One or more hooks failed (after all of them ran).
        """
        if self._stopping is None:
            self._stop_requested.set()
            self._stopping = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        failures: list[Exception] = []
        await self._health.enter_graceful_shutdown()
        await _run_hooks(self._shutdown_hooks, failures)
        if self._server is not None:
            await self._server.stop(self.settings.shutdown_grace_s)
        await _run_hooks(list(reversed(self._closed_hooks)), failures)
        _log.info("%s stopped", self.settings.service)
        if failures:
            raise ExceptionGroup(f"{self.settings.service}: shutdown hooks failed", failures)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None and self._stopping is None:
            await self.stop()


async def _run_hooks(hooks: Sequence[Hook], failures: list[Exception]) -> None:
    for hook in hooks:
        try:
            await hook()
        except Exception as exc:
            _log.exception("shutdown hook %r failed", hook)
            failures.append(exc)


async def wait_for_serving(
    target: str,
    *,
    deadline_s: float,
    service: str = "",
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    """Wait until the server at ``target`` reports SERVING for ``service``.

    Watches the standard health service, reconnecting while the server is not up yet.

    Args:
        target: ``host:port``.
        deadline_s: Seconds to wait at most.
        service: Fully qualified service name; "" for the server as a whole.
        credentials: Channel credentials for a server that speaks TLS; plaintext if None.

    Raises:
        TimeoutError: Not SERVING within the deadline; the message names the target and
            the last status or error seen.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    last = "no answer"
    # Short reconnect back-off: the default waits up to minutes between attempts.
    options = [
        ("grpc.initial_reconnect_backoff_ms", 50),
        ("grpc.min_reconnect_backoff_ms", 50),
        ("grpc.max_reconnect_backoff_ms", 250),
    ]
    request = health_pb2.HealthCheckRequest(service=service)
    channel = (
        grpc.aio.insecure_channel(target, options=options)
        if credentials is None
        else grpc.aio.secure_channel(target, credentials, options=options)
    )
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while (remaining := deadline - loop.time()) > 0:
            try:
                call = stub.Watch(request, timeout=remaining, wait_for_ready=True)
                async for response in call:
                    last = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return
            except grpc.aio.AioRpcError as error:
                last = f"{error.code().name}: {error.details()}"
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    break
            # The server went away or is not ready: back off briefly, then watch again.
            await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
    what = f"service {service!r} at {target}" if service else target
    raise TimeoutError(f"{what} not SERVING within {deadline_s:g}s (last: {last})")

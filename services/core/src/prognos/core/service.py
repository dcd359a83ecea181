"""The composition every service shares: migrate, or serve until SIGTERM.

A service's ``__main__`` calls ``main(...)`` with its name, its migrations folder and a
``build`` coroutine that adds its servicers and subscriptions to the ``Runtime``. The
runtime owns the database engine, the NATS connection, the outbox relay, the consumers and
the gRPC server, and stops them in order: NOT_SERVING, stop consuming, finish the relay,
drain gRPC, drain NATS, dispose the engine, flush spans.

Every service gets the same security and audit plumbing here, with no code of its own:
mutual TLS from the ``tls_*`` files, the token and role check of every RPC with
``auth_public_key_file`` (denials audited in the service's chain), the check of every request
against the limits its contract declares (``prognos.core.validation``), ``AuditService`` over
its chain, and the anchor that publishes the chain's head to the ``AUDIT`` stream. It
fails closed: without those files a service refuses to start, unless
``insecure_development`` says it runs for development on loopback (``require_security``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prognos.api.common.v1 import audit_pb2_grpc
from prognos.core import anchoring, auth, bus, telemetry, tls, validation
from prognos.core.audit_api import AUDIT_SERVICE, AuditServicer
from prognos.core.config import Settings
from prognos.core.server import GrpcServer
from prognos.core.store import EventStore, create_engine
from prognos.core.trail import TrailSource

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What a service's ``build`` wires its handlers to."""

    settings: Settings
    store: EventStore
    nc: Client
    js: JetStreamContext
    server: GrpcServer
    relay: bus.OutboxRelay
    anchor: anchoring.ChainAnchor | None = None
    consumers: list[bus.Consumer] = field(default_factory=list)
    background: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    trail_sources: list[TrailSource] = field(default_factory=list)
    """The service's own steps of a work order's trail (``AuditService.GetTrail``)."""
    audit: AuditServicer | None = None
    """The service's ``AuditService`` (a ``build`` may give it a whole-trail gatherer)."""

    def subscribe(self, sub: bus.Subscription) -> bus.Consumer:
        """Add a durable consumer; it starts with the service and stops before gRPC drains."""
        consumer = bus.Consumer(
            self.store,
            self.js,
            sub,
            batch_size=self.settings.consumer_batch_size,
            max_deliver=self.settings.consumer_max_deliver,
        )
        self.consumers.append(consumer)
        return consumer


Build = Callable[[Runtime], Awaitable[None]]


Translators = Mapping[type[Exception], Callable[[Exception], Exception]]


async def serve(
    settings: Settings,
    build: Build,
    *,
    version: str,
    stream: str,
    translators: Translators | None = None,
    server_options: Sequence[tuple[str, Any]] = (),
) -> None:
    """Run one service until SIGTERM or SIGINT, then shut it down gracefully.

    Args:
        settings: the service's settings.
        build: adds the service's servicers, subscriptions and background jobs.
        version: reported by ``InfoService``.
        stream: the JetStream stream this service publishes to (created if missing).
        translators: domain exceptions and the ``PrognosError`` each becomes at the edge.
        server_options: extra grpc server options (for example flow-control windows).
    """
    require_security(settings)
    telemetry.setup(settings)
    if not settings.nats_url:
        raise SystemExit(
            f"{settings.service}: no NATS URL configured (PROGNOS_NATS_URL); "
            "`prognos up` starts an embedded nats-server and sets it"
        )
    async with AsyncExitStack() as stack:
        engine = create_engine(settings)
        telemetry.instrument_engine(engine)
        stack.push_async_callback(engine.dispose)
        store = EventStore(engine, settings.service)
        nc = await bus.connect(settings)
        stack.push_async_callback(_drain, nc)
        js = nc.jetstream()
        await bus.ensure_stream(js, stream)
        relay = bus.OutboxRelay(
            store,
            js,
            batch_size=settings.relay_batch_size,
            poll_s=settings.relay_poll_s,
            crash_at=settings.relay_crash_at,
        )
        await anchoring.ensure_audit_stream(js)
        anchor = anchoring.ChainAnchor(
            store,
            js,
            interval_s=settings.anchor_interval_s,
            checkpoint_interval_s=settings.checkpoint_interval_s,
            signing_key=(
                auth.load_private_key(settings.audit_signing_key_file)
                if settings.audit_signing_key_file
                else None
            ),
        )
        store.on_audit.append(anchor.notify)
        server = GrpcServer(
            settings,
            version=version,
            error_translators=translators,  # type: ignore[arg-type]
            # Authentication first: a denied caller is answered before its request is read.
            extra_interceptors=[
                *access_interceptors(settings, store),
                *validation_interceptors(settings),
            ],
            credentials=tls.server_credentials(settings),
            options=server_options,
        )
        trail_sources: list[TrailSource] = []
        audit_servicer = AuditServicer(store, anchor, trail_sources)
        server.add_service(
            audit_pb2_grpc.add_AuditServiceServicer_to_server, audit_servicer, AUDIT_SERVICE
        )
        runtime = Runtime(
            settings,
            store,
            nc,
            js,
            server,
            relay,
            anchor,
            trail_sources=trail_sources,
            audit=audit_servicer,
        )
        runtime.background.append(anchor.run)
        await build(runtime)

        async def stop_consuming() -> None:
            await asyncio.gather(*(c.stop() for c in runtime.consumers))

        server.on_shutdown(stop_consuming)
        server.on_closed(relay.stop)
        relay.start()
        for consumer in runtime.consumers:
            consumer.start()
        tasks = [asyncio.create_task(job()) for job in runtime.background]
        # What start-up built (modules, descriptors, settings) lives as long as the process:
        # out of the collector's sight, a full collection stops walking ~140k objects
        # (~0.2 s on a busy machine), which otherwise lands on some unlucky request.
        gc.collect()
        gc.freeze()
        await server.start()
        log.info("%s %s serving on %s", settings.service, version, server.address)
        try:
            await server.serve_until_signal()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    telemetry.shutdown()


def require_security(settings: Settings) -> None:
    """Refuse to serve without TLS files and a token key, unless told it runs for development.

    ``insecure_development`` lets a process serve without them, and is refused itself unless
    the process listens on loopback only; when honoured, a WARNING says so.

    Args:
        settings: Uses ``tls_*``, ``auth_public_key_file``, ``insecure_development`` and
            ``grpc_host``.

    Raises:
        SystemExit: With a message naming what is missing, or why development mode is refused.
    """
    missing = settings.missing_security
    if settings.insecure_development:
        if not settings.listens_on_loopback:
            raise SystemExit(
                f"{settings.service}: refusing to start: PROGNOS_INSECURE_DEVELOPMENT is "
                f"allowed on loopback only (127.0.0.1, ::1, localhost), but PROGNOS_GRPC_HOST "
                f"is {settings.grpc_host!r}; configure TLS and a token key instead"
            )
        log.warning(
            "%s: INSECURE DEVELOPMENT MODE (PROGNOS_INSECURE_DEVELOPMENT): serving on "
            "loopback only%s; never run like this in production",
            settings.service,
            f", without {', '.join(missing)}" if missing else "",
        )
        return
    if missing:
        raise SystemExit(
            f"{settings.service}: refusing to start without TLS and a token key: "
            f"{', '.join(missing)} not set. `prognos up` creates development ones; "
            "for development on loopback without them, set PROGNOS_INSECURE_DEVELOPMENT=true"
        )


def access_interceptors(
    settings: Settings, store: EventStore | None
) -> list[auth.AccessInterceptor]:
    """The access-control interceptor for ``settings``, or none (with a WARNING) if unset.

    Args:
        settings: Uses ``auth_public_key_file``, ``auth_issuer`` and ``tls_*``.
        store: Where denials are audited.

    Returns:
        ``[AccessInterceptor]`` when a token key is configured, else ``[]``.
    """
    if not settings.tls_enabled:
        log.warning(
            "%s: TLS is OFF: gRPC is served in plaintext (set PROGNOS_TLS_CERT_FILE, "
            "PROGNOS_TLS_KEY_FILE and PROGNOS_TLS_CA_FILE)",
            settings.service,
        )
    if settings.auth_public_key_file is None:
        log.warning(
            "%s: access control is OFF: no token key configured "
            "(PROGNOS_AUTH_PUBLIC_KEY_FILE), so every caller may call every RPC",
            settings.service,
        )
        return []
    public_key = auth.load_public_key(settings.auth_public_key_file)
    return [
        auth.AccessInterceptor(
            public_key, store, service=settings.service, issuer=settings.auth_issuer
        )
    ]


def validation_interceptors(settings: Settings) -> list[validation.ValidationInterceptor]:
    """The interceptor that checks every request against its contract's declared limits.

    Args:
        settings: Uses ``request_validation``.

    Returns:
        ``[ValidationInterceptor]``, or ``[]`` with a WARNING when validation is turned off.
    """
    if not settings.request_validation:
        log.warning(
            "%s: request validation is OFF (PROGNOS_REQUEST_VALIDATION=false): requests are "
            "not checked against the limits their contracts declare",
            settings.service,
        )
        return []
    return [validation.ValidationInterceptor()]


async def _drain(nc: Client) -> None:
    if nc.is_connected:
        await nc.drain()


def main(
    service: str,
    *,
    build: Build,
    migrations: Path,
    version: str,
    stream: str,
    translators: Translators | None = None,
    server_options: Sequence[tuple[str, Any]] = (),
    argv: list[str] | None = None,
) -> None:
    """The command line of a service process: ``migrate`` once, then ``serve``."""
    parser = argparse.ArgumentParser(prog=f"python -m prognos.{service}")
    parser.add_argument("command", choices=["migrate", "serve"])
    args = parser.parse_args(argv)
    settings = Settings.load(service)
    telemetry.configure_logging(settings)
    if args.command == "migrate":
        # Alembic is needed only here; serving processes start without importing it.
        from prognos.core import migrate

        migrate.upgrade(settings, migrations)
        return
    asyncio.run(
        serve(
            settings,
            build,
            version=version,
            stream=stream,
            translators=translators,
            server_options=server_options,
        )
    )


def package_version(distribution: str) -> str:
    """The installed version of a distribution, or ``0+unknown``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "0+unknown"

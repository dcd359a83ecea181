"""The scheduler service in-process: real SQLite, real nats-server, real gRPC channel.

The nats-server runs with the bus identities' authorization, as ``prognos up`` runs it: the
scheduler signs in as itself, predictions arrive from a connection signed in as inference
(``Scheduler.inference``), and the ``listener`` watches as the observer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import text

from prognos.api.scheduler.v1 import scheduler_pb2_grpc
from prognos.core import bus, busauth, telemetry
from prognos.core.config import Settings
from prognos.core.migrate import sync_url, upgrade
from prognos.core.server import GrpcServer
from prognos.core.service import Runtime
from prognos.core.store import EventStore, create_engine
from prognos.core.testing.identities import AuthorizedNats, connect_as
from prognos.scheduler.bootstrap import TRANSLATORS, build

PG_URL = os.environ.get("PROGNOS_TEST_PG_URL")
MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "scheduler" / "migrations"

#: Fast timings for tests: plan right after a change, retry webhooks within a second.
FAST = {
    "schedule_debounce_s": 0.05,
    "schedule_max_delay_s": 0.3,
    "schedule_interval_s": 30.0,
    "schedule_time_limit_s": 5.0,
    "decision_audit_interval_s": 0.5,
    "webhook_max_backoff_s": 0.5,
    "webhook_poll_s": 0.1,
    "webhook_timeout_s": 2.0,
    "relay_poll_s": 0.05,
    "consumer_batch_size": 200,
    "shutdown_grace_s": 1.0,
}


@dataclass
class Scheduler:
    """A running scheduler and what a test needs to talk to it."""

    settings: Settings
    store: EventStore
    runtime: Runtime
    nc: Client
    js: JetStreamContext
    channel: grpc.aio.Channel
    stub: scheduler_pb2_grpc.MaintenanceSchedulerStub
    #: JetStream signed in as inference, the only identity that may publish predictions.
    inference: JetStreamContext


@contextlib.asynccontextmanager
async def running_scheduler(settings: Settings) -> AsyncIterator[Scheduler]:
    """Serve the scheduler as ``prognos.core.service.serve`` does, without the signals."""
    upgrade(settings, MIGRATIONS)
    telemetry.setup(settings)
    engine = create_engine(settings)
    store = EventStore(engine, "scheduler")
    nc = await bus.connect(settings)
    js = nc.jetstream()
    assert settings.nats_nkey_seed_file is not None, "the scheduler signs in as itself"
    inference_seed = busauth.seed_path(settings.nats_nkey_seed_file.parent, "inference")
    inference_nc = await connect_as(settings.nats_url or "", inference_seed)
    for stream in ("SCHEDULER", "INFERENCE"):
        await bus.ensure_stream(js, stream)
    relay = bus.OutboxRelay(store, js, poll_s=settings.relay_poll_s)
    server = GrpcServer(settings, version="0+test", error_translators=TRANSLATORS)  # type: ignore[arg-type]
    runtime = Runtime(settings, store, nc, js, server, relay)
    await build(runtime)

    async def stop_consuming() -> None:
        await asyncio.gather(*(c.stop() for c in runtime.consumers))

    server.on_shutdown(stop_consuming)
    server.on_closed(relay.stop)
    relay.start()
    for consumer in runtime.consumers:
        consumer.start()
    tasks = [asyncio.create_task(job()) for job in runtime.background]
    await server.start()
    channel = grpc.aio.insecure_channel(server.address)
    try:
        yield Scheduler(
            settings,
            store,
            runtime,
            nc,
            js,
            channel,
            scheduler_pb2_grpc.MaintenanceSchedulerStub(channel),
            inference_nc.jetstream(),
        )
    finally:
        await channel.close()
        await server.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await inference_nc.drain()
        await nc.drain()
        await engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def database(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The scheduler's database: a SQLite file, or a throwaway PostgreSQL schema."""
    if request.param == "sqlite":
        yield {}
        return
    if not PG_URL:
        pytest.skip("PROGNOS_TEST_PG_URL is not set: no PostgreSQL to test against")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield {"database_url": PG_URL, "db_schema": schema}
    engine = create_sync_engine(sync_url(PG_URL))
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture
def scheduler_settings(
    tmp_path: Path, authorized_nats: AuthorizedNats, database: dict[str, Any]
) -> Callable[..., Settings]:
    """Settings of a scheduler on its own database and the test's nats-server."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            **FAST,
            **database,
            "data_dir": tmp_path,
            "nats_url": authorized_nats.url,
            "nats_nkey_seed_file": authorized_nats.seeds["scheduler"],
            "grpc_port": 0,
            **overrides,
        }
        return Settings.load("scheduler", **values)

    return make


@pytest.fixture
def start_scheduler(
    scheduler_settings: Callable[..., Settings],
) -> Callable[..., contextlib.AbstractAsyncContextManager[Scheduler]]:
    """Start a scheduler with settings of the test's choosing: ``async with start(**kw)``."""
    return lambda **overrides: running_scheduler(scheduler_settings(**overrides))


@pytest.fixture
async def scheduler(
    scheduler_settings: Callable[..., Settings],
) -> AsyncIterator[Scheduler]:
    async with running_scheduler(scheduler_settings()) as running:
        yield running


@pytest.fixture
async def listener(authorized_nats: AuthorizedNats) -> AsyncIterator[Client]:
    """A NATS connection for watching subjects, signed in as the observer."""
    nc = await connect_as(authorized_nats.url, authorized_nats.seeds[busauth.OBSERVER_IDENTITY])
    yield nc
    await nc.drain()

"""Inference replicas in-process: real nats-server, real SQLite, real gRPC channels.

``running_inference`` serves one replica the way ``prognos.core.service.serve`` does (minus
the signal handling) and hands the test its parts; several may share one nats-server and
one database, as replicas do. Telemetry is published on the TELEMETRY stream exactly as
the ingest service publishes it, and models are announced with the registry's
``AliasMoved`` events, for small CNNs trained once per cache key on a simulated fleet.
The nats-server runs with the bus identities' authorization: a replica signs in as
inference, and the test publishes each subject as the identity that owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import numpy as np
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from prognos.api.common.v1.envelope_pb2 import Envelope
from prognos.api.inference.v1 import events_pb2, inference_pb2, inference_pb2_grpc
from prognos.core import bus, busauth, telemetry
from prognos.core.config import Settings
from prognos.core.migrate import upgrade
from prognos.core.server import GrpcServer
from prognos.core.service import Runtime
from prognos.core.store import EventStore, create_engine
from prognos.core.testing.identities import AuthorizedNats, connect_as
from prognos.inference.bootstrap import Inference, install

ROOT = Path(__file__).resolve().parents[3]
MIGRATIONS = ROOT / "services" / "inference" / "migrations"


def load_fleet() -> ModuleType:
    """The simulated fleet helper (``tests/helpers/inference_fleet.py``)."""
    name = "inference_fleet"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "helpers" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


sim = load_fleet()

#: Fast timings for tests.
FAST: dict[str, Any] = {
    "relay_poll_s": 0.05,
    "shutdown_grace_s": 1.0,
    "inference_heartbeat_s": 0.2,
    "inference_member_ttl_s": 1.5,
    "inference_batch_deadline_s": 0.005,
    "inference_drift_interval_s": 3600.0,
    "anchor_interval_s": 60.0,
}


@pytest.fixture(scope="session")
def model_dirs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> list[Path]:
    """Two small CNNs (seeds 1 and 2) exported for serving, trained once per cache key.

    They are kept in pytest's cache across runs; without the cache plugin, for this run.
    """
    cache = getattr(request.config, "cache", None)
    folder = (
        cache.mkdir("inference-models")
        if cache is not None
        else tmp_path_factory.mktemp("inference-models")
    )
    return list(sim.trained_models(folder, seeds=(1, 2)))


@dataclass
class Replica:
    """A running inference replica and what a test needs to reach it."""

    settings: Settings
    store: EventStore
    server: GrpcServer
    inference: Inference
    channel: grpc.aio.Channel
    stub: inference_pb2_grpc.InferenceServiceStub


@contextlib.asynccontextmanager
async def running_inference(settings: Settings) -> AsyncIterator[Replica]:
    """Serve one replica as ``prognos.core.service.serve`` does, without the signals."""
    await asyncio.to_thread(upgrade, settings, MIGRATIONS)
    telemetry.setup(settings)
    engine = create_engine(settings)
    store = EventStore(engine, "inference")
    nc = await bus.connect(settings)
    js = nc.jetstream()
    await bus.ensure_stream(js, "INFERENCE")
    relay = bus.OutboxRelay(store, js, poll_s=settings.relay_poll_s)
    server = GrpcServer(settings, version="0+test", instance_id=settings.inference_replica_id)
    runtime = Runtime(settings, store, nc, js, server, relay)
    inference = await install(runtime)
    server.on_closed(relay.stop)
    relay.start()
    tasks = [asyncio.create_task(job()) for job in runtime.background]
    await server.start()
    channel = grpc.aio.insecure_channel(server.address)
    try:
        yield Replica(
            settings,
            store,
            server,
            inference,
            channel,
            inference_pb2_grpc.InferenceServiceStub(channel),
        )
    finally:
        await channel.close()
        await server.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await nc.drain()
        await engine.dispose()


@pytest.fixture
def inference_settings(tmp_path: Path, authorized_nats: AuthorizedNats) -> Callable[..., Settings]:
    """Settings of a replica on the test's nats-server and a SQLite file shared by replicas."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            **FAST,
            "data_dir": tmp_path,
            "nats_url": authorized_nats.url,
            "nats_nkey_seed_file": authorized_nats.seeds["inference"],
            "grpc_port": 0,
            **overrides,
        }
        return Settings.load("inference", **values)

    return make


@dataclass
class Observed:
    """Predictions and drift alerts seen on NATS, by asset."""

    predictions: dict[str, list[inference_pb2.Prediction]] = field(
        default_factory=lambda: defaultdict(list)
    )
    shadow: dict[str, list[inference_pb2.Prediction]] = field(
        default_factory=lambda: defaultdict(list)
    )
    drift: list[events_pb2.DriftDetected] = field(default_factory=list)
    envelope_ids: list[str] = field(default_factory=list)

    def latest(self, asset_id: str) -> inference_pb2.Prediction | None:
        made = self.predictions.get(asset_id)
        return made[-1] if made else None


@dataclass
class Bus:
    """A test's own NATS connections: publish what inference consumes, watch its output.

    Each publishes as the identity that owns its subjects on the authorized server:
    ``js`` as ingest (telemetry, asset types), ``registry_js`` as the registry (aliases),
    ``scheduler_js`` as the scheduler (policies); ``nc`` watches as the observer.
    """

    nc: Client
    js: JetStreamContext
    observed: Observed
    registry_js: JetStreamContext
    scheduler_js: JetStreamContext

    async def alias(self, event: Any) -> None:
        """Publish an ``AliasMoved`` as the registry's relay would."""
        await bus.ensure_stream(self.registry_js, "REGISTRY")
        await self.registry_js.publish("registry.alias.moved", sim.envelope(event))

    async def telemetry(
        self, asset_type: str, asset_id: str, values: np.ndarray, end_us: int
    ) -> int:
        """Publish one normalised batch on the TELEMETRY stream; returns its stream sequence."""
        batch = sim.telemetry_batch(asset_id, values, end_us, asset_type=asset_type)
        ack = await self.js.publish(
            sim.telemetry_subject(asset_type, asset_id),
            batch.SerializeToString(),
            headers={"Nats-Msg-Id": f"{asset_id}:{batch.batch_id}"},
        )
        return int(ack.seq)

    async def feed(
        self,
        asset_type: str,
        fleet: Iterable[Any],
        rows: int,
        *,
        end_us: int | None = None,
        shift: dict[str, float] | None = None,
    ) -> int:
        """Publish ``rows`` new readings of every simulated asset; returns the newest time."""
        end_us = end_us or time.time_ns() // 1000
        for asset in fleet:
            await self.telemetry(asset_type, asset.asset_id, asset.readings(rows, shift), end_us)
        return end_us


@pytest.fixture
async def nats_bus(authorized_nats: AuthorizedNats) -> AsyncIterator[Bus]:
    """NATS connections that feed inference and record its predictions and drift alerts."""
    seeds = authorized_nats.seeds
    nc = await connect_as(authorized_nats.url, seeds[busauth.OBSERVER_IDENTITY])
    owners = {
        name: await connect_as(authorized_nats.url, seeds[name])
        for name in ("ingest", "registry", "scheduler")
    }
    js = owners["ingest"].jetstream()
    for stream in ("TELEMETRY", "REGISTRY", "INFERENCE", "INGEST"):
        await bus.ensure_stream(js, stream)
    observed = Observed()

    async def on_message(msg: Any) -> None:
        envelope = Envelope.FromString(msg.data)
        observed.envelope_ids.append(envelope.id)
        if envelope.type == events_pb2.PredictionMade.DESCRIPTOR.full_name:
            event = events_pb2.PredictionMade()
            envelope.payload.Unpack(event)
            target = observed.shadow if event.prediction.shadow else observed.predictions
            target[event.prediction.asset_id].append(event.prediction)
        elif envelope.type == events_pb2.DriftDetected.DESCRIPTOR.full_name:
            event = events_pb2.DriftDetected()
            envelope.payload.Unpack(event)
            observed.drift.append(event)

    await nc.subscribe("inference.>", cb=on_message)
    yield Bus(nc, js, observed, owners["registry"].jetstream(), owners["scheduler"].jetstream())
    for owner in owners.values():
        await owner.drain()
    await nc.drain()

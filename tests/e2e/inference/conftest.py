"""Ingest and inference as real processes, started by ``prognos up``'s launcher, and a gateway.

The launcher runs ingest and inference (mutual TLS, role tokens, embedded nats-server,
SQLite) with fast membership timings and every prediction explained; a test may start
more inference replicas as processes of their own on the same data directory, NATS and
secrets, and SIGKILL any of them. Models are announced as the registry announces them
(``AliasMoved`` on ``registry.alias.moved``), for small CNNs trained on a simulated fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
import pytest_asyncio
from nats.aio.client import Client as Nats

from prognos.api.common.v1.envelope_pb2 import Envelope
from prognos.api.inference.v1 import events_pb2, inference_pb2, inference_pb2_grpc
from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.cli.certs import DevSecrets
from prognos.cli.client import open_channel
from prognos.cli.launcher import Launcher, RunInfo, ServiceRecord, ServiceSpec
from prognos.core import bus
from prognos.core.busauth import OBSERVER_IDENTITY
from prognos.core.config import Settings
from prognos.core.natsserver import free_port
from prognos.core.testing import assert_eventually
from prognos.core.testing.identities import connect_as, seed_of

ROOT = Path(__file__).resolve().parents[3]
INFERENCE_SETTINGS = {
    "PROGNOS_INFERENCE_ATTRIBUTION_THRESHOLD": "0",
    "PROGNOS_INFERENCE_HEARTBEAT_S": "0.3",
    "PROGNOS_INFERENCE_MEMBER_TTL_S": "2",
    "PROGNOS_INFERENCE_REBUILD_LOOKBACK_S": "600",
    "PROGNOS_INFERENCE_THREADS": "1",
}


def load_fleet() -> ModuleType:
    """``tests/helpers/inference_fleet.py`` as a module (loaded once)."""
    name = "inference_fleet"
    if name not in sys.modules:
        path = ROOT / "tests" / "helpers" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


sim = load_fleet()


@pytest.fixture(scope="module")
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
class InferenceProcess:
    """An extra inference replica: ``python -m prognos.inference serve`` on a port of its own."""

    replica_id: str
    info: RunInfo
    process: subprocess.Popen[bytes]
    log: Path
    port: int

    @property
    def run_info(self) -> RunInfo:
        """The fleet's run info with this replica as "inference"."""
        record = ServiceRecord(
            "inference", f"127.0.0.1:{self.port}", self.process.pid, str(self.log)
        )
        others = tuple(s for s in self.info.services if s.name != "inference")
        return replace(self.info, services=(*others, record))

    def kill(self) -> None:
        """SIGKILL: the replica vanishes without leaving the member set."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@dataclass
class Fleet:
    """What the launcher started, and how to add inference replicas."""

    info: RunInfo
    extra: list[InferenceProcess] = field(default_factory=list)

    def start_replica(self, replica_id: str) -> InferenceProcess:
        data_dir = Path(self.info.data_dir)
        port = free_port()
        log = data_dir / "logs" / f"{replica_id}.log"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PROGNOS_")},
            **INFERENCE_SETTINGS,
            **DevSecrets(data_dir / "secrets").service_environment(["inference"]),
            "PROGNOS_DATA_DIR": str(data_dir),
            "PROGNOS_NATS_URL": self.info.nats_url,
            "PROGNOS_NATS_NKEY_SEED_FILE": str(seed_of(data_dir, "inference")),
            "PROGNOS_INFERENCE_GRPC_HOST": "127.0.0.1",
            "PROGNOS_INFERENCE_GRPC_PORT": str(port),
            "PROGNOS_INFERENCE_REPLICA_ID": replica_id,
            "PYTHONUNBUFFERED": "1",
        }
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "prognos.inference", "serve"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        replica = InferenceProcess(replica_id, self.info, process, log, port)
        self.extra.append(replica)
        return replica


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    """Ingest and inference on an embedded nats-server, as ``prognos up`` starts them."""
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("PROGNOS_")]:
            patch.delenv(key)
        for key, value in INFERENCE_SETTINGS.items():
            patch.setenv(key, value)
        data_dir = tmp_path_factory.mktemp("inference-fleet") / "data"
        services = (ServiceSpec.parse("ingest"), ServiceSpec.parse("inference"))
        async with Launcher(Settings.load("launcher", data_dir=data_dir), services=services) as up:
            assert up.info is not None
            started = Fleet(up.info)
            try:
                yield started
            finally:
                for replica in started.extra:
                    replica.stop()


@dataclass
class Watcher:
    """Predictions seen on NATS, by asset."""

    nc: Nats
    #: The test stands in for the registry (the fleet runs none), so it moves aliases as the
    #: registry's identity; the watching connection may not publish them.
    url: str
    registry_seed: Path
    predictions: dict[str, list[tuple[float, inference_pb2.Prediction]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def latest(self, asset_id: str) -> inference_pb2.Prediction | None:
        made = self.predictions.get(asset_id)
        return made[-1][1] if made else None

    def seen_since(self, asset_id: str, since: float) -> list[inference_pb2.Prediction]:
        """Predictions of ``asset_id`` received at or after ``since`` (``time.monotonic``)."""
        return [p for at, p in self.predictions.get(asset_id, ()) if at >= since]

    async def alias(self, event: Any) -> None:
        nc = await connect_as(self.url, self.registry_seed)
        try:
            js = nc.jetstream()
            await bus.ensure_stream(js, "REGISTRY")
            await js.publish("registry.alias.moved", sim.envelope(event))
        finally:
            await nc.drain()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def watcher(fleet: Fleet) -> AsyncIterator[Watcher]:
    """A NATS connection that records every champion prediction."""
    nc = await connect_as(fleet.info.nats_url, seed_of(fleet.info.data_dir, OBSERVER_IDENTITY))
    seen = Watcher(nc, fleet.info.nats_url, seed_of(fleet.info.data_dir, "registry"))

    async def on_message(msg: Any) -> None:
        envelope = Envelope.FromString(msg.data)
        event = events_pb2.PredictionMade()
        envelope.payload.Unpack(event)
        seen.predictions[event.prediction.asset_id].append((time.monotonic(), event.prediction))

    await nc.subscribe("inference.prediction.made", cb=on_message)
    yield seen
    await nc.drain()


class Gateway:
    """A plant gateway: one long ``StreamTelemetry`` call, a bounded number of batches in flight.

    Args:
        channel: A channel to ingest with the gateway role.
        window: Batches in flight.
    """

    def __init__(self, channel: grpc.aio.Channel, window: int = 64) -> None:
        self._queue: asyncio.Queue[ingest_pb2.TelemetryBatch | None] = asyncio.Queue()
        self._slots = asyncio.Semaphore(window)
        self.receipts: dict[str, tuple[float, ingest_pb2.TelemetryReceipt]] = {}
        self.errors: list[grpc.aio.AioRpcError] = []
        self._call = ingest_pb2_grpc.IngestServiceStub(channel).StreamTelemetry(self._requests())
        self._reader = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncIterator[ingest_pb2.StreamTelemetryRequest]:
        while True:
            batch = await self._queue.get()
            if batch is None:
                return
            await self._slots.acquire()
            yield ingest_pb2.StreamTelemetryRequest(batch=batch)

    async def _read(self) -> None:
        try:
            async for response in self._call:
                self.receipts[response.receipt.batch_id] = (time.monotonic(), response.receipt)
                self._slots.release()
        except grpc.aio.AioRpcError as error:
            self.errors.append(error)

    def send(self, batch: ingest_pb2.TelemetryBatch) -> None:
        self._queue.put_nowait(batch)

    async def close(self) -> None:
        self._queue.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def send_round(
    gateway: Gateway, assets: list[Any], rows: int, shift: dict[str, float] | None = None
) -> list[str]:
    """Send ``rows`` new readings of every asset (ending now); wait for every receipt."""
    end_us = time.time_ns() // 1000
    ids = []
    for asset in assets:
        batch = sim.telemetry_batch(asset.asset_id, asset.readings(rows, shift), end_us)
        ids.append(batch.batch_id)
        gateway.send(batch)
    await assert_eventually(
        lambda: all(i in gateway.receipts for i in ids) or gateway.errors,
        timeout=60,
        interval=0.05,
        message="receipts of a round",
    )
    assert not gateway.errors, gateway.errors
    for batch_id in ids:
        receipt = gateway.receipts[batch_id][1]
        assert receipt.quarantined_count == 0, receipt
    return ids


async def serving_state(info: RunInfo) -> inference_pb2.GetServingStateResponse:
    async with open_channel(info, "inference", role="ml-engineer") as channel:
        return await inference_pb2_grpc.InferenceServiceStub(channel).GetServingState(
            inference_pb2.GetServingStateRequest(include_windows=True), timeout=5
        )

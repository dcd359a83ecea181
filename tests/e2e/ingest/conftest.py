"""The ingest service as a real process of its own, which a test may kill and restart.

``IngestProcess`` runs ``python -m prognos.ingest migrate`` once and ``serve`` on a fixed
port with its settings in environment variables, so a client reconnects to the same
address after a restart. It serves in the explicit development mode on loopback
(plaintext, no access checks), as these tests were written against. Tests reach it through
``prognos.cli.client.open_channel`` like every other client, with a ``RunInfo`` naming the
process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
import pytest_asyncio
from nats.js import api

from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.cli.client import open_channel
from prognos.cli.launcher import RunInfo, ServiceRecord, run_file
from prognos.core.errors import UnavailableError, from_grpc_error
from prognos.core.natsserver import EmbeddedNats, free_port
from prognos.core.testing.waiting import assert_eventually


class IngestProcess:
    """One ingest process on a fixed port; ``start``, ``kill`` and ``stop`` it at will."""

    def __init__(self, data_dir: Path, nats_url: str, **settings: str) -> None:
        self.data_dir = data_dir
        self.nats_url = nats_url
        self.port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PROGNOS_")},
            # Some tests call with a role the RPC does not allow (ml-engineer registering
            # an asset); with real secrets they would be refused.
            "PROGNOS_INSECURE_DEVELOPMENT": "true",
            "PROGNOS_NATS_URL": nats_url,
            "PROGNOS_DATA_DIR": str(data_dir),
            "PROGNOS_INGEST_GRPC_PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
            **{f"PROGNOS_INGEST_{k.upper()}": v for k, v in settings.items()},
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "ingest.log"
        self.starts = 0
        data_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "prognos.ingest", "migrate"],
            env=self.env,
            check=True,
            capture_output=True,
        )

    @property
    def info(self) -> RunInfo:
        return RunInfo(
            data_dir=str(self.data_dir),
            launcher_pid=os.getpid(),
            started_at=datetime.now(UTC).isoformat(),
            nats_url=self.nats_url,
            nats_pid=None,
            services=(
                ServiceRecord(
                    "ingest",
                    f"127.0.0.1:{self.port}",
                    self.process.pid if self.process else 0,
                    str(self.log),
                ),
            ),
        )

    def write_run_file(self) -> None:
        """Write ``run.json`` as `prognos up` would, so the CLI finds this process."""
        self.info.write(run_file(self.data_dir))

    def spawn(self) -> None:
        """Start ``serve`` without waiting for it."""
        self.starts += 1
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "prognos.ingest", "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def start(self) -> None:
        """Start serving and wait until the service answers."""
        self.spawn()

        async def answers() -> None:
            assert self.process is not None and self.process.poll() is None, self.tail()
            async with open_channel(self.info, "ingest", role="gateway") as channel:
                await ingest_pb2_grpc.IngestServiceStub(channel).ListAssetTypes(
                    ingest_pb2.ListAssetTypesRequest(), timeout=1
                )

        await assert_eventually(
            answers, timeout=60, interval=0.2, retry_on=(AssertionError, Exception)
        )

    def children(self) -> list[int]:
        """Process ids of the service's children (its archive process)."""
        assert self.process is not None
        pid = self.process.pid
        try:
            return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    def kill(self) -> None:
        """SIGKILL the service and its archive process: nothing buffered is flushed."""
        assert self.process is not None
        for child in self.children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def create_snapshot(
    info: RunInfo, request: ingest_pb2.CreateDatasetSnapshotRequest, *, deadline_s: float = 180
) -> ingest_pb2.DatasetSnapshot:
    """``CreateDatasetSnapshot``, retried as its RetryInfo says while the archive catches up.

    The archive runs at a lower CPU priority; on a busy machine the first answer may be
    UNAVAILABLE (ARCHIVE_CATCHING_UP), which a client retries.
    """

    async def attempt() -> ingest_pb2.DatasetSnapshot:
        async with open_channel(info, "ingest", role="ml-engineer") as channel:
            try:
                response = await ingest_pb2_grpc.IngestServiceStub(channel).CreateDatasetSnapshot(
                    request, timeout=120
                )
            except grpc.aio.AioRpcError as error:
                typed = from_grpc_error(error)
                assert not (
                    isinstance(typed, UnavailableError) and typed.reason == "ARCHIVE_CATCHING_UP"
                ), typed.message
                raise
        snapshot: ingest_pb2.DatasetSnapshot = response.snapshot
        return snapshot

    result: ingest_pb2.DatasetSnapshot = await assert_eventually(
        attempt, timeout=deadline_s, interval=1.0
    )
    return result


async def read_stream(nats_url: str, stream: str) -> list[tuple[int, str, dict[str, str], bytes]]:
    """Every message of a stream as ``(sequence, subject, headers, data)``, in order."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        if not info.state.messages:
            return []
        psub = await js.pull_subscribe(
            ">",
            stream=stream,
            config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.NONE,
                deliver_policy=api.DeliverPolicy.ALL,
                inactive_threshold=30.0,
            ),
        )
        messages: list[tuple[int, str, dict[str, str], bytes]] = []
        while len(messages) < info.state.messages:
            for msg in await psub.fetch(1_000, timeout=5):
                assert msg.metadata is not None
                messages.append(
                    (msg.metadata.sequence.stream, msg.subject, dict(msg.headers or {}), msg.data)
                )
        await psub.unsubscribe()
        return messages
    finally:
        await nc.close()


@pytest.fixture
def make_ingest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A factory of ``IngestProcess`` (data directory of its own); all are stopped after."""
    made: list[IngestProcess] = []

    def make(nats_url: str, **settings: str) -> IngestProcess:
        service = IngestProcess(tmp_path_factory.mktemp("ingest"), nats_url, **settings)
        made.append(service)
        return service

    yield make
    for service in made:
        service.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ingest_module(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[EmbeddedNats, IngestProcess]]:
    """A nats-server and one ingest process shared by a test module."""
    with EmbeddedNats(tmp_path_factory.mktemp("nats")) as server:
        service = IngestProcess(
            tmp_path_factory.mktemp("ingest"),
            server.url,
            archive_flush_interval_s="0.5",
            telemetry_max_lateness_s="600",
            telemetry_max_rows="5000",
        )
        await service.start()
        try:
            yield server, service
        finally:
            service.stop()


def channel_type(name: str, channels: list[tuple[str, str, float, float]]) -> Any:
    """An ``AssetType`` message with ``(name, unit, min, max)`` channels, one reading a second."""
    message = ingest_pb2.AssetType(name=name, display_name=name.title())
    for channel_name, unit, low, high in channels:
        channel = message.channels.add(name=channel_name, unit=unit, min_value=low, max_value=high)
        channel.expected_interval.FromSeconds(1)
    message.horizon.duration.FromSeconds(48 * 3600)
    return message


@pytest.fixture
def asset_type_of() -> Any:
    """``channel_type``: build an asset type message."""
    return channel_type


@pytest.fixture
def snapshot_of() -> Any:
    """``create_snapshot``: freeze a snapshot, waiting for the archive to catch up."""
    return create_snapshot


@pytest.fixture
def stream_reader() -> Any:
    """``read_stream``: every message of a JetStream stream."""
    return read_stream

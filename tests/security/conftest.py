"""Fixtures for the security tests: real services and a real nats-server, nothing faked.

``ingest_address`` is an ingest process of its own (``python -m prognos.ingest serve``) on
an embedded nats-server and a SQLite file, so an input that froze its event loop freezes
only that process, and the test sees it as a missed deadline.

``fleet`` is all four services as ``prognos up`` starts them: mutual TLS, token checks, the
embedded nats-server; ``FLEET_SETTINGS`` shortens the limits a test has to wait for.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.cli.launcher import Launcher, LaunchError, RunInfo
from prognos.core.config import Settings
from prognos.core.natsserver import EmbeddedNats, free_port
from prognos.core.testing.waiting import assert_eventually


def _migrate_and_serve(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    run = [sys.executable, "-m", "prognos.ingest"]
    subprocess.run([*run, "migrate"], env=env, check=True, capture_output=True)
    with log.open("ab") as out:
        return subprocess.Popen([*run, "serve"], env=env, stdout=out, stderr=subprocess.STDOUT)


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ingest_address(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """``host:port`` of a real ingest process, shared by a module's tests."""
    data_dir = tmp_path_factory.mktemp("ingest")
    with EmbeddedNats(data_dir / "nats") as nats_server:
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PROGNOS_")},
            "PROGNOS_NATS_URL": nats_server.url,
            "PROGNOS_DATA_DIR": str(data_dir),
            "PROGNOS_GRPC_HOST": "127.0.0.1",
            "PROGNOS_INGEST_GRPC_PORT": str(port),
            # No TLS material here: the development mode, on loopback only.
            "PROGNOS_INSECURE_DEVELOPMENT": "1",
            "PYTHONUNBUFFERED": "1",
        }
        log = data_dir / "ingest.log"
        process = await asyncio.to_thread(_migrate_and_serve, env, log)
        address = f"127.0.0.1:{port}"
        try:

            async def answers() -> None:
                assert process.poll() is None, _tail(log)
                async with grpc.aio.insecure_channel(address) as channel:
                    await ingest_pb2_grpc.IngestServiceStub(channel).ListAssetTypes(
                        ingest_pb2.ListAssetTypesRequest(), timeout=1
                    )

            await assert_eventually(answers, timeout=60, interval=0.2, retry_on=(Exception,))
            yield address
        finally:
            process.kill()  # it may be stuck in a computation that SIGTERM cannot interrupt
            await asyncio.to_thread(process.wait, 10)


FLEET_SETTINGS = {
    # A stalled upload is cut off after 6 s instead of 30, so a test waits for it briefly.
    "PROGNOS_UPLOAD_IDLE_TIMEOUT_S": "6",
}
"""Settings the ``fleet`` fixture's services run with (beside the launcher's)."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunInfo]:
    """All four services with mutual TLS and token checks, shared by a module's tests."""
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("PROGNOS_")]:
            patch.delenv(key)
        for key, value in FLEET_SETTINGS.items():
            patch.setenv(key, value)
        data_dir = tmp_path_factory.mktemp("fleet") / "data"
        try:
            launcher = await Launcher(Settings.load("launcher", data_dir=data_dir)).__aenter__()
        except LaunchError as error:
            pytest.fail(f"{error}\n{error.detail}")
        try:
            assert launcher.info is not None
            yield launcher.info
        finally:
            await launcher.stop()

"""Development addresses say ``localhost``, and a service answers on both loopbacks there."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.cli.client import open_channel, read_run_info, secrets_of
from prognos.cli.launcher import Launcher, LaunchError, RunInfo, ServiceSpec
from prognos.core.config import Settings
from prognos.core.tls import channel_credentials

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ingest_up(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunInfo]:
    """``prognos up --service ingest``: the launcher, an embedded NATS and the ingest service."""
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("PROGNOS_")]:
            patch.delenv(key)
        data_dir = tmp_path_factory.mktemp("localhost") / "data"
        launcher = Launcher(
            Settings.load("launcher", data_dir=data_dir), services=[ServiceSpec.parse("ingest")]
        )
        try:
            await launcher.start()
        except LaunchError as error:
            await launcher.stop()
            pytest.fail(f"{error}\n{error.detail}")
        try:
            assert launcher.info is not None
            yield launcher.info
        finally:
            await launcher.stop()


async def test_the_run_file_names_localhost_and_the_cli_reaches_the_service(
    ingest_up: RunInfo,
) -> None:
    (record,) = read_run_info(Path(ingest_up.data_dir)).services
    host, _, port = record.address.rpartition(":")

    assert host == "localhost" and port.isdigit(), record.address
    async with open_channel(ingest_up, "ingest", role="gateway") as channel:
        await ingest_pb2_grpc.IngestServiceStub(channel).ListAssetTypes(
            ingest_pb2.ListAssetTypesRequest(), timeout=10
        )


@pytest.mark.parametrize("loopback", ["127.0.0.1", "[::1]"])
async def test_the_service_listens_on_each_loopback_that_localhost_names(
    ingest_up: RunInfo, loopback: str
) -> None:
    if loopback == "[::1]" and not _has_ipv6_loopback():
        pytest.skip("this host has no IPv6 loopback")
    (record,) = ingest_up.services
    port = record.address.rpartition(":")[2]
    secrets = secrets_of(ingest_up)
    credentials = channel_credentials(secrets.ca_cert, secrets.client_cert, secrets.client_key)
    # Each address, verified against the name that the run file gives.
    options = [("grpc.ssl_target_name_override", "localhost")]
    async with grpc.aio.secure_channel(f"{loopback}:{port}", credentials, options) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )

    assert reply.status == health_pb2.HealthCheckResponse.SERVING

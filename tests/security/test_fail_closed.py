"""A service fails closed: no TLS files and token key, no service, unless told it is development.

Each service runs as `prognos up` runs it, ``python -m prognos.<svc> serve`` in a process of
its own with a temporary data directory, an embedded nats-server and its settings in the
environment, but without the development secrets the launcher would make.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from prognos.core.config import SERVICES
from prognos.core.natsserver import free_port
from prognos.core.testing.waiting import assert_eventually

SECURITY_SETTINGS = (
    "PROGNOS_TLS_CERT_FILE",
    "PROGNOS_TLS_KEY_FILE",
    "PROGNOS_TLS_CA_FILE",
    "PROGNOS_AUTH_PUBLIC_KEY_FILE",
)
EXIT_TIMEOUT_S = 60.0


def _environment(
    service: str, data_dir: Path, nats_url: str, port: int, **settings: str
) -> dict[str, str]:
    """What the launcher gives a child, less the secrets, plus ``settings`` (``PROGNOS_*``)."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("PROGNOS_")},
        "PROGNOS_SERVICE": service,
        "PROGNOS_DATA_DIR": str(data_dir),
        "PROGNOS_NATS_URL": nats_url,
        f"PROGNOS_{service.upper()}_GRPC_HOST": "127.0.0.1",
        f"PROGNOS_{service.upper()}_GRPC_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
        **{f"PROGNOS_{k.upper()}": v for k, v in settings.items()},
    }


def _migrate(service: str, env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", f"prognos.{service}", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@contextlib.asynccontextmanager
async def _serving(
    service: str, env: dict[str, str], log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``serve`` with its output in ``log``; SIGKILLed on the way out if still running."""
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"prognos.{service}",
            "serve",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _exit_code(process: asyncio.subprocess.Process, log: Path) -> int:
    try:
        return await asyncio.wait_for(process.wait(), EXIT_TIMEOUT_S)
    except TimeoutError:
        raise AssertionError(f"still running after {EXIT_TIMEOUT_S:g}s:\n{_tail(log)}") from None


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


def _listening(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((host, port)) == 0


@pytest.mark.parametrize("service", SERVICES)
async def test_a_service_without_tls_files_and_token_key_refuses_to_start(
    service: str, tmp_path: Path, nats_url: str
) -> None:
    port = free_port()
    log = tmp_path / f"{service}.log"
    env = _environment(service, tmp_path / "data", nats_url, port)
    _migrate(service, env)
    async with _serving(service, env, log) as process:
        code = await _exit_code(process, log)
    output = log.read_text()
    assert code != 0, output
    assert "refusing to start" in output
    for setting in SECURITY_SETTINGS:
        assert setting in output, output
    assert "PROGNOS_INSECURE_DEVELOPMENT" in output
    assert "serving on" not in output
    assert not _listening("127.0.0.1", port)


async def test_a_service_told_it_runs_for_development_on_loopback_serves_and_warns(
    tmp_path: Path, nats_url: str
) -> None:
    port = free_port()
    log = tmp_path / "scheduler.log"
    env = _environment("scheduler", tmp_path / "data", nats_url, port, insecure_development="true")
    _migrate("scheduler", env)
    async with _serving("scheduler", env, log) as process:

        async def serving() -> None:
            assert process.returncode is None, log.read_text()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                answer = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            assert answer.status == health_pb2.HealthCheckResponse.SERVING

        await assert_eventually(
            serving, timeout=EXIT_TIMEOUT_S, interval=0.2, retry_on=(AssertionError, grpc.RpcError)
        )
        process.terminate()
        assert await _exit_code(process, log) == 0, log.read_text()
    warnings = [line for line in log.read_text().splitlines() if "INSECURE DEVELOPMENT" in line]
    assert warnings, log.read_text()
    assert "WARNING" in warnings[0]
    for setting in SECURITY_SETTINGS:
        assert setting in warnings[0]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
async def test_development_mode_is_refused_off_loopback(
    host: str, tmp_path: Path, nats_url: str
) -> None:
    port = free_port()
    log = tmp_path / "registry.log"
    env = _environment(
        "registry",
        tmp_path / "data",
        nats_url,
        port,
        insecure_development="true",
        registry_grpc_host=host,
    )
    _migrate("registry", env)
    async with _serving("registry", env, log) as process:
        code = await _exit_code(process, log)
    output = log.read_text()
    assert code != 0, output
    assert "loopback only" in output and repr(host) in output, output
    assert "serving on" not in output
    assert not _listening("127.0.0.1", port)

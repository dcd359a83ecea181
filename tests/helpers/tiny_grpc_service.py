"""A stand-in service for launcher tests: ``python -m tiny_grpc_service migrate|serve``.

It honours the launcher's contract like a real Prognos service: settings from the
environment (``PROGNOS_SERVICE`` names it), ``migrate`` is a one-shot step that must run
before ``serve``, and ``serve`` answers ``grpc.health.v1`` and ``InfoService`` on its
configured port until SIGTERM.

Faults for the tests, from ``TINY_SERVICE_FAIL=<name>:<phase>``: ``migrate`` makes migrate
fail, ``serve`` makes serve exit before it listens, ``hang`` makes serve wait for SIGTERM
without ever listening, ``later`` makes it exit once the file ``<data_dir>/<name>.crash``
appears.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from prognos.api.common.v1 import info_pb2, info_pb2_grpc
from prognos.core.config import Settings
from prognos.core.tls import server_credentials

VERSION = "0.0.0+tiny"


class _Info(info_pb2_grpc.InfoServiceServicer):
    def __init__(self, name: str) -> None:
        self._name = name

    async def GetInfo(
        self, request: info_pb2.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> info_pb2.GetInfoResponse:
        return info_pb2.GetInfoResponse(
            service_name=self._name, version=VERSION, instance_id=str(os.getpid())
        )


def _fault(name: str) -> str | None:
    target, _, phase = os.environ.get("TINY_SERVICE_FAIL", "").partition(":")
    return phase if target == name else None


def _marker(settings: Settings) -> Path:
    return settings.data_dir / f"{settings.service}.migrated"


def migrate(settings: Settings) -> int:
    if _fault(settings.service) == "migrate":
        print(f"{settings.service}: schema upgrade failed on purpose", file=sys.stderr)
        return 3
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _marker(settings).write_text("ok")
    print(f"{settings.service}: migrated")
    return 0


async def serve(settings: Settings) -> int:
    if not _marker(settings).exists():
        print(f"{settings.service}: not migrated", file=sys.stderr)
        return 2
    if _fault(settings.service) == "serve":
        print(f"{settings.service}: failed to start on purpose", file=sys.stderr)
        return 4
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if _fault(settings.service) == "hang":
        print(f"{settings.service}: hanging on purpose", flush=True)
        await stop.wait()
        return 0
    server = grpc.aio.server()
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    info_pb2_grpc.add_InfoServiceServicer_to_server(_Info(settings.service), server)
    # Mutual TLS when the launcher configured it, as a real service serves.
    credentials = server_credentials(settings)
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    if credentials is None:
        server.add_insecure_port(address)
    else:
        server.add_secure_port(address, credentials)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    print(f"{settings.service}: serving on {settings.grpc_host}:{settings.grpc_port}", flush=True)

    crash_file = settings.data_dir / f"{settings.service}.crash"
    crashes = _fault(settings.service) == "later"
    while not stop.is_set():
        if crashes and crash_file.exists():
            print(f"{settings.service}: crashing on purpose", file=sys.stderr, flush=True)
            os._exit(5)
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.05)
        except TimeoutError:
            pass
    await health_servicer.enter_graceful_shutdown()
    await server.stop(1.0)
    print(f"{settings.service}: stopped", flush=True)
    return 0


def main() -> int:
    settings = Settings.load(os.environ["PROGNOS_SERVICE"])
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "migrate":
        return migrate(settings)
    if command == "serve":
        return asyncio.run(serve(settings))
    print(f"usage: {sys.argv[0]} migrate|serve", file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main())

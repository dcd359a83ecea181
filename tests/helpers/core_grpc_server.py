"""A tiny GrpcServer in its own process, for graceful-shutdown tests.

Usage: ``python tests/helpers/core_grpc_server.py <data_dir>``. It prints ``PORT <n>`` once
it serves, then serves ``prognos.test.v1.Slow/Work`` (a response stream that sends
``started``, waits until shutdown begins, then sends ``finished``) until SIGTERM or SIGINT.
The shutdown and closed hooks print ``SHUTDOWN_HOOK`` and ``CLOSED_HOOK``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio

from prognos.core import telemetry
from prognos.core.config import Settings
from prognos.core.server import GrpcServer

SERVICE = "prognos.test.v1.Slow"


def _same(data: bytes) -> bytes:
    return data


async def main(data_dir: Path) -> None:
    settings = Settings.load("slow", data_dir=data_dir, grpc_port=0, shutdown_grace_s=10.0)
    telemetry.setup(settings)
    shutting_down = asyncio.Event()

    async def work(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield b"started"
        await shutting_down.wait()
        yield b"finished"

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Work": grpc.unary_stream_rpc_method_handler(work, _same, _same)}
    )
    server = GrpcServer(settings, version="0.0.0+test")
    server.add_service(lambda h, s: s.add_generic_rpc_handlers((h,)), handler, SERVICE)

    async def on_shutdown() -> None:
        print("SHUTDOWN_HOOK", flush=True)
        shutting_down.set()

    async def on_closed() -> None:
        print("CLOSED_HOOK", flush=True)

    server.on_shutdown(on_shutdown)
    server.on_closed(on_closed)
    port = await server.start()
    print(f"PORT {port}", flush=True)
    await server.serve_until_signal()
    telemetry.shutdown()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))

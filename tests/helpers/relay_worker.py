"""A relay process for crash tests: optionally writes events, then relays the outbox.

Usage: python relay_worker.py DATA_DIR NATS_URL WRITE_COUNT
Fault injection comes from PROGNOS_RELAY_CRASH_AT (read by Settings), as in a service.
Exits 0 once the outbox is empty.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

from prognos.api.common.v1.envelope_pb2 import Envelope
from prognos.core import bus
from prognos.core.config import Settings
from prognos.core.events import DomainEvent
from prognos.core.store import EventStore, create_engine


@dataclass(frozen=True)
class TickRecorded(DomainEvent):
    n: int


async def run(data_dir: Path, nats_url: str, write_count: int) -> None:
    settings = Settings.load("relaytest", data_dir=data_dir, relay_batch_size=10)
    engine = create_engine(settings)
    store = EventStore(engine, "relaytest")
    for n in range(write_count):
        async with store.transaction(actor="tester") as uow:
            (stored,) = await uow.append(f"tick-{n % 7}", n // 7, [TickRecorded(n)])
            uow.publish(Envelope(id=f"inner-{n}"), subject="relaytest.tick.recorded", cause=stored)
    nc = await bus.connect(settings, nats_url)
    js = nc.jetstream()
    await bus.ensure_stream(js, "RELAYTEST", ["relaytest.>"])
    relay = bus.OutboxRelay(
        store, js, batch_size=settings.relay_batch_size, crash_at=settings.relay_crash_at
    )
    while await relay.relay_once():
        pass
    await nc.drain()
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(run(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])))

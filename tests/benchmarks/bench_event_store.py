"""Event-store and outbox throughput, printed as JSON.

Measures, on SQLite and (when PROGNOS_TEST_PG_URL is set) PostgreSQL:
- appends/s with one event per transaction (each with its outbox row and audit entry, as a
  real command writes them) and with 100 events per transaction;
- outbox-to-JetStream events/s through the relay, against an embedded nats-server, next to
  the raw JetStream publish rate of the same payloads measured in the same run.

Run: ``make bench`` or ``.venv/bin/python tests/benchmarks/bench_event_store.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import text

from prognos.api.common.v1.envelope_pb2 import Envelope
from prognos.core import bus
from prognos.core.config import Settings
from prognos.core.events import DomainEvent
from prognos.core.migrate import sync_url, upgrade
from prognos.core.natsserver import EmbeddedNats
from prognos.core.store import EventStore, create_engine

SINGLE = int(os.environ.get("BENCH_SINGLE", "1500"))
BATCHES = int(os.environ.get("BENCH_BATCHES", "60"))
BATCH = 100
RELAYED = int(os.environ.get("BENCH_RELAYED", "20000"))


@dataclass(frozen=True)
class ReadingAccepted(DomainEvent):
    asset_id: str
    count: int


async def _single(store: EventStore) -> float:
    started = time.perf_counter()
    for i in range(SINGLE):
        async with store.transaction(actor="bench") as uow:
            (stored,) = await uow.append(f"s-{i}", 0, [ReadingAccepted("a", i)])
            uow.publish(Envelope(id=str(i), subject="bench.reading.accepted"), cause=stored)
            await uow.audit("reading.accepted", f"asset/{i}")
    return SINGLE / (time.perf_counter() - started)


async def _batched(store: EventStore) -> float:
    started = time.perf_counter()
    for b in range(BATCHES):
        async with store.transaction(actor="bench") as uow:
            stored = await uow.append(f"b-{b}", 0, [ReadingAccepted("a", i) for i in range(BATCH)])
            for record in stored:
                uow.publish(
                    Envelope(id=record.event_id), subject="bench.reading.accepted", cause=record
                )
            await uow.audit("readings.accepted", f"batch/{b}", details={"n": BATCH})
    return BATCHES * BATCH / (time.perf_counter() - started)


async def _appends(settings: Settings) -> dict[str, float]:
    upgrade(settings)
    engine = create_engine(settings)
    store = EventStore(engine, "bench")
    result = {
        "single_appends_per_s": round(await _single(store), 1),
        "batched_appends_per_s": round(await _batched(store), 1),
    }
    await engine.dispose()
    return result


async def _relay(settings: Settings, nats_url: str) -> dict[str, float]:
    upgrade(settings)
    engine = create_engine(settings)
    store = EventStore(engine, "bench")
    for start in range(0, RELAYED, 1000):
        async with store.transaction(actor="bench") as uow:
            for i in range(start, min(start + 1000, RELAYED)):
                uow.publish(Envelope(id=str(i), subject="bench.reading.accepted"))
    nc = await bus.connect(settings, nats_url)
    js = nc.jetstream()
    await bus.ensure_stream(js, "BENCH", ["bench.>"])
    await bus.ensure_stream(js, "RAW", ["raw.>"])
    pending = await store.unpublished(RELAYED)
    payloads = [m for _, m in pending]

    # The raw limit: the same payloads and headers published straight to JetStream,
    # pipelined the same way, with no database in between.
    started = time.perf_counter()
    for offset in range(0, len(payloads), 500):
        futures = [
            await js.publish_async(
                "raw.reading", m.payload, headers={**m.headers, "Nats-Msg-Id": uuid.uuid4().hex}
            )
            for m in payloads[offset : offset + 500]
        ]
        await asyncio.gather(*futures)
    raw_rate = len(payloads) / (time.perf_counter() - started)

    relay = bus.OutboxRelay(store, js, batch_size=500)
    started = time.perf_counter()
    while await relay.relay_once():
        pass
    relay_rate = RELAYED / (time.perf_counter() - started)
    info = await js.stream_info("BENCH")
    assert info.state.messages == RELAYED, info.state
    await nc.drain()
    await engine.dispose()
    return {
        "outbox_to_jetstream_events_per_s": round(relay_rate, 1),
        "raw_jetstream_publish_per_s": round(raw_rate, 1),
        "ratio_to_raw": round(relay_rate / raw_rate, 3),
    }


def _pg_settings(data_dir: Path, url: str) -> tuple[Settings, str]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    return Settings.load("bench", data_dir=data_dir, database_url=url, db_schema=schema), schema


def _drop_schema(url: str, schema: str) -> None:
    engine = create_sync_engine(sync_url(url))
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


async def main() -> dict[str, object]:
    report: dict[str, object] = {"benchmark": "event_store", "batch_size": BATCH}
    pg_url = os.environ.get("PROGNOS_TEST_PG_URL")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        report["sqlite"] = await _appends(Settings.load("bench", data_dir=root / "a"))
        if pg_url:
            settings, schema = _pg_settings(root, pg_url)
            try:
                report["postgresql"] = await _appends(settings)
            finally:
                _drop_schema(pg_url, schema)
        else:
            report["postgresql"] = "skipped: PROGNOS_TEST_PG_URL is not set"
        async with EmbeddedNats(data_dir=root / "nats") as server:
            report["relay_sqlite"] = await _relay(
                Settings.load("bench", data_dir=root / "r"), server.url
            )
    return report


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main()), indent=2))
    sys.stdout.flush()

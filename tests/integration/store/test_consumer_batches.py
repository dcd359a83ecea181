"""A consumer applies a fetched batch in one transaction, each message in a savepoint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import pytest
from google.protobuf.any_pb2 import Any as AnyProto
from nats.js import JetStreamContext
from sqlalchemy import func, select

from prognos.api.common.v1.envelope_pb2 import Envelope
from prognos.api.ingest.v1 import events_pb2, ingest_pb2
from prognos.core import audit, bus
from prognos.core.events import DomainEvent
from prognos.core.natsserver import EmbeddedNats
from prognos.core.store import EventStore, UnitOfWork, events_table
from prognos.core.testing.waiting import assert_eventually

NAMES = ["pump", "fan", "bad", "valve", "gear"]


@dataclass(frozen=True)
class AssetTypeLearned(DomainEvent):
    name: str


@pytest.fixture
async def js(nats_server: EmbeddedNats) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_server.url)
    context = nc.jetstream()
    await bus.ensure_stream(context, "INGEST")
    yield context
    await nc.drain()


def envelope(name: str) -> bytes:
    payload = AnyProto()
    payload.Pack(events_pb2.AssetTypeRegistered(asset_type=ingest_pb2.AssetType(name=name)))
    return Envelope(
        id=f"event-{name}",
        type="prognos.api.ingest.v1.AssetTypeRegistered",
        actor=f"user:{name}-owner",
        producer="ingest",
        correlation_id=f"corr-{name}",
        payload=payload,
    ).SerializeToString()


async def test_a_failing_message_rolls_back_alone_and_the_rest_of_its_batch_commits(
    store: EventStore, js: JetStreamContext
) -> None:
    attempts: dict[str, int] = {}

    async def learn(uow: UnitOfWork, env: Envelope, event: events_pb2.AssetTypeRegistered) -> None:
        name = event.asset_type.name
        attempts[name] = attempts.get(name, 0) + 1
        await uow.append(f"learned-{name}", 0, [AssetTypeLearned(name)])
        await uow.audit("asset_type.learned", f"asset_type/{name}")
        if name == "bad" and attempts[name] == 1:
            raise ConnectionError("downstream briefly unavailable")

    sub = bus.subscription(
        "INGEST", "batch-learner", "ingest.asset_type.>", (events_pb2.AssetTypeRegistered, learn)
    )
    for name in NAMES:  # all on the stream before the consumer fetches: one batch
        await js.publish("ingest.asset_type.registered", envelope(name))
    commits: list[int] = []
    store.on_audit.append(lambda: commits.append(1))  # once per commit that audited
    consumer = bus.Consumer(store, js, sub, batch_size=len(NAMES))
    consumer.start()
    await assert_eventually(lambda: consumer.processed == len(NAMES), timeout=15)
    await consumer.stop()

    assert attempts == {"pump": 1, "fan": 1, "bad": 2, "valve": 1, "gear": 1}
    # The batch committed together (a commit a message would be one per success).
    assert len(commits) < len(NAMES)
    async with store.reader() as conn:
        result = await audit.verify(conn)
        entries = [e async for e in audit.entries(conn)]
        events = (await conn.execute(select(events_table))).all()
        streams = await conn.scalar(select(func.count(func.distinct(events_table.c.stream_id))))
    # The failed attempt left nothing behind; the redelivery wrote its own.
    assert result.ok and result.entries == len(NAMES)
    assert streams == len(NAMES) and len(events) == len(NAMES)
    # Each message wrote as its own actor, with its own causation and correlation.
    assert {e.subject: e.actor for e in entries} == {
        f"asset_type/{n}": f"user:{n}-owner" for n in NAMES
    }
    for row in events:
        name = row.stream_id.removeprefix("learned-")
        assert row.meta["causation_id"] == f"event-{name}"
        assert row.meta["correlation_id"] == f"corr-{name}"

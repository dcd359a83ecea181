"""Durable consumers apply each integration event once, retry failures, and audit poison."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from google.protobuf.any_pb2 import Any as AnyProto
from nats.js import JetStreamContext

from prognos.api.common.v1.envelope_pb2 import Envelope
from prognos.api.ingest.v1 import events_pb2, ingest_pb2
from prognos.core import audit, bus
from prognos.core.config import Settings
from prognos.core.migrate import upgrade
from prognos.core.natsserver import EmbeddedNats
from prognos.core.store import EventStore, UnitOfWork, create_engine
from prognos.core.testing.waiting import assert_eventually


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EventStore]:
    settings = Settings.load("consumertest", data_dir=tmp_path)
    upgrade(settings)
    engine = create_engine(settings)
    yield EventStore(engine, "consumertest")
    await engine.dispose()


@pytest.fixture
async def js(nats_server: EmbeddedNats) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_server.url)
    context = nc.jetstream()
    await bus.ensure_stream(context, "INGEST")
    yield context
    await nc.drain()


def envelope(event_id: str, name: str) -> bytes:
    payload = AnyProto()
    payload.Pack(events_pb2.AssetTypeRegistered(asset_type=ingest_pb2.AssetType(name=name)))
    message = Envelope(
        id=event_id,
        type="prognos.api.ingest.v1.AssetTypeRegistered",
        actor="alice",
        producer="ingest",
        payload=payload,
    )
    return message.SerializeToString()


async def test_a_message_delivered_twice_is_applied_once(
    store: EventStore, js: JetStreamContext
) -> None:
    applied: list[str] = []

    async def handler(
        uow: UnitOfWork, env: Envelope, event: events_pb2.AssetTypeRegistered
    ) -> None:
        applied.append(event.asset_type.name)
        await uow.audit("asset_type.learned", f"asset_type/{event.asset_type.name}")

    sub = bus.subscription(
        "INGEST",
        "test-learner",
        "ingest.asset_type.>",
        (events_pb2.AssetTypeRegistered, handler),
    )
    consumer = bus.Consumer(store, js, sub, batch_size=10)
    # The same event twice, with different message ids: as if re-sent after the
    # server's duplicate window, so only the tracking table can tell.
    await js.publish(
        "ingest.asset_type.registered", envelope("e-1", "pump"), headers={"Nats-Msg-Id": "m-1"}
    )
    await js.publish(
        "ingest.asset_type.registered", envelope("e-1", "pump"), headers={"Nats-Msg-Id": "m-2"}
    )
    await js.publish(
        "ingest.asset_type.registered", envelope("e-2", "fan"), headers={"Nats-Msg-Id": "m-3"}
    )
    consumer.start()
    await assert_eventually(lambda: consumer.processed == 3, timeout=10)
    await consumer.stop()
    assert applied == ["pump", "fan"]
    async with store.reader() as conn:
        entries = [e async for e in audit.entries(conn)]
    assert [e.actor for e in entries] == ["alice", "alice"]


async def test_a_failing_handler_is_retried_until_it_succeeds(
    store: EventStore, js: JetStreamContext
) -> None:
    attempts: list[int] = []

    async def flaky(uow: UnitOfWork, env: Envelope, event: events_pb2.AssetTypeRegistered) -> None:
        attempts.append(1)
        await uow.audit("asset_type.learned", "asset_type/x")
        if len(attempts) < 3:
            raise ConnectionError("downstream briefly unavailable")

    sub = bus.subscription(
        "INGEST", "test-flaky", "ingest.asset_type.>", (events_pb2.AssetTypeRegistered, flaky)
    )
    consumer = bus.Consumer(store, js, sub, max_deliver=5)
    await js.publish("ingest.asset_type.registered", envelope("e-9", "x"))
    consumer.start()
    await assert_eventually(lambda: consumer.processed == 1, timeout=15)
    await consumer.stop()
    assert len(attempts) == 3
    async with store.reader() as conn:
        result = await audit.verify(conn)
    # The failed attempts rolled back their audit entries: only the successful one stays.
    assert result.ok and result.entries == 1


async def test_an_unreadable_message_is_terminated_and_audited(
    store: EventStore, js: JetStreamContext
) -> None:
    async def never(uow: UnitOfWork, env: Envelope, event: events_pb2.AssetTypeRegistered) -> None:
        raise AssertionError("a poison message must not reach the handler")

    sub = bus.subscription(
        "INGEST", "test-poison", "ingest.asset_type.>", (events_pb2.AssetTypeRegistered, never)
    )
    consumer = bus.Consumer(store, js, sub)
    await js.publish("ingest.asset_type.registered", b"\xff\x00 not a protobuf envelope")
    consumer.start()

    async def poison_audited() -> None:
        async with store.reader() as conn:
            entries = [e async for e in audit.entries(conn)]
        assert [e.action for e in entries] == ["message.poisoned"]
        assert entries[0].subject == "consumer/test-poison"

    await assert_eventually(poison_audited, timeout=10)
    await consumer.stop()
    info = await js.consumer_info("INGEST", "test-poison")
    assert info.num_ack_pending == 0 and info.num_pending == 0

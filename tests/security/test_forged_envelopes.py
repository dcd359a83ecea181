"""Consumers refuse an event whose envelope claims a producer other than its subject's owner.

The server's permissions keep other identities off a service's subjects; this is the check
behind them: an envelope must name the service the contracts give its subject to, so an
event relayed, replayed or reflected onto another subject (a JetStream acknowledgement
sent to a forged reply subject, say) is never acted on. Refused messages are terminated
and audited as poison with the reason, never dropped silently.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext

from prognos.api import wire
from prognos.api.common.v1.envelope_pb2 import Envelope
from prognos.api.ingest.v1 import events_pb2, ingest_pb2
from prognos.core import audit, bus, messaging
from prognos.core.config import Settings
from prognos.core.migrate import upgrade
from prognos.core.natsserver import EmbeddedNats
from prognos.core.store import EventStore, UnitOfWork, create_engine
from prognos.core.testing.waiting import assert_eventually

EVENT = events_pb2.AssetTypeRegistered


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EventStore]:
    settings = Settings.load("forgerytest", data_dir=tmp_path)
    upgrade(settings)
    engine = create_engine(settings)
    yield EventStore(engine, "forgerytest")
    await engine.dispose()


@pytest.fixture
async def js(nats_server: EmbeddedNats) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_server.url)
    context = nc.jetstream()
    await bus.ensure_stream(context, wire.stream_of(EVENT))
    yield context
    await nc.drain()


def registered(name: str, *, producer: str, message_id: str) -> messaging.Outgoing:
    return messaging.encode(
        EVENT(asset_type=ingest_pb2.AssetType(name=name)),
        producer=producer,
        subject=wire.subject(EVENT),
        message_id=message_id,
        actor="user:mallory" if producer != "ingest" else "service:ingest",
    )


@pytest.mark.parametrize(
    ("forged", "reason"),
    [
        pytest.param(
            registered("pump", producer="scheduler", message_id="f-1").data,
            "scheduler is not the owner of ingest.asset_type.registered (ingest)",
            id="another-service",
        ),
        pytest.param(
            Envelope(id="f-2", type=EVENT.DESCRIPTOR.full_name).SerializeToString(),
            "no producer is not the owner",
            id="no-producer",
        ),
        pytest.param(
            b'{"stream":"SCHEDULER","seq":1}',
            "unreadable message",
            id="reflected-ack",
        ),
    ],
)
async def test_a_forged_event_is_poisoned_and_the_owners_event_applied(
    store: EventStore, js: JetStreamContext, forged: bytes, reason: str
) -> None:
    applied: list[str] = []

    async def handler(uow: UnitOfWork, envelope: Envelope, event: events_pb2.AssetTypeRegistered):
        applied.append(event.asset_type.name)

    sub = bus.subscription(wire.stream_of(EVENT), "forgery", wire.subject(EVENT), (EVENT, handler))
    consumer = bus.Consumer(store, js, sub)
    await js.publish(wire.subject(EVENT), forged, headers={wire.MSG_ID_HEADER: "forged"})
    real = registered("fan", producer="ingest", message_id="r-1")
    await js.publish(real.subject, real.data, headers=real.headers)
    consumer.start()

    async def settled() -> None:
        async with store.reader() as conn:
            entries = [e async for e in audit.entries(conn)]
        assert [e.action for e in entries] == ["message.poisoned"]
        assert reason in entries[0].reason
        assert applied == ["fan"]

    await assert_eventually(settled, timeout=10)
    await consumer.stop()
    info = await js.consumer_info(wire.stream_of(EVENT), "forgery")
    assert info.num_ack_pending == 0 and info.num_pending == 0


def test_decode_refuses_a_payload_other_than_the_envelope_names() -> None:
    outgoing = registered("pump", producer="ingest", message_id="x")
    envelope = Envelope.FromString(outgoing.data)
    envelope.payload.type_url = (
        "type.googleapis.com/" + events_pb2.AssetRegistered.DESCRIPTOR.full_name
    )
    with pytest.raises(messaging.EventRefusedError, match="payload is not a"):
        messaging.decode(
            envelope.SerializeToString(), outgoing.subject, {EVENT.DESCRIPTOR.full_name: EVENT}
        )

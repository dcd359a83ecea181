"""An event the server refuses for good is dead-lettered, and the relay goes on publishing.

Before, the relay retried such an event forever, so the service published nothing after it.
Against a real nats-server (with a small max_payload) and a real SQLite outbox: a poison
event followed by a normal one; the normal one arrives, the poison one is kept with its
reason and announced by a small record on the dead-letter subject, and the relay still runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext, api

from prognos.api.common.v1.envelope_pb2 import Envelope, OutboxMessageDeadLettered
from prognos.core import audit, bus
from prognos.core.config import Settings
from prognos.core.events import DomainEvent
from prognos.core.migrate import upgrade
from prognos.core.natsserver import EmbeddedNats
from prognos.core.store import EventStore, create_engine
from prognos.core.testing.waiting import assert_eventually

MAX_PAYLOAD = 8 * 1024
SUBJECT = "relaytest.noted"


@dataclass(frozen=True)
class Noted(DomainEvent):
    n: int


@dataclass
class Rig:
    store: EventStore
    js: JetStreamContext
    relay: bus.OutboxRelay

    async def write(self, event_id: str, padding: int = 0) -> None:
        async with self.store.transaction(actor="tester") as uow:
            (stored,) = await uow.append(event_id, 0, [Noted(1)])
            uow.publish(
                Envelope(id=event_id, actor="x" * padding),
                subject=SUBJECT,
                cause=stored,
                message_id=event_id,
            )

    async def last_on(self, subject: str) -> tuple[dict[str, str], bytes]:
        msg = await self.js.get_last_msg("RELAYTEST", subject)
        return dict(msg.headers or {}), msg.data


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    config = tmp_path / "nats.conf"
    config.write_text(f"max_payload: {MAX_PAYLOAD}\n")
    settings = Settings.load("relaytest", data_dir=tmp_path / "data")
    upgrade(settings)
    engine = create_engine(settings)
    store = EventStore(engine, "relaytest")
    async with EmbeddedNats(tmp_path / "nats", extra_args=("-c", str(config))) as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        # A stream that also caps a message below max_payload, for JetStream's own refusal.
        await js.add_stream(
            api.StreamConfig(name="RELAYTEST", subjects=["relaytest.>"], max_msg_size=4096)
        )
        relay = bus.OutboxRelay(store, js, poll_s=0.05, publish_timeout_s=2)
        try:
            yield Rig(store, js, relay)
        finally:
            await relay.stop()
            await nc.close()
            await engine.dispose()


@pytest.mark.parametrize(
    ("padding", "refusal"),
    [(20_000, "larger than the server's max_payload"), (6_000, "refused by JetStream")],
    ids=["over the server's max_payload", "over the stream's max_msg_size"],
)
async def test_a_poison_event_is_dead_lettered_and_the_next_one_published(
    rig: Rig, padding: int, refusal: str
) -> None:
    assert rig.js._nc.max_payload == MAX_PAYLOAD
    await rig.write("poison", padding=padding)
    await rig.write("normal")
    rig.relay.start()

    async def normal_published() -> None:
        headers, _ = await rig.last_on(SUBJECT)
        assert headers[api.Header.MSG_ID] == "normal"

    async def poison_dead_lettered() -> None:
        assert await rig.store.dead_letters()

    await assert_eventually(normal_published, timeout=20, retry_on=(AssertionError, Exception))
    await assert_eventually(poison_dead_lettered, timeout=20)
    ((kept, reason),) = await rig.store.dead_letters()
    assert kept.message_id == "poison"
    assert len(kept.payload) > padding  # kept whole, not lost
    assert refusal in reason
    assert await rig.store.unpublished(10) == []
    async with rig.store.reader() as conn:
        audited = [e async for e in audit.entries(conn) if e.action == "outbox.dead_lettered"]
    assert [(e.subject, e.reason) for e in audited] == [("outbox/poison", reason)]

    headers, data = await rig.last_on(bus.dead_letter_subject("relaytest"))
    assert len(data) < 1024  # a record of the event, never its payload
    envelope = Envelope.FromString(data)
    record = OutboxMessageDeadLettered()
    assert envelope.payload.Unpack(record)
    assert envelope.type == record.DESCRIPTOR.full_name
    assert headers[api.Header.MSG_ID] == envelope.id
    assert record.message_id == "poison"
    assert record.subject == SUBJECT
    assert record.bytes > padding
    assert refusal in record.reason
    assert record.service == "relaytest"

    # Still running: what comes next is published too, and the poison is not retried.
    await rig.write("after")

    async def after_published() -> None:
        headers, _ = await rig.last_on(SUBJECT)
        assert headers[api.Header.MSG_ID] == "after"

    await assert_eventually(after_published, timeout=20, retry_on=(AssertionError, Exception))
    assert rig.relay.dead_lettered == 1
    assert rig.relay.published == 2


async def test_an_event_no_stream_takes_yet_is_retried_not_dead_lettered(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    async with rig.store.transaction(actor="tester") as uow:
        (stored,) = await uow.append("later", 0, [Noted(1)])
        uow.publish(
            Envelope(id="later"), subject="latertest.noted", cause=stored, message_id="later"
        )
    rig.relay.start()
    await assert_eventually(lambda: "outbox relay failed" in caplog.text, timeout=20)

    await rig.js.add_stream(api.StreamConfig(name="LATERTEST", subjects=["latertest.>"]))

    async def published() -> None:
        msg = await rig.js.get_last_msg("LATERTEST", "latertest.noted")
        assert (msg.headers or {})[api.Header.MSG_ID] == "later"

    await assert_eventually(published, timeout=20, retry_on=(AssertionError, Exception))
    assert await rig.store.dead_letters() == []
    assert rig.relay.dead_lettered == 0

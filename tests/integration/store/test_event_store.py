"""Contract of the event store, run on SQLite and on PostgreSQL alike."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from prognos.core.errors import ConcurrencyError
from prognos.core.events import DomainEvent
from prognos.core.store import EventStore


@dataclass(frozen=True)
class CounterIncremented(DomainEvent):
    by: int


@dataclass(frozen=True)
class CounterRenamed(DomainEvent):
    schema_version: ClassVar[int] = 2
    name: str
    display: str

    @staticmethod
    def upcast_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "display": data["name"].title()}


async def test_appends_and_reads_a_stream_in_version_order(store: EventStore) -> None:
    async with store.transaction(actor="alice") as uow:
        stored = await uow.append("counter-a", 0, [CounterIncremented(1), CounterIncremented(2)])
    assert [e.version for e in stored] == [1, 2]
    async with store.transaction() as uow:
        await uow.append("counter-a", 2, [CounterIncremented(3)])
    events = await store.read_stream("counter-a")
    assert [e.version for e in events] == [1, 2, 3]
    assert [e.event for e in events] == [
        CounterIncremented(1),
        CounterIncremented(2),
        CounterIncremented(3),
    ]
    assert events[0].meta["actor"] == "alice"


async def test_reads_every_stream_by_global_position(store: EventStore) -> None:
    for i in range(3):
        for stream in ("x", "y"):
            async with store.transaction() as uow:
                await uow.append(stream, i, [CounterIncremented(i)])
    everything = await store.read_all()
    positions = [e.position for e in everything]
    assert positions == sorted(positions) and len(positions) == 6
    assert [e.stream_id for e in everything] == ["x", "y"] * 3
    after = await store.read_all(after_position=positions[2], limit=2)
    assert [e.position for e in after] == positions[3:5]


async def test_exactly_one_of_two_concurrent_appends_at_the_same_version_wins(
    store: EventStore,
) -> None:
    async with store.transaction() as uow:
        await uow.append("race", 0, [CounterIncremented(0)])

    async def contender(by: int) -> str:
        try:
            async with store.transaction() as uow:
                await uow.append("race", 1, [CounterIncremented(by)])
            return "won"
        except ConcurrencyError as exc:
            assert exc.stream_id == "race" and exc.expected_version == 1
            assert exc.actual_version == 2
            return "lost"

    outcomes = await asyncio.gather(contender(10), contender(20))
    assert sorted(outcomes) == ["lost", "won"]
    events = await store.read_stream("race")
    assert [e.version for e in events] == [1, 2]


async def test_a_failed_unit_of_work_leaves_nothing_behind(store: EventStore) -> None:
    from prognos.api.common.v1.envelope_pb2 import Envelope

    with pytest.raises(RuntimeError):
        async with store.transaction() as uow:
            stored = await uow.append("doomed", 0, [CounterIncremented(1)])
            uow.publish(Envelope(id="x"), subject="test.counter.incremented", cause=stored[0])
            await uow.audit("counter.incremented", "counter/doomed")
            raise RuntimeError("handler failed after writing")
    assert await store.read_stream("doomed") == []
    assert await store.unpublished(10) == []
    async with store.reader() as conn:
        from prognos.core import audit

        assert (await audit.verify(conn)).entries == 0


async def test_outbox_messages_commit_with_their_events(store: EventStore) -> None:
    from prognos.api.common.v1.envelope_pb2 import Envelope

    woken: list[bool] = []
    store.on_commit.append(lambda: woken.append(True))
    async with store.transaction(actor="bob") as uow:
        stored = await uow.append("c", 0, [CounterIncremented(5)])
        uow.publish(Envelope(id="inner"), subject="test.counter.incremented", cause=stored[0])
    pending = await store.unpublished(10)
    assert len(pending) == 1 and woken == [True]
    _, message = pending[0]
    assert message.message_id == stored[0].event_id
    assert message.headers["Nats-Msg-Id"] == stored[0].event_id
    envelope = Envelope.FromString(message.payload)
    assert envelope.stream == "c" and envelope.version == 1 and envelope.actor == "bob"
    await store.mark_published([pending[0][0]])
    assert await store.unpublished(10) == []


async def test_tracking_tells_a_redelivery_apart(store: EventStore) -> None:
    async with store.transaction() as uow:
        assert await uow.track("consumer-a", "m1") is True
    async with store.transaction() as uow:
        assert await uow.track("consumer-a", "m1") is False
        assert await uow.track("consumer-b", "m1") is True


async def test_old_event_versions_are_upcast_on_read(store: EventStore) -> None:
    from sqlalchemy import update

    from prognos.core.store import events_table

    async with store.transaction() as uow:
        await uow.append("n", 0, [CounterRenamed(name="pump", display="Pump")])
        # Store it as a version-1 document, the way an older release wrote it.
        await uow.conn.execute(
            update(events_table)
            .where(events_table.c.stream_id == "n")
            .values(schema_version=1, data={"name": "pump"})
        )
    (stored,) = await store.read_stream("n")
    assert stored.schema_version == 1
    assert stored.event == CounterRenamed(name="pump", display="Pump")

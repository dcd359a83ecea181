"""The outbox relay survives being killed at any point: every event on the stream once.

And it publishes what a commit queued at once, even a commit made during its round.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest

from prognos.api.common.v1.envelope_pb2 import Envelope
from prognos.core import bus
from prognos.core.config import Settings
from prognos.core.events import DomainEvent
from prognos.core.migrate import upgrade
from prognos.core.natsserver import EmbeddedNats
from prognos.core.store import EventStore, OutboxMessage, create_engine

WORKER = Path(__file__).resolve().parents[2] / "helpers" / "relay_worker.py"
EVENTS = 45


def _run_worker(data_dir: Path, url: str, writes: int, crash_at: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROGNOS_")}
    if crash_at:
        env["PROGNOS_RELAY_CRASH_AT"] = crash_at
    done = subprocess.run(
        [sys.executable, str(WORKER), str(data_dir), url, str(writes)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode in (0, -signal.SIGKILL), done.stderr
    return done.returncode


async def _stream_message_ids(url: str) -> list[str]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    info = await js.stream_info("RELAYTEST")
    ids = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg("RELAYTEST", seq)
        ids.append(msg.headers["Nats-Msg-Id"])
    await nc.close()
    assert info.state.messages == len(ids)
    return ids


@pytest.mark.parametrize("crash_at", ["before_publish:15", "after_publish:15"])
async def test_a_relay_killed_between_commit_and_publish_loses_and_duplicates_nothing(
    tmp_path: Path, nats_server: EmbeddedNats, crash_at: str
) -> None:
    settings = Settings.load("relaytest", data_dir=tmp_path)
    upgrade(settings)

    assert _run_worker(tmp_path, nats_server.url, EVENTS, crash_at) == -signal.SIGKILL
    engine = create_engine(settings)
    store = EventStore(engine, "relaytest")
    assert await store.unpublished(1000), "the crash left messages committed but unconfirmed"

    assert _run_worker(tmp_path, nats_server.url, 0, None) == 0

    stored_ids = [e.event_id for e in await store.read_all(limit=1000)]
    await engine.dispose()
    published_ids = await _stream_message_ids(nats_server.url)
    assert len(stored_ids) == EVENTS
    assert sorted(published_ids) == sorted(stored_ids)
    assert len(set(published_ids)) == len(published_ids)


@dataclass(frozen=True)
class Noted(DomainEvent):
    n: int


async def test_a_commit_during_a_relay_round_is_published_without_waiting_for_the_poll(
    tmp_path: Path, nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings.load("relaytest", data_dir=tmp_path)
    upgrade(settings)
    engine = create_engine(settings)
    store = EventStore(engine, "relaytest")

    async def write(n: int) -> None:
        async with store.transaction(actor="tester") as uow:
            (stored,) = await uow.append(f"note-{n}", 0, [Noted(n)])
            uow.publish(Envelope(id=f"note-{n}"), subject="relaytest.noted", cause=stored)

    fetch = store.unpublished
    committed_during_round = asyncio.Event()

    async def fetch_then_commit(limit: int) -> list[tuple[int, OutboxMessage]]:
        pending = await fetch(limit)
        if not committed_during_round.is_set():
            committed_during_round.set()
            await write(1)  # after the round read the outbox, before it ends
        return pending

    monkeypatch.setattr(store, "unpublished", fetch_then_commit)
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await bus.ensure_stream(js, "RELAYTEST", ["relaytest.>"])
    relay = bus.OutboxRelay(store, js, poll_s=3600)  # only a wake-up can publish in time
    await write(0)
    relay.start()
    try:
        for _ in range(200):  # 10 s at most, against an hour's poll
            if (await js.stream_info("RELAYTEST")).state.messages == 2:
                break
            await asyncio.sleep(0.05)
        assert committed_during_round.is_set()
        assert (await js.stream_info("RELAYTEST")).state.messages == 2
    finally:
        await relay.stop()
        await nc.drain()
        await engine.dispose()

"""The outbox relay survives being killed at any point: every event on the stream once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from prognos.core.config import Settings
from prognos.core.migrate import upgrade
from prognos.core.natsserver import EmbeddedNats
from prognos.core.store import EventStore, create_engine

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

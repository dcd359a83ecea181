"""Chain heads anchored on an immutable JetStream stream, and checkpoints signed with them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.errors import APIError
from sqlalchemy import text

from prognos.core import anchoring
from prognos.core.anchoring import (
    AUDIT_STREAM,
    ChainAnchor,
    ChainHead,
    ChainMismatchError,
    ensure_audit_stream,
    latest_anchor,
    latest_checkpoint,
    read_head,
    verify_checkpoint,
)
from prognos.core.auth import generate_signing_key
from prognos.core.config import Settings
from prognos.core.migrate import upgrade
from prognos.core.store import EventStore, create_engine
from prognos.core.testing import assert_eventually

KEY = generate_signing_key()


@dataclass
class Anchored:
    store: EventStore
    js: JetStreamContext
    anchor: ChainAnchor

    async def write(self, n: int) -> None:
        for i in range(n):
            async with self.store.transaction(actor="user:test") as uow:
                await uow.audit("thing.done", f"thing/{i}")


@pytest.fixture
async def anchored(tmp_path: Path, nats_url: str) -> AsyncIterator[Anchored]:
    settings = Settings.load("registry", data_dir=tmp_path)
    upgrade(settings)
    engine = create_engine(settings)
    store = EventStore(engine, "registry")
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_audit_stream(js)
    # A long interval: only the wake-up after an audited write can publish in time.
    anchor = ChainAnchor(store, js, interval_s=3600, signing_key=KEY)
    store.on_audit.append(anchor.notify)
    task = asyncio.create_task(anchor.run())
    try:
        yield Anchored(store, js, anchor)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await nc.drain()
        await engine.dispose()


async def test_an_audited_write_is_anchored_promptly(anchored: Anchored) -> None:
    await anchored.write(3)

    async def anchored_at_head() -> None:
        anchor = await latest_anchor(anchored.js, "registry")
        head = await read_head(anchored.store)
        assert anchor is not None and (anchor.seq, anchor.hash) == (3, head.hash)

    await assert_eventually(anchored_at_head, timeout=10)


async def test_the_audit_stream_refuses_deletes_and_purges(anchored: Anchored) -> None:
    await anchored.write(1)
    await assert_eventually(
        lambda: _has_anchor(anchored.js), timeout=10, message="a head on the stream"
    )
    info = await anchored.js.stream_info(AUDIT_STREAM)

    with pytest.raises(APIError):
        await anchored.js.delete_msg(AUDIT_STREAM, info.state.last_seq)
    with pytest.raises(APIError):
        await anchored.js.purge_stream(AUDIT_STREAM)
    assert info.config.deny_delete and info.config.deny_purge
    assert (await anchored.js.stream_info(AUDIT_STREAM)).state.messages == info.state.messages


async def _has_anchor(js: JetStreamContext) -> bool:
    return await latest_anchor(js, "registry") is not None


async def test_a_chain_cut_short_is_not_anchored_nor_signed(anchored: Anchored) -> None:
    await anchored.write(4)
    await assert_eventually(lambda: _anchored_seq_is(anchored, 4), timeout=10)
    async with anchored.store.engine.begin() as conn:
        await conn.execute(text("DROP TRIGGER audit_log_no_delete"))
        await conn.execute(text("DELETE FROM audit_log WHERE seq = 4"))

    published = await anchored.anchor.publish_head()
    with pytest.raises(ChainMismatchError, match="behind the anchored head 4"):
        await anchored.anchor.checkpoint()
    await anchored.write(1)  # a new entry 4, with another hash
    republished = await anchored.anchor.publish_head()

    assert published is None and republished is None
    anchor = await latest_anchor(anchored.js, "registry")
    assert anchor is not None and anchor.seq == 4
    assert anchor.hash != (await read_head(anchored.store)).hash


async def _anchored_seq_is(anchored: Anchored, seq: int) -> bool:
    anchor = await latest_anchor(anchored.js, "registry")
    return anchor is not None and anchor.seq == seq


async def test_a_checkpoint_is_signed_published_and_verifiable(anchored: Anchored) -> None:
    await anchored.write(2)

    checkpoint = await anchored.anchor.checkpoint()

    assert checkpoint is not None
    head = verify_checkpoint(KEY.public_key(), checkpoint)
    assert (head.service, head.seq) == ("registry", 2)
    assert head.hash == (await read_head(anchored.store)).hash
    published = await latest_checkpoint(anchored.js, "registry")
    assert published == checkpoint
    assert await anchored.anchor.checkpoint(only_if_moved=True) is None


async def test_two_writers_of_one_chain_never_report_a_cut_nor_move_the_anchor_back(
    anchored: Anchored, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two replicas on one database: one anchors a newer head while the other checks."""
    await anchored.write(2)
    await assert_eventually(lambda: _anchored_at(anchored, 2), timeout=10)
    other = ChainAnchor(anchored.store, anchored.js, interval_s=3600)
    real_read_head = anchoring.read_head
    raced = False

    async def read_head_while_the_other_moves_on(store: EventStore) -> ChainHead:
        nonlocal raced
        head = await real_read_head(store)
        if not raced:
            raced = True
            await anchored.write(1)  # the first replica writes and anchors head 3
            await assert_eventually(lambda: _anchored_at(anchored, 3), timeout=10)
        return head

    monkeypatch.setattr(anchoring, "read_head", read_head_while_the_other_moves_on)
    with caplog.at_level(logging.ERROR, logger=anchoring.__name__):
        await other.publish_head()
    monkeypatch.undo()

    assert raced
    assert not [r for r in caplog.records if "not anchored" in r.getMessage()]
    latest = await latest_anchor(anchored.js, "registry")
    assert latest is not None and latest.seq == 3  # head 2 was not anchored over head 3


async def _anchored_at(anchored: Anchored, seq: int) -> None:
    anchor = await latest_anchor(anchored.js, "registry")
    assert anchor is not None and anchor.seq >= seq

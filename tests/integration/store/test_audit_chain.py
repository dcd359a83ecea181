"""The audit chain: written with the change, append-only, and tamper-evident."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from prognos.core import audit
from prognos.core.config import Settings
from prognos.core.store import EventStore, is_postgres


async def _write_entries(store: EventStore, n: int) -> None:
    for i in range(n):
        async with store.transaction(actor=f"user-{i}") as uow:
            await uow.audit("thing.done", f"thing/{i}", reason="because", details={"i": i})


async def _verify(store: EventStore) -> audit.ChainVerification:
    async with store.reader() as conn:
        return await audit.verify(conn)


async def _drop_guard(store: EventStore) -> None:
    """Drop the append-only triggers, as someone with full database rights could."""
    async with store.engine.begin() as conn:
        if is_postgres(conn):
            await conn.execute(text("DROP TRIGGER audit_log_append_only ON audit_log"))
        else:
            await conn.execute(text("DROP TRIGGER audit_log_no_update"))
            await conn.execute(text("DROP TRIGGER audit_log_no_delete"))


async def test_an_untouched_chain_verifies(store: EventStore) -> None:
    await _write_entries(store, 5)
    result = await _verify(store)
    assert result.ok and result.entries == 5 and result.head_seq == 5
    async with store.reader() as conn:
        chain = [e async for e in audit.entries(conn)]
    assert [e.prev_hash for e in chain[1:]] == [e.hash for e in chain[:-1]]
    assert chain[0].prev_hash == audit.GENESIS_HASH
    assert chain[2].actor == "user-2" and chain[2].details == {"i": 2}


async def test_the_database_refuses_to_update_or_delete_audit_rows(store: EventStore) -> None:
    await _write_entries(store, 1)
    for statement in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with store.engine.begin() as conn:
                await conn.execute(text(statement))
    assert (await _verify(store)).ok


async def test_verify_names_an_edited_entry(store: EventStore) -> None:
    await _write_entries(store, 6)
    await _drop_guard(store)
    async with store.engine.begin() as conn:
        await conn.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE seq = 4"))
        edited_id = (
            await conn.execute(text("SELECT entry_id FROM audit_log WHERE seq = 4"))
        ).scalar()
    result = await _verify(store)
    assert not result.ok
    assert result.broken_seq == 4 and result.broken_entry_id == edited_id
    assert "altered" in (result.problem or "")
    assert result.entries == 3


async def test_verify_detects_a_deleted_entry(store: EventStore) -> None:
    await _write_entries(store, 6)
    await _drop_guard(store)
    async with store.engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_log WHERE seq = 3"))
    result = await _verify(store)
    assert not result.ok and result.broken_seq == 4
    assert "gap" in (result.problem or "")


async def test_verify_detects_reordered_entries(store: EventStore) -> None:
    await _write_entries(store, 5)
    await _drop_guard(store)
    async with store.engine.begin() as conn:
        await conn.execute(text("UPDATE audit_log SET seq = 100 WHERE seq = 2"))
        await conn.execute(text("UPDATE audit_log SET seq = 2 WHERE seq = 3"))
        await conn.execute(text("UPDATE audit_log SET seq = 3 WHERE seq = 100"))
    result = await _verify(store)
    assert not result.ok and result.broken_seq == 2


async def test_verify_detects_a_relinked_chain(store: EventStore) -> None:
    """Deleting an entry and renumbering the rest still breaks the hash links."""
    await _write_entries(store, 5)
    await _drop_guard(store)
    async with store.engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_log WHERE seq = 2"))
        await conn.execute(text("UPDATE audit_log SET seq = seq - 1 WHERE seq > 2"))
    result = await _verify(store)
    assert not result.ok and result.broken_seq == 2


async def test_work_outside_any_trace_still_gets_a_trace_id(
    store: EventStore, store_settings: Settings
) -> None:
    from opentelemetry import trace

    from prognos.core import telemetry

    telemetry.setup(store_settings)
    assert not trace.get_current_span().get_span_context().is_valid
    async with store.transaction(actor="service:planner") as uow:
        entry = await uow.audit("plan.written", "plan/1")
    assert len(entry.trace_id) == 32 and entry.trace_id != "0" * 32
    async with store.transaction() as uow:
        other = await uow.audit("plan.written", "plan/2")
    assert other.trace_id != entry.trace_id
    telemetry.flush()
    traced = {span.trace_id for span in telemetry.read_spans(store_settings.spans_dir)}
    assert {entry.trace_id, other.trace_id} <= traced

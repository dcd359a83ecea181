"""`prognos audit verify` catches any tampered audit row, in any service's database.

Each service's chain gets entries (audited access denials), is anchored on the AUDIT
stream, and then one row is edited, deleted or moved straight in the SQLite file, as
someone with full database rights could; every tampering is undone after its check, so the
checks do not depend on each other. A chain rewritten consistently from some entry on, or
cut short, holds as a chain: its anchor catches it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from prognos.api.common.v1 import audit_pb2, audit_pb2_grpc
from prognos.cli.audit import ServiceVerdict, verify_running
from prognos.cli.client import open_channel, open_channel_with_token, secrets_of
from prognos.cli.launcher import RunInfo
from prognos.core import audit
from prognos.core.anchoring import latest_anchor
from prognos.core.busauth import OBSERVER_IDENTITY
from prognos.core.config import SERVICES
from prognos.core.testing import assert_eventually
from prognos.core.testing.identities import connect_as, seed_of

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

ENTRIES = 4
COLUMNS = "seq, entry_id, at, actor, action, subject, reason, trace_id, details, prev_hash, hash"


def _database(fleet: RunInfo, service: str) -> Path:
    return Path(fleet.data_dir) / f"{service}.db"


@contextmanager
def _db(fleet: RunInfo, service: str) -> Iterator[sqlite3.Connection]:
    with closing(sqlite3.connect(_database(fleet, service), timeout=30)) as conn:
        conn.isolation_level = None
        yield conn


async def _deny(fleet: RunInfo, service: str) -> None:
    async with open_channel_with_token(fleet, service, None) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await audit_pb2_grpc.AuditServiceStub(channel).ListEntries(
                audit_pb2.ListEntriesRequest(), timeout=10
            )


async def _head(fleet: RunInfo, service: str) -> int:
    async with open_channel(fleet, service, role="auditor") as channel:
        reply = await audit_pb2_grpc.AuditServiceStub(channel).VerifyChain(
            audit_pb2.VerifyChainRequest(), timeout=10
        )
    return reply.head.seq


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def anchored(fleet: RunInfo) -> RunInfo:
    """The fleet with ``ENTRIES`` entries in every chain, each chain anchored at its head."""
    for service in SERVICES:
        for _ in range(ENTRIES):
            await _deny(fleet, service)
    nc = await connect_as(fleet.nats_url, seed_of(fleet.data_dir, OBSERVER_IDENTITY))
    try:
        js = nc.jetstream()
        for service in SERVICES:
            head = await _head(fleet, service)
            assert head >= ENTRIES

            async def at_head(service: str = service, head: int = head) -> None:
                anchor = await latest_anchor(js, service)
                assert anchor is not None and anchor.seq == head

            await assert_eventually(at_head, timeout=20)
    finally:
        await nc.drain()
    for service in SERVICES:
        with _db(fleet, service) as conn:
            # What someone with full rights on the database file does first.
            conn.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
            conn.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    return fleet


def _row(conn: sqlite3.Connection, seq: int) -> tuple[Any, ...]:
    row = conn.execute(f"SELECT {COLUMNS} FROM audit_log WHERE seq = ?", (seq,)).fetchone()
    assert row is not None
    return tuple(row)


def _last_seq(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT max(seq) FROM audit_log").fetchone()[0])


@contextmanager
def _edited(conn: sqlite3.Connection, seq: int) -> Iterator[str]:
    original = _row(conn, seq)
    conn.execute("UPDATE audit_log SET actor = 'user:mallory' WHERE seq = ?", (seq,))
    try:
        yield str(original[1])
    finally:
        conn.execute("UPDATE audit_log SET actor = ? WHERE seq = ?", (original[3], seq))


@contextmanager
def _deleted(conn: sqlite3.Connection, seq: int) -> Iterator[str]:
    original = _row(conn, seq)
    following = conn.execute("SELECT entry_id FROM audit_log WHERE seq = ?", (seq + 1,)).fetchone()
    conn.execute("DELETE FROM audit_log WHERE seq = ?", (seq,))
    try:
        yield following[0] if following else ""
    finally:
        conn.execute(f"INSERT INTO audit_log ({COLUMNS}) VALUES ({', '.join('?' * 11)})", original)


@contextmanager
def _swapped(conn: sqlite3.Connection, seq: int) -> Iterator[str]:
    moved = _row(conn, seq + 1)
    conn.execute("UPDATE audit_log SET seq = -1 WHERE seq = ?", (seq,))
    conn.execute("UPDATE audit_log SET seq = ? WHERE seq = ?", (seq, seq + 1))
    conn.execute("UPDATE audit_log SET seq = ? WHERE seq = -1", (seq + 1,))
    try:
        yield str(moved[1])
    finally:
        conn.execute("UPDATE audit_log SET seq = -1 WHERE seq = ?", (seq,))
        conn.execute("UPDATE audit_log SET seq = ? WHERE seq = ?", (seq, seq + 1))
        conn.execute("UPDATE audit_log SET seq = ? WHERE seq = -1", (seq + 1,))


# tampering, the entry the verdict must name (seq offset from the tampered one), its text
TAMPERINGS: dict[str, tuple[Callable[..., Any], int, str]] = {
    "edited": (_edited, 0, "altered"),
    "deleted": (_deleted, 1, "sequence gap"),
    "reordered": (_swapped, 0, "prev_hash does not match"),
}


async def _verdict(fleet: RunInfo, service: str) -> ServiceVerdict:
    [verdict] = await verify_running(fleet, [service])
    return verdict


def _prognos(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prognos.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


async def test_an_untouched_system_verifies(anchored: RunInfo) -> None:
    result = await asyncio.to_thread(_prognos, "audit", "verify", "--data-dir", anchored.data_dir)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("verified") == len(SERVICES)


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
async def test_one_tampered_row_breaks_the_chain_at_that_entry(
    anchored: RunInfo, service: str, tampering: str
) -> None:
    tamper, offset, problem = TAMPERINGS[tampering]
    seq = 2
    with _db(anchored, service) as conn, tamper(conn, seq) as entry_id:
        verdict = await _verdict(anchored, service)

    assert not verdict.ok
    assert verdict.broken_seq == seq + offset
    assert verdict.broken_entry_id == entry_id
    assert problem in verdict.problems[0]
    assert (await _verdict(anchored, service)).ok, "restored"


async def test_prognos_audit_verify_exits_non_zero_naming_the_entry(anchored: RunInfo) -> None:
    with _db(anchored, "scheduler") as conn, _edited(conn, 3) as entry_id:
        result = await asyncio.to_thread(
            _prognos, "audit", "verify", "--data-dir", anchored.data_dir
        )

    assert result.returncode == 1, result.stdout
    assert f"scheduler entry 3 ({entry_id})" in result.stdout.replace("\n", "")
    assert "altered" in result.stdout
    assert result.stdout.count("verified") == len(SERVICES) - 1


async def test_a_chain_cut_short_is_caught_by_its_anchor(anchored: RunInfo) -> None:
    with _db(anchored, "registry") as conn:
        last = _last_seq(conn)
        with _deleted(conn, last):
            verdict = await _verdict(anchored, "registry")

    assert not verdict.ok and verdict.entries == last - 1
    assert verdict.broken_seq == last
    assert "entries were removed" in verdict.problems[0]


async def test_a_chain_rewritten_consistently_is_caught_by_its_anchor(anchored: RunInfo) -> None:
    with _db(anchored, "inference") as conn:
        originals = conn.execute(f"SELECT {COLUMNS} FROM audit_log ORDER BY seq").fetchall()
        _rewrite_from(conn, originals, 2)
        try:
            verdict = await _verdict(anchored, "inference")
        finally:
            for row in originals:
                conn.execute(
                    "UPDATE audit_log SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                    (row[3], row[9], row[10], row[0]),
                )

    assert not verdict.ok and verdict.entries == len(originals), "the chain itself holds"
    assert verdict.broken_seq == verdict.anchored_seq
    assert "rewritten" in verdict.problems[0]


def _rewrite_from(conn: sqlite3.Connection, rows: list[Any], seq: int) -> None:
    """Change the actor of entry ``seq`` and re-hash it and every entry after it."""
    prev = rows[seq - 2][10]
    for row in rows[seq - 1 :]:
        entry = audit.AuditEntry(
            seq=row[0],
            entry_id=row[1],
            at=datetime.fromisoformat(row[2]),
            actor="user:mallory" if row[0] == seq else row[3],
            action=row[4],
            subject=row[5],
            reason=row[6],
            trace_id=row[7],
            details=json.loads(row[8]),
            prev_hash=prev,
            hash="",
        )
        digest = audit.compute_hash(entry.content())
        conn.execute(
            "UPDATE audit_log SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (entry.actor, prev, digest, row[0]),
        )
        prev = digest


async def test_an_exported_copy_verifies_offline_and_fails_once_tampered(
    anchored: RunInfo, tmp_path: Path
) -> None:
    copy = tmp_path / "ingest-audit.json"
    public_key = secrets_of(anchored).checkpoint_public_key("ingest")

    exported = await asyncio.to_thread(
        _prognos, "audit", "checkpoint", "--service", "ingest", "--out", str(copy),
        "--data-dir", anchored.data_dir,
    )  # fmt: skip
    untouched = await asyncio.to_thread(
        _prognos, "audit", "verify-offline", str(copy), "--public-key", str(public_key)
    )
    document = json.loads(copy.read_text())
    document["entries"][1]["reason"] = "nothing to see here"
    copy.write_text(json.dumps(document))
    tampered = await asyncio.to_thread(
        _prognos, "audit", "verify-offline", str(copy), "--public-key", str(public_key)
    )

    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert len(document["entries"]) == document["checkpoint"]["seq"] >= ENTRIES
    assert untouched.returncode == 0, untouched.stdout
    assert "verified" in untouched.stdout
    assert tampered.returncode == 1, tampered.stdout
    assert f"entry 2 ({document['entries'][1]['entry_id']})" in tampered.stdout.replace("\n", "")

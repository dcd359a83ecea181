"""The audit log: an append-only hash chain per service, written with the change it explains.

Each entry holds the hash of the entry before it, and its own hash covers its sequence
number, content and that previous hash. Editing an entry breaks its own hash; deleting one
leaves a gap in the sequence and a broken link; reordering breaks both. ``verify`` walks the
chain and names the first entry that does not hold.

The services never delete audit entries (``audit_retention_days``, 180 by default, is how
long operators must keep them at least); the chain's head is anchored outside the
database by ``prognos.core.anchoring``. Personal data must stay out of the hashed content
so that it can be erased without breaking the chain: details name a person by a reference
(``person/<id>``) into a table of their own, whose values can be destroyed on request.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import desc, insert, select

from prognos.core.telemetry import current_trace_id

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class AuditEntry:
    """One audit entry: who did what to which subject, why, when, and in which trace."""

    seq: int
    entry_id: str
    at: datetime
    actor: str
    action: str
    subject: str
    reason: str
    trace_id: str
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def content(self) -> dict[str, Any]:
        """The hashed content: everything but the entry's own hash."""
        return {
            "seq": self.seq,
            "entry_id": self.entry_id,
            "at": _iso(self.at),
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "reason": self.reason,
            "trace_id": self.trace_id,
            "details": self.details,
            "prev_hash": self.prev_hash,
        }


@dataclass(frozen=True)
class ChainVerification:
    """The outcome of walking a chain: ``ok``, or the first broken entry and what broke."""

    ok: bool
    entries: int
    head_seq: int
    head_hash: str
    broken_seq: int | None = None
    broken_entry_id: str | None = None
    problem: str | None = None


def _iso(at: datetime) -> str:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def compute_hash(content: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON of an entry's content."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _table() -> Any:
    from prognos.core.store import audit_table

    return audit_table


def _row_to_entry(row: Any) -> AuditEntry:
    details = row.details if isinstance(row.details, dict) else json.loads(row.details)
    at = row.at if row.at.tzinfo else row.at.replace(tzinfo=UTC)
    return AuditEntry(
        seq=row.seq,
        entry_id=row.entry_id,
        at=at,
        actor=row.actor,
        action=row.action,
        subject=row.subject,
        reason=row.reason,
        trace_id=row.trace_id,
        details=details,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


async def append(
    conn: AsyncConnection,
    *,
    actor: str,
    action: str,
    subject: str,
    reason: str = "",
    details: dict[str, Any] | None = None,
    trace_id: str | None = None,
) -> AuditEntry:
    """Append an entry to the chain inside the caller's transaction.

    The caller's transaction must hold the service's writer lock (``EventStore.transaction``
    does), so two writers never chain to the same previous entry.

    Args:
        conn: the connection of the transaction that makes the change.
        actor: the principal responsible.
        action: what happened, UPPER_SNAKE or dotted (``asset_type.registered``).
        subject: what it happened to (``asset_type/pump``).
        reason: why, in words.
        details: JSON-ready facts (ids, versions, scores).
        trace_id: defaults to the current span's trace id.

    Returns:
        The entry as stored.
    """
    table = _table()
    if trace_id is None:
        trace_id = current_trace_id()
    last = (
        await conn.execute(select(table.c.seq, table.c.hash).order_by(desc(table.c.seq)).limit(1))
    ).first()
    seq, prev_hash = (last.seq + 1, last.hash) if last else (1, GENESIS_HASH)
    # Round-trip the details through JSON so the hash covers exactly what is stored.
    stored_details = json.loads(json.dumps(details or {}, default=str))
    draft = AuditEntry(
        seq=seq,
        entry_id=str(uuid.uuid4()),
        at=datetime.now(UTC),
        actor=actor,
        action=action,
        subject=subject,
        reason=reason,
        trace_id=trace_id,
        details=stored_details,
        prev_hash=prev_hash,
        hash="",
    )
    entry = AuditEntry(**{**draft.__dict__, "hash": compute_hash(draft.content())})
    await conn.execute(insert(table).values(**entry.__dict__))
    return entry


async def entries(conn: AsyncConnection, *, after_seq: int = 0) -> AsyncIterator[AuditEntry]:
    """The chain's entries in sequence order."""
    table = _table()
    result = await conn.stream(select(table).where(table.c.seq > after_seq).order_by(table.c.seq))
    async for row in result:
        yield _row_to_entry(row)


class ChainWalk:
    """Checks a chain one entry at a time, in sequence order, from the first entry.

    ``verify`` walks a database with it; an auditor's tool walks an exported copy.
    """

    def __init__(self) -> None:
        self.expected_seq = 1
        self.prev_hash = GENESIS_HASH
        self.count = 0
        self.broken: ChainVerification | None = None

    def step(self, entry: AuditEntry) -> bool:
        """Check the next entry; return False (and set ``broken``) at the first that fails."""
        if self.broken is not None:
            return False
        problem = None
        if entry.seq != self.expected_seq:
            problem = f"sequence gap: expected entry {self.expected_seq}, found {entry.seq}"
        elif entry.prev_hash != self.prev_hash:
            problem = "prev_hash does not match the hash of the entry before it"
        elif compute_hash(entry.content()) != entry.hash:
            problem = "content does not match its hash (the entry was altered)"
        if problem:
            self.broken = ChainVerification(
                ok=False,
                entries=self.count,
                head_seq=self.expected_seq - 1,
                head_hash=self.prev_hash,
                broken_seq=entry.seq,
                broken_entry_id=entry.entry_id,
                problem=problem,
            )
            return False
        self.count += 1
        self.expected_seq = entry.seq + 1
        self.prev_hash = entry.hash
        return True

    def result(self) -> ChainVerification:
        """The outcome so far: the first break, or ``ok`` with the head reached."""
        if self.broken is not None:
            return self.broken
        return ChainVerification(
            ok=True, entries=self.count, head_seq=self.expected_seq - 1, head_hash=self.prev_hash
        )


def verify_entries(chain: Iterable[AuditEntry]) -> ChainVerification:
    """Check a whole chain held in memory (an exported copy), from its first entry."""
    walk = ChainWalk()
    for entry in chain:
        if not walk.step(entry):
            break
    return walk.result()


async def verify(conn: AsyncConnection) -> ChainVerification:
    """Walk the whole chain and name the first entry that does not hold.

    An entry is broken when its hash does not match its content (edited), when its
    sequence number does not follow the one before (deleted or reordered), or when its
    ``prev_hash`` is not the hash of the entry before it (deleted, reordered or re-linked).
    """
    walk = ChainWalk()
    async for entry in entries(conn):
        if not walk.step(entry):
            break
    return walk.result()

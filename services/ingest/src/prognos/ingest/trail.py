"""Ingest's own steps of a work order's trail: the telemetry batches of the input window."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import select

from prognos.api.common.v1 import audit_pb2
from prognos.ingest.adapters import telemetry_batches

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from prognos.core.audit import AuditEntry
    from prognos.core.trail import TrailQuery

MAX_BATCHES = 1000
"""At most this many batches (the newest) are listed for one window."""


def _us(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000)


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat()


def _receiving_entry(chain: list[AuditEntry], sequence: int) -> AuditEntry | None:
    """The ``telemetry.received`` roll-up whose stream sequence range holds ``sequence``."""
    for entry in chain:
        if entry.action != "telemetry.received":
            continue
        first = entry.details.get("first_stream_sequence") or 0
        last = entry.details.get("last_stream_sequence") or 0
        if isinstance(first, int) and isinstance(last, int) and first <= sequence <= last:
            return entry
    return None


async def telemetry_steps(
    conn: AsyncConnection, query: TrailQuery, chain: list[AuditEntry]
) -> list[audit_pb2.TrailStep]:
    """One step per telemetry batch of ``query.asset_id`` that overlaps the input window.

    Each step holds the batch's receipt (batch id, stream sequence, accepted and quarantined
    readings) and is stamped with the time of receipt, when the telemetry stream stored
    it, so it sorts among the other steps by when it happened; the times of its readings,
    which may be much older, are kept beside it (``first_time`` and ``last_time``). The
    actor and trace id come from the audit roll-up of the stream that delivered it
    (``audit_seq`` in its details). Without a window, the asset's newest batches up to
    ``window_end`` (or all) are listed. Batches enter the ledger read here when the
    archiver writes them (``archive_flush_interval_s``), so the newest may show a moment
    later.
    """
    if not query.asset_id:
        return []
    table = telemetry_batches
    statement = select(table).where(table.c.asset_id == query.asset_id)
    if query.window_end is not None:
        statement = statement.where(table.c.first_time_us <= _us(query.window_end))
    if query.window_start is not None:
        statement = statement.where(table.c.last_time_us >= _us(query.window_start))
    statement = statement.order_by(table.c.stream_sequence.desc()).limit(MAX_BATCHES)
    rows = list((await conn.execute(statement)).all())
    steps = []
    for row in reversed(rows):
        entry = _receiving_entry(chain, row.stream_sequence)
        details = {
            "batch_id": row.batch_id,
            "asset_id": row.asset_id,
            "stream_sequence": row.stream_sequence,
            "accepted_count": row.accepted_count,
            "quarantined_count": row.quarantined_count,
            "first_time": _iso(row.first_time_us),
            "last_time": _iso(row.last_time_us),
            "audit_seq": entry.seq if entry else 0,
        }
        if row.received_at_us is not None:
            details["received_at"] = _iso(row.received_at_us)
        step = audit_pb2.TrailStep(
            service="ingest",
            actor=entry.actor if entry else "",
            action="telemetry.batch_received",
            subject=f"telemetry_batch/{row.batch_id}",
            summary=(
                f"{row.accepted_count} readings accepted, {row.quarantined_count} quarantined "
                f"(stream sequence {row.stream_sequence})"
            ),
            trace_id=entry.trace_id if entry else "",
            details_json=json.dumps(details, sort_keys=True),
        )
        if row.received_at_us is not None:
            step.at.FromMicroseconds(row.received_at_us)
        elif entry is not None:
            # Archived before receipt times were kept: the roll-up came soon after.
            step.at.FromDatetime(entry.at)
        else:
            step.at.FromMicroseconds(row.last_time_us)
        steps.append(step)
    return steps

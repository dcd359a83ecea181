"""``AuditService``: every service lets an auditor read, verify and checkpoint its own chain."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC
from typing import TYPE_CHECKING

from prognos.api.common.v1 import audit_pb2, audit_pb2_grpc
from prognos.core import audit
from prognos.core.anchoring import ChainHead, ChainMismatchError
from prognos.core.errors import FailedPreconditionError

if TYPE_CHECKING:
    import grpc.aio

    from prognos.core.anchoring import ChainAnchor
    from prognos.core.store import EventStore

__all__ = ["AUDIT_SERVICE", "MAX_PAGE", "AuditServicer", "entry_from_proto", "entry_to_proto"]

AUDIT_SERVICE: str = audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name
"""``prognos.api.common.v1.AuditService``."""
MAX_PAGE = 1000


def entry_to_proto(entry: audit.AuditEntry) -> audit_pb2.AuditEntry:
    """The wire form of a stored entry; ``details_json`` is canonical JSON."""
    message = audit_pb2.AuditEntry(
        seq=entry.seq,
        entry_id=entry.entry_id,
        actor=entry.actor,
        action=entry.action,
        subject=entry.subject,
        reason=entry.reason,
        trace_id=entry.trace_id,
        details_json=json.dumps(
            entry.details, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ),
        prev_hash=entry.prev_hash,
        hash=entry.hash,
    )
    message.at.FromDatetime(entry.at)
    return message


def entry_from_proto(message: audit_pb2.AuditEntry) -> audit.AuditEntry:
    """Read an entry back; its hash can be recomputed from what came over the wire."""
    return audit.AuditEntry(
        seq=message.seq,
        entry_id=message.entry_id,
        at=message.at.ToDatetime(tzinfo=UTC),
        actor=message.actor,
        action=message.action,
        subject=message.subject,
        reason=message.reason,
        trace_id=message.trace_id,
        details=json.loads(message.details_json or "{}"),
        prev_hash=message.prev_hash,
        hash=message.hash,
    )


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """Serves the chain of one service's database.

    Args:
        store: The service's event store.
        anchor: Signs checkpoints; without one, ``CreateCheckpoint`` fails.
    """

    def __init__(self, store: EventStore, anchor: ChainAnchor | None = None) -> None:
        self._store = store
        self._anchor = anchor

    async def VerifyChain(
        self, request: audit_pb2.VerifyChainRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.VerifyChainResponse:
        """Walk the whole chain."""
        async with self._store.reader() as conn:
            result = await audit.verify(conn)
        head = audit_pb2.ChainHead(
            service=self._store.service, seq=result.head_seq, hash=result.head_hash
        )
        head.at.GetCurrentTime()
        return audit_pb2.VerifyChainResponse(
            ok=result.ok,
            entries=result.entries,
            head=head,
            broken_seq=result.broken_seq or 0,
            broken_entry_id=result.broken_entry_id or "",
            problem=result.problem or "",
        )

    async def ListEntries(
        self, request: audit_pb2.ListEntriesRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.ListEntriesResponse:
        """One page of entries after ``after_seq``."""
        limit = request.limit if 0 < request.limit <= MAX_PAGE else MAX_PAGE
        found: list[audit.AuditEntry] = []
        async with self._store.reader() as conn:
            stream = audit.entries(conn, after_seq=max(request.after_seq, 0))
            async with contextlib.aclosing(stream) as rows:
                async for entry in rows:
                    found.append(entry)
                    if len(found) > limit:
                        break
        return audit_pb2.ListEntriesResponse(
            entries=[entry_to_proto(e) for e in found[:limit]], more=len(found) > limit
        )

    async def CreateCheckpoint(
        self, request: audit_pb2.CreateCheckpointRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.CreateCheckpointResponse:
        """Sign the current head and publish it."""
        if self._anchor is None or not self._anchor.can_sign:
            description = "no audit signing key (PROGNOS_<SERVICE>_AUDIT_SIGNING_KEY_FILE)"
            raise FailedPreconditionError(
                [("SIGNING_KEY", f"audit/{self._store.service}", description)],
                reason="NO_SIGNING_KEY",
            )
        try:
            checkpoint = await self._anchor.checkpoint()
        except ChainMismatchError as error:
            raise FailedPreconditionError(
                [("ANCHOR", f"audit/{self._store.service}", str(error))],
                reason="CHAIN_MISMATCH",
            ) from None
        assert checkpoint is not None
        return audit_pb2.CreateCheckpointResponse(checkpoint=checkpoint)


def head_of(response: audit_pb2.VerifyChainResponse) -> ChainHead:
    """The head a ``VerifyChain`` answer reached."""
    return ChainHead.from_proto(response.head)

"""``AuditService``: every service lets an auditor read, verify and checkpoint its own chain."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC
from typing import TYPE_CHECKING, Protocol

from prognos.api.common.v1 import audit_pb2, audit_pb2_grpc
from prognos.core import audit, people, trail
from prognos.core.anchoring import ChainHead, ChainMismatchError
from prognos.core.errors import FailedPreconditionError, InvalidArgumentError

if TYPE_CHECKING:
    import grpc.aio

    from prognos.core.anchoring import ChainAnchor
    from prognos.core.store import EventStore
    from prognos.core.trail import TrailSource

__all__ = [
    "AUDIT_SERVICE",
    "MAX_PAGE",
    "AuditServicer",
    "TrailGatherer",
    "entry_from_proto",
    "entry_to_proto",
]

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


class TrailGatherer(Protocol):
    """Puts a whole trail together from this service's part and the other services' parts."""

    async def __call__(
        self,
        request: audit_pb2.GetTrailRequest,
        own: audit_pb2.GetTrailResponse,
        context: grpc.aio.ServicerContext,
    ) -> audit_pb2.GetTrailResponse:
        """The whole trail ``request`` asks for, given this service's part ``own``."""
        ...


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """Serves the chain of one service's database.

    Args:
        store: The service's event store.
        anchor: Signs checkpoints; without one, ``CreateCheckpoint`` fails.
        trail_sources: Add the service's own steps to ``GetTrail`` (the list may grow
            after construction, while the service builds).
        gatherer: Answers ``GetTrail`` for a whole trail (the scheduler's, set while it
            builds); without one, such a request is FAILED_PRECONDITION.
    """

    def __init__(
        self,
        store: EventStore,
        anchor: ChainAnchor | None = None,
        trail_sources: list[TrailSource] | None = None,
        gatherer: TrailGatherer | None = None,
    ) -> None:
        self._store = store
        self._anchor = anchor
        self.trail_sources: list[TrailSource] = trail_sources if trail_sources is not None else []
        self.gatherer = gatherer

    async def VerifyChain(
        self, request: audit_pb2.VerifyChainRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.VerifyChainResponse:
        """Walk the whole chain."""
        async with self._store.reader() as conn:
            result = await audit.verify(conn)
        return self._verification(result)

    def _verification(self, result: audit.ChainVerification) -> audit_pb2.VerifyChainResponse:
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

    async def GetTrail(
        self, request: audit_pb2.GetTrailRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.GetTrailResponse:
        """This service's part of a work order's trail, or with ``whole`` the whole trail."""
        if not request.whole:
            return await self.part(request)
        if self.gatherer is None:
            raise FailedPreconditionError(
                [
                    (
                        "WHOLE_TRAIL",
                        f"audit/{self._store.service}",
                        "only the scheduler, which owns work orders, gathers whole trails",
                    )
                ],
                reason="NOT_A_TRAIL_GATHERER",
            )
        if not request.work_order_id.strip():
            raise InvalidArgumentError([("work_order_id", "required for a whole trail")])
        own = audit_pb2.GetTrailRequest()
        own.CopyFrom(request)
        own.whole = False
        return await self.gatherer(request, await self.part(own), context)

    async def part(self, request: audit_pb2.GetTrailRequest) -> audit_pb2.GetTrailResponse:
        """This service's part of a work order's trail, and whether its chain verifies."""
        query = trail.TrailQuery.from_proto(request)
        async with self._store.reader() as conn:
            chain: list[audit.AuditEntry] = []
            walk = audit.ChainWalk()
            stream = audit.entries(conn)
            async with contextlib.aclosing(stream) as rows:
                async for entry in rows:
                    walk.step(entry)
                    chain.append(entry)
            part = trail.find_part(chain, query)
            extra: list[audit_pb2.TrailStep] = []
            for source in self.trail_sources:
                extra.extend(await source(conn, query, chain))
        service = self._store.service
        steps = [trail.step_from_entry(service, e) for e in part.entries] + extra
        steps.sort(key=lambda s: (s.at.ToDatetime(), s.audit_seq))
        response = audit_pb2.GetTrailResponse(
            service=service,
            steps=steps,
            references=sorted(part.references),
            asset_id=part.asset_id,
            chain=self._verification(walk.result()),
        )
        if part.window_start and part.window_end:
            response.window_start.FromJsonString(part.window_start)
            response.window_end.FromJsonString(part.window_end)
        refs = {ref for step in steps for ref in trail.person_refs(step)}
        if refs:
            async with self._store.reader() as conn:
                named = await people.names_of(conn, refs)
            for ref, name in named.items():
                response.people.add(ref=ref, name=name or "", erased=name is None)
        return response

    async def ErasePerson(
        self, request: audit_pb2.ErasePersonRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.ErasePersonResponse:
        """Erase a person's name here and audit the erasure by reference."""
        if not request.person.strip():
            raise InvalidArgumentError([("person", "required: a name or person/<id>")])
        async with self._store.transaction() as uow:
            erased = await people.erase(uow.conn, request.person)
            for ref in erased:
                await uow.audit(
                    "person.erased",
                    ref,
                    reason=request.reason or "erasure of personal data requested",
                )
        return audit_pb2.ErasePersonResponse(service=self._store.service, erased=erased)

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

"""The whole trail of a work order: the scheduler gathers every service's part in one call.

``AuditService.GetTrail`` with ``whole`` set, served by the scheduler because it owns work
orders. The trail is put together by following what each part names: the scheduler's part
(the work order's transitions and ERP replies) names the prediction, its input window and
the model version; inference's part is the prediction's alert when it raised one; the
registry's part is that model version's lineage (training run, dataset snapshot, metrics,
registration, approval, promotion); ingest's part is the telemetry batches of the input
window with their receipts, the asset and the dataset snapshot. The steps come in time
order, each fact once, though a service may have recorded it twice.

Every part is asked for on the caller's behalf: the scheduler calls with its own service
certificate (mutual TLS) and forwards the caller's ``authorization`` token, so each service
checks and records the real caller, and nobody reads more through the scheduler than they
could read directly. A service that cannot be reached, or refuses, leaves its part missing:
the answer names it with the status it gave, and the rest of the trail is still returned.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import grpc

from prognos.api.common.v1 import audit_pb2, audit_pb2_grpc
from prognos.core import telemetry, tls
from prognos.core.errors import NotFoundError
from prognos.core.trail import REFERENCE_KEYS

if TYPE_CHECKING:
    from collections.abc import Iterable

    from prognos.core.config import Settings

__all__ = ["ORDER", "TrailGatherer"]

log = logging.getLogger(__name__)

ORDER = ("scheduler", "inference", "registry", "ingest")
"""The services of a trail, in the order their parts are asked for."""
_PEER_TIMEOUT_S = 60.0
"""How long a part may take when the caller set no deadline."""
_MARGIN_S = 0.05
"""Left of the caller's deadline to put the answer together."""


def _kind(references: Iterable[str], kind: str) -> list[str]:
    return sorted(r for r in references if r.startswith(kind + "/"))


def _caller_token(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization":
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


class TrailGatherer:
    """Asks the other services for their parts of a work order's trail and joins them.

    Args:
        settings: Where the services are (``<service>_address``) and this process's
            certificate (``tls_*``).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stubs: dict[str, audit_pb2_grpc.AuditServiceStub] = {}
        self._channels: list[grpc.aio.Channel] = []

    def _stub(self, service: str) -> audit_pb2_grpc.AuditServiceStub | None:
        stub = self._stubs.get(service)
        if stub is not None:
            return stub
        address = self._settings.address_of(service)
        if address is None:
            return None
        channel = telemetry.channel(address, tls.client_credentials(self._settings))
        self._channels.append(channel)
        stub = self._stubs[service] = audit_pb2_grpc.AuditServiceStub(channel)
        return stub

    async def close(self) -> None:
        """Close the channels to the other services."""
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        self._stubs.clear()

    async def _ask(
        self,
        service: str,
        request: audit_pb2.GetTrailRequest,
        context: grpc.aio.ServicerContext,
    ) -> tuple[audit_pb2.GetTrailResponse | None, audit_pb2.TrailPart]:
        stub = self._stub(service)
        if stub is None:
            variable = f"PROGNOS_{service.upper()}_ADDRESS"
            error = f"NOT_CONFIGURED: no address of {service} ({variable})"
            return None, audit_pb2.TrailPart(service=service, error=error)
        token = _caller_token(context)
        metadata = [("authorization", token)] if token else []
        remaining = context.time_remaining()
        timeout = _PEER_TIMEOUT_S if remaining is None else max(remaining - _MARGIN_S, 0.01)
        try:
            reply: audit_pb2.GetTrailResponse = await stub.GetTrail(
                request, metadata=metadata, timeout=timeout
            )
        except grpc.aio.AioRpcError as error:
            log.warning("%s gave no part of a trail: %s", service, error.code().name)
            return None, audit_pb2.TrailPart(
                service=service, error=f"{error.code().name}: {error.details() or ''}".strip()
            )
        return reply, _answered(reply)

    async def __call__(
        self,
        request: audit_pb2.GetTrailRequest,
        own: audit_pb2.GetTrailResponse,
        context: grpc.aio.ServicerContext,
    ) -> audit_pb2.GetTrailResponse:
        """The whole trail of ``request.work_order_id``, given the scheduler's part ``own``.

        Raises:
            NotFoundError: The scheduler's chain names no such work order.
        """
        work_order_id = request.work_order_id
        if not own.steps:
            raise NotFoundError("work_order", work_order_id)
        parts = {"scheduler": own}
        verdicts = [_answered(own)]
        found = set(own.references)
        asset_id = own.asset_id

        inference, verdict = await self._ask(
            "inference",
            audit_pb2.GetTrailRequest(
                work_order_id=work_order_id, references=_kind(found, "prediction")
            ),
            context,
        )
        verdicts.append(verdict)
        if inference is not None:
            parts["inference"] = inference
            found |= set(inference.references)
            asset_id = asset_id or inference.asset_id

        registry, verdict = await self._ask(
            "registry",
            audit_pb2.GetTrailRequest(
                work_order_id=work_order_id, references=_kind(found, "model_version")
            ),
            context,
        )
        verdicts.append(verdict)
        if registry is not None:
            parts["registry"] = registry
            found |= set(registry.references)

        telemetry_request = audit_pb2.GetTrailRequest(
            work_order_id=work_order_id,
            references=_kind(found, "dataset_snapshot")
            + ([f"asset/{asset_id}"] if asset_id else []),
            asset_id=asset_id,
        )
        # The input window: from the prediction as inference audited it, else as the
        # scheduler recorded it; without either, the asset's batches up to the work order's
        # first step.
        windowed = next(
            (p for p in (inference, own) if p is not None and p.HasField("window_end")), None
        )
        if windowed is not None:
            telemetry_request.window_start.CopyFrom(windowed.window_start)
            telemetry_request.window_end.CopyFrom(windowed.window_end)
        else:
            telemetry_request.window_end.CopyFrom(own.steps[0].at)
        ingest, verdict = await self._ask("ingest", telemetry_request, context)
        verdicts.append(verdict)
        if ingest is not None:
            parts["ingest"] = ingest
            found |= set(ingest.references)

        return _joined(own, parts, verdicts, found, asset_id, windowed)


def _answered(part: audit_pb2.GetTrailResponse) -> audit_pb2.TrailPart:
    return audit_pb2.TrailPart(
        service=part.service, answered=True, chain=part.chain, steps=len(part.steps)
    )


def _fact(step: audit_pb2.TrailStep) -> tuple[str, ...] | None:
    """The fact a step records: its service, action, subject and the references it names.

    ``None`` when its details name no reference (``prediction_id``, ...) to tell it by.
    """
    details = json.loads(step.details_json or "{}")
    named = sorted(
        f"{kind}/{details[key]}"
        for key, kind in REFERENCE_KEYS.items()
        if isinstance(details.get(key), str) and details[key]
    )
    if not named:
        return None
    return (step.service, step.action, step.subject, *named)


def _once(steps: list[audit_pb2.TrailStep], own: str) -> list[audit_pb2.TrailStep]:
    """The steps in order, each fact of the other services once: the first entry of it.

    A service may record one fact twice: an inference replica that rebuilt its windows
    scores a window again and raises the same prediction's alert once more. The work
    order's own steps are one per event of its stream, so all of them are kept.
    """
    seen: set[tuple[str, ...]] = set()
    kept = []
    for step in steps:
        fact = None if step.service == own else _fact(step)
        if fact is not None:
            if fact in seen:
                continue
            seen.add(fact)
        kept.append(step)
    return kept


def _joined(
    own: audit_pb2.GetTrailResponse,
    parts: dict[str, audit_pb2.GetTrailResponse],
    verdicts: list[audit_pb2.TrailPart],
    references: set[str],
    asset_id: str,
    windowed: audit_pb2.GetTrailResponse | None,
) -> audit_pb2.GetTrailResponse:
    """One answer from the parts: every step once in time order, every person once."""
    steps = [step for part in parts.values() for step in part.steps]
    steps.sort(
        key=lambda s: (
            s.at.seconds,
            s.at.nanos,
            ORDER.index(s.service) if s.service in ORDER else len(ORDER),
            s.audit_seq,
        )
    )
    steps = _once(steps, own.service)
    people: dict[str, audit_pb2.Person] = {}
    for part in parts.values():
        for person in part.people:
            # Erased anywhere is erased: a name is never shown once a service let it go.
            if person.ref not in people or person.erased:
                people[person.ref] = person
    whole = audit_pb2.GetTrailResponse(
        service=own.service,
        steps=steps,
        references=sorted(references),
        asset_id=asset_id,
        chain=own.chain,
        people=[people[ref] for ref in sorted(people)],
        parts=verdicts,
    )
    if windowed is not None:
        whole.window_start.CopyFrom(windowed.window_start)
        whole.window_end.CopyFrom(windowed.window_end)
    return whole

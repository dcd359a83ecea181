"""The MaintenanceScheduler servicer: protobuf in, commands to handlers, protobuf out.

Every mutating RPC runs through ``_idempotent``: inside the transaction that makes the
change, the caller's idempotency key is looked up first; a known key with the same request
returns the stored response and changes nothing, a known key with another request is
INVALID_ARGUMENT, and a new key is stored with the response in the same transaction as the
change, so a retry can never make a second effect.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from google.protobuf.message import Message

from prognos.api.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from prognos.core.context import current_actor
from prognos.core.errors import InvalidArgumentError, NotFoundError
from prognos.scheduler import adapters, handlers
from prognos.scheduler.domain import WorkOrder
from prognos.scheduler.policy import PolicyInvalidError
from prognos.scheduler.translate import (
    STATE_NAMES,
    asset_from_proto,
    crew_from_proto,
    decision_to_proto,
    endpoint_from_proto,
    endpoint_to_proto,
    from_ts,
    outcome_from_proto,
    policy_from_proto,
    policy_to_proto,
    ts,
    work_order_to_proto,
)

if TYPE_CHECKING:
    import grpc

    from prognos.core.config import Settings
    from prognos.core.store import EventStore, UnitOfWork
    from prognos.scheduler.feed import ChangeNotifier
    from prognos.scheduler.scheduling import Clock, Planner
    from prognos.scheduler.webhooks import WebhookDeliverer

log = logging.getLogger(__name__)

SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["MaintenanceScheduler"].full_name
_DEFAULT_PAGE = 100
_MAX_PAGE = 1000
_FEED_BATCH = 500
_MAX_KEY = 200
#: The policy's own names and the names the contract (WorkOrderPolicy) gives them.
_POLICY_FIELDS = {
    "p_open": "open_probability",
    "p_close": "close_probability",
    "rul_open": "open_remaining_useful_life",
    "rul_close": "close_remaining_useful_life",
    "hours_per_rul_unit": "hours_per_cycle",
    "anomaly_open": "open_anomaly_score",
    "anomaly_close": "close_anomaly_score",
}
_POLICY_NAME = re.compile(r"\b(" + "|".join(_POLICY_FIELDS) + r")\b")


def _contract_words(text: str) -> str:
    """``text`` with the policy's own field names replaced by the contract's."""
    return _POLICY_NAME.sub(lambda m: _POLICY_FIELDS[m.group(1)], text)


R = TypeVar("R", bound=Message)


def _request_hash(method: str, request: Message) -> str:
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("idempotency_key")  # type: ignore[arg-type]
    digest = hashlib.sha256(method.encode() + b"\0")
    digest.update(copy.SerializeToString(deterministic=True))
    return digest.hexdigest()


def _page_token(*parts: object) -> str:
    return base64.urlsafe_b64encode("\x1f".join(str(p) for p in parts).encode()).decode()


def _read_token(token: str, n: int) -> list[str]:
    try:
        parts = base64.urlsafe_b64decode(token.encode()).decode().split("\x1f")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        parts = []
    if len(parts) != n:
        raise InvalidArgumentError([("page_token", "not a token this server issued")])
    return parts


def _page_size(requested: int) -> int:
    return min(requested or _DEFAULT_PAGE, _MAX_PAGE)


class SchedulerServicer(scheduler_pb2_grpc.MaintenanceSchedulerServicer):
    """The ERP's gRPC face of the scheduler."""

    def __init__(
        self,
        settings: Settings,
        store: EventStore,
        planner: Planner,
        notifier: ChangeNotifier,
        deliverer: WebhookDeliverer,
        policies: handlers.PolicyBook,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._store = store
        self._planner = planner
        self._notifier = notifier
        self._deliverer = deliverer
        self._policies = policies
        self._clock = clock

    # -- idempotency ----------------------------------------------------------------------

    async def _idempotent(
        self,
        method: str,
        request: Message,
        response_type: type[R],
        work: Callable[[UnitOfWork], Awaitable[R]],
    ) -> R:
        key: str = request.idempotency_key  # type: ignore[attr-defined]
        if not key:
            raise InvalidArgumentError(
                [("idempotency_key", "required: a key of your choice, the same on every retry")]
            )
        if len(key) > _MAX_KEY:
            raise InvalidArgumentError([("idempotency_key", f"at most {_MAX_KEY} characters")])
        actor = current_actor() or "anonymous"
        request_hash = _request_hash(method, request)
        async with self._store.transaction() as uow:
            seen = await adapters.find_idempotent(uow.conn, actor, key)
            if seen is not None:
                if seen.method != method or seen.request_hash != request_hash:
                    raise InvalidArgumentError(
                        [
                            (
                                "idempotency_key",
                                f"already used for another request ({seen.method})",
                            )
                        ],
                        reason="IDEMPOTENCY_KEY_REUSED",
                    )
                return response_type.FromString(seen.response)
            response = await work(uow)
            await adapters.remember_idempotent(
                uow.conn, actor, key, method, request_hash, response.SerializeToString()
            )
        return response

    # -- master data ----------------------------------------------------------------------

    async def UpsertAssets(
        self, request: scheduler_pb2.UpsertAssetsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.UpsertAssetsResponse:
        assets = [asset_from_proto(a) for a in request.assets]

        async def work(uow: UnitOfWork) -> scheduler_pb2.UpsertAssetsResponse:
            count = await handlers.upsert_assets(uow, assets, self._clock())
            return scheduler_pb2.UpsertAssetsResponse(upserted_count=count)

        response = await self._idempotent(
            "UpsertAssets", request, scheduler_pb2.UpsertAssetsResponse, work
        )
        self._planner.wake()
        return response

    async def UpsertCalendar(
        self, request: scheduler_pb2.UpsertCalendarRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.UpsertCalendarResponse:
        problems = [
            (name, "required")
            for name in ("range_start", "range_end")
            if not request.HasField(name)
        ]
        for n, w in enumerate(request.windows):
            problems += [
                (f"windows[{n}].{name}", "required")
                for name in ("start_time", "end_time")
                if not w.HasField(name)
            ]
        if problems:
            raise InvalidArgumentError(problems)
        windows = [(from_ts(w.start_time), from_ts(w.end_time), w.note) for w in request.windows]

        async def work(uow: UnitOfWork) -> scheduler_pb2.UpsertCalendarResponse:
            result = await handlers.upsert_calendar(
                uow,
                request.plant,
                from_ts(request.range_start),
                from_ts(request.range_end),
                windows,
                self._clock(),
            )
            return scheduler_pb2.UpsertCalendarResponse(window_count=len(result))

        response = await self._idempotent(
            "UpsertCalendar", request, scheduler_pb2.UpsertCalendarResponse, work
        )
        self._planner.wake()
        return response

    async def UpsertCrews(
        self, request: scheduler_pb2.UpsertCrewsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.UpsertCrewsResponse:
        crews = [crew_from_proto(c) for c in request.crews]

        async def work(uow: UnitOfWork) -> scheduler_pb2.UpsertCrewsResponse:
            count = await handlers.upsert_crews(uow, crews, self._clock())
            return scheduler_pb2.UpsertCrewsResponse(upserted_count=count)

        response = await self._idempotent(
            "UpsertCrews", request, scheduler_pb2.UpsertCrewsResponse, work
        )
        self._planner.wake()
        return response

    # -- policies and decisions -------------------------------------------------------------

    async def SetWorkOrderPolicy(
        self, request: scheduler_pb2.SetWorkOrderPolicyRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.SetWorkOrderPolicyResponse:
        try:
            policy = policy_from_proto(request.policy)
        except PolicyInvalidError as error:
            violation = (_contract_words(error.field), _contract_words(error.description))
            raise InvalidArgumentError([violation]) from None

        async def work(uow: UnitOfWork) -> scheduler_pb2.SetWorkOrderPolicyResponse:
            await handlers.set_policy(uow, request.asset_type, policy, self._clock())
            return scheduler_pb2.SetWorkOrderPolicyResponse(
                asset_type=request.asset_type, policy=policy_to_proto(policy)
            )

        response = await self._idempotent(
            "SetWorkOrderPolicy", request, scheduler_pb2.SetWorkOrderPolicyResponse, work
        )
        self._policies.forget(request.asset_type)
        return response

    async def GetWorkOrderPolicy(
        self, request: scheduler_pb2.GetWorkOrderPolicyRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.GetWorkOrderPolicyResponse:
        async with self._store.reader() as conn:
            policy, is_default = await handlers.policy_for(conn, request.asset_type)
        return scheduler_pb2.GetWorkOrderPolicyResponse(
            asset_type=request.asset_type, policy=policy_to_proto(policy), is_default=is_default
        )

    async def ListPolicyDecisions(
        self, request: scheduler_pb2.ListPolicyDecisionsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListPolicyDecisionsResponse:
        if not request.asset_id:
            raise InvalidArgumentError([("asset_id", "required")])
        before = int(_read_token(request.page_token, 1)[0]) if request.page_token else None
        size = _page_size(request.page_size)
        async with self._store.reader() as conn:
            rows = await adapters.decisions_of(conn, request.asset_id, before, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return scheduler_pb2.ListPolicyDecisionsResponse(
            decisions=[decision_to_proto(r) for r in rows],
            next_page_token=_page_token(rows[-1].seq) if more else "",
        )

    # -- webhooks -------------------------------------------------------------------------

    async def UpsertWebhookEndpoint(
        self,
        request: scheduler_pb2.UpsertWebhookEndpointRequest,
        context: grpc.aio.ServicerContext,
    ) -> scheduler_pb2.UpsertWebhookEndpointResponse:
        endpoint = endpoint_from_proto(request.endpoint)

        async def work(uow: UnitOfWork) -> scheduler_pb2.UpsertWebhookEndpointResponse:
            await handlers.upsert_endpoint(uow, endpoint, self._clock())
            return scheduler_pb2.UpsertWebhookEndpointResponse(
                endpoint=endpoint_to_proto(endpoint),
                secret_configured=self._deliverer.has_secret(endpoint.endpoint_id),
            )

        return await self._idempotent(
            "UpsertWebhookEndpoint", request, scheduler_pb2.UpsertWebhookEndpointResponse, work
        )

    # -- reading work orders ----------------------------------------------------------------

    async def GetWorkOrder(
        self, request: scheduler_pb2.GetWorkOrderRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.GetWorkOrderResponse:
        if not request.work_order_id:
            raise InvalidArgumentError([("work_order_id", "required")])
        async with self._store.reader() as conn:
            snapshot = await adapters.work_order_snapshot(conn, request.work_order_id)
        if snapshot is None:
            raise NotFoundError("work_order", request.work_order_id, reason="WORK_ORDER_NOT_FOUND")
        return scheduler_pb2.GetWorkOrderResponse(
            work_order=scheduler_pb2.WorkOrder.FromString(snapshot)
        )

    async def ListWorkOrders(
        self, request: scheduler_pb2.ListWorkOrdersRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListWorkOrdersResponse:
        states = []
        for n, value in enumerate(request.states):
            if value not in STATE_NAMES:
                raise InvalidArgumentError([(f"states[{n}]", f"unknown state {value}")])
            states.append(STATE_NAMES[value].value)
        before = None
        if request.page_token:
            created, wid = _read_token(request.page_token, 2)
            before = (int(created), wid)
        size = _page_size(request.page_size)
        async with self._store.reader() as conn:
            rows = await adapters.list_work_orders(
                conn,
                plant=request.plant,
                asset_id=request.asset_id,
                states=states,
                before=before,
                limit=size + 1,
            )
        more = len(rows) > size
        rows = rows[:size]
        return scheduler_pb2.ListWorkOrdersResponse(
            work_orders=[scheduler_pb2.WorkOrder.FromString(s) for _, _, s in rows],
            next_page_token=_page_token(rows[-1][0], rows[-1][1]) if more else "",
        )

    async def WatchWorkOrders(
        self, request: scheduler_pb2.WatchWorkOrdersRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[scheduler_pb2.WatchWorkOrdersResponse]:
        position = request.after_position
        poll_s = self._settings.watch_poll_s
        while not self._notifier.closed:
            waiter = self._notifier.waiter()  # before the read: see feed.ChangeNotifier
            async with self._store.reader() as conn:
                rows = await adapters.read_feed(conn, position, _FEED_BATCH, request.plant)
            for row in rows:
                yield scheduler_pb2.WatchWorkOrdersResponse(
                    position=row.position,
                    event_type=row.event_type,
                    work_order=scheduler_pb2.WorkOrder.FromString(row.snapshot),
                    time=ts(row.recorded_at),
                )
                position = row.position
            if len(rows) == _FEED_BATCH:
                continue
            try:
                # The wait is bounded so changes made by another replica show up even
                # when no NATS notice reaches this one.
                await asyncio.wait_for(waiter.wait(), poll_s)
            except TimeoutError:
                pass

    # -- the ERP's transitions --------------------------------------------------------------

    async def AcknowledgeWorkOrder(
        self,
        request: scheduler_pb2.AcknowledgeWorkOrderRequest,
        context: grpc.aio.ServicerContext,
    ) -> scheduler_pb2.AcknowledgeWorkOrderResponse:
        self._require_id(request.work_order_id)

        async def work(uow: UnitOfWork) -> scheduler_pb2.AcknowledgeWorkOrderResponse:
            order = await handlers.acknowledge(
                uow,
                request.work_order_id,
                request.erp_order_number,
                self._clock(),
                acknowledged_by=request.acknowledged_by,
            )
            return scheduler_pb2.AcknowledgeWorkOrderResponse(
                work_order=await self._proto(uow, order)
            )

        return await self._idempotent(
            "AcknowledgeWorkOrder", request, scheduler_pb2.AcknowledgeWorkOrderResponse, work
        )

    async def StartWorkOrder(
        self, request: scheduler_pb2.StartWorkOrderRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.StartWorkOrderResponse:
        self._require_id(request.work_order_id)
        started = from_ts(request.started_at) if request.HasField("started_at") else None

        async def work(uow: UnitOfWork) -> scheduler_pb2.StartWorkOrderResponse:
            order = await handlers.start(uow, request.work_order_id, started, self._clock())
            return scheduler_pb2.StartWorkOrderResponse(work_order=await self._proto(uow, order))

        return await self._idempotent(
            "StartWorkOrder", request, scheduler_pb2.StartWorkOrderResponse, work
        )

    async def CompleteWorkOrder(
        self, request: scheduler_pb2.CompleteWorkOrderRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.CompleteWorkOrderResponse:
        self._require_id(request.work_order_id)
        if not request.HasField("outcome"):
            raise InvalidArgumentError([("outcome", "required: what was found and done")])
        if request.outcome.failure_found and not request.outcome.failure_mode:
            raise InvalidArgumentError(
                [("outcome.failure_mode", "required when failure_found is true")]
            )
        for n, part in enumerate(request.outcome.parts):
            if not part.part_number:
                raise InvalidArgumentError([(f"outcome.parts[{n}].part_number", "required")])

        async def work(uow: UnitOfWork) -> scheduler_pb2.CompleteWorkOrderResponse:
            now = self._clock()
            outcome = outcome_from_proto(request.outcome, now)
            order = await handlers.complete(uow, request.work_order_id, outcome, now)
            return scheduler_pb2.CompleteWorkOrderResponse(work_order=await self._proto(uow, order))

        response = await self._idempotent(
            "CompleteWorkOrder", request, scheduler_pb2.CompleteWorkOrderResponse, work
        )
        self._planner.wake()
        return response

    async def CancelWorkOrder(
        self, request: scheduler_pb2.CancelWorkOrderRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.CancelWorkOrderResponse:
        self._require_id(request.work_order_id)

        async def work(uow: UnitOfWork) -> scheduler_pb2.CancelWorkOrderResponse:
            order = await handlers.cancel(uow, request.work_order_id, request.reason, self._clock())
            return scheduler_pb2.CancelWorkOrderResponse(work_order=await self._proto(uow, order))

        response = await self._idempotent(
            "CancelWorkOrder", request, scheduler_pb2.CancelWorkOrderResponse, work
        )
        self._planner.wake()
        return response

    @staticmethod
    def _require_id(work_order_id: str) -> None:
        if not work_order_id:
            raise InvalidArgumentError([("work_order_id", "required")])

    @staticmethod
    async def _proto(uow: UnitOfWork, order: WorkOrder) -> scheduler_pb2.WorkOrder:
        asset = await adapters.get_asset(uow.conn, order.asset_id)
        return work_order_to_proto(order, asset.erp_id if asset else "")

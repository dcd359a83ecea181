"""The scheduler service's composition root."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from prognos.core.errors import FailedPreconditionError, InvalidArgumentError
from prognos.scheduler import adapters, consumers, handlers
from prognos.scheduler.domain import InvalidTransitionError, MasterDataInvalidError
from prognos.scheduler.feed import ChangeNotifier
from prognos.scheduler.grpc_api import SERVICE_NAME, SchedulerServicer
from prognos.scheduler.planning import PlanningInputError
from prognos.scheduler.scheduling import Clock, Planner, utc_now
from prognos.scheduler.trail import TrailGatherer
from prognos.scheduler.webhooks import WebhookDeliverer

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from prognos.core.service import Runtime
    from prognos.core.store import EventStore

from prognos.api import wire
from prognos.api.scheduler.v1 import events_pb2, scheduler_pb2_grpc

log = logging.getLogger(__name__)

STREAM = wire.stream_of(events_pb2.WorkOrderProposed)

#: The service's own tables, for Alembic.
metadata = adapters.metadata

TRANSLATORS = {
    MasterDataInvalidError: lambda e: InvalidArgumentError(e.violations, reason="INVALID_ARGUMENT"),
    PlanningInputError: lambda e: InvalidArgumentError([(e.field, e.description)]),
    InvalidTransitionError: lambda e: FailedPreconditionError(
        [("STATE", f"work_order/{e.work_order_id}", str(e))],
        str(e),
        reason="INVALID_TRANSITION",
        metadata={"state": e.state.value, "action": e.action},
    ),
}


async def housekeeping(store: EventStore, interval_s: float, retention: timedelta) -> None:
    """Seal new policy decisions into the audit log, and forget old idempotency keys."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            async with store.transaction() as uow:
                await handlers.audit_decisions(uow)
                await adapters.forget_idempotent_before(uow.conn, utc_now() - retention)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("sealing the policy decisions failed", exc_info=True)


async def build(runtime: Runtime, *, clock: Clock = utc_now) -> None:
    settings, store = runtime.settings, runtime.store
    planner = Planner(store, settings, clock=clock)
    notifier = ChangeNotifier()
    store.on_commit.append(notifier.notify)
    deliverer = WebhookDeliverer(store, settings)

    async def on_remote_change(msg: Msg) -> None:
        # Another replica committed a work order change: wake watchers and the deliverer.
        notifier.notify()
        deliverer.notify()

    remote = await runtime.nc.subscribe(wire.wildcard(*wire.WORK_ORDER_EVENTS), cb=on_remote_change)

    async def stop_background() -> None:
        notifier.close()
        planner.stop()
        deliverer.stop()
        await remote.unsubscribe()
        # Whatever was decided but not yet sealed is sealed now.
        async with store.transaction() as uow:
            await handlers.audit_decisions(uow)

    runtime.server.on_shutdown(stop_background)
    if runtime.audit is not None:
        # The scheduler owns work orders, so it answers for their whole trails.
        gatherer = TrailGatherer(settings)
        runtime.audit.gatherer = gatherer
        runtime.server.on_closed(gatherer.close)
    runtime.background.append(planner.run)
    runtime.background.append(deliverer.run)
    runtime.background.append(
        lambda: housekeeping(
            store,
            settings.decision_audit_interval_s,
            timedelta(hours=settings.idempotency_retention_h),
        )
    )
    policies = handlers.PolicyBook()
    for sub in consumers.subscriptions(clock, policies):
        runtime.subscribe(sub)
    runtime.server.add_service(
        scheduler_pb2_grpc.add_MaintenanceSchedulerServicer_to_server,
        SchedulerServicer(settings, store, planner, notifier, deliverer, policies, clock),
        SERVICE_NAME,
    )

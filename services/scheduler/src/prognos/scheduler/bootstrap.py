"""The scheduler service's composition root."""

from __future__ import annotations

from prognos.api.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from prognos.core.service import Runtime
from prognos.core.store import new_metadata

STREAM = "SCHEDULER"

#: The service's own read models (none yet beyond the core tables).
metadata = new_metadata()


async def build(runtime: Runtime) -> None:
    # Every RPC answers UNIMPLEMENTED until its handler is written; health, reflection,
    # InfoService, the outbox relay and the audit chain are live.
    runtime.server.add_service(
        scheduler_pb2_grpc.add_MaintenanceSchedulerServicer_to_server,
        scheduler_pb2_grpc.MaintenanceSchedulerServicer(),
        scheduler_pb2.DESCRIPTOR.services_by_name["MaintenanceScheduler"].full_name,
    )

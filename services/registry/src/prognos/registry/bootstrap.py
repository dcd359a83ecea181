"""The registry service's composition root."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prognos.api import wire
from prognos.api.registry.v1 import events_pb2 as _registry_events
from prognos.api.registry.v1 import registry_pb2, registry_pb2_grpc
from prognos.core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    PrognosError,
)
from prognos.core.service import Runtime
from prognos.registry.artifacts import (
    ArtifactMismatchError,
    ArtifactNotFoundError,
    LocalArtifactStore,
)
from prognos.registry.consumers import subscriptions
from prognos.registry.domain import (
    InvalidCommandError,
    NotApprovedError,
    NothingToRollBackError,
    SelfApprovalError,
    WrongStateError,
)
from prognos.registry.grpc_api import RegistryServicer
from prognos.registry.runner import ModelTasks, RunChanges, TrainingRunner
from prognos.registry.schedule import RetrainSchedule

STREAM = wire.stream_of(_registry_events.AliasMoved)


def _precondition(kind: str) -> Any:
    def translate(error: Any) -> PrognosError:
        return FailedPreconditionError(
            [(kind, error.subject or "", str(error))], str(error), reason=error.reason
        )

    return translate


#: Domain errors and the status each becomes at the gRPC edge.
TRANSLATORS: dict[type[Exception], Any] = {
    SelfApprovalError: lambda e: PermissionDeniedError(str(e), reason=e.reason),
    NotApprovedError: _precondition("APPROVAL"),
    WrongStateError: _precondition("STATE"),
    NothingToRollBackError: _precondition("ALIAS_HISTORY"),
    InvalidCommandError: lambda e: InvalidArgumentError([(e.field, e.description)]),
    ArtifactNotFoundError: lambda e: NotFoundError("artifact", e.content_hash),
    ArtifactMismatchError: lambda e: InvalidArgumentError([("artifact", str(e))]),
}


async def build(runtime: Runtime) -> None:
    settings = runtime.settings
    artifacts = LocalArtifactStore(settings.effective_artifact_dir)
    changes = RunChanges()
    runner = TrainingRunner(runtime.store, artifacts, settings, changes)
    # Every commit that queued events may have queued a run or changed one.
    runtime.store.on_commit.extend([runner.wake, changes.notify])
    schedule = RetrainSchedule(
        runtime.store, timedelta(seconds=settings.retrain_period_s), runner.wake
    )
    runtime.server.add_service(
        registry_pb2_grpc.add_ModelRegistryServicer_to_server,
        RegistryServicer(
            runtime.store, artifacts, runner, ModelTasks(artifacts, runner, settings), changes
        ),
        registry_pb2.DESCRIPTOR.services_by_name["ModelRegistry"].full_name,
    )
    for sub in subscriptions(settings):
        runtime.subscribe(sub)
    runtime.background.extend([runner.run, schedule.run])

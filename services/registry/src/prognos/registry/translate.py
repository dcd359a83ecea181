"""Between the registry's domain values and the protobuf messages of its API and events."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from prognos.api.registry.v1 import events_pb2, registry_pb2
from prognos.registry.domain import (
    Alias,
    AliasChangeKind,
    AliasMoved,
    Artifact,
    Lineage,
    ModelVersion,
    PromotionPolicy,
    RunState,
    TrainingRun,
    TrainingSource,
    Trigger,
    VersionStatus,
)

ALIAS_TO_PROTO = {
    Alias.CHAMPION: registry_pb2.MODEL_ALIAS_CHAMPION,
    Alias.CHALLENGER: registry_pb2.MODEL_ALIAS_CHALLENGER,
}
ALIAS_FROM_PROTO = {v: k for k, v in ALIAS_TO_PROTO.items()}
STATUS_TO_PROTO = {
    VersionStatus.CANDIDATE: registry_pb2.MODEL_VERSION_STATUS_CANDIDATE,
    VersionStatus.APPROVED: registry_pb2.MODEL_VERSION_STATUS_APPROVED,
}
STATUS_FROM_PROTO = {v: k for k, v in STATUS_TO_PROTO.items()}
KIND_TO_PROTO = {
    AliasChangeKind.PROMOTED: registry_pb2.ALIAS_CHANGE_KIND_PROMOTED,
    AliasChangeKind.ROLLED_BACK: registry_pb2.ALIAS_CHANGE_KIND_ROLLED_BACK,
}
STATE_TO_PROTO = {
    RunState.QUEUED: registry_pb2.TRAINING_RUN_STATE_QUEUED,
    RunState.RUNNING: registry_pb2.TRAINING_RUN_STATE_RUNNING,
    RunState.SUCCEEDED: registry_pb2.TRAINING_RUN_STATE_SUCCEEDED,
    RunState.FAILED: registry_pb2.TRAINING_RUN_STATE_FAILED,
    RunState.CANCELLED: registry_pb2.TRAINING_RUN_STATE_CANCELLED,
}
STATE_FROM_PROTO = {v: k for k, v in STATE_TO_PROTO.items()}
TRIGGER_TO_PROTO = {
    Trigger.MANUAL: registry_pb2.TRAINING_TRIGGER_MANUAL,
    Trigger.SCHEDULE: registry_pb2.TRAINING_TRIGGER_SCHEDULE,
    Trigger.DRIFT: registry_pb2.TRAINING_TRIGGER_DRIFT,
}


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    return stamp


def source_text(source: TrainingSource) -> str:
    """``"<name> <uri>"`` of a file source; "" for a snapshot."""
    return f"{source.source_name} {source.source_uri}".strip()


def from_timestamp(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def artifact_to_proto(artifact: Artifact) -> registry_pb2.ModelArtifact:
    return registry_pb2.ModelArtifact(
        name=artifact.name,
        uri=artifact.uri,
        content_hash=artifact.content_hash,
        size_bytes=artifact.size_bytes,
    )


def artifact_from_proto(message: registry_pb2.ModelArtifact) -> Artifact:
    return Artifact(message.name, message.uri, message.content_hash, message.size_bytes)


def lineage_to_proto(lineage: Lineage) -> registry_pb2.Lineage:
    return registry_pb2.Lineage(
        dataset_snapshot_id=lineage.dataset_snapshot_id,
        dataset_content_hash=lineage.dataset_content_hash,
        label_set=lineage.label_set,
        code_version=lineage.code_version,
        hyperparameters=lineage.hyperparameters,
        training_run_id=lineage.training_run_id,
        source_uri=lineage.source_uri,
        training_metrics=lineage.training_metrics,
    )


def lineage_from_proto(message: registry_pb2.Lineage) -> Lineage:
    return Lineage(
        dataset_snapshot_id=message.dataset_snapshot_id,
        dataset_content_hash=message.dataset_content_hash,
        source_uri=message.source_uri,
        label_set=message.label_set,
        code_version=message.code_version,
        hyperparameters=dict(message.hyperparameters),
        training_run_id=message.training_run_id,
        training_metrics=dict(message.training_metrics),
    )


def model_version_to_proto(
    version: ModelVersion, aliases: list[str] | None = None
) -> registry_pb2.ModelVersion:
    return registry_pb2.ModelVersion(
        id=version.id,
        asset_type=version.asset_type,
        status=STATUS_TO_PROTO[version.status],
        metrics=version.metrics,
        lineage=lineage_to_proto(version.lineage),
        trained_by=version.trained_by,
        created_at=timestamp(version.registered_at),
        artifacts=[artifact_to_proto(a) for a in version.artifacts],
        aliases=[ALIAS_TO_PROTO[Alias(a)] for a in aliases or []],
        approved_by=version.approved_by,
        approved_at=timestamp(version.approved_at),
        description=version.description,
        compared_with_model_version_id=version.compared_with_model_version_id,
        champion_metrics=version.champion_metrics,
    )


def alias_change_to_proto(move: AliasMoved) -> registry_pb2.AliasChange:
    return registry_pb2.AliasChange(
        asset_type=move.asset_type,
        alias=ALIAS_TO_PROTO[move.alias],
        from_model_version_id=move.from_model_version_id,
        to_model_version_id=move.to_model_version_id,
        actor=move.actor,
        reason=move.reason,
        kind=KIND_TO_PROTO[move.kind],
        time=timestamp(move.moved_at),
    )


def alias_moved_event(move: AliasMoved, target: ModelVersion) -> events_pb2.AliasMoved:
    """The integration event, with what an inference replica needs to load the target."""
    return events_pb2.AliasMoved(
        alias=ALIAS_TO_PROTO[move.alias],
        asset_type=move.asset_type,
        from_model_version_id=move.from_model_version_id,
        to_model_version_id=move.to_model_version_id,
        actor=move.actor,
        reason=move.reason,
        kind=KIND_TO_PROTO[move.kind],
        artifacts=[artifact_to_proto(a) for a in target.artifacts],
        time=timestamp(move.moved_at),
        metrics=target.metrics,
    )


def policy_to_proto(policy: PromotionPolicy) -> registry_pb2.PromotionPolicy:
    return registry_pb2.PromotionPolicy(
        auto_promote=policy.auto_promote,
        metric=policy.metric,
        margin=policy.margin,
        manual_challenger=policy.manual_challenger,
        set_by=policy.set_by,
        set_at=timestamp(policy.set_at),
        reason=policy.reason,
    )


def training_run_to_proto(run: TrainingRun) -> registry_pb2.TrainingRun:
    return registry_pb2.TrainingRun(
        id=run.id,
        asset_type=run.asset_type,
        state=STATE_TO_PROTO[run.state],
        dataset_snapshot_id=run.source.dataset_snapshot_id,
        hyperparameters=run.hyperparameters,
        trigger=TRIGGER_TO_PROTO[run.trigger],
        requested_by=run.requested_by,
        created_at=timestamp(run.queued_at),
        started_at=timestamp(run.started_at),
        finished_at=timestamp(run.finished_at),
        progress=run.progress,
        epoch=run.epoch,
        total_epochs=run.total_epochs,
        metrics=run.metrics,
        model_version_id=run.model_version_id,
        error_message=run.error,
        reason=run.reason,
        dataset_content_hash=run.source.dataset_content_hash,
        source_uri=source_text(run.source),
        phase=run.phase,
    )

"""Command handlers of the registry: one async function per command, inside a unit of work.

Each handler loads the aggregates it needs from the event store, lets them decide, appends
their events, updates the read models, queues the integration events and writes the audit
entries, all in the caller's transaction.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from prognos.api.ingest.v1 import ingest_pb2
from prognos.api.registry.v1 import events_pb2
from prognos.core.errors import (
    ConcurrencyError,
    FailedPreconditionError,
    NotFoundError,
    quote,
    shorten,
)
from prognos.core.store import utcnow
from prognos.registry import adapters
from prognos.registry.domain import (
    SYSTEM_ACTOR,
    Alias,
    AliasMoved,
    AliasTrack,
    Artifact,
    InvalidCommandError,
    Lineage,
    ModelVersion,
    ModelVersionRegistered,
    PromotionPolicy,
    RunState,
    TrainingRun,
    TrainingRunQueued,
    TrainingSource,
    Trigger,
)
from prognos.registry.translate import (
    STATE_TO_PROTO,
    alias_moved_event,
    model_version_to_proto,
    timestamp,
    training_run_to_proto,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from prognos.core.store import StoredEvent, UnitOfWork

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_PARAMETER = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def model_version_stream(model_version_id: str) -> str:
    return f"model_version-{model_version_id}"


def alias_stream(asset_type: str, alias: Alias) -> str:
    return f"alias-{asset_type}-{alias}"


def policy_stream(asset_type: str) -> str:
    return f"promotion_policy-{asset_type}"


def training_run_stream(run_id: str) -> str:
    return f"training_run-{run_id}"


def check_asset_type_name(name: str, field_name: str = "asset_type") -> None:
    if not _NAME.match(name):
        raise InvalidCommandError(field_name, "letters, digits, '-' and '_' (at most 128)")


#: The longest model version id (an asset type's name, "-v" and a number).
MAX_VERSION_ID = 200
_REFERENCE_HELP = "a model version id, champion, challenger, or <asset type>@<alias>"


@dataclass(frozen=True)
class VersionReference:
    """What a request's version field names: a version id, or an alias of an asset type.

    ``version_id`` is set for a plain id; otherwise ``alias`` is, with ``asset_type`` empty
    for a bare alias (``champion``).
    """

    version_id: str = ""
    asset_type: str = ""
    alias: Alias | None = None


def parse_version_reference(
    reference: str, field_name: str = "model_version_id"
) -> VersionReference:
    """Read a version reference: ``turbofan-v3``, ``turbofan@champion`` or ``champion``.

    Raises:
        InvalidCommandError: the reference is empty, too long, or names an unknown alias.
    """
    if not reference:
        raise InvalidCommandError(field_name, f"required: {_REFERENCE_HELP}")
    if len(reference) > MAX_VERSION_ID or not reference.isprintable():
        raise InvalidCommandError(
            field_name,
            f"at most {MAX_VERSION_ID} printable characters ({_REFERENCE_HELP}), "
            f"got {quote(reference)}",
        )
    asset_type, at, alias_name = reference.rpartition("@")
    if not at:
        if reference in set(Alias):
            return VersionReference(alias=Alias(reference))
        return VersionReference(version_id=reference)
    if alias_name not in set(Alias):
        raise InvalidCommandError(
            field_name,
            f"{quote(alias_name)} is not an alias: use {' or '.join(Alias)} after the '@'",
        )
    check_asset_type_name(asset_type, field_name)
    return VersionReference(asset_type=asset_type, alias=Alias(alias_name))


async def resolve_version(
    conn: AsyncConnection, reference: str, field_name: str = "model_version_id"
) -> str:
    """The model version id that ``reference`` names, wherever an RPC takes a version.

    A reference is a model version id (``turbofan-v3``), an alias of an asset type
    (``turbofan@champion``), or a bare alias (``champion``, ``challenger``) when exactly one
    asset type has that alias held.

    Raises:
        InvalidCommandError: the reference is malformed (see ``parse_version_reference``).
        NotFoundError: no version holds the alias named.
        FailedPreconditionError: a bare alias is held in more than one asset type.
    """
    parsed = parse_version_reference(reference, field_name)
    if parsed.alias is None:
        return parsed.version_id
    alias = parsed.alias
    if parsed.asset_type:
        holders = await adapters.alias_holders_of(conn, parsed.asset_type)
        holder = holders.get(str(alias))
        if holder is None:
            raise NotFoundError(
                "model_alias",
                reference,
                f"{field_name}: no model version of {parsed.asset_type} is {alias}",
                reason="ALIAS_NOT_HELD",
            )
        return holder
    by_type = await adapters.holders_of_alias(conn, str(alias))
    if not by_type:
        raise NotFoundError(
            "model_alias",
            reference,
            f"{field_name}: no asset type has a {alias}",
            reason="ALIAS_NOT_HELD",
        )
    if len(by_type) > 1:
        types = ", ".join(by_type)
        hint = f"name one, as {next(iter(by_type))}@{alias}"
        raise FailedPreconditionError(
            [("ALIAS_AMBIGUOUS", field_name, f"asset types {types} each have a {alias}: {hint}")],
            f"{field_name}: {alias} is held in asset types {types}; {hint}",
            reason="ALIAS_AMBIGUOUS",
            metadata={"alias": str(alias), "asset_types": types},
        )
    (holder,) = by_type.values()
    return holder


# --- loading -------------------------------------------------------------------------------


async def load_model_version(uow: UnitOfWork, model_version_id: str) -> ModelVersion:
    stored = await uow.load(model_version_stream(model_version_id))
    if not stored:
        raise NotFoundError("model_version", model_version_id)
    return ModelVersion.replay([e.event for e in stored])


async def load_alias(uow: UnitOfWork, asset_type: str, alias: Alias) -> AliasTrack:
    stored = await uow.load(alias_stream(asset_type, alias))
    return AliasTrack.replay(asset_type, alias, [e.event for e in stored])


async def load_policy(uow: UnitOfWork, asset_type: str) -> PromotionPolicy:
    stored = await uow.load(policy_stream(asset_type))
    return PromotionPolicy.replay(asset_type, [e.event for e in stored])


async def load_training_run(uow: UnitOfWork, run_id: str) -> TrainingRun:
    stored = await uow.load(training_run_stream(run_id))
    if not stored:
        raise NotFoundError("training_run", run_id)
    return TrainingRun.replay([e.event for e in stored])


# --- saving --------------------------------------------------------------------------------


async def _append(
    uow: UnitOfWork,
    stream: str,
    aggregate: ModelVersion | AliasTrack | PromotionPolicy | TrainingRun,
) -> list[StoredEvent]:
    expected = aggregate.version - len(aggregate.pending)
    stored = await uow.append(stream, expected, aggregate.pending)
    aggregate.pending.clear()
    return stored


async def _save_model_version(
    uow: UnitOfWork, version: ModelVersion, *, idempotency_key: str = ""
) -> list[StoredEvent]:
    stored = await _append(uow, model_version_stream(version.id), version)
    assert version.registered_at is not None
    await adapters.put_model_version(
        uow.conn,
        model_version_id=version.id,
        asset_type=version.asset_type,
        number=version.number,
        status=str(version.status),
        created_at=version.registered_at,
        stream_version=version.version,
        data=model_version_to_proto(version).SerializeToString(deterministic=True),
        idempotency_key=idempotency_key,
    )
    return stored


async def _save_run(
    uow: UnitOfWork, run: TrainingRun, *, idempotency_key: str = ""
) -> list[StoredEvent]:
    stored = await _append(uow, training_run_stream(run.id), run)
    assert run.queued_at is not None
    await adapters.put_training_run(
        uow.conn,
        run_id=run.id,
        asset_type=run.asset_type,
        state=str(run.state),
        trigger=str(run.trigger),
        dataset_content_hash=run.source.dataset_content_hash,
        created_at=run.queued_at,
        owner=run.owner,
        stream_version=run.version,
        data=training_run_to_proto(run).SerializeToString(deterministic=True),
        idempotency_key=idempotency_key,
    )
    return stored


async def _save_alias_move(
    uow: UnitOfWork, track: AliasTrack, move: AliasMoved, target: ModelVersion
) -> None:
    stored = await _append(uow, alias_stream(track.asset_type, track.alias), track)
    await adapters.set_alias_holder(
        uow.conn, track.asset_type, str(track.alias), move.to_model_version_id, move.moved_at
    )
    uow.publish(alias_moved_event(move, target), cause=stored[-1])
    await uow.audit(
        f"alias.{move.kind}",
        f"alias/{track.asset_type}/{track.alias}",
        reason=move.reason,
        actor=move.actor,
        details={
            "asset_type": track.asset_type,
            "alias": str(track.alias),
            "from": move.from_model_version_id,
            "to": move.to_model_version_id,
            "to_status": str(target.status),
            "to_approved_by": target.approved_by,
            "to_trained_by": target.trained_by,
            "event_id": stored[-1].event_id,
        },
    )


# --- model versions ------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisterModelVersion:
    """Record a trained model as a candidate.

    ``evaluated_here`` marks a version trained and evaluated by the registry itself, whose
    ``champion_metrics`` (the champion on the same held-out data) may promote it under the
    asset type's policy; numbers sent by an outside registrant never do.
    """

    asset_type: str
    metrics: dict[str, float]
    lineage: Lineage
    artifacts: tuple[Artifact, ...]
    trained_by: str
    description: str = ""
    idempotency_key: str = ""
    compared_with_model_version_id: str = ""
    champion_metrics: dict[str, float] = field(default_factory=dict)
    evaluated_here: bool = False


async def register_model_version(uow: UnitOfWork, command: RegisterModelVersion) -> ModelVersion:
    """Register a candidate, make it challenger and maybe champion as the policy says."""
    check_asset_type_name(command.asset_type)
    if command.idempotency_key:
        existing = await adapters.model_version_by_key(uow.conn, command.idempotency_key)
        if existing is not None:
            return await load_model_version(uow, existing)
    number = await adapters.next_version_number(uow.conn, command.asset_type)
    version_id = f"{command.asset_type}-v{number}"
    now = utcnow()
    version = ModelVersion.register(
        ModelVersionRegistered(
            model_version_id=version_id,
            asset_type=command.asset_type,
            number=number,
            metrics=dict(command.metrics),
            lineage=command.lineage,
            artifacts=tuple(command.artifacts),
            trained_by=command.trained_by,
            description=command.description,
            registered_at=now,
            compared_with_model_version_id=command.compared_with_model_version_id,
            champion_metrics=dict(command.champion_metrics),
        )
    )
    stored = await _save_model_version(uow, version, idempotency_key=command.idempotency_key)
    uow.publish(
        events_pb2.ModelVersionRegistered(model_version=model_version_to_proto(version)),
        cause=stored[-1],
    )
    lineage = command.lineage
    await uow.audit(
        "model_version.registered",
        f"model_version/{version_id}",
        reason=command.description or "model version registered",
        actor=command.trained_by,
        details={
            "asset_type": command.asset_type,
            "metrics": dict(command.metrics),
            "dataset_snapshot_id": lineage.dataset_snapshot_id,
            "dataset_content_hash": lineage.dataset_content_hash,
            "source_uri": lineage.source_uri,
            "label_set": lineage.label_set,
            "code_version": lineage.code_version,
            "training_run_id": lineage.training_run_id,
            "hyperparameters": dict(lineage.hyperparameters),
            "artifacts": {a.name: a.content_hash for a in command.artifacts},
            "event_id": stored[-1].event_id,
        },
    )
    await _apply_policy(uow, version, command, now)
    return version


async def _apply_policy(
    uow: UnitOfWork, version: ModelVersion, command: RegisterModelVersion, now: datetime
) -> None:
    policy = await load_policy(uow, version.asset_type)
    if not policy.manual_challenger:
        track = await load_alias(uow, version.asset_type, Alias.CHALLENGER)
        move = track.promote(version.id, SYSTEM_ACTOR, "new candidate shadows the champion", now)
        await _save_alias_move(uow, track, move, version)
    if not (policy.auto_promote and command.evaluated_here):
        return
    champion = await load_alias(uow, version.asset_type, Alias.CHAMPION)
    if not champion.holder:
        decision, promote = "there is no champion to beat: the first needs an approval", False
    elif champion.holder != command.compared_with_model_version_id:
        decision, promote = (
            f"the champion changed to {champion.holder} after the evaluation, which compared "
            f"with {command.compared_with_model_version_id or 'none'}",
            False,
        )
    else:
        promote, decision = policy.beats(command.metrics, command.champion_metrics)
    if promote:
        move = champion.promote(version.id, SYSTEM_ACTOR, f"automatic promotion: {decision}", now)
        await _save_alias_move(uow, champion, move, version)
    else:
        await uow.audit(
            "alias.automatic_promotion_declined",
            f"model_version/{version.id}",
            reason=decision,
            actor=SYSTEM_ACTOR,
            details={"policy_metric": policy.metric, "policy_margin": policy.margin},
        )


async def approve_model_version(
    uow: UnitOfWork, model_version_id: str, approver: str, comment: str, expected_version: int
) -> ModelVersion:
    """Approve a candidate; the approver may not be who trained it."""
    version = await load_model_version(uow, model_version_id)
    if expected_version and version.version != expected_version:
        raise ConcurrencyError(
            model_version_stream(model_version_id), expected_version, version.version
        )
    version.approve(approver, comment, utcnow())
    stored = await _save_model_version(uow, version)
    uow.publish(
        events_pb2.ModelVersionApproved(
            model_version_id=version.id,
            asset_type=version.asset_type,
            approved_by=approver,
            comment=comment,
        ),
        cause=stored[-1],
    )
    await uow.audit(
        "model_version.approved",
        f"model_version/{version.id}",
        reason=comment or "approved",
        actor=approver,
        details={
            "asset_type": version.asset_type,
            "trained_by": version.trained_by,
            "metrics": version.metrics,
            "event_id": stored[-1].event_id,
        },
    )
    return version


async def promote_model_version(
    uow: UnitOfWork, model_version_id: str, alias: Alias, actor: str, reason: str
) -> AliasMoved:
    """Move an alias to a version; champion needs an approved version."""
    version = await load_model_version(uow, model_version_id)
    if alias is Alias.CHAMPION:
        version.check_may_become_champion()
    track = await load_alias(uow, version.asset_type, alias)
    move = track.promote(version.id, actor, reason, utcnow())
    await _save_alias_move(uow, track, move, version)
    return move


async def rollback_alias(
    uow: UnitOfWork, asset_type: str, alias: Alias, to: str, actor: str, reason: str
) -> AliasMoved:
    """Move an alias back to its previous holder (or to an earlier one named by ``to``)."""
    check_asset_type_name(asset_type)
    track = await load_alias(uow, asset_type, alias)
    move = track.rollback(to, actor, reason, utcnow())
    target = await load_model_version(uow, move.to_model_version_id)
    await _save_alias_move(uow, track, move, target)
    return move


async def set_promotion_policy(
    uow: UnitOfWork,
    asset_type: str,
    *,
    auto_promote: bool,
    metric: str,
    margin: float,
    manual_challenger: bool,
    actor: str,
    reason: str,
) -> PromotionPolicy:
    check_asset_type_name(asset_type)
    policy = await load_policy(uow, asset_type)
    policy.set(
        auto_promote=auto_promote,
        metric=metric,
        margin=margin,
        manual_challenger=manual_challenger,
        actor=actor,
        reason=reason,
        at=utcnow(),
    )
    stored = await _append(uow, policy_stream(asset_type), policy)
    await uow.audit(
        "promotion_policy.set",
        f"promotion_policy/{asset_type}",
        reason=reason or "promotion policy set",
        actor=actor,
        details={
            "auto_promote": policy.auto_promote,
            "metric": policy.metric,
            "margin": policy.margin,
            "manual_challenger": policy.manual_challenger,
            "event_id": stored[-1].event_id,
        },
    )
    return policy


# --- training runs -------------------------------------------------------------------------


@dataclass(frozen=True)
class StartTraining:
    asset_type: str
    source: TrainingSource
    hyperparameters: dict[str, str]
    trigger: Trigger
    requested_by: str
    reason: str = ""
    idempotency_key: str = ""


async def start_training(uow: UnitOfWork, command: StartTraining) -> TrainingRun:
    """Queue a training run; a worker picks it up."""
    check_asset_type_name(command.asset_type)
    for key in command.hyperparameters:
        if not _PARAMETER.match(key):
            raise InvalidCommandError(
                f"hyperparameters[{shorten(key)}]", "lower_snake_case names only"
            )
    if command.idempotency_key:
        existing = await adapters.training_run_by_key(uow.conn, command.idempotency_key)
        if existing is not None:
            return await load_training_run(uow, existing)
    run = TrainingRun.queue(
        TrainingRunQueued(
            run_id=f"run-{uuid.uuid4().hex[:12]}",
            asset_type=command.asset_type,
            source=command.source,
            hyperparameters=dict(command.hyperparameters),
            trigger=command.trigger,
            requested_by=command.requested_by,
            reason=command.reason,
            queued_at=utcnow(),
        )
    )
    stored = await _save_run(uow, run, idempotency_key=command.idempotency_key)
    uow.publish(
        events_pb2.TrainingRunStarted(run=training_run_to_proto(run)),
        cause=stored[-1],
    )
    await uow.audit(
        "training_run.queued",
        f"training_run/{run.id}",
        reason=command.reason or f"{command.trigger} training run",
        actor=command.requested_by,
        details={
            "asset_type": run.asset_type,
            "trigger": str(run.trigger),
            "dataset_snapshot_id": run.source.dataset_snapshot_id,
            "dataset_content_hash": run.source.dataset_content_hash,
            "source": f"{run.source.source_name} {run.source.source_uri}".strip(),
            "hyperparameters": dict(run.hyperparameters),
        },
    )
    return run


async def claim_training_run(uow: UnitOfWork, run_id: str, owner: str) -> TrainingRun | None:
    """Mark a queued run as started by ``owner``; ``None`` if it is no longer queued."""
    run = await load_training_run(uow, run_id)
    if run.state is not RunState.QUEUED:
        return None
    run.start(utcnow(), owner)
    await _save_run(uow, run)
    await uow.audit(
        "training_run.started",
        f"training_run/{run.id}",
        reason="a worker took the run",
        details={"owner": owner, "asset_type": run.asset_type},
    )
    return run


async def report_training_progress(
    uow: UnitOfWork,
    run_id: str,
    *,
    phase: str,
    progress: float,
    epoch: int,
    total_epochs: int,
    metrics: dict[str, float],
) -> TrainingRun:
    """Record a worker's progress; a run that is no longer running is returned unchanged."""
    run = await load_training_run(uow, run_id)
    if run.state is not RunState.RUNNING:
        return run
    run.report(phase, progress, epoch, total_epochs, metrics)
    stored = await _save_run(uow, run)
    uow.publish(
        events_pb2.TrainingRunProgressed(
            run_id=run.id,
            asset_type=run.asset_type,
            epoch=run.epoch,
            total_epochs=run.total_epochs,
            progress=run.progress,
            metrics=run.metrics,
        ),
        cause=stored[-1],
    )
    return run


def _finished_event(run: TrainingRun) -> events_pb2.TrainingRunFinished:
    return events_pb2.TrainingRunFinished(
        run_id=run.id,
        asset_type=run.asset_type,
        state=STATE_TO_PROTO[run.state],
        model_version_id=run.model_version_id,
        error_message=run.error,
        metrics=run.metrics,
        finished_at=timestamp(run.finished_at),
    )


async def succeed_training_run(
    uow: UnitOfWork, run_id: str, registration: RegisterModelVersion, retrain_at: datetime | None
) -> tuple[TrainingRun, ModelVersion | None]:
    """Register the run's model and close the run, unless it was cancelled meanwhile."""
    run = await load_training_run(uow, run_id)
    if run.state is not RunState.RUNNING:
        return run, None
    version = await register_model_version(uow, registration)
    now = utcnow()
    run.succeed(version.id, dict(registration.metrics), now)
    stored = await _save_run(uow, run)
    uow.publish(_finished_event(run), cause=stored[-1])
    await uow.audit(
        "training_run.succeeded",
        f"training_run/{run.id}",
        reason=f"registered {version.id}",
        actor=run.requested_by,
        details={"model_version_id": version.id, "metrics": dict(registration.metrics)},
    )
    if retrain_at is not None:
        await adapters.schedule_retrain(uow.conn, run.asset_type, retrain_at)
    return run, version


async def fail_training_run(uow: UnitOfWork, run_id: str, error: str) -> TrainingRun:
    """Close a run that went wrong; a run that has finished already stays as it is."""
    run = await load_training_run(uow, run_id)
    if run.state.finished:
        return run
    run.fail(error, utcnow())
    stored = await _save_run(uow, run)
    uow.publish(_finished_event(run), cause=stored[-1])
    await uow.audit(
        "training_run.failed",
        f"training_run/{run.id}",
        reason=error[:2000],
        details={"asset_type": run.asset_type, "owner": run.owner},
    )
    return run


async def cancel_training_run(uow: UnitOfWork, run_id: str, actor: str, reason: str) -> TrainingRun:
    """Cancel a queued or running run (its worker is stopped by the runner)."""
    run = await load_training_run(uow, run_id)
    run.cancel(actor, reason or f"cancelled by {actor}", utcnow())
    stored = await _save_run(uow, run)
    uow.publish(_finished_event(run), cause=stored[-1])
    await uow.audit(
        "training_run.cancelled",
        f"training_run/{run.id}",
        reason=reason or "cancelled",
        actor=actor,
        details={"asset_type": run.asset_type, "owner": run.owner},
    )
    return run


# --- data and automatic retraining ---------------------------------------------------------


async def record_dataset_snapshot(
    uow: UnitOfWork, snapshot: ingest_pb2.DatasetSnapshot, retrain_at: datetime | None
) -> None:
    """Remember a snapshot the ingest service froze, and put its type on the schedule."""
    await adapters.put_dataset_snapshot(
        uow.conn,
        snapshot_id=snapshot.id,
        name=snapshot.name,
        asset_type=snapshot.asset_type,
        content_hash=snapshot.content_hash,
        created_at=snapshot.created_at.ToDatetime(tzinfo=utcnow().tzinfo),
        data=snapshot.SerializeToString(deterministic=True),
    )
    if retrain_at is not None:
        await adapters.schedule_retrain(uow.conn, snapshot.asset_type, retrain_at)


def snapshot_source(snapshot: ingest_pb2.DatasetSnapshot) -> TrainingSource:
    return TrainingSource(
        dataset_snapshot_id=snapshot.id, dataset_content_hash=snapshot.content_hash
    )


async def _automatic_plan(
    uow: UnitOfWork, asset_type: str
) -> tuple[TrainingSource, dict[str, str], str] | None:
    """What an automatic run of the type trains on: the newest snapshot, else the data of
    the last run, with the hyper-parameters of the last successful run."""
    last = await adapters.latest_run(uow.conn, asset_type, state=str(RunState.SUCCEEDED))
    last = last or await adapters.latest_run(uow.conn, asset_type)
    hyperparameters: dict[str, str] = {}
    previous_source = None
    if last is not None:
        previous = await load_training_run(uow, last[0])
        hyperparameters = dict(previous.hyperparameters)
        previous_source = previous.source
    data = await adapters.newest_dataset_snapshot(uow.conn, asset_type)
    if data is not None:
        snapshot = ingest_pb2.DatasetSnapshot.FromString(data)
        return snapshot_source(snapshot), hyperparameters, f"snapshot {snapshot.name}"
    if previous_source is not None:
        return previous_source, hyperparameters, "the data of the last run"
    return None


async def scheduled_retrain(
    uow: UnitOfWork, asset_type: str, now: datetime, period: timedelta
) -> TrainingRun | None:
    """Retrain a type whose turn has come, if newer data exists; reschedule it either way."""
    await adapters.reschedule(uow.conn, asset_type, now + period)
    skip = ""
    plan = None
    if await adapters.active_run_of(uow.conn, asset_type) is not None:
        skip = "a run of this type is queued or running"
    else:
        plan = await _automatic_plan(uow, asset_type)
        if plan is None:
            skip = "no training data known for this type"
        else:
            last_ok = await adapters.latest_run(uow.conn, asset_type, state="succeeded")
            if last_ok is not None:
                previous = await load_training_run(uow, last_ok[0])
                if previous.source.dataset_content_hash == plan[0].dataset_content_hash:
                    skip = f"no new data since run {previous.id}"
    if skip or plan is None:
        await uow.audit(
            "retrain.skipped",
            f"asset_type/{asset_type}",
            reason=skip,
            actor=SYSTEM_ACTOR,
            details={"trigger": "schedule", "next_run_at": (now + period).isoformat()},
        )
        return None
    source, hyperparameters, what = plan
    return await start_training(
        uow,
        StartTraining(
            asset_type=asset_type,
            source=source,
            hyperparameters=hyperparameters,
            trigger=Trigger.SCHEDULE,
            requested_by=SYSTEM_ACTOR,
            reason=f"scheduled retrain (every {period}) on {what}",
        ),
    )


async def drift_retrain(
    uow: UnitOfWork,
    asset_type: str,
    model_version: str,
    drifted: list[str],
    now: datetime,
    min_interval: timedelta,
) -> TrainingRun | None:
    """Retrain a type whose live data drifted, unless a run is under way or was just made."""
    skip = ""
    plan = None
    if await adapters.active_run_of(uow.conn, asset_type) is not None:
        skip = "a run of this type is queued or running"
    else:
        recent = await adapters.latest_run(uow.conn, asset_type, trigger=str(Trigger.DRIFT))
        if recent is not None and now - recent[1] < min_interval:
            skip = f"a drift retrain ({recent[0]}) started less than {min_interval} ago"
        else:
            plan = await _automatic_plan(uow, asset_type)
            if plan is None:
                skip = "no training data known for this type"
    if skip or plan is None:
        await uow.audit(
            "retrain.skipped",
            f"asset_type/{asset_type}",
            reason=skip,
            actor=SYSTEM_ACTOR,
            details={"trigger": "drift", "model_version": model_version, "features": drifted},
        )
        return None
    source, hyperparameters, what = plan
    features = ", ".join(drifted[:5]) or "no feature named"
    return await start_training(
        uow,
        StartTraining(
            asset_type=asset_type,
            source=source,
            hyperparameters=hyperparameters,
            trigger=Trigger.DRIFT,
            requested_by=SYSTEM_ACTOR,
            reason=f"drift detected on {model_version or 'the serving model'} ({features}); "
            f"retraining on {what}",
        ),
    )

"""Model versions, aliases, promotion policies and training runs: the facts and the rules.

Four aggregates, each a fold of its own event stream:

* ``ModelVersion`` (``model_version-<id>``): registered as a candidate with its lineage,
  metrics and artifacts; approved by a principal other than the one who trained it.
* ``AliasTrack`` (``alias-<asset type>-<alias>``): every move of the champion or challenger
  alias of one asset type, so "who held it at time T, and who set it" is a lookup.
* ``PromotionPolicy`` (``promotion_policy-<asset type>``): whether a candidate that beats the
  champion by a margin is promoted without an approval.
* ``TrainingRun`` (``training_run-<id>``): queued, started, progressed, then succeeded,
  failed or cancelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from prognos.core.events import DomainEvent

SYSTEM_ACTOR = "service:registry"
"""Who moves aliases and starts runs on its own: the schedule, drift alerts, the policy."""


class Alias(StrEnum):
    """The serving roles of a model version within its asset type."""

    CHAMPION = "champion"
    CHALLENGER = "challenger"


class VersionStatus(StrEnum):
    CANDIDATE = "candidate"
    APPROVED = "approved"


class AliasChangeKind(StrEnum):
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


class RunState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


class Trigger(StrEnum):
    MANUAL = "manual"
    SCHEDULE = "schedule"
    DRIFT = "drift"


# --- errors --------------------------------------------------------------------------------


class RegistryRuleError(Exception):
    """A command breaks a rule of the registry; ``reason`` is stable, UPPER_SNAKE."""

    reason = "RULE_BROKEN"

    def __init__(self, message: str, *, subject: str = "") -> None:
        super().__init__(message)
        self.subject = subject


class SelfApprovalError(RegistryRuleError):
    """The principal who trained a model version may not approve it (four eyes)."""

    reason = "SELF_APPROVAL"


class NotApprovedError(RegistryRuleError):
    """Champion needs an approved version, unless the policy promoted it."""

    reason = "NOT_APPROVED"


class WrongStateError(RegistryRuleError):
    """The aggregate is not in a state that allows the command."""

    reason = "WRONG_STATE"


class NothingToRollBackError(RegistryRuleError):
    """The alias has no earlier holder to return to."""

    reason = "NOTHING_TO_ROLL_BACK"


class InvalidCommandError(RegistryRuleError):
    """A command's field is malformed; ``field`` names it."""

    reason = "INVALID"

    def __init__(self, field_name: str, description: str) -> None:
        super().__init__(f"{field_name}: {description}", subject=field_name)
        self.field = field_name
        self.description = description


# --- values --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """One stored file of a model version."""

    name: str
    uri: str
    content_hash: str
    size_bytes: int


@dataclass(frozen=True)
class Lineage:
    """Everything that produced a model version."""

    dataset_snapshot_id: str = ""
    dataset_content_hash: str = ""
    source_uri: str = ""
    label_set: str = ""
    code_version: str = ""
    hyperparameters: dict[str, str] = field(default_factory=dict)
    training_run_id: str = ""
    training_metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingSource:
    """What a run trains on: a dataset snapshot, or an uploaded C-MAPSS file."""

    dataset_snapshot_id: str = ""
    dataset_content_hash: str = ""
    source_name: str = ""
    source_uri: str = ""


# --- events --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelVersionRegistered(DomainEvent):
    model_version_id: str
    asset_type: str
    number: int
    metrics: dict[str, float]
    lineage: Lineage
    artifacts: tuple[Artifact, ...]
    trained_by: str
    description: str
    registered_at: datetime
    compared_with_model_version_id: str = ""
    champion_metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelVersionApproved(DomainEvent):
    model_version_id: str
    approved_by: str
    comment: str
    approved_at: datetime


@dataclass(frozen=True)
class AliasMoved(DomainEvent):
    asset_type: str
    alias: Alias
    from_model_version_id: str
    to_model_version_id: str
    actor: str
    reason: str
    kind: AliasChangeKind
    moved_at: datetime


@dataclass(frozen=True)
class PromotionPolicySet(DomainEvent):
    asset_type: str
    auto_promote: bool
    metric: str
    margin: float
    manual_challenger: bool
    set_by: str
    reason: str
    set_at: datetime


@dataclass(frozen=True)
class TrainingRunQueued(DomainEvent):
    run_id: str
    asset_type: str
    source: TrainingSource
    hyperparameters: dict[str, str]
    trigger: Trigger
    requested_by: str
    reason: str
    queued_at: datetime


@dataclass(frozen=True)
class TrainingRunStarted(DomainEvent):
    run_id: str
    started_at: datetime
    owner: str = ""


@dataclass(frozen=True)
class TrainingRunProgressed(DomainEvent):
    run_id: str
    phase: str
    progress: float
    epoch: int
    total_epochs: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class TrainingRunSucceeded(DomainEvent):
    run_id: str
    model_version_id: str
    metrics: dict[str, float]
    finished_at: datetime


@dataclass(frozen=True)
class TrainingRunFailed(DomainEvent):
    run_id: str
    error: str
    finished_at: datetime


@dataclass(frozen=True)
class TrainingRunCancelled(DomainEvent):
    run_id: str
    cancelled_by: str
    reason: str
    finished_at: datetime


# --- aggregates ----------------------------------------------------------------------------


class _Aggregate:
    """Shared bookkeeping: the stream version and the events not yet stored."""

    version: int
    pending: list[DomainEvent]

    def _record(self, event: DomainEvent) -> None:
        self.apply(event)
        self.pending.append(event)

    def apply(self, event: DomainEvent) -> None:
        raise NotImplementedError


METRIC_NAMES = ("rmse", "phm08_score")


@dataclass
class ModelVersion(_Aggregate):
    """One trained model of one asset type."""

    id: str
    asset_type: str
    number: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    lineage: Lineage = field(default_factory=Lineage)
    artifacts: tuple[Artifact, ...] = ()
    trained_by: str = ""
    description: str = ""
    registered_at: datetime | None = None
    compared_with_model_version_id: str = ""
    champion_metrics: dict[str, float] = field(default_factory=dict)
    status: VersionStatus = VersionStatus.CANDIDATE
    approved_by: str = ""
    approved_at: datetime | None = None
    approval_comment: str = ""
    version: int = 0
    pending: list[DomainEvent] = field(default_factory=list)

    @classmethod
    def register(cls, event: ModelVersionRegistered) -> ModelVersion:
        """A new candidate; its files must include what serving and evaluation need."""
        if not event.trained_by:
            raise InvalidCommandError("trained_by", "a model version needs who trained it")
        for name, value in event.metrics.items():
            if not math.isfinite(value):
                raise InvalidCommandError(f"metrics[{name}]", "must be a finite number")
        names = [a.name for a in event.artifacts]
        if len(set(names)) != len(names):
            raise InvalidCommandError("artifacts", "two artifacts share a name")
        version = cls(id=event.model_version_id, asset_type=event.asset_type)
        version._record(event)
        return version

    def approve(self, approver: str, comment: str, at: datetime) -> None:
        """Record an approval by someone other than the trainer.

        Raises:
            SelfApprovalError: ``approver`` trained (or registered) this version.
            WrongStateError: it is approved already.
        """
        if self.status is not VersionStatus.CANDIDATE:
            raise WrongStateError(
                f"{self.id} is already approved (by {self.approved_by})", subject=self.id
            )
        if approver == self.trained_by:
            raise SelfApprovalError(
                f"{approver} trained {self.id} and may not approve it: "
                "a second principal must approve",
                subject=self.id,
            )
        self._record(ModelVersionApproved(self.id, approver, comment, at))

    def check_may_become_champion(self) -> None:
        """Champion needs an approval by a second principal.

        Raises:
            NotApprovedError: it is still a candidate.
        """
        if self.status is not VersionStatus.APPROVED:
            raise NotApprovedError(
                f"{self.id} is not approved: a principal other than {self.trained_by} must "
                "approve it before it becomes champion",
                subject=self.id,
            )

    def apply(self, event: DomainEvent) -> None:
        if isinstance(event, ModelVersionRegistered):
            self.number = event.number
            self.metrics = dict(event.metrics)
            self.lineage = event.lineage
            self.artifacts = tuple(event.artifacts)
            self.trained_by = event.trained_by
            self.description = event.description
            self.registered_at = event.registered_at
            self.compared_with_model_version_id = event.compared_with_model_version_id
            self.champion_metrics = dict(event.champion_metrics)
        elif isinstance(event, ModelVersionApproved):
            self.status = VersionStatus.APPROVED
            self.approved_by = event.approved_by
            self.approved_at = event.approved_at
            self.approval_comment = event.comment
        self.version += 1

    @classmethod
    def replay(cls, events: list[DomainEvent]) -> ModelVersion:
        first = events[0]
        assert isinstance(first, ModelVersionRegistered)
        version = cls(id=first.model_version_id, asset_type=first.asset_type)
        for event in events:
            version.apply(event)
        return version


@dataclass
class AliasTrack(_Aggregate):
    """Every move of one alias of one asset type, oldest first."""

    asset_type: str
    alias: Alias
    moves: list[AliasMoved] = field(default_factory=list)
    version: int = 0
    pending: list[DomainEvent] = field(default_factory=list)

    @property
    def holder(self) -> str:
        """The version holding the alias now; "" when none."""
        return self.moves[-1].to_model_version_id if self.moves else ""

    def promote(self, to: str, actor: str, reason: str, at: datetime) -> AliasMoved:
        """Move the alias forward to ``to``.

        Raises:
            WrongStateError: ``to`` holds the alias already.
        """
        if to == self.holder:
            raise WrongStateError(f"{to} is already the {self.alias} of {self.asset_type}")
        move = AliasMoved(
            self.asset_type, self.alias, self.holder, to, actor, reason,
            AliasChangeKind.PROMOTED, at,
        )  # fmt: skip
        self._record(move)
        return move

    def rollback(self, to: str, actor: str, reason: str, at: datetime) -> AliasMoved:
        """Move the alias back: to the holder before the last move, or to ``to``.

        Raises:
            NothingToRollBackError: no earlier holder, or ``to`` never held the alias.
        """
        if not self.moves:
            raise NothingToRollBackError(f"the {self.alias} of {self.asset_type} never moved")
        if to:
            earlier = {m.to_model_version_id for m in self.moves[:-1]}
            if to not in earlier or to == self.holder:
                raise NothingToRollBackError(
                    f"{to} did not hold the {self.alias} of {self.asset_type} before"
                )
            target = to
        else:
            target = self.moves[-1].from_model_version_id
            if not target:
                raise NothingToRollBackError(
                    f"the {self.alias} of {self.asset_type} had no holder before {self.holder}"
                )
        move = AliasMoved(
            self.asset_type, self.alias, self.holder, target, actor, reason,
            AliasChangeKind.ROLLED_BACK, at,
        )  # fmt: skip
        self._record(move)
        return move

    def at(self, when: datetime) -> AliasMoved | None:
        """The move in effect at ``when``: who held the alias then, and who set it."""
        effective = None
        for move in self.moves:
            if move.moved_at <= when:
                effective = move
        return effective

    def apply(self, event: DomainEvent) -> None:
        if isinstance(event, AliasMoved):
            self.moves.append(event)
        self.version += 1

    @classmethod
    def replay(cls, asset_type: str, alias: Alias, events: list[DomainEvent]) -> AliasTrack:
        track = cls(asset_type, alias)
        for event in events:
            track.apply(event)
        return track


@dataclass
class PromotionPolicy(_Aggregate):
    """How an asset type's versions are promoted; the defaults hold until one is set."""

    asset_type: str
    auto_promote: bool = False
    metric: str = "rmse"
    margin: float = 0.0
    manual_challenger: bool = False
    set_by: str = ""
    reason: str = ""
    set_at: datetime | None = None
    version: int = 0
    pending: list[DomainEvent] = field(default_factory=list)

    def set(
        self,
        *,
        auto_promote: bool,
        metric: str,
        margin: float,
        manual_challenger: bool,
        actor: str,
        reason: str,
        at: datetime,
    ) -> None:
        metric = metric or "rmse"
        if metric not in METRIC_NAMES:
            raise InvalidCommandError(
                "policy.metric", f"one of {', '.join(METRIC_NAMES)} (lower is better)"
            )
        if not math.isfinite(margin) or margin < 0:
            raise InvalidCommandError("policy.margin", "must be a finite number, at least 0")
        self._record(
            PromotionPolicySet(
                self.asset_type, auto_promote, metric, margin, manual_challenger, actor, reason, at
            )
        )

    def beats(self, candidate: dict[str, float], champion: dict[str, float]) -> tuple[bool, str]:
        """Whether ``candidate`` beats ``champion`` by the margin, and a sentence saying so."""
        if self.metric not in candidate or self.metric not in champion:
            return False, f"{self.metric} missing from one of the evaluations"
        ours, theirs = candidate[self.metric], champion[self.metric]
        better = ours <= theirs - self.margin
        verb = "beats" if better else "does not beat"
        return better, (
            f"{self.metric} {ours:.3f} {verb} the champion's {theirs:.3f} on the same "
            f"evaluation by the margin {self.margin:g}"
        )

    def apply(self, event: DomainEvent) -> None:
        if isinstance(event, PromotionPolicySet):
            self.auto_promote = event.auto_promote
            self.metric = event.metric
            self.margin = event.margin
            self.manual_challenger = event.manual_challenger
            self.set_by = event.set_by
            self.reason = event.reason
            self.set_at = event.set_at
        self.version += 1

    @classmethod
    def replay(cls, asset_type: str, events: list[DomainEvent]) -> PromotionPolicy:
        policy = cls(asset_type)
        for event in events:
            policy.apply(event)
        return policy


@dataclass
class TrainingRun(_Aggregate):
    """One attempt to train a model version."""

    id: str
    asset_type: str = ""
    source: TrainingSource = field(default_factory=TrainingSource)
    hyperparameters: dict[str, str] = field(default_factory=dict)
    trigger: Trigger = Trigger.MANUAL
    requested_by: str = ""
    reason: str = ""
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    owner: str = ""
    state: RunState = RunState.QUEUED
    phase: str = "queued"
    progress: float = 0.0
    epoch: int = 0
    total_epochs: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    model_version_id: str = ""
    error: str = ""
    version: int = 0
    pending: list[DomainEvent] = field(default_factory=list)

    @classmethod
    def queue(cls, event: TrainingRunQueued) -> TrainingRun:
        run = cls(id=event.run_id)
        run._record(event)
        return run

    def start(self, at: datetime, owner: str) -> None:
        """A worker of ``owner`` (``<host>:<pid>`` of the registry process) took the run."""
        if self.state is not RunState.QUEUED:
            raise WrongStateError(f"run {self.id} is {self.state}, not queued", subject=self.id)
        self._record(TrainingRunStarted(self.id, at, owner))

    def report(
        self, phase: str, progress: float, epoch: int, total_epochs: int, metrics: dict[str, float]
    ) -> None:
        self._require_running()
        clean = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        self._record(
            TrainingRunProgressed(
                self.id, phase, min(max(progress, 0.0), 1.0), epoch, total_epochs, clean
            )
        )

    def succeed(self, model_version_id: str, metrics: dict[str, float], at: datetime) -> None:
        self._require_running()
        self._record(TrainingRunSucceeded(self.id, model_version_id, metrics, at))

    def fail(self, error: str, at: datetime) -> None:
        if self.state.finished:
            raise WrongStateError(f"run {self.id} has finished ({self.state})", subject=self.id)
        self._record(TrainingRunFailed(self.id, error, at))

    def cancel(self, actor: str, reason: str, at: datetime) -> None:
        """Stop a queued or running run.

        Raises:
            WrongStateError: the run has finished.
        """
        if self.state.finished:
            raise WrongStateError(
                f"run {self.id} has finished ({self.state}) and cannot be cancelled",
                subject=self.id,
            )
        self._record(TrainingRunCancelled(self.id, actor, reason, at))

    def _require_running(self) -> None:
        if self.state is not RunState.RUNNING:
            raise WrongStateError(f"run {self.id} is {self.state}, not running", subject=self.id)

    def apply(self, event: DomainEvent) -> None:
        if isinstance(event, TrainingRunQueued):
            self.asset_type = event.asset_type
            self.source = event.source
            self.hyperparameters = dict(event.hyperparameters)
            self.trigger = event.trigger
            self.requested_by = event.requested_by
            self.reason = event.reason
            self.queued_at = event.queued_at
        elif isinstance(event, TrainingRunStarted):
            self.state = RunState.RUNNING
            self.phase = "loading"
            self.started_at = event.started_at
            self.owner = event.owner
        elif isinstance(event, TrainingRunProgressed):
            self.phase = event.phase
            self.progress = event.progress
            self.epoch = event.epoch
            self.total_epochs = event.total_epochs
            self.metrics = dict(event.metrics)
        elif isinstance(event, TrainingRunSucceeded):
            self.state = RunState.SUCCEEDED
            self.phase = "finished"
            self.progress = 1.0
            self.model_version_id = event.model_version_id
            self.metrics = dict(event.metrics)
            self.finished_at = event.finished_at
        elif isinstance(event, TrainingRunFailed):
            self.state = RunState.FAILED
            self.phase = "finished"
            self.error = event.error
            self.finished_at = event.finished_at
        elif isinstance(event, TrainingRunCancelled):
            self.state = RunState.CANCELLED
            self.phase = "finished"
            self.error = event.reason
            self.reason = event.reason or self.reason
            self.finished_at = event.finished_at
        self.version += 1

    @classmethod
    def replay(cls, events: list[DomainEvent]) -> TrainingRun:
        first = events[0]
        assert isinstance(first, TrainingRunQueued)
        run = cls(id=first.run_id)
        for event in events:
            run.apply(event)
        return run

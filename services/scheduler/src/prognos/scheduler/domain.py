"""The scheduler's domain: ERP master data, policies and work orders, as events.

Master data (assets, plant calendars, crews), work-order policies and webhook endpoints
are small aggregates whose events replace their state; the work order is the aggregate
with a lifecycle::

    PROPOSED -> SCHEDULED -> RELEASED -> ACKNOWLEDGED -> IN_PROGRESS -> COMPLETED
        ^  |        |
        +--+--------+  (re-planning moves or unplaces work not yet released)

and any state but COMPLETED may become CANCELLED. A transition its state does not allow
raises ``InvalidTransitionError``. Every work order carries the prediction that caused it
(``Cause``), replaced by the latest prediction that updated its risk.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from prognos.core.events import DomainEvent
from prognos.core.quoting import NOT_FINITE, finite, quote
from prognos.scheduler.policy import WorkOrderPolicy

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$")
_ENDPOINT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_ID_RULES = {
    _ID: "an identifier: a letter or digit, then letters, digits and . _ : / - "
    "(at most 200 characters)",
    _ENDPOINT_ID: "an identifier: a letter or digit, then letters, digits and . _ - "
    "(at most 100 characters)",
}

Violation = tuple[str, str]


class MasterDataInvalidError(ValueError):
    """Master data, a policy or an endpoint breaks a rule; ``violations`` name the fields."""

    def __init__(self, violations: Sequence[Violation]) -> None:
        super().__init__("; ".join(f"{f}: {d}" for f, d in violations))
        self.violations = list(violations)


class InvalidTransitionError(Exception):
    """A work order is asked for a transition its state does not allow."""

    def __init__(self, work_order_id: str, state: WorkOrderState, action: str) -> None:
        allowed = ", ".join(s.value for s in _ALLOWED[action])
        super().__init__(f"work order {work_order_id} is {state.value}; {action} needs {allowed}")
        self.work_order_id = work_order_id
        self.state = state
        self.action = action
        self.allowed = allowed


def _check_id(value: str, where: str, problems: list[Violation], pattern: re.Pattern[str]) -> None:
    if not value:
        problems.append((where, "required"))
    elif not pattern.match(value):
        problems.append((where, f"{quote(value)} is not {_ID_RULES[pattern]}"))


# --- assets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AssetData:
    """The ERP's master data of one asset.

    ``criticality`` multiplies the expected cost of a failure (1.0 ordinary);
    ``downtime_cost_per_h`` is in the plant's currency (0: unknown, ranked as 1).
    """

    asset_id: str
    erp_id: str
    plant: str
    asset_type: str
    required_skill: str
    service_duration_h: float
    description: str = ""
    criticality: float = 1.0
    downtime_cost_per_h: float = 0.0

    def violations(self, where: str) -> list[Violation]:
        """What is wrong with it, each as ``(field path, description)``."""
        problems: list[Violation] = []
        _check_id(self.asset_id, f"{where}.asset_id", problems, _ID)
        _check_id(self.plant, f"{where}.plant", problems, _ID)
        if not self.required_skill:
            problems.append((f"{where}.required_skill", "required"))
        if not self.service_duration_h > 0:
            problems.append((f"{where}.service_duration", "must be positive"))
        elif self.service_duration_h > 24 * 31:
            problems.append((f"{where}.service_duration", "must be at most 31 days"))
        for name, value in (
            ("criticality", self.criticality),
            ("downtime_cost_per_hour", self.downtime_cost_per_h),
        ):
            if not finite(value):
                problems.append((f"{where}.{name}", NOT_FINITE))
            elif value < 0:
                problems.append((f"{where}.{name}", "must not be negative"))
        return problems


@dataclass(frozen=True)
class AssetUpserted(DomainEvent):
    """The ERP created or changed an asset's master data."""

    asset: AssetData
    at: datetime


# --- plant calendars ---------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A maintenance window of a plant: ``[start, end)``."""

    id: str
    start: datetime
    end: datetime
    note: str = ""


def window_id(plant: str, start: datetime) -> str:
    """A window's id: its plant and start, stable when the ERP sends the same window again."""
    return f"{plant}/{start.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


@dataclass(frozen=True)
class CalendarRangeReplaced(DomainEvent):
    """A plant's windows starting in ``[range_start, range_end)`` are now ``windows``."""

    plant: str
    range_start: datetime
    range_end: datetime
    windows: tuple[Window, ...]
    at: datetime


@dataclass
class Calendar:
    """A plant's maintenance windows."""

    plant: str
    windows: dict[str, Window] = field(default_factory=dict)
    version: int = 0
    pending: list[DomainEvent] = field(default_factory=list)

    @classmethod
    def replay(cls, plant: str, events: Iterable[DomainEvent]) -> Calendar:
        calendar = cls(plant)
        for event in events:
            calendar._apply(event)
            calendar.version += 1
        return calendar

    def _apply(self, event: DomainEvent) -> None:
        if isinstance(event, CalendarRangeReplaced):
            self.windows = {
                k: w
                for k, w in self.windows.items()
                if not event.range_start <= w.start < event.range_end
            }
            self.windows.update({w.id: w for w in event.windows})

    def replace_range(
        self,
        range_start: datetime,
        range_end: datetime,
        windows: Sequence[tuple[datetime, datetime, str]],
        at: datetime,
    ) -> list[Window]:
        """Replace the windows starting in the range; returns the range's windows now.

        Raises:
            MasterDataInvalidError: the range is empty, a window starts outside it, ends
                before it starts, or overlaps another window of the plant.
        """
        problems: list[Violation] = []
        if not range_end > range_start:
            problems.append(("range_end", "must be after range_start"))
        new: list[Window] = []
        for n, (start, end, note) in enumerate(windows):
            where = f"windows[{n}]"
            if not range_start <= start < range_end:
                problems.append((f"{where}.start_time", "must lie in [range_start, range_end)"))
            if not end > start:
                problems.append((f"{where}.end_time", "must be after start_time"))
            new.append(Window(window_id(self.plant, start), start, end, note))
        kept = [w for w in self.windows.values() if not range_start <= w.start < range_end]
        ordered = sorted(enumerate(new), key=lambda p: p[1].start)
        for (_, a), (n, b) in itertools.pairwise(ordered):
            if b.start < a.end:
                problems.append((f"windows[{n}]", f"overlaps the window starting {a.start}"))
        for n, w in enumerate(new):
            for k in kept:
                if w.start < k.end and k.start < w.end:
                    problems.append((f"windows[{n}]", f"overlaps the stored window {k.id}"))
        if problems:
            raise MasterDataInvalidError(problems)
        event = CalendarRangeReplaced(self.plant, range_start, range_end, tuple(new), at)
        self._apply(event)
        self.pending.append(event)
        return sorted(new, key=lambda w: w.start)


# --- crews -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrewData:
    """A crew: ``capacity`` jobs of ``skill`` at once in ``plant``."""

    crew_id: str
    plant: str
    skill: str
    capacity: int

    def violations(self, where: str) -> list[Violation]:
        problems: list[Violation] = []
        _check_id(self.crew_id, f"{where}.crew_id", problems, _ID)
        _check_id(self.plant, f"{where}.plant", problems, _ID)
        if not self.skill:
            problems.append((f"{where}.skill", "required"))
        if self.capacity > 1000:
            problems.append((f"{where}.capacity", "must be at most 1000"))
        return problems


@dataclass(frozen=True)
class CrewUpserted(DomainEvent):
    """The ERP created or changed a crew."""

    crew: CrewData
    at: datetime


# --- policies ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicySet(DomainEvent):
    """The work-order policy of an asset type changed."""

    asset_type: str
    p_open: float
    p_close: float
    rul_open: float | None
    rul_close: float | None
    min_interval_s: float
    horizon_s: float
    hours_per_rul_unit: float
    at: datetime
    anomaly_open: float | None = None
    anomaly_close: float | None = None

    def policy(self) -> WorkOrderPolicy:
        return WorkOrderPolicy(
            p_open=self.p_open,
            p_close=self.p_close,
            rul_open=self.rul_open,
            rul_close=self.rul_close,
            min_interval=timedelta(seconds=self.min_interval_s),
            horizon=timedelta(seconds=self.horizon_s),
            hours_per_rul_unit=self.hours_per_rul_unit,
            anomaly_open=self.anomaly_open,
            anomaly_close=self.anomaly_close,
        )

    @classmethod
    def of(cls, asset_type: str, policy: WorkOrderPolicy, at: datetime) -> PolicySet:
        return cls(
            asset_type=asset_type,
            p_open=policy.p_open,
            p_close=policy.p_close,
            rul_open=policy.rul_open,
            rul_close=policy.rul_close,
            min_interval_s=policy.min_interval.total_seconds(),
            horizon_s=policy.horizon.total_seconds(),
            hours_per_rul_unit=policy.hours_per_rul_unit,
            at=at,
            anomaly_open=policy.anomaly_open,
            anomaly_close=policy.anomaly_close,
        )


# --- webhook endpoints -------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointData:
    """Where an ERP wants work order changes pushed; its secret is a file, never an event."""

    endpoint_id: str
    url: str
    plants: tuple[str, ...]
    enabled: bool

    def violations(self, where: str) -> list[Violation]:
        problems: list[Violation] = []
        _check_id(self.endpoint_id, f"{where}.endpoint_id", problems, _ENDPOINT_ID)
        if not re.match(r"^https?://[^\s/]+", self.url):
            problems.append((f"{where}.url", "must be an http or https URL"))
        for n, plant in enumerate(self.plants):
            _check_id(plant, f"{where}.plants[{n}]", problems, _ID)
        return problems

    def covers(self, plant: str) -> bool:
        return self.enabled and (not self.plants or plant in self.plants)


@dataclass(frozen=True)
class WebhookEndpointConfigured(DomainEvent):
    """An ERP endpoint for pushed work order changes was created or changed."""

    endpoint: EndpointData
    at: datetime


# --- work orders -------------------------------------------------------------------------


class WorkOrderState(StrEnum):
    """Where a work order is in its life."""

    PROPOSED = "PROPOSED"
    SCHEDULED = "SCHEDULED"
    RELEASED = "RELEASED"
    ACKNOWLEDGED = "ACKNOWLEDGED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"


CLOSED_STATES = frozenset({WorkOrderState.COMPLETED, WorkOrderState.CANCELLED})
#: States in which the planner may still move a work order.
MOVABLE_STATES = frozenset({WorkOrderState.PROPOSED, WorkOrderState.SCHEDULED})
#: States whose slot is committed to the ERP and holds crew capacity.
COMMITTED_STATES = frozenset(
    {WorkOrderState.RELEASED, WorkOrderState.ACKNOWLEDGED, WorkOrderState.IN_PROGRESS}
)

_S = WorkOrderState
_ALLOWED: dict[str, frozenset[WorkOrderState]] = {
    "update risk": frozenset(set(_S) - CLOSED_STATES),
    "schedule": MOVABLE_STATES,
    "unplace": MOVABLE_STATES,
    "release": frozenset({_S.SCHEDULED}),
    "acknowledge": frozenset({_S.RELEASED}),
    "start": frozenset({_S.ACKNOWLEDGED}),
    "complete": frozenset({_S.IN_PROGRESS}),
    "cancel": frozenset(set(_S) - CLOSED_STATES),
}


@dataclass(frozen=True)
class Cause:
    """The prediction behind a work order: enough to trace it to model and telemetry."""

    prediction_id: str
    model_version: str
    failure_probability: float
    time: datetime
    input_digest: str = ""
    top_sensors: tuple[str, ...] = ()
    rul: float | None = None
    rul_unit: str = ""
    #: A health model's anomaly score (the prediction estimated no failure risk).
    anomaly_score: float | None = None


@dataclass(frozen=True)
class Slot:
    """When and by whom: a crew's lane inside one maintenance window."""

    window_id: str
    start: datetime
    end: datetime
    crew_id: str


@dataclass(frozen=True)
class PartUsed:
    part_number: str
    quantity: float


@dataclass(frozen=True)
class Outcome:
    """What the maintenance found and did; ``failure_found`` is the training label."""

    failure_found: bool
    failure_mode: str
    completed_at: datetime
    findings: str = ""
    parts: tuple[PartUsed, ...] = ()


@dataclass(frozen=True)
class Unplacement:
    """Why the planner found no slot: an ``UnplacedReason`` name and a sentence."""

    reason: str
    detail: str
    at: datetime


@dataclass(frozen=True)
class WorkOrderProposed(DomainEvent):
    work_order_id: str
    asset_id: str
    failure_mode: str
    asset_type: str
    plant: str
    risk: float
    due_at: datetime
    cause: Cause
    at: datetime


@dataclass(frozen=True)
class WorkOrderRiskUpdated(DomainEvent):
    risk: float
    due_at: datetime
    cause: Cause
    at: datetime


@dataclass(frozen=True)
class WorkOrderScheduled(DomainEvent):
    slot: Slot
    at: datetime


@dataclass(frozen=True)
class WorkOrderUnplaced(DomainEvent):
    reason: str
    detail: str
    at: datetime


@dataclass(frozen=True)
class WorkOrderReleased(DomainEvent):
    at: datetime


@dataclass(frozen=True)
class WorkOrderAcknowledged(DomainEvent):
    erp_order_number: str
    at: datetime


@dataclass(frozen=True)
class WorkOrderStarted(DomainEvent):
    started_at: datetime
    at: datetime


@dataclass(frozen=True)
class WorkOrderCompleted(DomainEvent):
    outcome: Outcome
    at: datetime


@dataclass(frozen=True)
class WorkOrderCancelled(DomainEvent):
    reason: str
    at: datetime


@dataclass
class WorkOrder:
    """A maintenance job on one asset for one failure mode, folded from its events."""

    id: str
    asset_id: str
    failure_mode: str
    asset_type: str
    plant: str
    risk: float
    due_at: datetime
    cause: Cause
    created_at: datetime
    updated_at: datetime
    state: WorkOrderState = WorkOrderState.PROPOSED
    slot: Slot | None = None
    unplaced: Unplacement | None = None
    erp_order_number: str = ""
    started_at: datetime | None = None
    outcome: Outcome | None = None
    cancel_reason: str = ""
    version: int = 0
    pending: list[DomainEvent] = field(default_factory=list, repr=False, compare=False)
    #: The order as it was before its first pending event (None for a new order).
    base: WorkOrder | None = field(default=None, repr=False, compare=False)

    @classmethod
    def propose(
        cls,
        work_order_id: str,
        *,
        asset_id: str,
        failure_mode: str,
        asset_type: str,
        plant: str,
        risk: float,
        due_at: datetime,
        cause: Cause,
        at: datetime,
    ) -> WorkOrder:
        event = WorkOrderProposed(
            work_order_id, asset_id, failure_mode, asset_type, plant, risk, due_at, cause, at
        )
        order = cls._from_proposed(event)
        order.pending.append(event)
        return order

    @classmethod
    def _from_proposed(cls, e: WorkOrderProposed) -> WorkOrder:
        return cls(
            id=e.work_order_id,
            asset_id=e.asset_id,
            failure_mode=e.failure_mode,
            asset_type=e.asset_type,
            plant=e.plant,
            risk=e.risk,
            due_at=e.due_at,
            cause=e.cause,
            created_at=e.at,
            updated_at=e.at,
            version=1,
        )

    @classmethod
    def replay(cls, events: Sequence[DomainEvent]) -> WorkOrder:
        first = events[0]
        if not isinstance(first, WorkOrderProposed):
            raise ValueError(f"a work order stream starts with WorkOrderProposed, not {first!r}")
        order = cls._from_proposed(first)
        for event in events[1:]:
            order._apply(event)
        return order

    @property
    def is_open(self) -> bool:
        return self.state not in CLOSED_STATES

    def _apply(self, event: DomainEvent) -> None:
        match event:
            case WorkOrderRiskUpdated(risk=risk, due_at=due_at, cause=cause):
                self.risk, self.due_at, self.cause = risk, due_at, cause
            case WorkOrderScheduled(slot=slot):
                self.state, self.slot, self.unplaced = _S.SCHEDULED, slot, None
            case WorkOrderUnplaced(reason=reason, detail=detail, at=at):
                self.state, self.slot = _S.PROPOSED, None
                self.unplaced = Unplacement(reason, detail, at)
            case WorkOrderReleased():
                self.state = _S.RELEASED
            case WorkOrderAcknowledged(erp_order_number=number):
                self.state, self.erp_order_number = _S.ACKNOWLEDGED, number
            case WorkOrderStarted(started_at=started_at):
                self.state, self.started_at = _S.IN_PROGRESS, started_at
            case WorkOrderCompleted(outcome=outcome):
                self.state, self.outcome = _S.COMPLETED, outcome
            case WorkOrderCancelled(reason=reason):
                self.state, self.cancel_reason = _S.CANCELLED, reason
            case _:
                raise ValueError(f"not a work order event: {event!r}")
        self.updated_at = event.at  # type: ignore[attr-defined]
        self.version += 1

    def _raise(self, action: str, event: DomainEvent) -> None:
        if self.state not in _ALLOWED[action]:
            raise InvalidTransitionError(self.id, self.state, action)
        if not self.pending:
            self.base = replace(self, pending=[], base=None)
        self._apply(event)
        self.pending.append(event)

    def update_risk(self, risk: float, due_at: datetime, cause: Cause, at: datetime) -> None:
        self._raise("update risk", WorkOrderRiskUpdated(risk, due_at, cause, at))

    def schedule(self, slot: Slot, at: datetime) -> None:
        self._raise("schedule", WorkOrderScheduled(slot, at))

    def unplace(self, reason: str, detail: str, at: datetime) -> None:
        self._raise("unplace", WorkOrderUnplaced(reason, detail, at))

    def release(self, at: datetime) -> None:
        self._raise("release", WorkOrderReleased(at))

    def acknowledge(self, erp_order_number: str, at: datetime) -> None:
        self._raise("acknowledge", WorkOrderAcknowledged(erp_order_number, at))

    def start(self, started_at: datetime, at: datetime) -> None:
        self._raise("start", WorkOrderStarted(started_at, at))

    def complete(self, outcome: Outcome, at: datetime) -> None:
        self._raise("complete", WorkOrderCompleted(outcome, at))

    def cancel(self, reason: str, at: datetime) -> None:
        self._raise("cancel", WorkOrderCancelled(reason, at))


def risk_changed(order: WorkOrder, risk: float, due_at: datetime) -> bool:
    """Whether a new prediction moves the order enough to record: 0.02 of risk or an hour."""
    return abs(risk - order.risk) >= 0.02 or abs(due_at - order.due_at) >= timedelta(hours=1)

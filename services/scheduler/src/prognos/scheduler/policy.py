"""Work-order policy: which predictions open, update or leave alone a maintenance work order.

The policy is a decider in two pure functions. ``decide(policy, state, prediction)`` returns a
``Decision``, the auditable answer to one prediction, including every "not opened" with its
reason. ``evolve(state, decision)`` folds that decision into the small per-(asset, failure
mode) ``PolicyState``. Because the decision alone determines the next state, the service
rebuilds every state by replaying the decisions it stored (plus ``work_order_closed`` for the
ERP's completions and cancellations); nothing else is remembered.

Rules, per asset type (``WorkOrderPolicy``):

* trigger: failure probability >= ``p_open`` or RUL <= ``rul_open``; for a health model's
  prediction (one with an anomaly score, no failure risk), anomaly score >= ``anomaly_open``,
  which opens an inspection (failure mode ``inspection``) whose risk is the anomaly score;
* hysteresis: once a work order was opened the key is disarmed, and it is armed again only
  by a prediction that is clear, i.e. probability < ``p_close`` and RUL > ``rul_close``
  (or unknown), or anomaly score < ``anomaly_close`` for a health model's, so a score
  flapping around ``p_open`` opens exactly one work order;
* minimum interval: no second opening for the same key within ``min_interval`` of the last;
* at most one open work order per (asset, failure mode): while one is open, every later
  prediction updates its risk and due date instead of opening another;
* predictions older than the newest one already decided for the key are ignored as out of
  order, so a redelivered or late message never moves the state backwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from prognos.core.quoting import NOT_FINITE, finite

DEFAULT_FAILURE_MODE = "any"
#: The failure mode of a work order opened from a health model's anomaly score: look at it.
INSPECTION_FAILURE_MODE = "inspection"

_WORK_ORDER_NAMESPACE = uuid.UUID("5f0c8a52-4d8e-4a57-9a3c-0b8f2f7a1e60")


class PolicyInvalidError(ValueError):
    """A policy's thresholds break a rule; ``field`` names the offending field."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


@dataclass(frozen=True, slots=True)
class WorkOrderPolicy:
    """When predictions for one asset type open a work order.

    ``rul_open`` and ``rul_close`` are in the asset type's RUL unit (hours or cycles);
    ``hours_per_rul_unit`` turns a RUL into hours for the due date (1.0 when RUL is in hours,
    the mean operating hours of one cycle when it is in cycles). A prediction without a RUL
    is due ``horizon`` after it was made. ``anomaly_open`` and ``anomaly_close`` apply to
    the calibrated anomaly score of a health model's predictions (``None``: no such rule).
    """

    p_open: float = 0.8
    p_close: float = 0.5
    rul_open: float | None = None
    rul_close: float | None = None
    min_interval: timedelta = timedelta(hours=24)
    horizon: timedelta = timedelta(hours=48)
    hours_per_rul_unit: float = 1.0
    anomaly_open: float | None = None
    anomaly_close: float | None = None

    def __post_init__(self) -> None:
        numbers = {
            "policy.p_open": self.p_open,
            "policy.p_close": self.p_close,
            "policy.rul_open": self.rul_open,
            "policy.rul_close": self.rul_close,
            "policy.hours_per_rul_unit": self.hours_per_rul_unit,
            "policy.anomaly_open": self.anomaly_open,
            "policy.anomaly_close": self.anomaly_close,
        }
        for name, value in numbers.items():
            # First: NaN fails every comparison below, so it would pass or be misnamed.
            if value is not None and not finite(value):
                raise PolicyInvalidError(name, NOT_FINITE)
        if not 0.0 < self.p_open <= 1.0:
            raise PolicyInvalidError("policy.p_open", "must be in (0, 1]")
        if not 0.0 <= self.p_close <= self.p_open:
            raise PolicyInvalidError("policy.p_close", "must be in [0, p_open]")
        if (self.rul_open is None) != (self.rul_close is None):
            raise PolicyInvalidError("policy.rul_close", "set both rul_open and rul_close")
        if self.rul_open is not None and self.rul_close is not None:
            if self.rul_open < 0:
                raise PolicyInvalidError("policy.rul_open", "must be at least 0")
            if self.rul_close < self.rul_open:
                raise PolicyInvalidError("policy.rul_close", "must be at least rul_open")
        if (self.anomaly_open is None) != (self.anomaly_close is None):
            raise PolicyInvalidError(
                "policy.anomaly_close", "set both anomaly_open and anomaly_close"
            )
        if self.anomaly_open is not None and self.anomaly_close is not None:
            if not 0.0 < self.anomaly_open <= 1.0:
                raise PolicyInvalidError("policy.anomaly_open", "must be in (0, 1]")
            if not 0.0 <= self.anomaly_close <= self.anomaly_open:
                raise PolicyInvalidError("policy.anomaly_close", "must be in [0, anomaly_open]")
        if self.min_interval < timedelta(0):
            raise PolicyInvalidError("policy.min_interval", "must be at least 0")
        if self.horizon <= timedelta(0):
            raise PolicyInvalidError("policy.horizon", "must be positive")
        if self.hours_per_rul_unit <= 0:
            raise PolicyInvalidError("policy.hours_per_rul_unit", "must be positive")

    def triggers(self, prediction: Prediction) -> DecisionReason | None:
        """The reason this prediction calls for a work order, or ``None``."""
        if prediction.anomaly_score is not None:
            if self.anomaly_open is not None and prediction.anomaly_score >= self.anomaly_open:
                return DecisionReason.ANOMALY_ABOVE_OPEN
            return None
        if prediction.failure_probability >= self.p_open:
            return DecisionReason.PROBABILITY_ABOVE_OPEN
        if self.rul_open is not None and prediction.rul is not None:
            if prediction.rul <= self.rul_open:
                return DecisionReason.RUL_BELOW_OPEN
        return None

    def is_clear(self, prediction: Prediction) -> bool:
        """Whether this prediction is far enough from the threshold to re-arm the key."""
        if prediction.anomaly_score is not None:
            return self.anomaly_close is None or prediction.anomaly_score < self.anomaly_close
        if prediction.failure_probability >= self.p_close:
            return False
        if self.rul_close is not None and prediction.rul is not None:
            return prediction.rul > self.rul_close
        return True

    def due_at(self, prediction: Prediction) -> datetime:
        """When the predicted failure is expected: the RUL if given, else the horizon."""
        if prediction.rul is not None:
            hours = max(prediction.rul, 0.0) * self.hours_per_rul_unit
            return prediction.at + timedelta(hours=hours)
        return prediction.at + self.horizon


@dataclass(frozen=True, slots=True)
class Prediction:
    """One prediction as the policy sees it.

    ``rul`` is in the asset type's RUL unit; ``input_digest`` names the feature window the
    model read, so the work order can be traced back to its telemetry. ``anomaly_score`` is
    set on a health model's predictions only (which estimate no failure risk).
    """

    id: str
    asset_id: str
    asset_type: str
    at: datetime
    failure_probability: float
    rul: float | None = None
    model_version: str = ""
    top_sensors: tuple[str, ...] = ()
    input_digest: str = ""
    failure_mode: str = DEFAULT_FAILURE_MODE
    anomaly_score: float | None = None

    @property
    def risk(self) -> float:
        """What a work order opened from it carries as its risk."""
        return self.failure_probability if self.anomaly_score is None else self.anomaly_score


class DecisionKind(StrEnum):
    """What a decision does to work orders."""

    OPEN = "OPEN"
    UPDATE = "UPDATE"
    NONE = "NONE"


class DecisionReason(StrEnum):
    """Why: for OPEN the trigger, for UPDATE that an order is open, for NONE what held it."""

    PROBABILITY_ABOVE_OPEN = "PROBABILITY_ABOVE_OPEN"
    RUL_BELOW_OPEN = "RUL_BELOW_OPEN"
    ANOMALY_ABOVE_OPEN = "ANOMALY_ABOVE_OPEN"
    ALREADY_OPEN = "ALREADY_OPEN"
    BELOW_THRESHOLD = "BELOW_THRESHOLD"
    HYSTERESIS = "HYSTERESIS"
    MIN_INTERVAL = "MIN_INTERVAL"
    OUT_OF_ORDER = "OUT_OF_ORDER"


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer to one prediction, complete enough to audit and to replay.

    ``work_order_id`` is the order opened or updated (``None`` for NONE); ``risk`` and
    ``due_at`` are what that order should now carry. ``armed`` is whether the key is armed
    after this decision, so ``evolve`` needs nothing but the decision.
    """

    kind: DecisionKind
    reason: DecisionReason
    asset_id: str
    failure_mode: str
    prediction_id: str
    at: datetime
    risk: float
    due_at: datetime
    armed: bool
    work_order_id: str | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What the policy remembers for one (asset, failure mode)."""

    armed: bool = True
    last_opened_at: datetime | None = None
    open_work_order_id: str | None = None
    last_prediction_at: datetime | None = None


WorkOrderIdFactory = Callable[[Prediction], str]


def work_order_id_for(prediction: Prediction) -> str:
    """A work order id derived from the prediction that opened it, so replays agree."""
    name = f"{prediction.asset_id}\x1f{prediction.failure_mode}\x1f{prediction.id}"
    return str(uuid.uuid5(_WORK_ORDER_NAMESPACE, name))


def decide(
    policy: WorkOrderPolicy,
    state: PolicyState,
    prediction: Prediction,
    new_work_order_id: WorkOrderIdFactory = work_order_id_for,
) -> Decision:
    """Decide what one prediction does, given the key's state before it."""
    at = prediction.at
    risk = prediction.risk
    due_at = policy.due_at(prediction)

    def decision(
        kind: DecisionKind,
        reason: DecisionReason,
        armed: bool,
        work_order_id: str | None = None,
        detail: str = "",
    ) -> Decision:
        return Decision(
            kind=kind,
            reason=reason,
            asset_id=prediction.asset_id,
            failure_mode=prediction.failure_mode,
            prediction_id=prediction.id,
            at=at,
            risk=risk,
            due_at=due_at,
            armed=armed,
            work_order_id=work_order_id,
            detail=detail,
        )

    if state.last_prediction_at is not None and at < state.last_prediction_at:
        return decision(
            DecisionKind.NONE,
            DecisionReason.OUT_OF_ORDER,
            state.armed,
            detail=f"older than the last prediction at {state.last_prediction_at.isoformat()}",
        )
    armed = state.armed or policy.is_clear(prediction)
    if state.open_work_order_id is not None:
        return decision(
            DecisionKind.UPDATE, DecisionReason.ALREADY_OPEN, armed, state.open_work_order_id
        )
    trigger = policy.triggers(prediction)
    if trigger is None:
        detail = "re-armed" if armed and not state.armed else ""
        return decision(DecisionKind.NONE, DecisionReason.BELOW_THRESHOLD, armed, detail=detail)
    if not armed:
        return decision(
            DecisionKind.NONE,
            DecisionReason.HYSTERESIS,
            False,
            detail=f"not re-armed since the order opened at {_iso(state.last_opened_at)}",
        )
    if state.last_opened_at is not None and at - state.last_opened_at < policy.min_interval:
        return decision(
            DecisionKind.NONE,
            DecisionReason.MIN_INTERVAL,
            True,
            detail=f"last order opened at {state.last_opened_at.isoformat()}",
        )
    return decision(DecisionKind.OPEN, trigger, False, new_work_order_id(prediction))


def evolve(state: PolicyState, decision: Decision) -> PolicyState:
    """The key's state after a decision; replaying stored decisions rebuilds it."""
    if decision.reason is DecisionReason.OUT_OF_ORDER:
        return state
    if decision.kind is DecisionKind.OPEN:
        return PolicyState(
            armed=False,
            last_opened_at=decision.at,
            open_work_order_id=decision.work_order_id,
            last_prediction_at=decision.at,
        )
    return PolicyState(
        armed=decision.armed,
        last_opened_at=state.last_opened_at,
        open_work_order_id=state.open_work_order_id,
        last_prediction_at=decision.at,
    )


def work_order_closed(state: PolicyState, work_order_id: str) -> PolicyState:
    """The key's state after its open work order was completed or cancelled.

    Closing does not re-arm: a score that stays high after the work is done opens nothing
    new until it has been clear once (and the minimum interval has passed).
    """
    if state.open_work_order_id != work_order_id:
        return state
    return PolicyState(
        armed=state.armed,
        last_opened_at=state.last_opened_at,
        open_work_order_id=None,
        last_prediction_at=state.last_prediction_at,
    )


PolicyKey = tuple[str, str]

_INITIAL = PolicyState()


class UnknownAssetTypePolicyError(LookupError):
    """No policy is configured for an asset type and there is no default."""

    def __init__(self, asset_type: str) -> None:
        super().__init__(f"no work-order policy for asset type {asset_type!r}")
        self.asset_type = asset_type


@dataclass
class PolicyEngine:
    """Applies the per-asset-type policies to a stream of predictions, keeping every state.

    A mutable holder around ``decide`` and ``evolve`` for the service: ``states`` can be
    rebuilt from stored decisions with ``replay``.
    """

    policies: Mapping[str, WorkOrderPolicy]
    default_policy: WorkOrderPolicy | None = None
    new_work_order_id: WorkOrderIdFactory = work_order_id_for
    states: dict[PolicyKey, PolicyState] = field(default_factory=dict)

    def policy_for(self, asset_type: str) -> WorkOrderPolicy:
        policy = self.policies.get(asset_type, self.default_policy)
        if policy is None:
            raise UnknownAssetTypePolicyError(asset_type)
        return policy

    def state(self, asset_id: str, failure_mode: str = DEFAULT_FAILURE_MODE) -> PolicyState:
        return self.states.get((asset_id, failure_mode), _INITIAL)

    def apply(self, prediction: Prediction) -> Decision:
        key = (prediction.asset_id, prediction.failure_mode)
        state = self.states.get(key, _INITIAL)
        decision = decide(
            self.policy_for(prediction.asset_type), state, prediction, self.new_work_order_id
        )
        self.states[key] = evolve(state, decision)
        return decision

    def replay(self, decision: Decision) -> None:
        key = (decision.asset_id, decision.failure_mode)
        self.states[key] = evolve(self.states.get(key, _INITIAL), decision)

    def close(self, asset_id: str, failure_mode: str, work_order_id: str) -> None:
        key = (asset_id, failure_mode)
        if key in self.states:
            self.states[key] = work_order_closed(self.states[key], work_order_id)


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value is not None else "unknown"

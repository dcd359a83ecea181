"""Between the scheduler's domain and its protobuf contracts, in both directions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from prognos.api.inference.v1 import inference_pb2
from prognos.api.scheduler.v1 import events_pb2, scheduler_pb2
from prognos.core.events import DomainEvent
from prognos.scheduler.adapters import DecisionRow
from prognos.scheduler.domain import (
    AssetData,
    Cause,
    CrewData,
    EndpointData,
    Outcome,
    PartUsed,
    Slot,
    WorkOrder,
    WorkOrderAcknowledged,
    WorkOrderCancelled,
    WorkOrderCompleted,
    WorkOrderProposed,
    WorkOrderReleased,
    WorkOrderRiskUpdated,
    WorkOrderScheduled,
    WorkOrderStarted,
    WorkOrderState,
    WorkOrderUnplaced,
)
from prognos.scheduler.policy import (
    DEFAULT_FAILURE_MODE,
    INSPECTION_FAILURE_MODE,
    Prediction,
    WorkOrderPolicy,
)

_STATES = {s: getattr(scheduler_pb2, f"WORK_ORDER_STATE_{s.value}") for s in WorkOrderState}
STATE_NAMES = {v: k for k, v in _STATES.items()}


def ts(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def from_ts(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def state_to_proto(state: WorkOrderState) -> int:
    return int(_STATES[state])


def unplaced_reason_to_proto(reason: str) -> int:
    return int(scheduler_pb2.UnplacedReason.Value(f"UNPLACED_REASON_{reason}"))


# --- predictions -------------------------------------------------------------------------


def prediction_from_proto(p: inference_pb2.Prediction) -> tuple[Prediction, Cause]:
    """The policy's view of a prediction and the cause a work order would carry."""
    rul: float | None = None
    unit = ""
    if p.HasField("rul"):
        which = p.rul.WhichOneof("value")
        if which == "duration":
            rul, unit = p.rul.duration.ToTimedelta().total_seconds() / 3600.0, "hours"
        elif which == "cycles":
            rul, unit = p.rul.cycles, "cycles"
    at = from_ts(p.time) if p.HasField("time") else datetime.now(UTC)
    top = tuple(s.channel for s in p.top_sensors)
    anomaly = p.anomaly_score if p.HasField("anomaly_score") else None
    if anomaly is not None:
        # A health model's prediction asks for a look at the asset, whatever may fail.
        mode = INSPECTION_FAILURE_MODE
    else:
        # A model of a type with failure modes names the most likely one (they come
        # sorted), so "one open order per asset and failure mode" holds for every type.
        mode = p.failure_modes[0].failure_mode if p.failure_modes else DEFAULT_FAILURE_MODE
    prediction = Prediction(
        id=p.prediction_id,
        asset_id=p.asset_id,
        asset_type=p.asset_type,
        at=at,
        failure_probability=p.failure_probability,
        rul=rul,
        model_version=p.model_version,
        top_sensors=top,
        input_digest=p.input_digest,
        failure_mode=mode,
        anomaly_score=anomaly,
    )
    cause = Cause(
        prediction_id=p.prediction_id,
        model_version=p.model_version,
        failure_probability=p.failure_probability,
        time=at,
        input_digest=p.input_digest,
        top_sensors=top,
        rul=rul,
        rul_unit=unit,
        anomaly_score=anomaly,
    )
    return prediction, cause


def cause_to_proto(cause: Cause) -> scheduler_pb2.PredictionRef:
    ref = scheduler_pb2.PredictionRef(
        prediction_id=cause.prediction_id,
        model_version=cause.model_version,
        failure_probability=cause.failure_probability,
        time=ts(cause.time),
        input_digest=cause.input_digest,
        top_sensors=list(cause.top_sensors),
        remaining_useful_life_unit=cause.rul_unit,
    )
    if cause.rul is not None:
        ref.remaining_useful_life = cause.rul
    if cause.anomaly_score is not None:
        ref.anomaly_score = cause.anomaly_score
    return ref


# --- work orders -------------------------------------------------------------------------


def slot_to_proto(slot: Slot) -> scheduler_pb2.Slot:
    return scheduler_pb2.Slot(
        start_time=ts(slot.start),
        end_time=ts(slot.end),
        crew_id=slot.crew_id,
        window_id=slot.window_id,
    )


def outcome_to_proto(outcome: Outcome) -> scheduler_pb2.MaintenanceOutcome:
    return scheduler_pb2.MaintenanceOutcome(
        failure_found=outcome.failure_found,
        failure_mode=outcome.failure_mode,
        parts=[
            scheduler_pb2.PartUsage(part_number=p.part_number, quantity=p.quantity)
            for p in outcome.parts
        ],
        findings=outcome.findings,
        completed_at=ts(outcome.completed_at),
    )


def outcome_from_proto(o: scheduler_pb2.MaintenanceOutcome, now: datetime) -> Outcome:
    return Outcome(
        failure_found=o.failure_found,
        failure_mode=o.failure_mode,
        completed_at=from_ts(o.completed_at) if o.HasField("completed_at") else now,
        findings=o.findings,
        parts=tuple(PartUsed(p.part_number, p.quantity) for p in o.parts),
    )


def work_order_to_proto(order: WorkOrder, erp_id: str) -> scheduler_pb2.WorkOrder:
    message = scheduler_pb2.WorkOrder(
        id=order.id,
        asset_id=order.asset_id,
        erp_id=erp_id,
        plant=order.plant,
        asset_type=order.asset_type,
        state=state_to_proto(order.state),  # type: ignore[arg-type]
        risk=order.risk,
        due_time=ts(order.due_at),
        cause=cause_to_proto(order.cause),
        erp_order_number=order.erp_order_number,
        cancel_reason=order.cancel_reason,
        created_at=ts(order.created_at),
        updated_at=ts(order.updated_at),
        version=order.version,
        failure_mode=order.failure_mode,
    )
    if order.slot is not None:
        message.slot.CopyFrom(slot_to_proto(order.slot))
    if order.outcome is not None:
        message.outcome.CopyFrom(outcome_to_proto(order.outcome))
    if order.unplaced is not None:
        message.unplaced.CopyFrom(
            scheduler_pb2.Unplaced(
                reason=unplaced_reason_to_proto(order.unplaced.reason),  # type: ignore[arg-type]
                detail=order.unplaced.detail,
                time=ts(order.unplaced.at),
            )
        )
    if order.started_at is not None:
        message.started_at.CopyFrom(ts(order.started_at))
    return message


def integration_event(order: WorkOrder, event: DomainEvent, erp_id: str = "") -> Message:
    """The public message announcing one work order event (its route gives the subject)."""
    wid, asset = order.id, order.asset_id
    match event:
        case WorkOrderProposed():
            return events_pb2.WorkOrderProposed(work_order=work_order_to_proto(order, erp_id))
        case WorkOrderRiskUpdated(risk=risk, due_at=due_at, cause=cause):
            return events_pb2.WorkOrderRiskUpdated(
                work_order_id=wid,
                asset_id=asset,
                risk=risk,
                due_time=ts(due_at),
                cause=cause_to_proto(cause),
            )
        case WorkOrderScheduled(slot=slot):
            return events_pb2.WorkOrderScheduled(
                work_order_id=wid, asset_id=asset, slot=slot_to_proto(slot)
            )
        case WorkOrderUnplaced(reason=reason, detail=detail, at=at):
            return events_pb2.WorkOrderUnplaced(
                work_order_id=wid,
                asset_id=asset,
                unplaced=scheduler_pb2.Unplaced(
                    reason=unplaced_reason_to_proto(reason),  # type: ignore[arg-type]
                    detail=detail,
                    time=ts(at),
                ),
            )
        case WorkOrderReleased():
            return events_pb2.WorkOrderReleased(
                work_order_id=wid, asset_id=asset, plant=order.plant
            )
        case WorkOrderAcknowledged(erp_order_number=number):
            return events_pb2.WorkOrderAcknowledged(
                work_order_id=wid, asset_id=asset, erp_order_number=number
            )
        case WorkOrderStarted(started_at=started_at):
            return events_pb2.WorkOrderStarted(
                work_order_id=wid, asset_id=asset, started_at=ts(started_at)
            )
        case WorkOrderCompleted(outcome=outcome):
            return events_pb2.WorkOrderCompleted(
                work_order_id=wid, asset_id=asset, outcome=outcome_to_proto(outcome)
            )
        case WorkOrderCancelled(reason=reason):
            return events_pb2.WorkOrderCancelled(work_order_id=wid, asset_id=asset, reason=reason)
    raise ValueError(f"not a work order event: {event!r}")


def outcome_label(order: WorkOrder, outcome: Outcome) -> events_pb2.MaintenanceOutcomeRecorded:
    return events_pb2.MaintenanceOutcomeRecorded(
        work_order_id=order.id,
        asset_id=order.asset_id,
        asset_type=order.asset_type,
        time=ts(outcome.completed_at),
        failure_found=outcome.failure_found,
        failure_mode=outcome.failure_mode,
        cause=cause_to_proto(order.cause),
        plant=order.plant,
    )


# --- master data, policies, endpoints ----------------------------------------------------


def asset_from_proto(a: scheduler_pb2.ErpAsset) -> AssetData:
    return AssetData(
        asset_id=a.asset_id,
        erp_id=a.erp_id,
        plant=a.plant,
        asset_type=a.asset_type,
        required_skill=a.required_skill,
        service_duration_h=a.service_duration.ToTimedelta().total_seconds() / 3600.0,
        description=a.description,
        criticality=a.criticality if a.criticality else 1.0,
        downtime_cost_per_h=a.downtime_cost_per_hour,
    )


def crew_from_proto(c: scheduler_pb2.Crew) -> CrewData:
    return CrewData(c.crew_id, c.plant, c.skill, int(c.capacity))


def policy_from_proto(p: scheduler_pb2.WorkOrderPolicy) -> WorkOrderPolicy:
    """A policy from its message; unset durations and ratios take the defaults.

    Raises:
        PolicyInvalidError: the thresholds are inconsistent.
    """
    default = WorkOrderPolicy()
    return WorkOrderPolicy(
        p_open=p.open_probability if p.open_probability else default.p_open,
        p_close=p.close_probability,
        rul_open=p.open_remaining_useful_life if p.HasField("open_remaining_useful_life") else None,
        rul_close=(
            p.close_remaining_useful_life if p.HasField("close_remaining_useful_life") else None
        ),
        min_interval=(
            p.min_interval.ToTimedelta() if p.HasField("min_interval") else default.min_interval
        ),
        horizon=p.horizon.ToTimedelta() if p.HasField("horizon") else default.horizon,
        hours_per_rul_unit=p.hours_per_cycle if p.hours_per_cycle else 1.0,
        anomaly_open=p.open_anomaly_score if p.HasField("open_anomaly_score") else None,
        anomaly_close=p.close_anomaly_score if p.HasField("close_anomaly_score") else None,
    )


def policy_to_proto(policy: WorkOrderPolicy) -> scheduler_pb2.WorkOrderPolicy:
    message = scheduler_pb2.WorkOrderPolicy(
        open_probability=policy.p_open,
        close_probability=policy.p_close,
        hours_per_cycle=policy.hours_per_rul_unit,
    )
    if policy.rul_open is not None:
        message.open_remaining_useful_life = policy.rul_open
    if policy.rul_close is not None:
        message.close_remaining_useful_life = policy.rul_close
    if policy.anomaly_open is not None:
        message.open_anomaly_score = policy.anomaly_open
    if policy.anomaly_close is not None:
        message.close_anomaly_score = policy.anomaly_close
    message.min_interval.FromTimedelta(policy.min_interval)
    message.horizon.FromTimedelta(policy.horizon)
    return message


def policy_set_event(asset_type: str, policy: WorkOrderPolicy) -> events_pb2.WorkOrderPolicySet:
    """The public announcement of an asset type's new work-order policy."""
    return events_pb2.WorkOrderPolicySet(asset_type=asset_type, policy=policy_to_proto(policy))


def policy_to_document(policy: WorkOrderPolicy) -> dict[str, float | None]:
    return {
        "p_open": policy.p_open,
        "p_close": policy.p_close,
        "rul_open": policy.rul_open,
        "rul_close": policy.rul_close,
        "min_interval_s": policy.min_interval.total_seconds(),
        "horizon_s": policy.horizon.total_seconds(),
        "hours_per_rul_unit": policy.hours_per_rul_unit,
        "anomaly_open": policy.anomaly_open,
        "anomaly_close": policy.anomaly_close,
    }


def policy_from_document(d: dict[str, float | None]) -> WorkOrderPolicy:
    return WorkOrderPolicy(
        p_open=float(d["p_open"]),  # type: ignore[arg-type]
        p_close=float(d["p_close"]),  # type: ignore[arg-type]
        rul_open=d["rul_open"],
        rul_close=d["rul_close"],
        min_interval=timedelta(seconds=float(d["min_interval_s"])),  # type: ignore[arg-type]
        horizon=timedelta(seconds=float(d["horizon_s"])),  # type: ignore[arg-type]
        hours_per_rul_unit=float(d["hours_per_rul_unit"]),  # type: ignore[arg-type]
        # Documents stored before health models had no anomaly rule.
        anomaly_open=d.get("anomaly_open"),
        anomaly_close=d.get("anomaly_close"),
    )


def endpoint_from_proto(e: scheduler_pb2.WebhookEndpoint) -> EndpointData:
    return EndpointData(e.endpoint_id, e.url, tuple(e.plants), e.enabled)


def endpoint_to_proto(e: EndpointData) -> scheduler_pb2.WebhookEndpoint:
    return scheduler_pb2.WebhookEndpoint(
        endpoint_id=e.endpoint_id, url=e.url, plants=list(e.plants), enabled=e.enabled
    )


_DECISION_KINDS = {
    "OPEN": scheduler_pb2.POLICY_DECISION_KIND_OPEN,
    "UPDATE": scheduler_pb2.POLICY_DECISION_KIND_UPDATE,
    "NONE": scheduler_pb2.POLICY_DECISION_KIND_NONE,
}


def decision_to_proto(row: DecisionRow) -> scheduler_pb2.PolicyDecision:
    return scheduler_pb2.PolicyDecision(
        prediction_id=row.prediction_id,
        asset_id=row.asset_id,
        failure_mode=row.failure_mode,
        prediction_time=ts(row.prediction_at),
        kind=_DECISION_KINDS.get(row.kind, scheduler_pb2.POLICY_DECISION_KIND_UNSPECIFIED),
        reason=row.reason,
        detail=row.detail,
        risk=row.risk,
        work_order_id=row.work_order_id or "",
        model_version=row.model_version,
        decided_at=ts(row.decided_at),
    )


#: The fully qualified name of each work order event's public message.
EVENT_TYPES: dict[type[DomainEvent], str] = {
    WorkOrderProposed: "prognos.api.scheduler.v1.WorkOrderProposed",
    WorkOrderRiskUpdated: "prognos.api.scheduler.v1.WorkOrderRiskUpdated",
    WorkOrderScheduled: "prognos.api.scheduler.v1.WorkOrderScheduled",
    WorkOrderUnplaced: "prognos.api.scheduler.v1.WorkOrderUnplaced",
    WorkOrderReleased: "prognos.api.scheduler.v1.WorkOrderReleased",
    WorkOrderAcknowledged: "prognos.api.scheduler.v1.WorkOrderAcknowledged",
    WorkOrderStarted: "prognos.api.scheduler.v1.WorkOrderStarted",
    WorkOrderCompleted: "prognos.api.scheduler.v1.WorkOrderCompleted",
    WorkOrderCancelled: "prognos.api.scheduler.v1.WorkOrderCancelled",
}

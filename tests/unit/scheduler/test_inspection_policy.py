"""Inspections from a health model's anomaly score: trigger, hysteresis, contract and storage."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from prognos.api.inference.v1 import inference_pb2
from prognos.api.scheduler.v1 import scheduler_pb2
from prognos.scheduler.domain import PolicySet
from prognos.scheduler.policy import (
    INSPECTION_FAILURE_MODE,
    DecisionKind,
    DecisionReason,
    PolicyEngine,
    PolicyInvalidError,
    Prediction,
    WorkOrderPolicy,
)
from prognos.scheduler.translate import (
    cause_to_proto,
    policy_from_document,
    policy_from_proto,
    policy_to_document,
    policy_to_proto,
    prediction_from_proto,
)

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
POLICY = WorkOrderPolicy(
    p_open=0.8, p_close=0.5, anomaly_open=0.99, anomaly_close=0.9, min_interval=timedelta(0)
)


def health(n: int, anomaly: float) -> Prediction:
    return Prediction(
        id=f"pred-{n}",
        asset_id="pump-3",
        asset_type="pump",
        at=T0 + timedelta(minutes=10 * n),
        failure_probability=0.0,
        model_version="pump-v1",
        failure_mode=INSPECTION_FAILURE_MODE,
        anomaly_score=anomaly,
    )


def test_an_anomaly_flapping_around_the_threshold_opens_one_inspection_until_clear() -> None:
    engine = PolicyEngine(policies={"pump": POLICY})
    scores = [0.995, 0.98, 0.999, 0.95, 0.992]

    decisions = [engine.apply(health(n, s)) for n, s in enumerate(scores)]
    opened = decisions[0]
    engine.close("pump-3", INSPECTION_FAILURE_MODE, opened.work_order_id or "")
    after_close = [engine.apply(health(10 + n, s)) for n, s in enumerate([0.995, 0.5, 0.993])]

    assert opened.kind is DecisionKind.OPEN
    assert opened.reason is DecisionReason.ANOMALY_ABOVE_OPEN
    assert opened.risk == 0.995 and opened.due_at - opened.at == POLICY.horizon
    assert [d.kind for d in decisions[1:]] == [DecisionKind.UPDATE] * 4
    assert [d.reason for d in after_close] == [
        DecisionReason.HYSTERESIS,
        DecisionReason.BELOW_THRESHOLD,
        DecisionReason.ANOMALY_ABOVE_OPEN,
    ]


def test_a_health_prediction_never_opens_on_probability_and_a_supervised_one_never_on_anomaly() -> (
    None
):
    without_rule = WorkOrderPolicy(p_open=0.01, p_close=0.0)
    supervised = Prediction(
        id="s", asset_id="a", asset_type="pump", at=T0, failure_probability=0.995
    )

    assert without_rule.triggers(health(0, 1.0)) is None
    assert POLICY.triggers(replace(supervised, failure_probability=0.1)) is None
    assert POLICY.triggers(supervised) is DecisionReason.PROBABILITY_ABOVE_OPEN
    # p_close 0 can never be undercut by a probability; a health prediction is clear anyway.
    assert without_rule.is_clear(health(0, 1.0))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"anomaly_open": 0.99}, "policy.anomaly_close"),
        ({"anomaly_open": 0.0, "anomaly_close": 0.0}, "policy.anomaly_open"),
        ({"anomaly_open": 0.9, "anomaly_close": 0.95}, "policy.anomaly_close"),
        ({"anomaly_open": float("nan"), "anomaly_close": 0.5}, "policy.anomaly_open"),
    ],
)
def test_an_inconsistent_anomaly_rule_is_rejected_naming_the_field(
    kwargs: dict[str, float], field: str
) -> None:
    with pytest.raises(PolicyInvalidError) as error:
        WorkOrderPolicy(**kwargs)  # type: ignore[arg-type]
    assert error.value.field == field


def test_the_anomaly_rule_survives_the_contract_the_event_and_the_stored_document() -> None:
    message = policy_to_proto(POLICY)
    old_document = policy_to_document(WorkOrderPolicy())
    del old_document["anomaly_open"], old_document["anomaly_close"]

    assert message.open_anomaly_score == 0.99 and message.close_anomaly_score == 0.9
    assert policy_from_proto(message) == POLICY
    assert policy_from_document(policy_to_document(POLICY)) == POLICY
    assert PolicySet.of("pump", POLICY, T0).policy() == POLICY
    assert policy_from_document(old_document) == WorkOrderPolicy()
    assert not policy_to_proto(WorkOrderPolicy()).HasField("open_anomaly_score")
    assert policy_from_proto(scheduler_pb2.WorkOrderPolicy()).anomaly_open is None


def test_a_health_models_prediction_asks_for_an_inspection_and_its_cause_keeps_the_score() -> None:
    message = inference_pb2.Prediction(
        prediction_id="p", asset_id="pump-3", asset_type="pump", anomaly_score=0.997
    )
    message.top_sensors.add(channel="vibration_rms", contribution=0.8, value=7.1)

    prediction, cause = prediction_from_proto(message)

    assert prediction.failure_mode == INSPECTION_FAILURE_MODE
    assert prediction.anomaly_score == 0.997 and prediction.risk == 0.997
    assert prediction.rul is None
    ref = cause_to_proto(cause)
    assert ref.anomaly_score == 0.997 and list(ref.top_sensors) == ["vibration_rms"]
    plain, plain_cause = prediction_from_proto(
        inference_pb2.Prediction(prediction_id="q", asset_id="a", failure_probability=0.4)
    )
    assert plain.anomaly_score is None and plain.risk == 0.4
    assert not cause_to_proto(plain_cause).HasField("anomaly_score")

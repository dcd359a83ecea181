"""Work-order policy: thresholds, hysteresis, minimum interval, one open order per key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import reduce

import pytest

from prognos.scheduler.policy import (
    Decision,
    DecisionKind,
    DecisionReason,
    PolicyEngine,
    PolicyInvalidError,
    PolicyState,
    Prediction,
    UnknownAssetTypePolicyError,
    WorkOrderPolicy,
    decide,
    evolve,
    work_order_closed,
)

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
POLICY = WorkOrderPolicy(p_open=0.8, p_close=0.5, min_interval=timedelta(hours=24))


def prediction(
    n: int,
    p: float,
    *,
    asset: str = "pump-7",
    mode: str = "any",
    rul: float | None = None,
    minutes: int | None = None,
) -> Prediction:
    return Prediction(
        id=f"pred-{asset}-{mode}-{n}",
        asset_id=asset,
        asset_type="pump",
        at=T0 + timedelta(minutes=10 * n if minutes is None else minutes),
        failure_probability=p,
        rul=rul,
        model_version="m-3",
        top_sensors=("vibration",),
        input_digest=f"sha256:{n}",
        failure_mode=mode,
    )


def engine(policy: WorkOrderPolicy = POLICY) -> PolicyEngine:
    return PolicyEngine(policies={"pump": policy})


def test_a_score_flapping_around_the_threshold_opens_exactly_one_work_order() -> None:
    e = engine()
    scores = [0.79, 0.81, 0.78, 0.83, 0.79, 0.80, 0.77, 0.85, 0.79, 0.82] * 5
    decisions = [e.apply(prediction(n, p)) for n, p in enumerate(scores)]

    opened = [d for d in decisions if d.kind is DecisionKind.OPEN]
    assert len(opened) == 1
    assert opened[0].reason is DecisionReason.PROBABILITY_ABOVE_OPEN
    assert opened[0].prediction_id == "pred-pump-7-any-1"
    after = decisions[2:]
    assert {d.kind for d in after} == {DecisionKind.UPDATE}
    assert {d.work_order_id for d in after} == {opened[0].work_order_id}


def test_flapping_after_the_order_closed_opens_nothing_until_the_score_was_clear() -> None:
    e = engine(WorkOrderPolicy(p_open=0.8, p_close=0.5, min_interval=timedelta(0)))
    first = e.apply(prediction(0, 0.9))
    assert first.work_order_id is not None
    e.close("pump-7", "any", first.work_order_id)

    decisions = [e.apply(prediction(n, p)) for n, p in enumerate([0.7, 0.85, 0.6, 0.9], 1)]

    assert [d.reason for d in decisions] == [
        DecisionReason.BELOW_THRESHOLD,
        DecisionReason.HYSTERESIS,
        DecisionReason.BELOW_THRESHOLD,
        DecisionReason.HYSTERESIS,
    ]
    assert all(d.kind is DecisionKind.NONE for d in decisions)


def test_a_clear_score_rearms_and_the_next_crossing_opens_a_second_order() -> None:
    e = engine(WorkOrderPolicy(p_open=0.8, p_close=0.5, min_interval=timedelta(0)))
    first = e.apply(prediction(0, 0.9))
    assert first.work_order_id is not None
    e.close("pump-7", "any", first.work_order_id)

    clear = e.apply(prediction(1, 0.3))
    again = e.apply(prediction(2, 0.95))

    assert clear.kind is DecisionKind.NONE and clear.armed and clear.detail == "re-armed"
    assert again.kind is DecisionKind.OPEN
    assert again.work_order_id not in (None, first.work_order_id)


def test_the_minimum_interval_holds_back_a_second_opening_for_the_same_asset() -> None:
    e = engine()  # 24 h minimum interval
    first = e.apply(prediction(0, 0.9, minutes=0))
    assert first.work_order_id is not None
    e.close("pump-7", "any", first.work_order_id)
    e.apply(prediction(1, 0.2, minutes=60))

    early = e.apply(prediction(2, 0.9, minutes=23 * 60))
    late = e.apply(prediction(3, 0.9, minutes=24 * 60))

    assert early.kind is DecisionKind.NONE and early.reason is DecisionReason.MIN_INTERVAL
    assert early.armed  # held back, not disarmed: the next prediction may open
    assert late.kind is DecisionKind.OPEN


def test_later_predictions_update_the_open_order_with_their_risk_and_due_date() -> None:
    e = engine(WorkOrderPolicy(p_open=0.8, p_close=0.5, rul_open=10.0, rul_close=30.0))
    opened = e.apply(prediction(0, 0.85, rul=40.0))
    updated = e.apply(prediction(1, 0.97, rul=6.0))
    calmer = e.apply(prediction(2, 0.6, rul=20.0))

    assert opened.kind is DecisionKind.OPEN
    assert updated.kind is DecisionKind.UPDATE and calmer.kind is DecisionKind.UPDATE
    assert updated.reason is DecisionReason.ALREADY_OPEN
    assert updated.work_order_id == calmer.work_order_id == opened.work_order_id
    assert updated.risk == 0.97
    assert updated.due_at == T0 + timedelta(minutes=10, hours=6)
    assert calmer.risk == 0.6
    assert calmer.due_at == T0 + timedelta(minutes=20, hours=20)


def test_a_short_remaining_useful_life_opens_even_at_a_low_probability() -> None:
    policy = WorkOrderPolicy(
        p_open=0.8, p_close=0.5, rul_open=5.0, rul_close=15.0, hours_per_rul_unit=2.0
    )
    d = decide(policy, PolicyState(), prediction(0, 0.1, rul=4.0))

    assert d.kind is DecisionKind.OPEN and d.reason is DecisionReason.RUL_BELOW_OPEN
    assert d.due_at == T0 + timedelta(hours=8)  # 4 cycles of 2 h


def test_a_prediction_without_rul_is_due_at_the_horizon() -> None:
    d = decide(POLICY, PolicyState(), prediction(0, 0.9))
    assert d.due_at == T0 + POLICY.horizon


def test_each_failure_mode_of_an_asset_has_its_own_open_order() -> None:
    e = engine()
    bearing = e.apply(prediction(0, 0.9, mode="bearing"))
    seal = e.apply(prediction(1, 0.9, mode="seal"))
    bearing_again = e.apply(prediction(2, 0.95, mode="bearing"))

    assert bearing.kind is DecisionKind.OPEN and seal.kind is DecisionKind.OPEN
    assert bearing.work_order_id != seal.work_order_id
    assert bearing_again.kind is DecisionKind.UPDATE
    assert bearing_again.work_order_id == bearing.work_order_id


def test_below_threshold_is_a_decision_too_with_its_reason() -> None:
    d = engine().apply(prediction(0, 0.4))
    assert (d.kind, d.reason, d.work_order_id) == (
        DecisionKind.NONE,
        DecisionReason.BELOW_THRESHOLD,
        None,
    )
    assert (d.asset_id, d.prediction_id, d.risk) == ("pump-7", "pred-pump-7-any-0", 0.4)


def test_an_out_of_order_prediction_changes_nothing() -> None:
    e = engine()
    e.apply(prediction(5, 0.3))
    before = e.state("pump-7")
    stale = e.apply(prediction(4, 0.99))

    assert stale.kind is DecisionKind.NONE and stale.reason is DecisionReason.OUT_OF_ORDER
    assert e.state("pump-7") == before


def test_replaying_the_decisions_and_closures_rebuilds_every_state() -> None:
    e = engine(WorkOrderPolicy(p_open=0.7, p_close=0.4, min_interval=timedelta(hours=1)))
    log: list[Decision | tuple[str, str]] = []  # what the service stores, in order
    scores = [0.1, 0.75, 0.8, 0.3, 0.72, 0.2, 0.9, 0.5, 0.1, 0.95]
    for n, p in enumerate(scores * 3):
        for asset in ("a", "b"):
            log.append(e.apply(prediction(n, p if asset == "a" else 1 - p, asset=asset)))
            open_id = e.state(asset).open_work_order_id
            if n % 7 == 6 and open_id is not None:
                e.close(asset, "any", open_id)  # the ERP completed the order
                log.append((asset, open_id))

    rebuilt = engine()
    for entry in log:
        if isinstance(entry, Decision):
            rebuilt.replay(entry)
        else:
            rebuilt.close(entry[0], "any", entry[1])

    assert rebuilt.states == e.states
    assert sum(isinstance(x, Decision) and x.kind is DecisionKind.OPEN for x in log) >= 3
    assert sum(isinstance(x, tuple) for x in log) >= 2


def test_evolve_is_a_fold_over_decisions() -> None:
    policy = WorkOrderPolicy(p_open=0.8, p_close=0.5, min_interval=timedelta(0))
    state = PolicyState()
    decisions = []
    for n, p in enumerate([0.9, 0.3, 0.95]):
        d = decide(policy, state, prediction(n, p))
        decisions.append(d)
        state = evolve(state, d)
    assert reduce(evolve, decisions, PolicyState()) == state
    assert state.open_work_order_id == decisions[0].work_order_id  # never closed
    closed = work_order_closed(state, decisions[0].work_order_id or "")
    assert closed.open_work_order_id is None and closed.last_opened_at == T0


def test_work_order_ids_are_derived_from_the_opening_prediction() -> None:
    a = decide(POLICY, PolicyState(), prediction(0, 0.9))
    b = decide(POLICY, PolicyState(), prediction(0, 0.9))
    c = decide(POLICY, PolicyState(), prediction(1, 0.9))
    assert a.work_order_id == b.work_order_id != c.work_order_id


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"p_open": 0.0}, "policy.p_open"),
        ({"p_open": 0.6, "p_close": 0.7}, "policy.p_close"),
        ({"rul_open": 5.0}, "policy.rul_close"),
        ({"rul_open": 5.0, "rul_close": 4.0}, "policy.rul_close"),
        ({"min_interval": timedelta(hours=-1)}, "policy.min_interval"),
        ({"hours_per_rul_unit": 0.0}, "policy.hours_per_rul_unit"),
    ],
)
def test_an_inconsistent_policy_is_rejected_naming_the_field(
    kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(PolicyInvalidError) as error:
        WorkOrderPolicy(**kwargs)  # type: ignore[arg-type]
    assert error.value.field == field


def test_an_asset_type_without_policy_and_no_default_is_an_error() -> None:
    with pytest.raises(UnknownAssetTypePolicyError):
        PolicyEngine(policies={}).apply(prediction(0, 0.9))
    fallback = PolicyEngine(policies={}, default_policy=POLICY).apply(prediction(0, 0.9))
    assert fallback.kind is DecisionKind.OPEN

"""Work orders, plant calendars and master data: the scheduler's domain rules, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from prognos.core.events import decode, encode
from prognos.scheduler.domain import (
    AssetData,
    Calendar,
    Cause,
    EndpointData,
    InvalidTransitionError,
    MasterDataInvalidError,
    Outcome,
    Slot,
    WorkOrder,
    WorkOrderState,
    risk_changed,
)

T0 = datetime(2026, 3, 2, 8, tzinfo=UTC)
S = WorkOrderState


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def proposed() -> WorkOrder:
    cause = Cause("pred-1", "pump/3", 0.91, T0, "sha256:ab", ("vibration",), 30.0, "hours")
    return WorkOrder.propose(
        "wo-1",
        asset_id="pump-1",
        failure_mode="any",
        asset_type="pump",
        plant="north",
        risk=0.91,
        due_at=at(30),
        cause=cause,
        at=T0,
    )


SLOT = Slot("north/2026-03-03T06:00:00Z", at(22), at(26), "north/mech")


def test_the_normal_path_runs_from_proposed_to_completed_and_replays_the_same() -> None:
    order = proposed()
    order.schedule(SLOT, at(1))
    order.release(at(1))
    order.acknowledge("SAP-1", at(2))
    order.start(at(22), at(22))
    order.complete(Outcome(True, "bearing_wear", at(25), "pitted"), at(25))
    assert order.state is S.COMPLETED
    assert order.version == 6
    assert (order.erp_order_number, order.slot, order.started_at) == ("SAP-1", SLOT, at(22))
    stored = [decode(*encode(e)) for e in order.pending]
    assert WorkOrder.replay(stored) == order


@pytest.mark.parametrize(
    ("steps", "action"),
    [
        ([], "acknowledge"),
        ([], "start"),
        ([], "complete"),
        (["schedule"], "start"),
        (["schedule", "release"], "schedule"),
        (["schedule", "release", "acknowledge"], "complete"),
        (["schedule", "release", "acknowledge", "start", "complete"], "cancel"),
        (["cancel"], "cancel"),
        (["cancel"], "update risk"),
    ],
)
def test_a_transition_the_state_does_not_allow_is_refused_and_changes_nothing(
    steps: list[str], action: str
) -> None:
    order = proposed()
    do = {
        "schedule": lambda o: o.schedule(SLOT, at(1)),
        "release": lambda o: o.release(at(1)),
        "acknowledge": lambda o: o.acknowledge("SAP-1", at(2)),
        "start": lambda o: o.start(at(3), at(3)),
        "complete": lambda o: o.complete(Outcome(False, "", at(4)), at(4)),
        "cancel": lambda o: o.cancel("not needed", at(5)),
        "update risk": lambda o: o.update_risk(0.5, at(40), o.cause, at(5)),
    }
    for step in steps:
        do[step](order)
    before = (order.state, order.version, len(order.pending))
    with pytest.raises(InvalidTransitionError) as caught:
        do[action](order)
    assert caught.value.action == action
    assert (order.state, order.version, len(order.pending)) == before


def test_re_planning_moves_or_unplaces_work_until_it_is_released() -> None:
    order = proposed()
    order.unplace("NO_CAPACITY_BEFORE_FAILURE", "all windows full", at(1))
    assert order.state is S.PROPOSED and order.unplaced is not None
    order.schedule(SLOT, at(2))
    assert order.unplaced is None
    order.unplace("NO_WINDOW_FOR_PLANT", "calendar emptied", at(3))
    assert order.state is S.PROPOSED and order.slot is None
    order.schedule(SLOT, at(4))
    order.release(at(4))
    with pytest.raises(InvalidTransitionError):
        order.unplace("NO_WINDOW_FOR_PLANT", "too late", at(5))


def test_only_a_material_change_of_risk_or_due_time_is_recorded() -> None:
    order = proposed()
    assert not risk_changed(order, 0.92, at(30.5))
    assert risk_changed(order, 0.94, at(30))
    assert risk_changed(order, 0.91, at(28))


def test_a_calendar_range_is_replaced_and_overlaps_are_refused_naming_the_window() -> None:
    calendar = Calendar("north")
    week = [(at(24 * d), at(24 * d + 8), f"day {d}") for d in range(7)]
    kept = calendar.replace_range(T0, at(24 * 7), week, T0)
    assert len(kept) == 7 and len(calendar.pending) == 1
    # Replacing the middle of the week keeps the other days.
    calendar.replace_range(at(48), at(72), [(at(50), at(54), "short")], T0)
    assert len(calendar.windows) == 7
    assert sorted(w.end - w.start for w in calendar.windows.values())[0] == timedelta(hours=4)
    with pytest.raises(MasterDataInvalidError) as caught:
        calendar.replace_range(at(72), at(96), [(at(72), at(80), ""), (at(79), at(82), "")], T0)
    assert caught.value.violations[0][0] == "windows[1]"
    with pytest.raises(MasterDataInvalidError) as caught:
        calendar.replace_range(at(100), at(110), [(at(99), at(101), "")], T0)
    assert caught.value.violations[0][0] == "windows[0].start_time"
    replayed = Calendar.replay("north", calendar.pending)
    assert replayed.windows == calendar.windows


def test_master_data_violations_name_each_field() -> None:
    asset = AssetData("", "EQ-1", "north", "pump", "", 0.0, criticality=-1)
    fields = [f for f, _ in asset.violations("assets[2]")]
    assert fields == [
        "assets[2].asset_id",
        "assets[2].required_skill",
        "assets[2].service_duration",
        "assets[2].criticality",
    ]
    endpoint = EndpointData("erp 1", "ftp://x", ("north",), True)
    assert [f for f, _ in endpoint.violations("endpoint")] == [
        "endpoint.endpoint_id",
        "endpoint.url",
    ]
    assert EndpointData("erp-1", "https://erp", (), True).covers("south")
    assert not EndpointData("erp-1", "https://erp", ("north",), True).covers("south")
    assert not EndpointData("erp-1", "https://erp", (), False).covers("north")

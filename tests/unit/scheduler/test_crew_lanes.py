"""Packing planned work into crew lanes: slots inside windows, no crew overbooked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prognos.scheduler.domain import CrewData, Slot, Window
from prognos.scheduler.slots import Job, WindowLanes

T0 = datetime(2026, 3, 2, 6, tzinfo=UTC)
WINDOW = Window("north/w1", T0, T0 + timedelta(hours=8))
H = timedelta(hours=1)


def crews(mech: int = 2, elec: int = 1) -> list[CrewData]:
    return [
        CrewData("north/mech", "north", "mechanical", mech),
        CrewData("north/elec", "north", "electrical", elec),
        CrewData("north/off", "north", "hydraulic", 0),
    ]


def test_free_hours_count_lanes_and_subtract_committed_work() -> None:
    committed = [("mechanical", Slot("north/w1", T0, T0 + 3 * H, "north/mech"))]
    lanes = WindowLanes(WINDOW, crews(), committed)
    assert lanes.free_hours() == {"mechanical": 13.0, "electrical": 8.0}
    # Under way: only what is left of the window counts.
    later = WindowLanes(WINDOW, crews(), committed, not_before=T0 + 4 * H)
    assert later.free_hours() == {"mechanical": 8.0, "electrical": 4.0}


def test_longest_jobs_go_first_to_the_earliest_gap_and_no_lane_is_overbooked() -> None:
    lanes = WindowLanes(WINDOW, crews())
    jobs = [Job(f"j{n}", "mechanical", hours * H) for n, hours in enumerate([2, 6, 3, 5])]
    slots, overflow = lanes.pack(jobs)
    assert overflow == []
    assert {j: s.end - s.start for j, s in slots.items()} == {j.id: j.duration for j in jobs}
    for slot in slots.values():
        assert WINDOW.start <= slot.start and slot.end <= WINDOW.end
        assert slot.crew_id == "north/mech"
    # 6 + 2 in one lane, 5 + 3 in the other: 16 crew-hours in 16.
    assert sorted(s.start for s in slots.values()) == [T0, T0, T0 + 5 * H, T0 + 6 * H]


def test_a_job_keeps_its_previous_slot_when_it_is_still_free() -> None:
    previous = Slot("north/w1", T0 + 4 * H, T0 + 6 * H, "north/mech")
    lanes = WindowLanes(WINDOW, crews())
    slots, _ = lanes.pack([Job("a", "mechanical", 3 * H), Job("b", "mechanical", 2 * H, previous)])
    assert slots["b"] == previous
    assert slots["a"].start == T0


def test_work_that_fits_the_hours_but_not_a_lane_is_returned() -> None:
    lanes = WindowLanes(WINDOW, crews(mech=2))
    # 15 of 16 crew-hours, but three 5 h jobs need three lanes of 5 h: one is left over.
    slots, overflow = lanes.pack([Job(f"j{n}", "mechanical", 5 * H) for n in range(3)])
    assert len(slots) == 2
    assert [j.id for j in overflow] == ["j2"]


def test_committed_work_occupies_its_crew_lane() -> None:
    committed = [("electrical", Slot("north/w1", T0 + 2 * H, T0 + 4 * H, "north/elec"))]
    lanes = WindowLanes(WINDOW, crews(), committed)
    slots, overflow = lanes.pack([Job("x", "electrical", 3 * H), Job("y", "electrical", 2 * H)])
    assert overflow == []
    assert slots["y"].start == T0 and slots["x"].start == T0 + 4 * H

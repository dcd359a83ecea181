"""Packing planned work into crews' time: slots inside windows, no crew overbooked."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from prognos.scheduler.domain import CrewData, Slot, Window
from prognos.scheduler.slots import Job, WindowCrews

T0 = datetime(2026, 3, 2, 6, tzinfo=UTC)
WINDOW = Window("north/w1", T0, T0 + timedelta(hours=8))
H = timedelta(hours=1)


def crews(mech: int = 2, elec: int = 1) -> list[CrewData]:
    return [
        CrewData("north/mech", "north", "mechanical", mech),
        CrewData("north/elec", "north", "electrical", elec),
        CrewData("north/off", "north", "hydraulic", 0),
    ]


def test_free_hours_count_each_crew_s_capacity_and_subtract_committed_work() -> None:
    committed = [("mechanical", Slot("north/w1", T0, T0 + 3 * H, "north/mech"))]
    booked = WindowCrews(WINDOW, crews(), committed)
    assert booked.free_hours() == {"mechanical": 13.0, "electrical": 8.0}
    # Under way: only what is left of the window counts.
    later = WindowCrews(WINDOW, crews(), committed, not_before=T0 + 4 * H)
    assert later.free_hours() == {"mechanical": 8.0, "electrical": 4.0}


def test_longest_jobs_go_first_to_the_earliest_start_with_room() -> None:
    booked = WindowCrews(WINDOW, crews())
    jobs = [Job(f"j{n}", "mechanical", hours * H) for n, hours in enumerate([2, 6, 3, 5])]
    slots, overflow = booked.pack(jobs)
    assert overflow == []
    assert {j: s.end - s.start for j, s in slots.items()} == {j.id: j.duration for j in jobs}
    for slot in slots.values():
        assert WINDOW.start <= slot.start and slot.end <= WINDOW.end
        assert slot.crew_id == "north/mech"
    # 6 + 2 for one person, 5 + 3 for the other: 16 crew-hours in 16.
    assert sorted(s.start for s in slots.values()) == [T0, T0, T0 + 5 * H, T0 + 6 * H]


def test_a_job_keeps_its_previous_slot_when_it_is_still_free() -> None:
    previous = Slot("north/w1", T0 + 4 * H, T0 + 6 * H, "north/mech")
    booked = WindowCrews(WINDOW, crews())
    slots, _ = booked.pack([Job("a", "mechanical", 3 * H), Job("b", "mechanical", 2 * H, previous)])
    assert slots["b"] == previous
    assert slots["a"].start == T0


def test_work_that_fits_the_hours_but_not_the_crew_s_time_is_returned() -> None:
    booked = WindowCrews(WINDOW, crews(mech=2))
    # 15 of 16 crew-hours, but three 5 h jobs in 8 h need three people: one is left over.
    slots, overflow = booked.pack([Job(f"j{n}", "mechanical", 5 * H) for n in range(3)])
    assert len(slots) == 2
    assert [j.id for j in overflow] == ["j2"]


def test_committed_work_occupies_its_crew() -> None:
    committed = [("electrical", Slot("north/w1", T0 + 2 * H, T0 + 4 * H, "north/elec"))]
    booked = WindowCrews(WINDOW, crews(), committed)
    slots, overflow = booked.pack([Job("x", "electrical", 3 * H), Job("y", "electrical", 2 * H)])
    assert overflow == []
    assert slots["y"].start == T0 and slots["x"].start == T0 + 4 * H


def load(slots: list[Slot], at: datetime) -> int:
    return sum(1 for s in slots if s.start <= at < s.end)


def test_committed_work_taken_in_any_order_leaves_no_room_where_the_crew_is_full() -> None:
    # Seven released jobs keep a crew of three busy all day. Handed out one by one in this
    # order to fixed people, the last found nobody free and the first person took it on top,
    # leaving another person apparently idle from 08:00 to 12:00: a new 3 h job was booked
    # there, four jobs at once for three people.
    day = Window("south/w1", T0, T0 + 8 * H)
    at = [(0, 2), (0, 2), (2, 5), (5, 8), (6, 8), (0, 6), (2, 8)]
    committed = [("mechanical", Slot(day.id, T0 + a * H, T0 + b * H, "south/mech")) for a, b in at]
    crew = [CrewData("south/mech", "south", "mechanical", 3)]
    booked = WindowCrews(day, crew, committed)
    assert booked.free_hours() == {"mechanical": 0.0}
    slots, overflow = booked.pack([Job("new", "mechanical", 3 * H)])
    assert slots == {} and [j.id for j in overflow] == ["new"]
    # Nor does a job keep a previous slot there.
    assert not booked.keep(
        Job("old", "mechanical", 3 * H), Slot(day.id, T0 + 2 * H, T0 + 5 * H, "south/mech")
    )


def test_no_crew_ever_has_more_jobs_at_once_than_its_capacity() -> None:
    rng = random.Random(11)
    for case in range(300):
        capacity = rng.randint(1, 4)
        crew = [CrewData("n/mech", "n", "mechanical", capacity)]
        # Committed work within capacity, placed by an earlier pass, then new work on top.
        earlier = WindowCrews(WINDOW, crew)
        first, _ = earlier.pack(
            [Job(f"c{n}", "mechanical", rng.randint(1, 6) * H) for n in range(rng.randint(0, 8))]
        )
        committed = [("mechanical", s) for s in rng.sample(list(first.values()), len(first))]
        booked = WindowCrews(WINDOW, crew, committed)
        jobs = [
            Job(f"j{n}", "mechanical", rng.randint(1, 5) * H, rng.choice([None, *first.values()]))
            for n in range(rng.randint(1, 8))
        ]
        slots, overflow = booked.pack(jobs)
        assert len(slots) + len(overflow) == len(jobs), case
        every = [s for _, s in committed] + list(slots.values())
        for hour in range(8):
            assert load(every, T0 + hour * H) <= capacity, (case, hour)

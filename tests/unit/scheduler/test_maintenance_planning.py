"""Maintenance planning: capacity, plants and failure times hold; riskiest work goes first."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from prognos.scheduler.planning import (
    MaintenanceWindow,
    Plan,
    PlanningCosts,
    PlanningInputError,
    PlanStatus,
    SolverOptions,
    UnplacedReason,
    WorkItem,
    plan,
    replan,
)

T0 = datetime(2026, 3, 2, tzinfo=UTC)
EXACT = SolverOptions(time_limit_s=30.0, mip_rel_gap=0.0)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def window(
    id: str, start_h: float, *, plant: str = "P1", length_h: float = 8.0, **capacity: float
) -> MaintenanceWindow:
    return MaintenanceWindow(
        id=id,
        plant=plant,
        start=at(start_h),
        end=at(start_h + length_h),
        capacity_h=capacity or {"mech": 8.0},
    )


def item(
    id: str,
    *,
    p: float = 0.5,
    duration: float = 2.0,
    failure_h: float = 100.0,
    earliest_h: float = 0.0,
    plant: str = "P1",
    skill: str = "mech",
    cost: float = 1000.0,
    criticality: float = 1.0,
) -> WorkItem:
    return WorkItem(
        id=id,
        plant=plant,
        skill=skill,
        duration_h=duration,
        failure_probability=p,
        downtime_cost_per_h=cost,
        predicted_failure_at=at(failure_h),
        earliest_start=at(earliest_h),
        criticality=criticality,
    )


def expected_cost(
    items: list[WorkItem],
    windows: list[MaintenanceWindow],
    assignments: dict[str, str],
    costs: PlanningCosts,
) -> float:
    """The objective exactly as the planning module documents it, computed independently."""
    by_id = {w.id: w for w in windows}
    total = 0.0
    for i in items:
        f = i.criticality * i.failure_probability * i.downtime_cost_per_h
        f *= costs.breakdown_factor * i.duration_h
        if i.id not in assignments:
            total += f
            continue
        w = by_id[assignments[i.id]]
        span = (i.predicted_failure_at - i.earliest_start).total_seconds() / 3600
        done = (w.start - i.earliest_start).total_seconds() / 3600 + i.duration_h
        total += f * done / span + costs.crew_hour_cost * i.duration_h
    total += costs.window_cost * len(set(assignments.values()))
    return total


def assert_feasible(items: list[WorkItem], windows: list[MaintenanceWindow], result: Plan) -> None:
    by_id = {w.id: w for w in windows}
    assert set(result.assignments) | set(result.unplaced) == {i.id for i in items}
    assert not set(result.assignments) & set(result.unplaced)
    used: dict[tuple[str, str], float] = {}
    for i in items:
        if i.id not in result.assignments:
            continue
        w = by_id[result.assignments[i.id]]
        assert w.plant == i.plant
        assert w.start >= i.earliest_start
        assert w.start + timedelta(hours=i.duration_h) <= i.predicted_failure_at
        assert w.end - w.start >= timedelta(hours=i.duration_h)
        used[w.id, i.skill] = used.get((w.id, i.skill), 0.0) + i.duration_h
    for (wid, skill), hours in used.items():
        assert hours <= by_id[wid].capacity_h.get(skill, 0.0) + 1e-9


def random_instance(
    rng: random.Random, n_items: int
) -> tuple[list[WorkItem], list[MaintenanceWindow]]:
    skills = ("mech", "elec", "hyd")
    windows = [
        MaintenanceWindow(
            id=f"{plant}-{k}",
            plant=plant,
            start=at(12.0 * k + rng.uniform(0, 4)),
            end=at(12.0 * k + 4 + rng.uniform(2, 6)),
            capacity_h={s: rng.choice((0.0, 4.0, 6.0, 8.0)) for s in skills},
        )
        for plant in ("P1", "P2")
        for k in range(6)
    ]
    items = [
        item(
            f"wo-{n}",
            p=rng.uniform(0.05, 1.0),
            duration=rng.choice((1.0, 2.0, 3.0, 5.0, 9.0)),
            failure_h=rng.uniform(-5.0, 90.0),
            earliest_h=rng.choice((0.0, 0.0, 20.0)),
            plant=rng.choice(("P1", "P2", "P3")),
            skill=rng.choice((*skills, "weld")),
            cost=rng.choice((100.0, 1000.0, 5000.0)),
            criticality=rng.choice((1.0, 2.0)),
        )
        for n in range(n_items)
    ]
    return items, windows


def test_more_work_than_capacity_places_the_riskiest_first_and_says_why_not_the_rest() -> None:
    windows = [window("w1", 10.0, mech=4.0)]
    items = [item("low", p=0.2), item("high", p=0.9), item("mid", p=0.5)]

    result = plan(items, windows)

    assert result.assignments == {"high": "w1", "mid": "w1"}
    assert result.unplaced["low"].reason is UnplacedReason.NO_CAPACITY_BEFORE_FAILURE
    assert "w1" in result.unplaced["low"].detail
    assert result.status is PlanStatus.OPTIMAL


def test_criticality_and_downtime_cost_count_as_much_as_probability() -> None:
    windows = [window("w1", 10.0, mech=2.0)]
    items = [item("likely", p=0.9), item("critical", p=0.5, criticality=2.0)]
    assert plan(items, windows).assignments == {"critical": "w1"}

    items = [item("likely", p=0.9), item("costly", p=0.5, cost=2000.0)]
    assert plan(items, windows).assignments == {"costly": "w1"}


def test_windows_after_the_predicted_failure_are_never_used() -> None:
    windows = [window("early", 10.0), window("late", 50.0)]
    items = [
        item("fails-at-40", failure_h=40.0),
        item("fails-at-11", failure_h=11.0),  # 2 h of work would end after the failure
        item("fails-at-5", failure_h=5.0),
    ]

    result = plan(items, windows, options=EXACT)

    assert result.assignments == {"fails-at-40": "early"}
    assert result.variables == 1  # the only pair that finishes before its failure
    for wo in ("fails-at-11", "fails-at-5"):
        assert result.unplaced[wo].reason is UnplacedReason.NO_WINDOW_BEFORE_FAILURE


def test_earlier_windows_are_preferred_because_risk_grows_towards_the_failure() -> None:
    windows = [window("late", 60.0), window("early", 10.0), window("mid", 30.0)]
    result = plan([item("wo", failure_h=80.0)], windows)
    assert result.assignments == {"wo": "early"}


def test_every_unplaced_item_gets_the_reason_that_keeps_it_out() -> None:
    windows = [
        window("w1", 10.0, length_h=4.0, mech=8.0, elec=2.0, hyd=12.0),
        window("w2", 30.0, length_h=8.0, mech=8.0, elec=2.0),
    ]
    items = [
        item("other-plant", plant="P9"),
        item("no-welders", skill="weld"),
        item("too-long", duration=10.0),
        item("elec-too-long", skill="elec", duration=3.0),
        item("longer-than-window", skill="hyd", duration=6.0),
        item("parts-late", earliest_h=40.0),
        item("fails-first", failure_h=9.0),
        item("pointless", p=0.001),
    ]
    costs = PlanningCosts(crew_hour_cost=50.0)

    result = plan(items, windows, costs)

    reasons = {k: v.reason for k, v in result.unplaced.items()}
    assert reasons == {
        "other-plant": UnplacedReason.NO_WINDOW_FOR_PLANT,
        "no-welders": UnplacedReason.NO_WINDOW_FOR_SKILL,
        "too-long": UnplacedReason.DURATION_EXCEEDS_WINDOWS,
        "elec-too-long": UnplacedReason.DURATION_EXCEEDS_WINDOWS,
        "longer-than-window": UnplacedReason.DURATION_EXCEEDS_WINDOWS,
        "parts-late": UnplacedReason.NO_WINDOW_AFTER_EARLIEST_START,
        "fails-first": UnplacedReason.NO_WINDOW_BEFORE_FAILURE,
        "pointless": UnplacedReason.NOT_WORTH_SCHEDULING,
    }
    assert result.assignments == {}
    assert all(u.detail for u in result.unplaced.values())


def test_a_window_cost_gathers_work_into_fewer_windows() -> None:
    windows = [window("w1", 10.0), window("w2", 20.0)]
    items = [item("a", failure_h=30.0), item("b", failure_h=30.0, duration=6.0), item("c")]

    spread = plan(items, windows, PlanningCosts(), EXACT)
    gathered = plan(items, windows, PlanningCosts(window_cost=2000.0), EXACT)

    assert len(set(spread.assignments.values())) == 2
    assert len(spread.assignments) == 3
    assert len(set(gathered.assignments.values())) == 1
    # a second window for "a" would cost more than the 2200 of expected failure cost it saves
    assert gathered.assignments == {"b": "w1", "c": "w1"}
    assert gathered.unplaced["a"].reason is UnplacedReason.NOT_WORTH_SCHEDULING


@pytest.mark.parametrize("seed", range(12))
def test_capacity_plant_skill_and_time_always_hold_on_random_instances(seed: int) -> None:
    rng = random.Random(seed)
    items, windows = random_instance(rng, 60)
    costs = PlanningCosts(window_cost=rng.choice((0.0, 300.0)), crew_hour_cost=10.0)

    result = plan(items, windows, costs, SolverOptions(time_limit_s=20.0))

    assert_feasible(items, windows, result)
    assert result.objective == pytest.approx(
        expected_cost(items, windows, result.assignments, costs), rel=1e-9
    )
    assert result.status in (PlanStatus.OPTIMAL, PlanStatus.TIME_LIMIT)
    assert result.mip_gap <= 0.01 or result.status is PlanStatus.TIME_LIMIT
    for wo, unplaced in result.unplaced.items():
        if unplaced.reason is UnplacedReason.NO_CAPACITY_BEFORE_FAILURE:
            assert "full" in unplaced.detail, wo


@pytest.mark.parametrize("seed", range(8))
def test_the_plan_is_the_cheapest_an_exhaustive_search_finds(seed: int) -> None:
    rng = random.Random(100 + seed)
    windows = [window(f"w{k}", 6.0 + 20.0 * k, mech=rng.choice((3.0, 4.0, 6.0))) for k in range(3)]
    items = [
        item(
            f"wo-{n}",
            p=rng.uniform(0.1, 1.0),
            duration=rng.choice((1.0, 2.0, 3.0)),
            failure_h=rng.uniform(10.0, 80.0),
            cost=rng.choice((100.0, 1000.0)),
        )
        for n in range(7)
    ]
    costs = PlanningCosts(window_cost=rng.choice((0.0, 200.0)), crew_hour_cost=20.0)

    result = plan(items, windows, costs, EXACT)

    best = min(
        expected_cost(items, windows, assignment, costs)
        for assignment in _all_feasible_assignments(items, windows)
    )
    assert result.objective == pytest.approx(best, rel=1e-7)
    assert_feasible(items, windows, result)


def _all_feasible_assignments(
    items: list[WorkItem], windows: list[MaintenanceWindow]
) -> list[dict[str, str]]:
    options = [[None, *windows] for _ in items]
    found = []
    for choice in itertools.product(*options):
        used: dict[str, float] = {}
        ok = True
        for i, w in zip(items, choice, strict=True):
            if w is None:
                continue
            ends = w.start + timedelta(hours=i.duration_h)
            if w.start < i.earliest_start or ends > i.predicted_failure_at:
                ok = False
                break
            used[w.id] = used.get(w.id, 0.0) + i.duration_h
            if used[w.id] > w.capacity_h["mech"]:
                ok = False
                break
        if ok:
            found.append({i.id: w.id for i, w in zip(items, choice, strict=True) if w})
    return found


def test_replanning_keeps_a_scheduled_item_where_a_fresh_plan_would_move_it() -> None:
    windows = [window("w1", 1.0, mech=2.0), window("w2", 25.0, mech=2.0)]
    a = item("a", p=0.50, failure_h=49.0)
    first = plan([a], windows)
    assert first.assignments == {"a": "w1"}

    newcomer = item("x", p=0.52, failure_h=49.0)  # slightly riskier: wants w1 as well
    fresh = plan([a, newcomer], windows)
    again = replan(first, [a, newcomer], windows)

    assert fresh.assignments == {"x": "w1", "a": "w2"}
    assert again.assignments == {"a": "w1", "x": "w2"}


def test_replanning_moves_an_item_when_staying_costs_more_than_the_penalty() -> None:
    windows = [window("w1", 1.0, mech=2.0), window("w2", 25.0, mech=2.0)]
    a = item("a", p=0.50, failure_h=49.0)
    first = plan([a], windows)

    urgent = item("urgent", p=0.9, failure_h=20.0)  # only w1 is before its failure
    again = replan(first, [a, urgent], windows)

    assert again.assignments == {"urgent": "w1", "a": "w2"}


def test_replanning_an_unchanged_problem_changes_nothing() -> None:
    rng = random.Random(42)
    items, windows = random_instance(rng, 80)
    first = plan(items, windows)

    changed = [replace(i, failure_probability=i.failure_probability * 0.99) for i in items]
    again = replan(first, changed, windows)

    assert again.assignments == first.assignments
    assert_feasible(changed, windows, again)


def test_replanning_survives_removed_windows_and_items() -> None:
    rng = random.Random(7)
    items, windows = random_instance(rng, 60)
    first = plan(items, windows)
    removed_window = next(iter(first.assignments.values()))

    kept_windows = [w for w in windows if w.id != removed_window]
    kept_items = items[10:]
    again = replan(first.assignments, kept_items, kept_windows)

    assert_feasible(kept_items, kept_windows, again)
    assert removed_window not in again.assignments.values()
    kept_ids = {i.id for i in kept_items}
    could_stay = [k for k, w in first.assignments.items() if k in kept_ids and w != removed_window]
    stayed = [k for k in could_stay if again.assignments.get(k) == first.assignments[k]]
    assert could_stay and len(stayed) >= 0.9 * len(could_stay)


def test_nothing_to_place_is_an_empty_plan() -> None:
    result = plan([item("wo", plant="P9")], [window("w1", 1.0)])
    assert result.status is PlanStatus.EMPTY
    assert result.assignments == {}
    assert result.objective == pytest.approx(expected_cost([item("wo")], [], {}, PlanningCosts()))


@pytest.mark.parametrize(
    ("items", "windows", "field"),
    [
        ([item("a"), item("a")], [], "items[1].id"),
        ([item("a", duration=0.0)], [], "items[0].duration_h"),
        ([item("a", p=1.5)], [], "items[0].failure_probability"),
        ([], [window("w", 1.0), window("w", 2.0)], "windows[1].id"),
        ([], [window("w", 1.0, length_h=0.0)], "windows[0].end"),
        ([], [window("w", 1.0, mech=-1.0)], "windows[0].capacity_h[mech]"),
    ],
)
def test_bad_input_is_rejected_naming_the_field(
    items: list[WorkItem], windows: list[MaintenanceWindow], field: str
) -> None:
    with pytest.raises(PlanningInputError) as error:
        plan(items, windows)
    assert error.value.field == field

"""Maintenance planning: work orders into maintenance windows, a MILP solved by HiGHS.

The model, for work items ``i`` and maintenance windows ``w``:

Pairs. ``x[i, w]`` (binary) exists only for pairs that can hold: same plant; the window
offers the item's skill with at least ``duration_h`` crew-hours; the window is at least
``duration_h`` long; it starts at or after the item's ``earliest_start``; and the work is
done before the predicted failure, ``w.start + duration_h <= predicted_failure_at``. No
other pair becomes a variable, so a window after the predicted failure is never used.
Placing an item *after* its predicted failure is not modelled: such an item is reported
unplaced (``NO_WINDOW_BEFORE_FAILURE``) for the service to escalate as urgent work, rather
than quietly scheduled as a late repair.

Constraints. Each item is placed at most once, ``sum_w x[i, w] <= 1``. Per window and
skill, the placed crew-hours fit the capacity, ``sum_i duration_h[i] x[i, w] <= capacity``;
when a window has a fixed cost it must be opened to be used, ``... <= capacity * y[w]``.

Objective (minimised, in the currency of ``downtime_cost_per_h``):

* the expected failure cost of an item,
  ``F[i] = criticality * failure_probability * downtime_cost_per_h * failure_downtime_h``
  with ``failure_downtime_h = breakdown_factor * duration_h`` unless the item gives it;
* if placed in ``w``, the item still fails before service with a probability growing
  linearly from 0 at its earliest start to its full probability at the predicted failure,
  so it costs ``F[i] * lateness(i, w)`` with
  ``lateness = (w.start + duration_h - earliest_start) / (predicted_failure_at - earliest_start)``
  plus the disruption of the planned work, ``crew_hour_cost * duration_h``;
* if unplaced it costs the full ``F[i]``;
* each window used costs ``window_cost`` (stopping a line, bringing in a crew);
* in a re-plan, moving an item away from its previous window (or dropping it) costs
  ``move_penalty + move_penalty_fraction * F[i]``.

When capacity is short the solver keeps the work whose expected failure cost is highest
per crew-hour, and each unplaced item gets a diagnosed reason (``UnplacedReason``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import highspy
import numpy as np
import numpy.typing as npt

_EPS = 1e-6


class PlanningInputError(ValueError):
    """A work item or window breaks a rule; ``field`` names the offending field."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


@dataclass(frozen=True)
class WorkItem:
    """An open work order as the planner sees it.

    ``criticality`` multiplies the expected failure cost (1.0 = ordinary). ``failure_downtime_h``
    is the expected downtime if the asset fails before service; when ``None`` it is
    ``PlanningCosts.breakdown_factor * duration_h``.
    """

    id: str
    plant: str
    skill: str
    duration_h: float
    failure_probability: float
    downtime_cost_per_h: float
    predicted_failure_at: datetime
    earliest_start: datetime
    criticality: float = 1.0
    failure_downtime_h: float | None = None


@dataclass(frozen=True)
class MaintenanceWindow:
    """A period in which a plant may do maintenance, with crew-hours per skill."""

    id: str
    plant: str
    start: datetime
    end: datetime
    capacity_h: dict[str, float]


@dataclass(frozen=True)
class PlanningCosts:
    """The prices the planner trades against each other (currency of ``downtime_cost_per_h``).

    The disruption costs default to zero; set them from the plant's figures.
    """

    breakdown_factor: float = 3.0
    window_cost: float = 0.0
    crew_hour_cost: float = 0.0
    move_penalty: float = 0.0
    move_penalty_fraction: float = 0.05


@dataclass(frozen=True)
class SolverOptions:
    """Limits for the solver; the best plan found by then is returned.

    ``mip_rel_gap`` is relative to the plan's whole objective (expected failure cost
    included), so 0.01 means "provably within 1 % of the least expected cost". The
    independent parts of the problem are solved by ``workers`` threads, each HiGHS
    instance with ``threads`` threads of its own (``None``: HiGHS chooses).
    """

    time_limit_s: float = 10.0
    mip_rel_gap: float = 0.01
    threads: int | None = 1
    workers: int = 2


class UnplacedReason(StrEnum):
    """Why a work item is not in the plan, checked in this order."""

    NO_WINDOW_FOR_PLANT = "NO_WINDOW_FOR_PLANT"
    NO_WINDOW_FOR_SKILL = "NO_WINDOW_FOR_SKILL"
    DURATION_EXCEEDS_WINDOWS = "DURATION_EXCEEDS_WINDOWS"
    NO_WINDOW_AFTER_EARLIEST_START = "NO_WINDOW_AFTER_EARLIEST_START"
    NO_WINDOW_BEFORE_FAILURE = "NO_WINDOW_BEFORE_FAILURE"
    NO_CAPACITY_BEFORE_FAILURE = "NO_CAPACITY_BEFORE_FAILURE"
    NOT_WORTH_SCHEDULING = "NOT_WORTH_SCHEDULING"


@dataclass(frozen=True)
class Unplaced:
    """An unplaced item's reason and a sentence for people."""

    reason: UnplacedReason
    detail: str


class PlanStatus(StrEnum):
    """How good the plan is known to be."""

    OPTIMAL = "OPTIMAL"  # within the MIP gap
    TIME_LIMIT = "TIME_LIMIT"  # best plan found before the time limit
    HEURISTIC = "HEURISTIC"  # the solver gave nothing usable: the greedy start plan
    EMPTY = "EMPTY"  # no item could go into any window


@dataclass(frozen=True)
class Plan:
    """Where each work item goes, and why the others go nowhere.

    ``objective`` is the minimised total: expected failure cost plus disruption, plus the
    move penalties in a re-plan. ``mip_gap`` is how far ``objective`` may be, relative to
    itself, above the best lower bound proven (NaN when none was). ``variables`` counts the
    feasible (item, window) pairs.
    """

    assignments: dict[str, str]
    unplaced: dict[str, Unplaced]
    objective: float
    solve_time_s: float
    status: PlanStatus
    mip_gap: float = 0.0
    variables: int = 0


def plan(
    items: Iterable[WorkItem],
    windows: Iterable[MaintenanceWindow],
    costs: PlanningCosts | None = None,
    options: SolverOptions | None = None,
) -> Plan:
    """Place work items into maintenance windows at the least expected cost.

    Raises:
        PlanningInputError: duplicate ids, a non-positive duration, a probability outside
            [0, 1], a negative cost, or a window that ends before it starts.
    """
    return _Model(list(items), list(windows), costs or PlanningCosts(), {}).solve(
        options or SolverOptions()
    )


def replan(
    previous: Plan | Mapping[str, str],
    items: Iterable[WorkItem],
    windows: Iterable[MaintenanceWindow],
    costs: PlanningCosts | None = None,
    options: SolverOptions | None = None,
) -> Plan:
    """Plan again after changes, preferring to keep items where ``previous`` put them.

    ``items`` and ``windows`` are the whole current problem: new, updated and removed work
    orders or windows are simply what differs from the one ``previous`` was made for. An
    item stays in its previous window unless moving it saves more than the move penalty;
    the previous assignments that still fit start the solver.
    """
    assignments = previous.assignments if isinstance(previous, Plan) else previous
    return _Model(list(items), list(windows), costs or PlanningCosts(), dict(assignments)).solve(
        options or SolverOptions()
    )


def _hours(value: datetime) -> float:
    return value.timestamp() / 3600.0


def _validate(
    items: Sequence[WorkItem], windows: Sequence[MaintenanceWindow], c: PlanningCosts
) -> None:
    seen: set[str] = set()
    for n, item in enumerate(items):
        where = f"items[{n}]"
        if item.id in seen:
            raise PlanningInputError(f"{where}.id", f"duplicate work item {item.id!r}")
        seen.add(item.id)
        if not item.duration_h > 0:
            raise PlanningInputError(f"{where}.duration_h", "must be positive")
        if not 0.0 <= item.failure_probability <= 1.0:
            raise PlanningInputError(f"{where}.failure_probability", "must be in [0, 1]")
        if not item.downtime_cost_per_h >= 0:
            raise PlanningInputError(f"{where}.downtime_cost_per_h", "must not be negative")
        if not item.criticality >= 0:
            raise PlanningInputError(f"{where}.criticality", "must not be negative")
        if item.failure_downtime_h is not None and not item.failure_downtime_h >= 0:
            raise PlanningInputError(f"{where}.failure_downtime_h", "must not be negative")
    seen = set()
    for n, window in enumerate(windows):
        where = f"windows[{n}]"
        if window.id in seen:
            raise PlanningInputError(f"{where}.id", f"duplicate window {window.id!r}")
        seen.add(window.id)
        if not window.end > window.start:
            raise PlanningInputError(f"{where}.end", "must be after start")
        for skill, hours in window.capacity_h.items():
            if not hours >= 0:
                raise PlanningInputError(f"{where}.capacity_h[{skill}]", "must not be negative")
    for name in ("breakdown_factor", "window_cost", "crew_hour_cost", "move_penalty"):
        if not getattr(c, name) >= 0:
            raise PlanningInputError(f"costs.{name}", "must not be negative")
    if not c.move_penalty_fraction >= 0:
        raise PlanningInputError("costs.move_penalty_fraction", "must not be negative")


FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class _Solved:
    """What one HiGHS run gave: values per pair and per window, and the bound it proved."""

    values: FloatArray
    window_values: FloatArray
    bound: float
    offset: float
    optimal: bool


@dataclass
class _Model:
    """The arrays of one planning problem, its MILP, and the diagnosis of what stays out."""

    items: list[WorkItem]
    windows: list[MaintenanceWindow]
    costs: PlanningCosts
    previous: dict[str, str]
    # filled by __post_init__
    skills: list[str] = field(init=False)
    duration: FloatArray = field(init=False)
    earliest: FloatArray = field(init=False)
    failure: FloatArray = field(init=False)
    failure_cost: FloatArray = field(init=False)
    item_skill: IntArray = field(init=False)
    w_start: FloatArray = field(init=False)
    w_length: FloatArray = field(init=False)
    capacity: FloatArray = field(init=False)
    pair_item: IntArray = field(init=False)
    pair_window: IntArray = field(init=False)
    pair_cost: FloatArray = field(init=False)
    _constant: float = field(init=False, default=0.0)
    _x_cost: FloatArray = field(init=False)
    _reward: FloatArray = field(init=False)

    def __post_init__(self) -> None:
        _validate(self.items, self.windows, self.costs)
        self.windows.sort(key=lambda w: (w.start, w.id))
        skills = sorted(
            {i.skill for i in self.items} | {s for w in self.windows for s in w.capacity_h}
        )
        self.skills = skills
        skill_index = {s: n for n, s in enumerate(skills)}
        items, windows, c = self.items, self.windows, self.costs
        self.duration = np.array([i.duration_h for i in items], dtype=np.float64)
        self.earliest = np.array([_hours(i.earliest_start) for i in items], dtype=np.float64)
        self.failure = np.array([_hours(i.predicted_failure_at) for i in items], dtype=np.float64)
        downtime = np.array(
            [
                i.failure_downtime_h
                if i.failure_downtime_h is not None
                else c.breakdown_factor * i.duration_h
                for i in items
            ],
            dtype=np.float64,
        )
        self.failure_cost = (
            np.array([i.criticality * i.failure_probability * i.downtime_cost_per_h for i in items])
            * downtime
        )
        self.item_skill = np.array([skill_index[i.skill] for i in items], dtype=np.int64)
        self.w_start = np.array([_hours(w.start) for w in windows], dtype=np.float64)
        self.w_length = np.array([_hours(w.end) for w in windows]) - self.w_start
        self.capacity = np.zeros((len(windows), len(skills)), dtype=np.float64)
        for n, w in enumerate(windows):
            for skill, hours in w.capacity_h.items():
                self.capacity[n, skill_index[skill]] = hours
        self._build_pairs()

    def _plant_groups(self) -> dict[str, tuple[IntArray, IntArray]]:
        by_plant_items: dict[str, list[int]] = {}
        by_plant_windows: dict[str, list[int]] = {}
        for n, i in enumerate(self.items):
            by_plant_items.setdefault(i.plant, []).append(n)
        for n, w in enumerate(self.windows):
            by_plant_windows.setdefault(w.plant, []).append(n)
        return {
            plant: (
                np.array(item_ids, dtype=np.int64),
                np.array(by_plant_windows.get(plant, []), dtype=np.int64),
            )
            for plant, item_ids in by_plant_items.items()
        }

    def _build_pairs(self) -> None:
        """Only pairs that satisfy plant, skill, capacity, length and timing become columns."""
        pair_items: list[IntArray] = []
        pair_windows: list[IntArray] = []
        for item_ids, window_ids in self._plant_groups().values():
            if len(window_ids) == 0:
                continue
            d = self.duration[item_ids][:, None]
            start = self.w_start[window_ids][None, :]
            cap = self.capacity[np.ix_(window_ids, self.item_skill[item_ids])].T
            ok = (
                (cap >= d - _EPS)
                & (self.w_length[window_ids][None, :] >= d - _EPS)
                & (start >= self.earliest[item_ids][:, None] - _EPS)
                & (start + d <= self.failure[item_ids][:, None] + _EPS)
            )
            rows, cols = np.nonzero(ok)
            pair_items.append(item_ids[rows])
            pair_windows.append(window_ids[cols])
        if pair_items:
            self.pair_item = np.concatenate(pair_items)
            self.pair_window = np.concatenate(pair_windows)
        else:
            self.pair_item = np.zeros(0, dtype=np.int64)
            self.pair_window = np.zeros(0, dtype=np.int64)
        i, w = self.pair_item, self.pair_window
        span = np.maximum(self.failure[i] - self.earliest[i], _EPS)
        lateness = np.clip((self.w_start[w] + self.duration[i] - self.earliest[i]) / span, 0, 1)
        self.pair_cost = (
            self.failure_cost[i] * lateness + self.costs.crew_hour_cost * self.duration[i]
        )

    def _move_penalties(self) -> tuple[FloatArray, float]:
        """Per pair, the reward for staying in the previous window; and the constant paid."""
        reward = np.zeros(len(self.pair_item), dtype=np.float64)
        if not self.previous:
            return reward, 0.0
        window_index = {w.id: n for n, w in enumerate(self.windows)}
        previous = np.full(len(self.items), -1, dtype=np.int64)
        for n, item in enumerate(self.items):
            w = window_index.get(self.previous.get(item.id, ""), -1)
            previous[n] = w
        stays = previous[self.pair_item] == self.pair_window
        penalty = self.costs.move_penalty + self.costs.move_penalty_fraction * self.failure_cost
        reward[stays] = penalty[self.pair_item[stays]]
        # An item whose previous window is no longer a feasible pair is forced to move: free.
        return reward, float(reward.sum())

    def solve(self, options: SolverOptions) -> Plan:
        """Solve, stopping as soon as the plan is within ``mip_rel_gap`` of a proven bound.

        1. Two quick plans: a greedy one (previous assignments first, then the best expected
           saving per crew-hour) and one guided by the LP relaxation, whose value is also a
           lower bound. If the better plan is within the gap, that is the answer.
        2. The MILP falls apart into independent parts, one per plant and skill, each small
           enough for HiGHS to close quickly; they are solved ``workers`` at a time, started
           from the quick plan. Without a window cost this is exact, and the parts' proven
           bounds add up to the bound. With a window cost the skills of a window are
           coupled, so this step keeps the windows the quick plan opened and only improves
           the plan, and
        3. if that plan is not yet within the gap, the MILP per plant (windows to open
           included) is solved from it until the gap or the time limit is reached.
        """
        started = time.perf_counter()
        deadline = started + options.time_limit_s
        reward, penalty_constant = self._move_penalties()
        self._reward = reward
        self._constant = float(self.failure_cost.sum()) + penalty_constant
        self._x_cost = self.pair_cost - self.failure_cost[self.pair_item] - reward
        n_pairs = len(self.pair_item)
        if n_pairs == 0:
            return self._plan(np.zeros(0, dtype=bool), started, PlanStatus.EMPTY, 0.0)

        best = self._greedy()
        everything = np.arange(n_pairs, dtype=np.int64)
        relaxed = self._run(everything, True, False, None, deadline, options)
        if relaxed is None:
            return self._plan(self._topped_up(best), started, PlanStatus.HEURISTIC, math.nan)
        guided = self._guided(relaxed.values)
        if self._total(guided) < self._total(best):
            best = guided
        bound = relaxed.bound
        if self._gap(self._total(best), bound) <= options.mip_rel_gap:
            best = self._topped_up(best)
            return self._plan(
                best, started, PlanStatus.OPTIMAL, self._gap(self._total(best), bound)
            )

        window_cost = self.costs.window_cost > 0
        skill_parts = self._parts(by_skill=True)
        if window_cost:
            opened = self._opened(best)
            skill_parts = [p[opened[self.pair_window[p]]] for p in skill_parts]
        chosen, part_bound = self._solve_parts(
            [p for p in skill_parts if len(p)],
            best,
            relaxed,
            not window_cost,
            deadline,
            options,
        )
        if part_bound is not None:
            bound = max(bound, part_bound)
        if self._total(chosen) <= self._total(best):
            best = chosen
        if window_cost and self._gap(self._total(best), bound) > options.mip_rel_gap:
            chosen, part_bound = self._solve_parts(
                self._parts(by_skill=False), best, relaxed, True, deadline, options
            )
            if part_bound is not None:
                bound = max(bound, part_bound)
            if self._total(chosen) <= self._total(best):
                best = chosen
        best = self._topped_up(best)
        gap = self._gap(self._total(best), bound)
        status = PlanStatus.OPTIMAL if gap <= options.mip_rel_gap else PlanStatus.TIME_LIMIT
        return self._plan(best, started, status, gap)

    def _solve_parts(
        self,
        parts: list[IntArray],
        start: npt.NDArray[np.bool_],
        relaxed: _Solved,
        exact: bool,
        deadline: float,
        options: SolverOptions,
    ) -> tuple[npt.NDArray[np.bool_], float | None]:
        """Solve independent parts of the MILP, each from ``start``; returns the combined
        plan and, if the parts are ``exact`` (the whole problem, split), its proven bound.

        An exact part whose start is already within the gap of its LP value is not solved.
        """
        bound = self._constant
        todo: list[tuple[IntArray, float]] = []
        for part in parts:
            lp_value = self._part_value(part, relaxed.values, relaxed.window_values)
            if exact:
                offset = self._part_offset(part)
                value = self._part_value(part, start.astype(np.float64), self._opened(start))
                if self._gap(value + offset, lp_value + offset) <= options.mip_rel_gap:
                    bound += lp_value
                    continue
            todo.append((part, lp_value))

        def solve_part(part: IntArray) -> _Solved | None:
            # Parts that are not exact keep the windows they were given open.
            return self._run(part, False, True, start, deadline, options, with_windows=exact)

        workers = max(1, min(options.workers, len(todo)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(solve_part, [part for part, _ in todo]))
        chosen = start.copy()
        for (part, lp_value), solved in zip(todo, results, strict=True):
            if solved is None:
                bound += lp_value
                continue
            candidate = chosen.copy()
            candidate[part] = solved.values[part] > 0.5
            if self._feasible(candidate) and self._total(candidate) <= self._total(chosen):
                chosen = candidate
            bound += max(lp_value, solved.bound - solved.offset)
        return chosen, bound if exact else None

    def _parts(self, by_skill: bool) -> list[IntArray]:
        """Pair indices of independent parts of the MILP (per plant, or plant and skill)."""
        plant_of = {p: n for n, p in enumerate(sorted({w.plant for w in self.windows}))}
        window_plant = np.array([plant_of[w.plant] for w in self.windows], dtype=np.int64)
        key = window_plant[self.pair_window]
        if by_skill:
            key = key * len(self.skills) + self.item_skill[self.pair_item]
        order = np.argsort(key, kind="stable")
        _, first = np.unique(key[order], return_index=True)
        parts = np.split(order, first[1:])
        return sorted(parts, key=len, reverse=True)

    def _part_value(
        self,
        part: IntArray,
        values: FloatArray,
        window_values: npt.NDArray[np.float64] | npt.NDArray[np.bool_],
        given: IntArray | None = None,
    ) -> float:
        """A part's savings (negative) under pair and window values, before its offset.

        ``values`` is indexed like all pairs, or like ``part`` when ``given`` is ``part``.
        """
        x = values if given is not None else values[part]
        value = float(self._x_cost[part] @ x)
        if self.costs.window_cost > 0:
            windows = np.unique(self.pair_window[part])
            value += self.costs.window_cost * float(np.asarray(window_values)[windows].sum())
        return value

    def _part_offset(self, part: IntArray) -> float:
        items = np.unique(self.pair_item[part])
        return float(self.failure_cost[items].sum() + self._reward[part].sum())

    def _opened(self, chosen: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        opened = np.zeros(len(self.windows), dtype=bool)
        opened[self.pair_window[chosen]] = True
        return opened

    def _total(self, chosen: npt.NDArray[np.bool_]) -> float:
        """The objective of a plan: the constant, the placed pairs, the windows opened."""
        total = self._constant + float(self._x_cost[chosen].sum())
        if self.costs.window_cost > 0:
            total += self.costs.window_cost * len(np.unique(self.pair_window[chosen]))
        return total

    @staticmethod
    def _gap(total: float, bound: float) -> float:
        return max(0.0, total - bound) / max(abs(total), 1e-9)

    def _guided(self, values: FloatArray) -> npt.NDArray[np.bool_]:
        """Round an LP solution: items by LP mass then saving per hour, windows by LP value."""
        x_cost = self._x_cost
        mass = np.zeros(len(self.items))
        np.add.at(mass, self.pair_item, values)
        saving = np.zeros(len(self.items))
        np.add.at(saving, self.pair_item, -x_cost * values)
        order = np.lexsort((x_cost, -values, self.pair_item))
        heads = np.nonzero(np.r_[True, self.pair_item[order][1:] != self.pair_item[order][:-1]])[0]
        ends = np.append(heads[1:], len(order))
        item = self.pair_item[order[heads]]
        visit = np.lexsort((-saving[item] / self.duration[item], -np.round(mass[item], 6)))
        return self._fill(order, heads[visit], ends[visit])

    def _greedy(self, keep: IntArray | None = None) -> npt.NDArray[np.bool_]:
        """A plan without the solver: the pairs ``keep`` (by default, the previous
        assignments that still fit) stay, then items go by their best saving per crew-hour,
        each to its cheapest window with room."""
        x_cost = self._x_cost
        order = np.lexsort((x_cost, self.pair_item))
        heads = np.nonzero(np.r_[True, self.pair_item[order][1:] != self.pair_item[order][:-1]])[0]
        ends = np.append(heads[1:], len(order))
        best = order[heads]
        gain = -x_cost[best] / self.duration[self.pair_item[best]]
        if keep is None:
            keep = np.nonzero(self._reward > 0)[0]
            keep = keep[np.argsort(x_cost[keep], kind="stable")]
        visit = np.argsort(-gain, kind="stable")
        return self._fill(order, heads[visit], ends[visit], first=keep)

    def _topped_up(self, chosen: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """The plan plus every unplaced item that still fits somewhere and saves money.

        A plan within the MIP gap may leave room that some unplaced item would use with a
        saving (the gap is relative to the whole expected cost); filling it greedily can
        only lower the objective, so it is kept when it does.
        """
        if chosen.all() or not len(chosen):
            return chosen
        topped = self._greedy(keep=np.nonzero(chosen)[0])
        return topped if self._total(topped) < self._total(chosen) - _EPS else chosen

    def _fill(
        self,
        order: IntArray,
        heads: IntArray,
        ends: IntArray,
        first: IntArray | None = None,
    ) -> npt.NDArray[np.bool_]:
        """Place greedily: the pairs ``first``, then per item the first pair of
        ``order[head:end]`` that saves money and has room, items in the given order."""
        x_cost = self._x_cost
        chosen = np.zeros(len(x_cost), dtype=bool)
        left = self.capacity.copy()
        placed = np.zeros(len(self.items), dtype=bool)
        opened = np.zeros(len(self.windows), dtype=bool)
        pair_item = self.pair_item.tolist()
        pair_window = self.pair_window.tolist()
        skill = self.item_skill.tolist()
        duration = self.duration.tolist()
        costs = x_cost.tolist()
        window_cost = self.costs.window_cost

        def try_take(p: int) -> bool:
            i, w = pair_item[p], pair_window[p]
            extra = 0.0 if opened[w] else window_cost
            if costs[p] + extra >= 0 or left[w, skill[i]] < duration[i] - _EPS:
                return False
            chosen[p] = True
            placed[i] = True
            opened[w] = True
            left[w, skill[i]] -= duration[i]
            return True

        for p in (first if first is not None else np.zeros(0, dtype=np.int64)).tolist():
            if not placed[pair_item[p]]:
                try_take(p)
        for head, end in zip(heads.tolist(), ends.tolist(), strict=True):
            if placed[pair_item[order[head]]]:
                continue
            for p in order[head:end].tolist():
                if try_take(p):
                    break
        return chosen

    def _run(
        self,
        pairs: IntArray,
        whole: bool,
        integer: bool,
        start: npt.NDArray[np.bool_] | None,
        deadline: float,
        options: SolverOptions,
        with_windows: bool = True,
    ) -> _Solved | None:
        """Solve the LP or MILP over some pairs with HiGHS; ``None`` if it gave no solution.

        With a window cost (and ``with_windows``), a used window's capacity rows read
        ``sum d x - capacity y <= 0`` with ``y`` (binary) paying ``window_cost``; without
        ``with_windows`` the windows count as open already. The objective offset is the expected
        failure cost of the items involved, so the relative MIP gap is measured against the
        whole expected cost rather than against the savings alone.
        """
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return None
        n = len(pairs)
        n_skills = len(self.skills)
        item = self.pair_item[pairs]
        window = self.pair_window[pairs]
        items, item_row = np.unique(item, return_inverse=True)
        n_item_rows = len(items)
        keys = window * n_skills + self.item_skill[item]
        cap_keys, cap_row = np.unique(keys, return_inverse=True)
        n_rows = n_item_rows + len(cap_keys)
        row_upper = np.concatenate([np.ones(n_item_rows), self.capacity.reshape(-1)[cap_keys]])

        # Columns 0..n-1 are x[i, w], each in its item row and its capacity row.
        index = np.empty(2 * n, dtype=np.int32)
        index[0::2] = item_row
        index[1::2] = n_item_rows + cap_row
        value = np.empty(2 * n, dtype=np.float64)
        value[0::2] = 1.0
        value[1::2] = self.duration[item]
        starts = np.arange(0, 2 * n + 1, 2, dtype=np.int32)
        cost = self._x_cost[pairs]
        y_windows = np.zeros(0, dtype=np.int64)
        if with_windows and self.costs.window_cost > 0:
            # Capacity keys are sorted by window, so each y column's rows are contiguous.
            row_window = cap_keys // n_skills
            y_windows, y_first = np.unique(row_window, return_index=True)
            index = np.concatenate([index, np.arange(n_item_rows, n_rows, dtype=np.int32)])
            value = np.concatenate([value, -self.capacity.reshape(-1)[cap_keys]])
            ends = np.append(y_first, len(cap_keys))
            starts = np.concatenate([starts[:-1], (2 * n + ends).astype(np.int32)])
            cost = np.concatenate([cost, np.full(len(y_windows), self.costs.window_cost)])
            row_upper[n_item_rows:] = 0.0
        n_cols = n + len(y_windows)
        offset = self._constant if whole else self._part_offset(pairs)

        lp = highspy.HighsLp()
        lp.num_col_ = n_cols
        lp.num_row_ = n_rows
        lp.col_cost_ = cost
        lp.offset_ = offset
        lp.col_lower_ = np.zeros(n_cols)
        lp.col_upper_ = np.ones(n_cols)
        lp.row_lower_ = np.full(n_rows, -highspy.kHighsInf)
        lp.row_upper_ = row_upper
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = starts
        lp.a_matrix_.index_ = index
        lp.a_matrix_.value_ = value
        if integer:
            lp.integrality_ = [highspy.HighsVarType.kInteger] * n_cols

        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("time_limit", float(remaining))
        h.setOptionValue("mip_rel_gap", float(options.mip_rel_gap))
        if options.threads is not None:
            h.setOptionValue("threads", int(options.threads))
        h.passModel(lp)
        if integer and start is not None and start[pairs].any():
            used = np.zeros(len(self.windows), dtype=bool)
            used[self.pair_window[start]] = True
            solution = highspy.HighsSolution()
            solution.col_value = np.concatenate(
                [start[pairs].astype(np.float64), used[y_windows].astype(np.float64)]
            )
            h.setSolution(solution)
        h.run()
        info = h.getInfo()
        status = h.getModelStatus()
        if info.primal_solution_status != highspy.kSolutionStatusFeasible:
            return None
        if not integer and status != highspy.HighsModelStatus.kOptimal:
            return None
        col_value = np.asarray(h.getSolution().col_value, dtype=np.float64)
        values = np.zeros(len(self.pair_item), dtype=np.float64)
        values[pairs] = col_value[:n]
        window_values = np.zeros(len(self.windows), dtype=np.float64)
        window_values[y_windows] = col_value[n:]
        bound = float(info.mip_dual_bound if integer else info.objective_function_value)
        return _Solved(
            values=values,
            window_values=window_values,
            bound=bound,
            offset=offset,
            optimal=status == highspy.HighsModelStatus.kOptimal,
        )

    def _feasible(self, chosen: npt.NDArray[np.bool_]) -> bool:
        """Re-check a rounded solution: at most once per item, within every capacity."""
        i, w = self.pair_item[chosen], self.pair_window[chosen]
        if len(np.unique(i)) != len(i):
            return False
        used = np.zeros_like(self.capacity)
        np.add.at(used, (w, self.item_skill[i]), self.duration[i])
        return bool(np.all(used <= self.capacity + 1e-6))

    def _plan(
        self,
        chosen: npt.NDArray[np.bool_],
        started: float,
        status: PlanStatus,
        gap: float,
    ) -> Plan:
        i, w = self.pair_item[chosen], self.pair_window[chosen]
        objective = self._total(chosen)
        assignments = {
            self.items[int(a)].id: self.windows[int(b)].id for a, b in zip(i, w, strict=True)
        }
        used = np.zeros_like(self.capacity)
        np.add.at(used, (w, self.item_skill[i]), self.duration[i])
        placed = np.zeros(len(self.items), dtype=bool)
        placed[i] = True
        unplaced = {
            self.items[n].id: self._diagnose(n, chosen, used)
            for n in np.nonzero(~placed)[0].tolist()
        }
        return Plan(
            assignments=assignments,
            unplaced=unplaced,
            objective=objective,
            solve_time_s=time.perf_counter() - started,
            status=status,
            mip_gap=gap,
            variables=len(self.pair_item),
        )

    def _diagnose(self, n: int, chosen: npt.NDArray[np.bool_], used: FloatArray) -> Unplaced:
        """Why item ``n`` is unplaced: the first test its windows fail, in reason order."""
        item = self.items[n]
        d, s = self.duration[n], self.item_skill[n]
        plant = np.array([w.plant == item.plant for w in self.windows], dtype=bool)
        if not plant.any():
            return Unplaced(
                UnplacedReason.NO_WINDOW_FOR_PLANT, f"no maintenance window at plant {item.plant}"
            )
        skill = plant & (self.capacity[:, s] > 0)
        if not skill.any():
            return Unplaced(
                UnplacedReason.NO_WINDOW_FOR_SKILL,
                f"no window at plant {item.plant} has crew for skill {item.skill}",
            )
        fits = skill & (self.capacity[:, s] >= d - _EPS) & (self.w_length >= d - _EPS)
        if not fits.any():
            return Unplaced(
                UnplacedReason.DURATION_EXCEEDS_WINDOWS,
                f"{d:g} h of {item.skill} work fits no window at plant {item.plant}",
            )
        after = fits & (self.w_start >= self.earliest[n] - _EPS)
        if not after.any():
            return Unplaced(
                UnplacedReason.NO_WINDOW_AFTER_EARLIEST_START,
                f"no fitting window starts at or after {item.earliest_start.isoformat()}",
            )
        before = after & (self.w_start + d <= self.failure[n] + _EPS)
        if not before.any():
            return Unplaced(
                UnplacedReason.NO_WINDOW_BEFORE_FAILURE,
                f"no fitting window lets {d:g} h of work finish before the predicted failure "
                f"at {item.predicted_failure_at.isoformat()}",
            )
        candidates = np.nonzero(before)[0]
        room = candidates[self.capacity[candidates, s] - used[candidates, s] >= d - _EPS]
        if len(room) == 0:
            return Unplaced(
                UnplacedReason.NO_CAPACITY_BEFORE_FAILURE,
                f"all {len(candidates)} windows before the predicted failure "
                f"({self.windows[candidates[0]].id} .. {self.windows[candidates[-1]].id}) "
                f"are full of {item.skill} work whose placement saves more expected cost",
            )
        best = float(self.failure_cost[n] - self._best_pair_cost(n, room))
        return Unplaced(
            UnplacedReason.NOT_WORTH_SCHEDULING,
            f"expected failure cost {self.failure_cost[n]:.2f} does not outweigh the cost of "
            f"servicing it in a window with room (best saving {best:.2f} before window cost "
            f"{self.costs.window_cost:.2f})",
        )

    def _best_pair_cost(self, n: int, windows: IntArray) -> float:
        mask = (self.pair_item == n) & np.isin(self.pair_window, windows)
        costs = self.pair_cost[mask]
        return float(costs.min()) if len(costs) else float(self.failure_cost[n])

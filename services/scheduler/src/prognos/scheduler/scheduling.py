"""The planning job: re-plan open work orders when windows, crews or risks change.

A commit that changes what the plan depends on (a work order opened, updated, cancelled or
completed; assets, windows or crews upserted) wakes the planner. It waits until changes
have been quiet for ``schedule_debounce_s`` (never longer than ``schedule_max_delay_s``
after the first), so a burst of predictions is planned once, and it also runs every
``schedule_interval_s`` so releases follow the clock. One pass:

1. reads the work orders it may still move (PROPOSED, SCHEDULED) and the ones committed to
   the ERP (RELEASED, ACKNOWLEDGED, IN_PROGRESS: their slots hold crew time), the assets,
   the windows ahead and the crews;
2. offers the planner (``planning.replan``, HiGHS, in a worker thread) each window's free
   crew-hours per skill, keeping work where it was unless moving it pays;
3. packs each window's planned work into its crews' time (``slots``); work that does not fit
   there (free time in stretches shorter than the job) goes to the earliest gap
   before its predicted failure in another window of the plant, riskiest first;
4. writes, in one transaction, a slot for each placed order (released to the ERP once the
   slot starts within ``schedule_release_horizon_h``) and, for each order it could not
   place before its predicted failure, the reason (``WorkOrderUnplaced``), all audited.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from prognos.scheduler import adapters, handlers
from prognos.scheduler.domain import (
    COMMITTED_STATES,
    MOVABLE_STATES,
    AssetData,
    CrewData,
    Slot,
    Window,
    WorkOrderState,
)
from prognos.scheduler.planning import (
    MaintenanceWindow,
    Plan,
    PlanningCosts,
    SolverOptions,
    UnplacedReason,
    WorkItem,
    replan,
)
from prognos.scheduler.slots import Job, WindowCrews

if TYPE_CHECKING:
    from prognos.core.config import Settings
    from prognos.core.store import EventStore

log = logging.getLogger(__name__)

_APPLY_CHUNK = 200
_writing_plan: ContextVar[bool] = ContextVar("prognos_scheduler_writing_plan", default=False)

#: Reasons the planner gives from the free crew time alone; with work already committed to
#: the ERP in the windows, the truth may be that they are full.
_SHAPE_REASONS = frozenset(
    {
        UnplacedReason.NO_WINDOW_FOR_SKILL,
        UnplacedReason.DURATION_EXCEEDS_WINDOWS,
        UnplacedReason.NO_WINDOW_BEFORE_FAILURE,
    }
)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class PlanResult:
    """What one planning pass decided and how long its parts took."""

    items: int
    placed: int
    unplaced: int
    committed: int
    windows: int
    status: str
    solve_s: float
    total_s: float
    repaired: int
    applied: handlers.AppliedPlan
    changes: list[handlers.PlannedChange]


@dataclass
class _Snapshot:
    now: datetime
    movable: list[adapters.OrderRow]
    committed: list[adapters.OrderRow]
    assets: dict[str, AssetData]
    windows: dict[str, list[Window]]
    crews: list[CrewData]


class Planner:
    """Plans open work orders into maintenance windows, in the background.

    Args:
        store: the scheduler's event store.
        settings: ``schedule_*`` settings.
        costs: the prices the planner trades off.
        clock: the time "now" (tests move it).
    """

    def __init__(
        self,
        store: EventStore,
        settings: Settings,
        *,
        costs: PlanningCosts | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._store = store
        self._settings = settings
        self._costs = costs or PlanningCosts()
        self._clock = clock
        self._wake = asyncio.Event()
        self._stopping = False
        self._lock = asyncio.Lock()
        self.passes = 0
        self.last: PlanResult | None = None
        store.on_commit.append(self._on_commit)

    def wake(self) -> None:
        """Something the plan depends on changed: plan again soon."""
        self._wake.set()

    def _on_commit(self) -> None:
        # The planner's own commits change nothing it has to plan again for; commits are
        # announced in the committing task, so the context tells whose commit this was.
        if not _writing_plan.get():
            self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Plan after each quiet burst of changes, and every ``schedule_interval_s``."""
        settings = self._settings
        self._wake.set()  # a first pass at start-up: time passed while the service was down
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), settings.schedule_interval_s)
            except TimeoutError:
                pass
            first = time.monotonic()
            while not self._stopping:
                self._wake.clear()
                left = settings.schedule_max_delay_s - (time.monotonic() - first)
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(
                        self._wake.wait(), min(settings.schedule_debounce_s, left)
                    )
                except TimeoutError:
                    break
            if self._stopping:
                break
            try:
                await self.plan_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("planning failed; trying again at the next change", exc_info=True)

    async def plan_once(
        self, before_write: Callable[[], Awaitable[None]] | None = None
    ) -> PlanResult:
        """One planning pass: read, solve, pack, write. Passes never overlap.

        Args:
            before_write: awaited between solving and writing (tests use it to change
                work orders while a plan is on its way).
        """
        async with self._lock:
            started = time.perf_counter()
            snapshot = await self._read(self._clock())
            changes, info = await self._solve(snapshot)
            if before_write is not None:
                await before_write()
            applied = handlers.AppliedPlan()
            # Written in chunks, so the writer lock is never held for long.
            token = _writing_plan.set(True)
            try:
                for start in range(0, len(changes), _APPLY_CHUNK):
                    async with self._store.transaction(actor="service:scheduler") as uow:
                        part = await handlers.apply_plan(
                            uow,
                            changes[start : start + _APPLY_CHUNK],
                            snapshot.now,
                            info["plan_id"],
                            snapshot.assets,
                        )
                    applied += part
                if changes:
                    async with self._store.transaction(actor="service:scheduler") as uow:
                        await handlers.record_plan(uow, {**info, **applied.__dict__})
            finally:
                _writing_plan.reset(token)
            if applied.stale:
                self.wake()  # some orders changed while we planned: plan them again
            self.passes += 1
            result = PlanResult(
                items=info["items"],
                placed=info["placed"],
                unplaced=info["unplaced"],
                committed=len(snapshot.committed),
                windows=info["windows"],
                status=info["status"],
                solve_s=info["solve_s"],
                total_s=time.perf_counter() - started,
                repaired=info["repaired"],
                applied=applied,
                changes=changes,
            )
            self.last = result
            return result

    @staticmethod
    def _pack(
        plan: Plan,
        items: list[WorkItem],
        windows: list[Window],
        window_plant: dict[str, str],
        jobs: dict[str, Job],
        crews_of: Callable[[Window], WindowCrews],
    ) -> tuple[dict[str, Slot], list[str], int]:
        """Slots for the plan's work; what does not fit its window's crews tries other windows.

        The plan respects each window's crew-hours, but a window's crews may hold less when
        its free time is in stretches shorter than a job. Such a job goes back to its
        previous slot if that is still free, else to the earliest gap it fits before its
        predicted failure in another window of its plant, riskiest job first. Returns the
        slots, the ids of the jobs that fit nowhere, and how many jobs were moved.
        """
        by_window: dict[str, list[Job]] = defaultdict(list)
        for item_id, window_id in plan.assignments.items():
            by_window[window_id].append(jobs[item_id])
        booked = {w.id: crews_of(w) for w in windows}
        slots: dict[str, Slot] = {}
        overflow: list[Job] = []
        for window_id, window_jobs in by_window.items():
            placed, rest = booked[window_id].pack(window_jobs)
            slots.update(placed)
            overflow.extend(rest)
        item_of = {i.id: i for i in items}
        overflow.sort(key=lambda j: (-item_of[j.id].failure_probability, j.id))
        left: list[str] = []
        for job in overflow:
            item = item_of[job.id]
            previous = job.previous
            if (
                previous is not None
                and previous.window_id in booked
                and previous.end <= item.predicted_failure_at
                and booked[previous.window_id].keep(job, previous)
            ):
                slots[job.id] = previous  # where it was: no change to announce
                continue
            for window in windows:
                if window_plant[window.id] != item.plant:
                    continue
                slot = booked[window.id].fit(job, item.predicted_failure_at)
                if slot is not None:
                    slots[job.id] = slot
                    break
            else:
                left.append(job.id)
        return slots, left, len(overflow) - len(left)

    @staticmethod
    def _fits_when_free(
        item: WorkItem,
        windows: list[Window],
        window_plant: dict[str, str],
        crews_by_plant: dict[str, list[CrewData]],
        now: datetime,
    ) -> bool:
        """Whether some window would take the job before its failure if none were booked."""
        if not any(
            c.skill == item.skill and c.capacity > 0 for c in crews_by_plant.get(item.plant, [])
        ):
            return False
        duration = timedelta(hours=item.duration_h)
        for window in windows:
            begin = max(window.start, now, item.earliest_start)
            if (
                window_plant[window.id] == item.plant
                and begin + duration <= window.end
                and begin + duration <= item.predicted_failure_at
            ):
                return True
        return False

    async def _read(self, now: datetime) -> _Snapshot:
        async with self._store.reader() as conn:
            movable = await adapters.orders_in_states(conn, MOVABLE_STATES)
            committed = await adapters.orders_in_states(conn, COMMITTED_STATES)
            assets = await adapters.all_assets(
                conn, [o.asset_id for o in movable] + [o.asset_id for o in committed]
            )
            windows = await adapters.windows_ahead(conn, now)
            crews = await adapters.all_crews(conn)
        return _Snapshot(now, movable, committed, assets, windows, crews)

    async def _solve(self, s: _Snapshot) -> tuple[list[handlers.PlannedChange], dict[str, Any]]:
        now = s.now
        crews_by_plant: dict[str, list[CrewData]] = defaultdict(list)
        skill_of_crew: dict[str, str] = {}
        for crew in s.crews:
            crews_by_plant[crew.plant].append(crew)
            skill_of_crew[crew.crew_id] = crew.skill
        committed_in: dict[str, list[tuple[str, Slot]]] = defaultdict(list)
        for order in s.committed:
            if order.slot is not None:
                skill = skill_of_crew.get(order.slot.crew_id, "")
                committed_in[order.slot.window_id].append((skill, order.slot))
        all_windows = [w for plant in sorted(s.windows) for w in s.windows[plant]]
        plant_of = {w.id: plant for plant in s.windows for w in s.windows[plant]}

        def crews_of(window: Window) -> WindowCrews:
            return WindowCrews(
                window,
                crews_by_plant.get(plant_of[window.id], []),
                committed_in.get(window.id, []),
                not_before=now,
            )

        capacity = {w.id: crews_of(w).free_hours() for w in all_windows}
        items: list[WorkItem] = []
        jobs: dict[str, Job] = {}
        unplaced: dict[str, tuple[str, str]] = {}
        for order in s.movable:
            asset = s.assets.get(order.asset_id)
            if asset is None:
                unplaced[order.work_order_id] = (
                    "NO_MASTER_DATA",
                    f"the ERP sent no master data for asset {order.asset_id}",
                )
                continue
            items.append(
                WorkItem(
                    id=order.work_order_id,
                    plant=asset.plant,
                    skill=asset.required_skill,
                    duration_h=asset.service_duration_h,
                    failure_probability=min(max(order.risk, 0.0), 1.0),
                    downtime_cost_per_h=asset.downtime_cost_per_h or 1.0,
                    predicted_failure_at=order.due_at,
                    earliest_start=now,
                    criticality=asset.criticality,
                )
            )
            jobs[order.work_order_id] = Job(
                order.work_order_id,
                asset.required_skill,
                timedelta(hours=asset.service_duration_h),
                order.slot,
            )
        previous = {o.work_order_id: o.slot.window_id for o in s.movable if o.slot is not None}
        options = SolverOptions(time_limit_s=self._settings.schedule_time_limit_s)
        offered = [
            MaintenanceWindow(w.id, plant_of[w.id], max(w.start, now), w.end, capacity[w.id])
            for w in all_windows
        ]
        plan: Plan | None = None
        slots: dict[str, Slot] = {}
        repaired = 0
        if items:
            plan = await asyncio.to_thread(replan, previous, items, offered, self._costs, options)
            slots, overflow, repaired = self._pack(
                plan, items, all_windows, plant_of, jobs, crews_of
            )
            item_of = {i.id: i for i in items}
            for item_id, why in plan.unplaced.items():
                unplaced[item_id] = (why.reason.value, why.detail)
                if why.reason in _SHAPE_REASONS and self._fits_when_free(
                    item_of[item_id], all_windows, plant_of, crews_by_plant, now
                ):
                    # The planner saw only free crew time: the window is there, but full.
                    unplaced[item_id] = (
                        UnplacedReason.NO_CAPACITY_BEFORE_FAILURE.value,
                        "the windows before the predicted failure that could take it are "
                        "fully booked with work already released to the ERP",
                    )
            for item_id in overflow:
                unplaced[item_id] = (
                    UnplacedReason.NO_CAPACITY_BEFORE_FAILURE.value,
                    "the crew-hours before the predicted failure are left only in stretches "
                    "shorter than the job",
                )

        horizon = now + timedelta(hours=self._settings.schedule_release_horizon_h)
        changes: list[handlers.PlannedChange] = []
        for order in s.movable:
            wid = order.work_order_id
            slot = slots.get(wid)
            if slot is not None:
                moved = slot != order.slot
                release = slot.start <= horizon
                if moved or release:
                    changes.append(
                        handlers.PlannedChange(wid, order.version, slot=slot, release=release)
                    )
                continue
            reason, detail = unplaced.get(
                wid, (UnplacedReason.NO_CAPACITY_BEFORE_FAILURE.value, "not placed")
            )
            if order.state is WorkOrderState.SCHEDULED or order.unplaced_reason != reason:
                changes.append(
                    handlers.PlannedChange(
                        wid, order.version, unplaced_reason=reason, unplaced_detail=detail
                    )
                )
        info: dict[str, Any] = {
            "plan_id": str(uuid.uuid4()),
            "items": len(s.movable),
            "placed": len(slots),
            "unplaced": len(s.movable) - len(slots),
            "windows": len(all_windows),
            "status": plan.status.value if plan is not None else "EMPTY",
            "objective": plan.objective if plan is not None else 0.0,
            "solve_s": round(plan.solve_time_s, 4) if plan is not None else 0.0,
            "repaired": repaired,
        }
        return changes, info

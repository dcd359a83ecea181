"""Crew lanes: turning "this work goes into that window" into a crew and a start time.

The planner (``planning.py``) reasons in crew-hours per window and skill. A crew of
capacity ``c`` is ``c`` lanes, each doing one job at a time; a job needs one lane free for
its whole duration. ``WindowLanes`` holds a window's lanes with the jobs already committed
to the ERP, tells the planner how many crew-hours are still free per skill, and packs the
planned jobs into lanes: a job keeps its previous slot when that is still free, the others
go longest first to the earliest gap that fits. A job that fits nowhere is returned, and
the caller tries it in the gaps of other windows (``fit``) before giving up on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from prognos.scheduler.domain import CrewData, Slot, Window


@dataclass
class _Lane:
    crew_id: str
    busy: list[tuple[datetime, datetime]] = field(default_factory=list)

    def is_free(self, start: datetime, end: datetime) -> bool:
        return all(end <= b_start or b_end <= start for b_start, b_end in self.busy)

    def take(self, start: datetime, end: datetime) -> None:
        self.busy.append((start, end))
        self.busy.sort()

    def earliest_gap(
        self, not_before: datetime, not_after: datetime, length: timedelta
    ) -> datetime | None:
        start = not_before
        for b_start, b_end in self.busy:
            if b_end <= start:
                continue
            if b_start - start >= length:
                break
            start = max(start, b_end)
        return start if start + length <= not_after else None

    def busy_within(self, start: datetime, end: datetime) -> timedelta:
        total = timedelta(0)
        for b_start, b_end in self.busy:
            overlap = min(b_end, end) - max(b_start, start)
            if overlap > timedelta(0):
                total += overlap
        return total


@dataclass(frozen=True)
class Job:
    """A planned job to pack: its id, skill, duration and the slot it had before (if any)."""

    id: str
    skill: str
    duration: timedelta
    previous: Slot | None = None


class WindowLanes:
    """The crew lanes of one maintenance window, with the jobs already committed in them."""

    def __init__(
        self,
        window: Window,
        crews: Iterable[CrewData],
        committed: Iterable[tuple[str, Slot]] = (),
        *,
        not_before: datetime | None = None,
    ) -> None:
        """Build the lanes.

        Args:
            window: the window.
            crews: the plant's crews (others and zero-capacity crews are ignored).
            committed: ``(skill, slot)`` of jobs whose slot in this window is fixed.
            not_before: no new job starts earlier (now, for a window under way).
        """
        self.window = window
        self.start = max(window.start, not_before) if not_before else window.start
        self._skill_of: dict[str, str] = {}
        self.lanes: dict[str, list[_Lane]] = {}
        for crew in sorted(crews, key=lambda c: c.crew_id):
            if crew.capacity <= 0:
                continue
            self._skill_of[crew.crew_id] = crew.skill
            lanes = self.lanes.setdefault(crew.skill, [])
            lanes.extend(_Lane(crew.crew_id) for _ in range(crew.capacity))
        for skill, slot in committed:
            self._occupy(skill, slot)

    def _occupy(self, skill: str, slot: Slot) -> bool:
        lanes = [lane for lane in self.lanes.get(skill, []) if lane.crew_id == slot.crew_id]
        for lane in lanes:
            if lane.is_free(slot.start, slot.end):
                lane.take(slot.start, slot.end)
                return True
        if lanes:  # overbooked by hand in the ERP: the crew's first lane carries it
            lanes[0].take(slot.start, slot.end)
        return False

    def free_hours(self) -> dict[str, float]:
        """Crew-hours per skill not yet taken between the window's (effective) start and end."""
        length = self.window.end - self.start
        if length <= timedelta(0):
            return {}
        hours: dict[str, float] = {}
        for skill, lanes in self.lanes.items():
            free = sum(
                ((length - lane.busy_within(self.start, self.window.end)) for lane in lanes),
                timedelta(0),
            )
            hours[skill] = max(free.total_seconds() / 3600.0, 0.0)
        return hours

    def pack(self, jobs: Sequence[Job]) -> tuple[dict[str, Slot], list[Job]]:
        """Give each job a lane and a start; returns the slots and the jobs that fit nowhere.

        Jobs whose previous slot lies in this window and is still free keep it; the rest
        go longest first, each to the lane with the earliest gap long enough.
        """
        slots: dict[str, Slot] = {}
        rest: list[Job] = []
        for job in jobs:
            prev = job.previous
            if prev is not None and self.keep(job, prev):
                slots[job.id] = prev
            else:
                rest.append(job)
        overflow: list[Job] = []
        for job in sorted(rest, key=lambda j: (-j.duration, j.id)):
            slot = self.fit(job, self.window.end)
            if slot is None:
                overflow.append(job)
            else:
                slots[job.id] = slot
        return slots, overflow

    def fit(self, job: Job, deadline: datetime) -> Slot | None:
        """Place one more job in the earliest gap that ends by ``deadline``, if any."""
        not_after = min(self.window.end, deadline)
        best: tuple[datetime, int] | None = None
        lanes = self.lanes.get(job.skill, [])
        for n, lane in enumerate(lanes):
            start = lane.earliest_gap(self.start, not_after, job.duration)
            if start is not None and (best is None or start < best[0]):
                best = (start, n)
        if best is None:
            return None
        start, n = best
        lanes[n].take(start, start + job.duration)
        return Slot(self.window.id, start, start + job.duration, lanes[n].crew_id)

    def keep(self, job: Job, slot: Slot) -> bool:
        """Give ``job`` exactly ``slot`` (a slot of this window) if its crew is free then."""
        return (
            slot.window_id == self.window.id
            and slot.start >= self.start
            and slot.end <= self.window.end
            and self._skill_of.get(slot.crew_id) == job.skill
            and self._occupy_if_free(job.skill, slot)
        )

    def _occupy_if_free(self, skill: str, slot: Slot) -> bool:
        for lane in self.lanes.get(skill, []):
            if lane.crew_id == slot.crew_id and lane.is_free(slot.start, slot.end):
                lane.take(slot.start, slot.end)
                return True
        return False

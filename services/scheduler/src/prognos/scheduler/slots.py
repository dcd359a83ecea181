"""Crew time: turning "this work goes into that window" into a crew and a start time.

The planner (``planning.py``) reasons in crew-hours per window and skill. A crew of
capacity ``c`` does at most ``c`` jobs at once: a job fits where fewer than ``c`` of the
crew's jobs are under way for its whole duration. (Intervals whose overlap never exceeds
``c`` can always be shared out among ``c`` people, so who does which job is the ERP's
business.) ``WindowCrews`` holds a window's crews with the jobs already committed to the
ERP, tells the planner how many crew-hours are still free per skill, and packs the planned
jobs: a job keeps its previous slot when its crew still has room then, the others go
longest first to the earliest start that fits. A job that fits nowhere is returned, and the
caller tries it in the gaps of other windows (``fit``) before giving up on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from prognos.scheduler.domain import CrewData, Slot, Window

_ZERO = timedelta(0)


@dataclass
class _Crew:
    crew_id: str
    skill: str
    capacity: int
    busy: list[tuple[datetime, datetime]] = field(default_factory=list)

    def load(self, start: datetime, end: datetime) -> int:
        """The most of this crew's jobs under way at once between ``start`` and ``end``."""
        steps: list[tuple[datetime, int]] = []
        for b_start, b_end in self.busy:
            if b_start < end and start < b_end:
                steps.append((max(b_start, start), 1))
                steps.append((min(b_end, end), -1))
        # At equal times an end sorts before a start: back-to-back jobs share a person.
        steps.sort()
        under_way = most = 0
        for _, step in steps:
            under_way += step
            most = max(most, under_way)
        return most

    def has_room(self, start: datetime, end: datetime) -> bool:
        return self.load(start, end) < self.capacity

    def take(self, start: datetime, end: datetime) -> None:
        self.busy.append((start, end))

    def earliest_start(
        self, not_before: datetime, not_after: datetime, length: timedelta
    ) -> datetime | None:
        """The earliest start from ``not_before`` at which a job of ``length`` has room."""
        # The load only drops where a job ends, so the earliest start is one of these.
        for start in sorted({not_before} | {e for _, e in self.busy if e > not_before}):
            if start + length > not_after:
                return None
            if self.has_room(start, start + length):
                return start
        return None

    def busy_within(self, start: datetime, end: datetime) -> timedelta:
        total = _ZERO
        for b_start, b_end in self.busy:
            overlap = min(b_end, end) - max(b_start, start)
            if overlap > _ZERO:
                total += overlap
        return total


@dataclass(frozen=True)
class Job:
    """A planned job to pack: its id, skill, duration and the slot it had before (if any)."""

    id: str
    skill: str
    duration: timedelta
    previous: Slot | None = None


class WindowCrews:
    """The crews of one maintenance window, with the jobs already committed to them."""

    def __init__(
        self,
        window: Window,
        crews: Iterable[CrewData],
        committed: Iterable[tuple[str, Slot]] = (),
        *,
        not_before: datetime | None = None,
    ) -> None:
        """Take the crews and their committed jobs.

        Args:
            window: the window.
            crews: the plant's crews (others and zero-capacity crews are ignored).
            committed: ``(skill, slot)`` of jobs whose slot in this window is fixed. They
                hold their crew's time even where the ERP booked the crew beyond its
                capacity by hand; nothing more is placed there.
            not_before: no new job starts earlier (now, for a window under way).
        """
        self.window = window
        self.start = max(window.start, not_before) if not_before else window.start
        self._by_id = {
            c.crew_id: _Crew(c.crew_id, c.skill, c.capacity) for c in crews if c.capacity > 0
        }
        self._by_skill: dict[str, list[_Crew]] = {}
        for crew in sorted(self._by_id.values(), key=lambda c: c.crew_id):
            self._by_skill.setdefault(crew.skill, []).append(crew)
        for skill, slot in committed:
            held = self._by_id.get(slot.crew_id)
            if held is not None and held.skill == skill:
                held.take(slot.start, slot.end)

    def free_hours(self) -> dict[str, float]:
        """Crew-hours per skill not yet taken between the window's (effective) start and end."""
        length = self.window.end - self.start
        if length <= _ZERO:
            return {}
        hours: dict[str, float] = {}
        for skill, crews in self._by_skill.items():
            free = sum(
                (
                    max(c.capacity * length - c.busy_within(self.start, self.window.end), _ZERO)
                    for c in crews
                ),
                _ZERO,
            )
            hours[skill] = free.total_seconds() / 3600.0
        return hours

    def pack(self, jobs: Sequence[Job]) -> tuple[dict[str, Slot], list[Job]]:
        """Give each job a crew and a start; returns the slots and the jobs that fit nowhere.

        Jobs whose previous slot lies in this window and still has room keep it; the rest
        go longest first, each to the earliest start any crew of its skill has room for it.
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
        """Place one more job at the earliest start with room that ends by ``deadline``."""
        not_after = min(self.window.end, deadline)
        best: tuple[datetime, _Crew] | None = None
        for crew in self._by_skill.get(job.skill, []):
            start = crew.earliest_start(self.start, not_after, job.duration)
            if start is not None and (best is None or start < best[0]):
                best = (start, crew)
        if best is None:
            return None
        start, crew = best
        crew.take(start, start + job.duration)
        return Slot(self.window.id, start, start + job.duration, crew.crew_id)

    def keep(self, job: Job, slot: Slot) -> bool:
        """Give ``job`` exactly ``slot`` (a slot of this window) if its crew has room then."""
        crew = self._by_id.get(slot.crew_id)
        if (
            crew is None
            or crew.skill != job.skill
            or slot.window_id != self.window.id
            or slot.start < self.start
            or slot.end > self.window.end
            or not crew.has_room(slot.start, slot.end)
        ):
            return False
        crew.take(slot.start, slot.end)
        return True

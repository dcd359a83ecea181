"""The retraining schedule: every asset type with training data is retrained every period.

A plain asyncio job over the ``retrain_schedule`` table, not APScheduler: the one job we need
("for each asset type, at its next-run time") keeps its next-run time in the service's own
database, and moves it forward in the same transaction that queues the run, so a restart
neither loses a due retrain nor runs it twice, and two replicas cannot both take it (the
transaction holds the database's writer lock). APScheduler's persistent job stores would add
a second, synchronous database client and pickled jobs for the same effect.

An asset type joins the schedule when its first dataset snapshot arrives or its first run
succeeds. A due type is retrained on its newest snapshot, with the hyper-parameters of its
last successful run, unless that run already used the same data or a run is under way; both
decisions are audited.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from prognos.core.store import utcnow
from prognos.registry import adapters, handlers

if TYPE_CHECKING:
    from prognos.core.store import EventStore

log = logging.getLogger(__name__)

_MAX_SLEEP_S = 60.0
_MIN_SLEEP_S = 0.05


class RetrainSchedule:
    """Starts the due retrains; a background job of the registry service.

    Args:
        store: The registry's event store.
        period: Time between two retrains of one asset type; zero or less turns it off.
        on_queued: Called after a run was queued (wakes the training runner).
    """

    def __init__(self, store: EventStore, period: timedelta, on_queued: Callable[[], None]) -> None:
        self._store = store
        self._period = period
        self._on_queued = on_queued

    async def run(self) -> None:
        if self._period <= timedelta(0):
            log.info("the retraining schedule is off (retrain_period_s <= 0)")
            return
        longest = min(self._period.total_seconds(), _MAX_SLEEP_S)
        while True:
            delay = longest
            try:
                if await self.run_due():
                    self._on_queued()
                async with self._store.reader() as conn:
                    upcoming = await adapters.next_retrain_at(conn)
                if upcoming is not None:
                    delay = (upcoming - utcnow()).total_seconds()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("the retraining schedule failed; trying again", exc_info=True)
            await asyncio.sleep(min(max(delay, _MIN_SLEEP_S), longest))

    async def run_due(self) -> int:
        """Handle every asset type whose retrain is due; returns how many runs were queued."""
        now = utcnow()
        queued = 0
        async with self._store.transaction() as uow:
            for asset_type in await adapters.due_retrains(uow.conn, now):
                if await handlers.scheduled_retrain(uow, asset_type, now, self._period):
                    queued += 1
        return queued

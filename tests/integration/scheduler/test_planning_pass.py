"""A planning pass against the real store: what is written stays consistent under changes."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from prognos.core.config import Settings
from prognos.core.migrate import upgrade
from prognos.core.store import EventStore, create_engine
from prognos.scheduler import adapters, handlers
from prognos.scheduler.domain import AssetData, CrewData, WorkOrderState
from prognos.scheduler.scheduling import Planner
from prognos.scheduler.testing import prediction

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "scheduler" / "migrations"
PLANT = "solo"


@pytest.fixture
async def store(tmp_path: Path, database: dict[str, Any]) -> AsyncIterator[EventStore]:
    settings = Settings.load("scheduler", data_dir=tmp_path, **database)
    upgrade(settings, MIGRATIONS)
    engine = create_engine(settings)
    yield EventStore(engine, "scheduler")
    await engine.dispose()


async def predict(store: EventStore, asset: str, risk: float, at: datetime) -> None:
    async with store.transaction() as uow:
        await handlers.on_prediction(uow, prediction(asset, risk, at, plant=PLANT), at)


async def scheduled(store: EventStore) -> dict[str, adapters.OrderRow]:
    async with store.reader() as conn:
        rows = await adapters.orders_in_states(conn, [WorkOrderState.SCHEDULED])
    slots = sorted((r.slot.start, r.slot.end) for r in rows if r.slot is not None)
    for (_, end), (start, _) in itertools.pairwise(slots):
        assert end <= start, "the crew of capacity 1 is booked twice"
    return {r.asset_id: r for r in rows}


async def test_a_risk_update_while_a_plan_is_written_books_no_crew_twice(
    store: EventStore, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    # A window a fixed time ahead: how much a displacement saves depends on how far ahead the
    # window is against the 48-hour horizon, so a time of day would make it depend on the clock.
    day = (now + timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    async with store.transaction() as uow:
        await handlers.upsert_assets(
            uow, [AssetData(a, f"EQ-{a}", PLANT, "pump", "mechanical", 4.0) for a in "abc"], now
        )
        await handlers.upsert_crews(uow, [CrewData("solo-crew", PLANT, "mechanical", 1)], now)
        await handlers.upsert_calendar(
            uow, PLANT, day, day + timedelta(days=1), [(day, day + timedelta(hours=8), "")], now
        )
    # Nothing is released, so every order stays movable.
    settings = Settings.load("scheduler", data_dir=tmp_path, schedule_release_horizon_h=0)
    planner = Planner(store, settings)
    await predict(store, "a", 0.90, now)
    await predict(store, "b", 0.85, now)
    await planner.plan_once()
    assert set(await scheduled(store)) == {"a", "b"}

    await predict(store, "c", 0.97, now)

    async def b_gets_riskier() -> None:
        await predict(store, "b", 0.99, now + timedelta(minutes=1))

    # The plan made before b's update gives b's time to c; b must not keep it too.
    result = await planner.plan_once(before_write=b_gets_riskier)
    assert result.applied.stale == 1
    assert set(await scheduled(store)) == {"a", "c"}
    # The pass the stale order asks for plans with b's new risk: b displaces a.
    await planner.plan_once()
    assert set(await scheduled(store)) == {"b", "c"}
    # Nothing changed: the next pass writes nothing.
    assert (await planner.plan_once()).changes == []

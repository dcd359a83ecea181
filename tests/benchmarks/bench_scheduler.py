"""Scheduler throughput through the service's own path, printed as one JSON document.

- ``decisions``: predictions/s turned into policy decisions by the scheduler's durable
  JetStream consumer: each prediction is read from JetStream, decided by the asset type's
  policy and committed with its decision row, policy state, and (when it opens or updates a
  work order) the work order's events, read model, feed entry, outbox message and audit
  entry, in SQLite. The predictions are published beforehand; the outbox relay runs.
- ``planning``: one planning pass of the service (read the read models, HiGHS in a worker
  thread, pack crew lanes, write every slot, release and unplaced reason with its audit
  entry) for 1,000 open work orders over 2 plants x 14 days of windows: the first plan,
  a re-plan after a crew's capacity changed, and a re-plan with nothing changed.

Run: ``make bench`` or ``.venv/bin/python tests/benchmarks/bench_scheduler.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import highspy
from sqlalchemy import func, select

from prognos.core import bus
from prognos.core.config import Settings
from prognos.core.migrate import upgrade
from prognos.core.natsserver import EmbeddedNats
from prognos.core.store import EventStore, create_engine
from prognos.scheduler import adapters, consumers, handlers
from prognos.scheduler.domain import CrewData
from prognos.scheduler.scheduling import Planner, PlanResult
from prognos.scheduler.testing import erp_asset, prediction, publish_predictions
from prognos.scheduler.translate import asset_from_proto

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "scheduler" / "migrations"
PLANTS = ("north", "south")


def _quiet_highs_banner() -> None:
    """HiGHS prints its banner to stdout on first use; keep stdout for the JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


async def _store(data_dir: Path, **overrides: Any) -> tuple[Settings, EventStore]:
    settings = Settings.load("scheduler", data_dir=data_dir, **overrides)
    upgrade(settings, MIGRATIONS)
    return settings, EventStore(create_engine(settings), "scheduler")


async def _master_data(store: EventStore, assets: int, days: int, now: datetime) -> None:
    rng = random.Random(3)
    erp = [
        erp_asset(
            f"asset-{n:05d}",
            PLANTS[n % 2],
            skill="mechanical" if n % 3 else "electrical",
            hours=rng.choice([2, 3, 4, 6]),
            criticality=rng.choice([0.5, 1.0, 2.0]),
            downtime_cost=rng.choice([200.0, 1000.0, 5000.0]),
        )
        for n in range(assets)
    ]
    async with store.transaction() as uow:
        await handlers.upsert_assets(uow, [asset_from_proto(a) for a in erp], now)
        await handlers.upsert_crews(
            uow,
            [
                CrewData(f"{p}/{skill}", p, skill, capacity)
                for p in PLANTS
                for skill, capacity in (("mechanical", 4), ("electrical", 3))
            ],
            now,
        )
        day0 = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        # Two 8 h shifts a day for maintenance, from tomorrow on.
        shifts = [
            (day0 + timedelta(days=d, hours=h), day0 + timedelta(days=d, hours=h + 8), "")
            for d in range(days)
            for h in (6, 14)
        ]
        for plant in PLANTS:
            await handlers.upsert_calendar(
                uow, plant, day0, day0 + timedelta(days=days), shifts, now
            )


async def bench_decisions(predictions: int, assets: int) -> dict[str, Any]:
    """Predictions/s through the scheduler's durable consumer, policy and store."""
    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(Path(tmp) / "nats") as server:
        settings, store = await _store(Path(tmp), nats_url=server.url)
        now = datetime.now(UTC)
        await _master_data(store, assets, 14, now)
        nc = await bus.connect(settings)
        js = nc.jetstream()
        for stream in ("INFERENCE", "SCHEDULER"):
            await bus.ensure_stream(js, stream)
        rng = random.Random(11)
        score = [rng.uniform(0.0, 0.6) for _ in range(assets)]
        start = now - timedelta(days=1)
        batch = []
        for k in range(predictions):
            a = k % assets
            score[a] = min(1.0, max(0.0, score[a] + rng.gauss(0.0, 0.08)))
            at = start + timedelta(seconds=10 * (k // assets))
            batch.append(prediction(f"asset-{a:05d}", score[a], at, plant=PLANTS[a % 2]))
        published = time.perf_counter()
        await publish_predictions(js, batch)
        publish_s = time.perf_counter() - published

        relay = bus.OutboxRelay(store, js)
        (sub,) = consumers.subscriptions(lambda: datetime.now(UTC), handlers.PolicyBook())
        consumer = bus.Consumer(store, js, sub, batch_size=settings.consumer_batch_size)
        relay.start()
        started = time.perf_counter()
        consumer.start()
        while consumer.processed < predictions:  # noqa: ASYNC110 - a benchmark's busy wait
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        await consumer.stop()
        await relay.stop()
        async with store.reader() as conn:
            rows = await conn.execute(
                select(adapters.decisions.c.kind, func.count()).group_by(adapters.decisions.c.kind)
            )
            kinds = {r[0]: int(r[1]) for r in rows}
        await nc.drain()
        await store.engine.dispose()
    return {
        "predictions": predictions,
        "assets": assets,
        "database": "sqlite",
        "decisions_by_kind": kinds,
        "seconds": round(elapsed, 3),
        "predictions_per_s": round(predictions / elapsed, 1),
        "jetstream_publish_per_s": round(predictions / publish_s, 1),
    }


def _summary(result: PlanResult) -> dict[str, Any]:
    applied = result.applied
    return {
        "total_s": round(result.total_s, 3),
        "solve_s": round(result.solve_s, 3),
        "solver_status": result.status,
        "moved_to_fit_crew_lanes": result.repaired,
        "placed": result.placed,
        "unplaced": result.unplaced,
        "committed_elsewhere": result.committed,
        "changes_written": len(result.changes),
        "scheduled_events": applied.scheduled,
        "released_events": applied.released,
        "unplaced_events": applied.unplaced,
    }


async def bench_planning(orders: int, days: int, time_limit: float) -> dict[str, Any]:
    """One planning pass of the service for ``orders`` open work orders."""
    with tempfile.TemporaryDirectory() as tmp:
        _, store = await _store(Path(tmp), schedule_time_limit_s=time_limit)
        settings = Settings.load("scheduler", data_dir=Path(tmp), schedule_time_limit_s=time_limit)
        now = datetime.now(UTC)
        await _master_data(store, orders, days, now)
        rng = random.Random(5)
        opened = time.perf_counter()
        for start in range(0, orders, 100):
            async with store.transaction() as uow:
                for n in range(start, min(start + 100, orders)):
                    p = prediction(
                        f"asset-{n:05d}",
                        rng.uniform(0.8, 1.0),
                        now,
                        plant=PLANTS[n % 2],
                        rul_hours=rng.uniform(24, 24 * (days + 2)),
                    )
                    await handlers.on_prediction(uow, p, now)
        open_s = time.perf_counter() - opened
        planner = Planner(store, settings)
        first = await planner.plan_once()
        async with store.transaction() as uow:
            await handlers.upsert_crews(
                uow, [CrewData("north/mechanical", "north", "mechanical", 3)], now
            )
        after_change = await planner.plan_once()
        unchanged = await planner.plan_once()
        async with store.reader() as conn:
            windows = await adapters.windows_ahead(conn, now)
            states = await conn.execute(
                select(adapters.work_orders.c.state, func.count()).group_by(
                    adapters.work_orders.c.state
                )
            )
            by_state = {r[0]: int(r[1]) for r in states}
        await store.engine.dispose()
    return {
        "work_orders": orders,
        "plants": len(PLANTS),
        "days": days,
        "windows": sum(len(w) for w in windows.values()),
        "crews": "per plant: mechanical x4, electrical x3",
        "time_limit_s": time_limit,
        "opening_orders_per_s": round(orders / open_s, 1),
        "first_plan": _summary(first),
        "replan_after_capacity_change": _summary(after_change),
        "replan_unchanged": _summary(unchanged),
        "states_after": by_state,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "highs": f"{highspy.Highs().version()}",
        "cpus": os.cpu_count(),
        "decisions": await bench_decisions(args.predictions, args.assets),
        "planning": await bench_planning(args.orders, args.days, args.time_limit),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--predictions", type=int, default=5_000)
    parser.add_argument("--assets", type=int, default=1_000)
    parser.add_argument("--orders", type=int, default=1_000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--time-limit", type=float, default=10.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    _quiet_highs_banner()
    result = asyncio.run(main_async(args))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

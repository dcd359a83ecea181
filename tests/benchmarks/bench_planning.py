"""Benchmark the work-order policy and the maintenance planner; prints one JSON document.

Run: ``uv run --frozen python tests/benchmarks/bench_planning.py [--predictions N] [--items N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import highspy

from prognos.scheduler.planning import (
    MaintenanceWindow,
    PlanningCosts,
    SolverOptions,
    WorkItem,
    plan,
    replan,
)
from prognos.scheduler.policy import PolicyEngine, Prediction, WorkOrderPolicy

T0 = datetime(2026, 3, 2, tzinfo=UTC)
SKILLS = ("mechanical", "electrical", "hydraulic")


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


def make_predictions(n: int, assets: int, seed: int) -> list[Prediction]:
    """A random walk of failure probability per asset, one prediction every ten minutes."""
    rng = random.Random(seed)
    score = [rng.uniform(0.0, 0.5) for _ in range(assets)]
    out: list[Prediction] = []
    step = timedelta(minutes=10)
    for k in range(n):
        a = k % assets
        score[a] = min(1.0, max(0.0, score[a] + rng.gauss(0.0, 0.05)))
        out.append(
            Prediction(
                id=f"p{k}",
                asset_id=f"asset-{a}",
                asset_type="pump" if a % 2 else "press",
                at=T0 + step * (k // assets),
                failure_probability=score[a],
                rul=max(0.0, 200.0 * (1.0 - score[a])),
                model_version="m1",
            )
        )
    return out


def bench_policy(n: int, assets: int, seed: int) -> dict[str, Any]:
    predictions = make_predictions(n, assets, seed)
    engine = PolicyEngine(
        policies={
            "pump": WorkOrderPolicy(p_open=0.8, p_close=0.5, min_interval=timedelta(hours=24)),
            "press": WorkOrderPolicy(
                p_open=0.85, p_close=0.6, rul_open=24.0, rul_close=60.0, min_interval=timedelta(0)
            ),
        }
    )
    started = time.perf_counter()
    decisions = [engine.apply(p) for p in predictions]
    elapsed = time.perf_counter() - started
    kinds = Counter(f"{d.kind}/{d.reason}" for d in decisions)
    return {
        "predictions": n,
        "assets": assets,
        "seconds": round(elapsed, 4),
        "predictions_per_s": round(n / elapsed),
        "decisions": dict(sorted(kinds.items())),
    }


def make_problem(
    n_items: int, plants: int, days: int, per_day: int, seed: int
) -> tuple[list[WorkItem], list[MaintenanceWindow]]:
    """Windows of 8 h (day and night shift start) with 2-4 crews per skill; random work."""
    rng = random.Random(seed)
    windows: list[MaintenanceWindow] = []
    for p in range(plants):
        for day in range(days):
            for k in range(per_day):
                start = T0 + timedelta(days=day, hours=6 + k * 12)
                windows.append(
                    MaintenanceWindow(
                        id=f"P{p}-d{day:02d}-w{k}",
                        plant=f"P{p}",
                        start=start,
                        end=start + timedelta(hours=8),
                        capacity_h={s: 8.0 * rng.randint(2, 4) for s in SKILLS},
                    )
                )
    items = [
        WorkItem(
            id=f"wo-{n}",
            plant=f"P{rng.randrange(plants)}",
            skill=rng.choice(SKILLS),
            duration_h=rng.choice((1.0, 2.0, 3.0, 4.0, 6.0, 8.0)),
            failure_probability=rng.uniform(0.3, 1.0),
            downtime_cost_per_h=rng.choice((200.0, 500.0, 1000.0, 5000.0)),
            predicted_failure_at=T0 + timedelta(hours=rng.uniform(4.0, 24.0 * (days + 3))),
            earliest_start=T0 + timedelta(hours=rng.choice((0.0, 0.0, 24.0, 72.0))),
            criticality=rng.choice((1.0, 1.0, 2.0)),
        )
        for n in range(n_items)
    ]
    return items, windows


def bench_planning(
    n_items: int, seed: int, time_limit_s: float, costs: PlanningCosts
) -> dict[str, Any]:
    items, windows = make_problem(n_items, plants=2, days=14, per_day=2, seed=seed)
    options = SolverOptions(time_limit_s=time_limit_s)
    started, cpu = time.perf_counter(), time.process_time()
    first = plan(items, windows, costs, options)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu

    # Re-plan after a change: 5 % of the items get a fresh prediction, 20 new items arrive.
    rng = random.Random(seed + 1)
    changed = [
        WorkItem(**{**vars(i), "failure_probability": min(1.0, i.failure_probability + 0.2)})
        if rng.random() < 0.05
        else i
        for i in items
    ]
    extra, _ = make_problem(20, plants=2, days=14, per_day=2, seed=seed + 2)
    changed += [WorkItem(**{**vars(i), "id": f"new-{i.id}"}) for i in extra]
    started, cpu = time.perf_counter(), time.process_time()
    second = replan(first, changed, windows, costs, options)
    re_wall, re_cpu = time.perf_counter() - started, time.process_time() - cpu
    kept = sum(1 for k, w in first.assignments.items() if second.assignments.get(k) == w)
    return {
        "window_cost": costs.window_cost,
        "crew_hour_cost": costs.crew_hour_cost,
        "work_orders": n_items,
        "windows": len(windows),
        "plants": 2,
        "days": 14,
        "skills": len(SKILLS),
        "variables": first.variables,
        "solve_time_s": round(first.solve_time_s, 3),
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "status": first.status,
        "mip_gap": first.mip_gap,
        "objective": round(first.objective, 2),
        "placed": len(first.assignments),
        "unplaced": len(first.unplaced),
        "unplaced_reasons": dict(Counter(u.reason.value for u in first.unplaced.values())),
        "replan": {
            "work_orders": len(changed),
            "solve_time_s": round(second.solve_time_s, 3),
            "wall_s": round(re_wall, 3),
            "cpu_s": round(re_cpu, 3),
            "status": second.status,
            "mip_gap": second.mip_gap,
            "placed": len(second.assignments),
            "kept_in_same_window": kept,
            "previously_placed": len(first.assignments),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--predictions", type=int, default=200_000)
    parser.add_argument("--assets", type=int, default=1_000)
    parser.add_argument("--items", type=int, default=1_000)
    parser.add_argument("--time-limit", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    _quiet_highs_banner()
    result = {
        "python": platform.python_version(),
        "highs": f"{highspy.Highs().version()}",
        "cpus": os.cpu_count(),
        "policy": bench_policy(args.predictions, args.assets, args.seed),
        "planning": [
            bench_planning(args.items, args.seed, args.time_limit, costs)
            for costs in (
                PlanningCosts(crew_hour_cost=20.0),
                PlanningCosts(window_cost=500.0, crew_hour_cost=20.0),
            )
        ],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

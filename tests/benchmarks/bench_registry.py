"""`prognos train` on C-MAPSS FD001 through the running registry, and its read latencies, as JSON.

Starts the four services as `prognos up` does (embedded NATS, SQLite, a temporary data
directory), runs ``prognos train --asset-type turbofan --cmapss train_FD001.txt --json`` as a
subprocess, and reports:

- ``command_seconds``: wall time of the command, upload to registered version;
- ``train_seconds``: the fit alone, measured in the worker process;
- the registered version's held-out metrics (20 units held out of the file with seed 7, each
  cut 5 times the NASA way with seed 11, evaluated at the last cycle: the split of
  ``bench_training.py``, so the two RMSEs compare) and the LiteRT/SavedModel difference
  checked at registration;
- p50/p99 latency of ``GetModelVersion`` and of ``GetAliasHistory`` at a time.

Single-window latency of the LiteRT form next to the SavedModel is measured by
``bench_training.py`` in its own run; this benchmark does not repeat it.

Run: ``.venv/bin/python tests/benchmarks/bench_registry.py [--param NAME=VALUE ...]``.
"""

from __future__ import annotations

import prognos.core.grpc_io  # noqa: F401  (first: this client runs on the services' gRPC I/O)

# isort: split
import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from prognos.api.registry.v1 import registry_pb2, registry_pb2_grpc
from prognos.cli.client import open_channel
from prognos.cli.launcher import Launcher, RunInfo
from prognos.core.config import Settings

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "cmapss" / "train_FD001.txt"
CALLS = 200


def _latency(samples: list[float]) -> dict[str, float]:
    micros = np.asarray(samples) * 1e6
    return {
        "p50_us": round(float(np.percentile(micros, 50)), 1),
        "p99_us": round(float(np.percentile(micros, 99)), 1),
        "calls": len(samples),
    }


async def _reads(info: RunInfo, version_id: str) -> dict[str, Any]:
    async with open_channel(info, "registry", role="ml-engineer") as channel:
        stub = registry_pb2_grpc.ModelRegistryStub(channel)
        get = registry_pb2.GetModelVersionRequest(model_version_id=version_id)
        history = registry_pb2.GetAliasHistoryRequest(asset_type="turbofan")
        history.at.FromDatetime(datetime.now(UTC))
        timings: dict[str, list[float]] = {"get_model_version": [], "alias_history_at": []}
        for _ in range(CALLS):
            started = time.perf_counter()
            await stub.GetModelVersion(get, timeout=10)
            timings["get_model_version"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await stub.GetAliasHistory(history, timeout=10)
            timings["alias_history_at"].append(time.perf_counter() - started)
    return {name: _latency(values) for name, values in timings.items()}


async def run(source: Path, params: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        settings = Settings.load("launcher", data_dir=Path(tmp) / "data")
        async with Launcher(settings) as launcher:
            assert launcher.info is not None
            info = launcher.info
            argv = [
                sys.executable, "-m", "prognos.cli.main", "train",
                "--asset-type", "turbofan", "--cmapss", str(source), "--json",
                "--data-dir", info.data_dir,
                *[arg for p in params for arg in ("--param", p)],
            ]  # fmt: skip
            started = time.perf_counter()
            done = await asyncio.to_thread(
                subprocess.run, argv, capture_output=True, text=True, check=False
            )
            seconds = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(f"prognos train failed:\n{done.stdout}\n{done.stderr}")
            version = json.loads(done.stdout)
            reads = await _reads(info, version["id"])
    metrics = version["metrics"]
    lineage = version["lineage"]
    return {
        "command": " ".join(["prognos", *argv[3:]]),
        "model_version": version["id"],
        "command_seconds": round(seconds, 1),
        "train_seconds": round(lineage["training_metrics"]["train_seconds"], 1),
        "rmse": round(metrics["rmse"], 3),
        "phm08_score": round(metrics["phm08_score"], 1),
        "precision": round(metrics["precision"], 3),
        "recall": round(metrics["recall"], 3),
        "f1": round(metrics["f1"], 3),
        "held_out_test_units": int(metrics["units"]),
        "export_max_rul_diff": metrics["export_max_rul_diff"],
        "export_rul_tolerance": metrics["export_rul_tolerance"],
        "hyperparameters": lineage["hyperparameters"],
        "code_version": lineage["code_version"],
        "latency": reads,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cmapss", type=Path, default=DATA, help="C-MAPSS training file")
    parser.add_argument("--param", action="append", default=[], help="NAME=VALUE; repeat")
    args = parser.parse_args()
    if not args.cmapss.exists():
        print(json.dumps({"skipped": f"C-MAPSS data not found at {args.cmapss}"}))
        return 0
    print(json.dumps(asyncio.run(run(args.cmapss.resolve(), args.param)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

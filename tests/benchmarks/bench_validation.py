"""What checking every request against its declared limits costs, as ratios, printed as JSON.

Runs each measurement against two copies of the same services started side by side, one
with the validation interceptor (the default) and one with ``PROGNOS_REQUEST_VALIDATION``
false, and alternates rounds between them so that a busy machine slows both alike:

- ``ingest``: sensor values/s acknowledged through ``StreamTelemetry`` (the batches and
  client of ``bench_ingest.py``), median of the rounds; ``ratio`` is with / without, and
  ``ok`` says whether it is at least 0.95;
- ``predict``: ``Predict`` latency over mutual TLS with a role token (the services, model and
  live windows of ``bench_inference.py``), p50/p99 over every call of every round;
  ``p99_ratio`` is with / without, and ``ok`` says whether it is at most 1.05.

Run: ``make bench`` or ``.venv/bin/python tests/benchmarks/bench_validation.py``.
"""

from __future__ import annotations

import prognos.core.grpc_io  # noqa: F401  (first: this client runs on the services' gRPC I/O)

# isort: split
import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from prognos.api.inference.v1 import inference_pb2, inference_pb2_grpc
from prognos.cli.client import open_channel
from prognos.cli.launcher import Launcher, RunInfo, ServiceSpec
from prognos.core.config import Settings
from prognos.core.natsserver import EmbeddedNats

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SWITCH = "PROGNOS_REQUEST_VALIDATION"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


ingest_bench = _load("bench_ingest")
inference_bench = _load("bench_inference")


# --- ingest ------------------------------------------------------------------------------


async def bench_ingest(args: argparse.Namespace) -> dict[str, Any]:
    """Values/s through ``StreamTelemetry`` with and without validation, rounds alternating."""
    assets = [f"m-{i}" for i in range(args.assets)]
    rounds: dict[bool, list[float]] = {True: [], False: []}
    with contextlib.ExitStack() as stack:
        infos: dict[bool, RunInfo] = {}
        for validate in (True, False):
            work = Path(tempfile.mkdtemp(prefix=f"bench-validation-{validate}-"))
            server = stack.enter_context(EmbeddedNats(work / "nats"))
            infos[validate] = stack.enter_context(
                ingest_bench.ingest_process(
                    work,
                    server.url,
                    PROGNOS_INGEST_TELEMETRY_WINDOW=str(args.window),
                    PROGNOS_INGEST_ARCHIVE_ENABLED="false",
                    **{SWITCH: str(validate).lower()},
                )
            )
        start_us = (int(time.time()) - 30 * 86_400) * ingest_bench.S
        batches = {v: ingest_bench.Batches(start_us) for v in infos}
        for validate, info in infos.items():
            await ingest_bench.wait_ready(info)
            await ingest_bench.setup(info, assets)
            await ingest_bench.stream_telemetry(
                info, assets, args.streams, args.window, 3.0, batches[validate]
            )
        for index in range(args.rounds):
            # Alternate which goes first, so neither always follows the other's backlog.
            order = (True, False) if index % 2 == 0 else (False, True)
            for validate in order:
                measured = await ingest_bench.stream_telemetry(
                    infos[validate],
                    assets,
                    args.streams,
                    args.window,
                    args.seconds,
                    batches[validate],
                )
                rounds[validate].append(measured["accepted_values"] / measured["seconds"])
    with_v = float(np.median(rounds[True]))
    without_v = float(np.median(rounds[False]))
    ratio = with_v / without_v
    return {
        "values_per_s_with_validation": round(with_v),
        "values_per_s_without_validation": round(without_v),
        "ratio": round(ratio, 3),
        "required_ratio_at_least": 0.95,
        "ok": ratio >= 0.95,
        "rounds": args.rounds,
        "round_values_per_s": {
            "with": [round(v) for v in rounds[True]],
            "without": [round(v) for v in rounds[False]],
        },
    }


# --- Predict -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def services(data_dir: Path, validate: bool) -> AsyncIterator[RunInfo]:
    """Ingest and inference as ``prognos up`` starts them, with or without validation."""
    for key in [k for k in os.environ if k.startswith("PROGNOS_")]:
        del os.environ[key]
    os.environ[SWITCH] = str(validate).lower()  # the children inherit it
    settings = Settings.load("launcher", data_dir=data_dir)
    specs = (ServiceSpec.parse("ingest"), ServiceSpec.parse("inference"))
    try:
        async with Launcher(settings, services=specs) as launcher:
            assert launcher.info is not None
            yield launcher.info
    finally:
        os.environ.pop(SWITCH, None)


async def _predict_round(info: RunInfo, asset_ids: list[str], calls: int, seed: int) -> list[float]:
    async with open_channel(info, "inference", role="ml-engineer") as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        for i in range(50):  # warm the channel and the token
            await stub.Predict(
                inference_pb2.PredictRequest(asset_id=asset_ids[i % len(asset_ids)]), timeout=5
            )
        rng = np.random.default_rng(seed)
        samples = []
        for i in rng.integers(0, len(asset_ids), calls):
            request = inference_pb2.PredictRequest(asset_id=asset_ids[int(i)])
            started = time.perf_counter()
            await stub.Predict(request, timeout=5)
            samples.append(time.perf_counter() - started)
    return samples


async def bench_predict(args: argparse.Namespace) -> dict[str, Any]:
    """``Predict`` p50/p99 with and without validation, rounds alternating."""
    cache = ROOT / ".pytest_cache" / "d" / "inference-models"
    (export,) = inference_bench.sim.trained_models(cache, seeds=(7,), window=args.window_rows)
    samples: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="bench-validation-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            infos: dict[bool, RunInfo] = {}
            ids: dict[bool, list[str]] = {}
            for validate in (True, False):
                info = await stack.enter_async_context(
                    services(Path(tmp) / f"data-{validate}", validate)
                )
                await inference_bench.serve_model(info, export)
                ids[validate] = await inference_bench.load_windows(
                    info, args.predict_assets, args.window_rows
                )
                await inference_bench.settled(info)
                infos[validate] = info
            for index in range(args.rounds):
                order = (True, False) if index % 2 == 0 else (False, True)
                for validate in order:
                    samples[validate] += await _predict_round(
                        infos[validate], ids[validate], args.predict_calls, seed=index
                    )
    with_v = inference_bench.percentiles(samples[True])
    without_v = inference_bench.percentiles(samples[False])
    ratio = with_v["p99_ms"] / without_v["p99_ms"]
    return {
        "with_validation": with_v,
        "without_validation": without_v,
        "p50_ratio": round(with_v["p50_ms"] / without_v["p50_ms"], 3),
        "p99_ratio": round(ratio, 3),
        "required_p99_ratio_at_most": 1.05,
        "ok": ratio <= 1.05,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)},
        "ingest": await bench_ingest(args),
        "predict": await bench_predict(args),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--assets", type=int, default=32)
    parser.add_argument("--predict-calls", type=int, default=1000)
    parser.add_argument("--predict-assets", type=int, default=64)
    parser.add_argument("--window-rows", type=int, default=50)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()

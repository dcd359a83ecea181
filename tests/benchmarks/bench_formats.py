"""Benchmark telemetry validation and the file readers; prints one JSON document.

Run: ``uv run --frozen python tests/benchmarks/bench_formats.py [--batches N] [--csv-rows N]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow

from prognos.ingest.domain import AssetTypeSpec, FailureHorizon, SensorChannel
from prognos.ingest.formats import (
    ChannelColumn,
    ColumnMapping,
    TimeFormat,
    read_cmapss,
    read_csv,
    read_json_lines,
)
from prognos.ingest.validation import validate_batch

CHANNELS = 16
S = 1_000_000
NOW = 1_760_000_000 * S
# (raw unit, canonical unit, canonical range): every channel needs a conversion.
UNITS = [
    ("degF", "degC", -50.0, 400.0),
    ("psi", "kPa", 0.0, 10_000.0),
    ("rpm", "Hz", 0.0, 500.0),
    ("in/s", "mm/s", 0.0, 5_000.0),
]
CMAPSS_FD001 = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "cmapss" / "train_FD001.txt"
)


def spec() -> AssetTypeSpec:
    return AssetTypeSpec(
        name="bench",
        display_name="Benchmark machine",
        channels=tuple(
            SensorChannel(f"ch{i}", UNITS[i % 4][1], UNITS[i % 4][2], UNITS[i % 4][3], 1.0)
            for i in range(CHANNELS)
        ),
        horizon=FailureHorizon(48, "hours"),
    )


def batch(rng: np.random.Generator, rows: int, bad_fraction: float) -> tuple[Any, Any]:
    ts = NOW - 600 * S + np.arange(rows, dtype=np.int64) * 100_000
    columns = {}
    for i in range(CHANNELS):
        raw_unit = UNITS[i % 4][0]
        values = rng.uniform(1.0, 100.0, size=rows)
        if bad_fraction:
            values[rng.random(rows) < bad_fraction] = np.nan
        columns[f"ch{i}"] = (raw_unit, values)
    if bad_fraction:
        swap = rng.choice(rows, size=max(2, int(rows * bad_fraction)), replace=False)
        ts[swap] = ts[swap[::-1]]  # some out of order
        ts[swap[:2]] = ts[swap[0]]  # and a duplicate
    return ts, columns


def timed(repeats: int, work: Callable[[], int]) -> dict[str, float]:
    """Run ``work`` (which returns the values it handled) ``repeats`` times; best and median."""
    work()  # warm caches, pint, Arrow
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        values = work()
        rates.append(values / (time.perf_counter() - start))
    return {"values_per_s_best": max(rates), "values_per_s_median": statistics.median(rates)}


def bench_validate(batches: int, rows: int, bad_fraction: float, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    asset_type = spec()
    inputs = [batch(rng, rows, bad_fraction) for _ in range(batches)]
    quarantined = 0

    def work() -> int:
        nonlocal quarantined
        quarantined = 0
        for ts, columns in inputs:
            result = validate_batch(
                asset_type,
                "asset-1",
                ts,
                columns,
                now_us=NOW,
                last_seen_us=NOW - 3600 * S,
                max_lateness_us=3600 * S,
                max_future_us=5 * S,
            )
            quarantined += len(result.quarantine)
        return batches * rows * CHANNELS

    rates = timed(5, work)
    seconds_per_batch = rows * CHANNELS / rates["values_per_s_median"]
    return {
        "batch": f"{rows} timestamps x {CHANNELS} channels, all converted",
        "batches": batches,
        "bad_fraction": bad_fraction,
        "quarantined_per_run": quarantined,
        **rates,
        "ms_per_batch_median": 1000 * seconds_per_batch,
    }


def csv_text(rows: int, assets: int, seed: int, iso: bool) -> bytes:
    rng = np.random.default_rng(seed)
    values = rng.uniform(0, 1000, size=(rows, CHANNELS)).round(3)
    header = ["time", "asset", *(f"c{i}" for i in range(CHANNELS))]
    if iso:
        stamps = (
            np.datetime64("2025-01-01T00:00:00", "ms") + np.arange(rows) * np.timedelta64(100, "ms")
        ).astype(str)
        times = [f"{s}Z" for s in stamps]
    else:
        times = [str(1_735_689_600_000 + 100 * i) for i in range(rows)]
    asset_names = [f"pump-{k}" for k in range(assets)]
    out = io.StringIO()
    out.write(",".join(header) + "\n")
    body = np.char.mod("%.3f", values)
    for i in range(rows):
        out.write(f"{times[i]},{asset_names[i % assets]},{','.join(body[i])}\n")
    return out.getvalue().encode()


def mapping(iso: bool) -> ColumnMapping:
    return ColumnMapping(
        timestamp="time",
        time_format=TimeFormat.ISO_8601 if iso else TimeFormat.UNIX_MS,
        asset_column="asset",
        channels=tuple(ChannelColumn(f"c{i}", f"ch{i}", UNITS[i % 4][0]) for i in range(CHANNELS)),
    )


def bench_csv(rows: int, assets: int, seed: int, iso: bool, directory: Path) -> dict[str, Any]:
    path = directory / f"bench-{'iso' if iso else 'unix'}.csv"
    path.write_bytes(csv_text(rows, assets, seed, iso))
    column_mapping = mapping(iso)

    def work() -> int:
        reader = read_csv(path, column_mapping, max_rows=10_000)
        total = sum(len(b) for b in reader)
        assert total == rows and reader.error_count == 0
        return total * CHANNELS

    return {
        "file": f"{rows} rows x {CHANNELS} channels, {assets} assets, "
        f"{'ISO 8601' if iso else 'unix ms'} timestamps",
        "bytes": path.stat().st_size,
        **timed(3, work),
    }


def bench_json_lines(rows: int, seed: int, directory: Path) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    values = rng.uniform(0, 1000, size=(rows, CHANNELS)).round(3)
    path = directory / "bench.jsonl"
    with path.open("w") as out:
        for i in range(rows):
            record = {"time": 1_735_689_600_000 + 100 * i, "asset": f"pump-{i % 10}"}
            record.update({f"c{k}": float(values[i, k]) for k in range(CHANNELS)})
            out.write(json.dumps(record) + "\n")
    column_mapping = mapping(iso=False)

    def work() -> int:
        reader = read_json_lines(path, column_mapping, max_rows=10_000)
        total = sum(len(b) for b in reader)
        assert total == rows and reader.error_count == 0
        return total * CHANNELS

    return {"file": f"{rows} lines x {CHANNELS} channels", **timed(3, work)}


def bench_cmapss() -> dict[str, Any]:
    if not CMAPSS_FD001.exists():
        return {"skipped": f"no data at {CMAPSS_FD001}"}

    def work() -> int:
        reader = read_cmapss(
            CMAPSS_FD001, plant="bench", start_time=datetime(2020, 1, 1, tzinfo=UTC)
        )
        return sum(len(b) for b in reader) * 24

    return {"file": "train_FD001.txt, 20,631 rows x 24 channels", **timed(3, work)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--rows", type=int, default=1_000)
    parser.add_argument("--csv-rows", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        result = {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pyarrow": pyarrow.__version__,
            "cpus": os.cpu_count(),
            "validate_batch": bench_validate(args.batches, args.rows, 0.0, args.seed),
            "validate_batch_with_bad_readings": bench_validate(
                args.batches, args.rows, 0.01, args.seed
            ),
            "csv_unix_ms": bench_csv(args.csv_rows, 10, args.seed, iso=False, directory=directory),
            "csv_iso_8601": bench_csv(args.csv_rows, 10, args.seed, iso=True, directory=directory),
            "json_lines": bench_json_lines(args.csv_rows // 4, args.seed, directory),
            "cmapss": bench_cmapss(),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

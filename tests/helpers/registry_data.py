"""Small run-to-failure fleets for the registry tests: a C-MAPSS text file, or a snapshot.

Importable by path (tests load it with ``importlib``). Units degrade toward failure in one
operating regime; the same numbers become a NASA-format training file (``setting_1..3``,
``s1..s21``) or the Parquet files of an ingest dataset snapshot (channels ``op_setting_1..3``
and ``sensor_1..21``, one telemetry file per asset and day, and a labels file marking each
asset's last reading as its failure), laid out as the ingest archive lays them out.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from prognos.api.ingest.v1 import ingest_pb2

SENSOR_LEVELS = np.linspace(400.0, 600.0, 21)
_TIME = pa.timestamp("us", tz="UTC")


def fleet(units: int, seed: int, life: tuple[int, int] = (45, 70)) -> list[np.ndarray]:
    """One ``(cycles, 24)`` array per unit: cycle, three settings, 21 sensors."""
    rng = np.random.default_rng(seed)
    wear_sign = rng.choice([-1.0, 1.0], size=21)
    out = []
    for _ in range(units):
        length = int(rng.integers(life[0], life[1] + 1))
        cycle = np.arange(1, length + 1, dtype=np.float64)
        wear = np.expm1(3.0 * cycle / length) / np.expm1(3.0)
        settings = np.column_stack(
            [
                rng.normal(0.0, 0.002, length),
                rng.normal(0.0, 0.0002, length),
                np.full(length, 100.0),
            ]
        )
        sensors = (
            SENSOR_LEVELS + wear_sign * 4.0 * wear[:, None] + rng.normal(0.0, 0.5, (length, 21))
        )
        out.append(np.column_stack([cycle, settings, sensors]))
    return out


def write_cmapss(path: Path, units: int, seed: int) -> Path:
    """A training file in the NASA text format."""
    lines = []
    for unit, rows in enumerate(fleet(units, seed), start=1):
        for row in rows:
            values = [str(unit), str(int(row[0]))] + [f"{v:.4f}" for v in row[1:]]
            lines.append(" ".join(values) + "  \n")
    path.write_text("".join(lines))
    return path


def write_nasa_test(test: Path, truth: Path, units: int, seed: int) -> tuple[Path, Path]:
    """A test file of units cut before failure, and the truth file of their remaining lives."""
    rng = np.random.default_rng(seed + 1000)
    lines, remaining = [], []
    for unit, rows in enumerate(fleet(units, seed), start=1):
        keep = int(rng.integers(15, len(rows) - 5))
        for row in rows[:keep]:
            values = [str(unit), str(int(row[0]))] + [f"{v:.4f}" for v in row[1:]]
            lines.append(" ".join(values) + "  \n")
        remaining.append(f"{len(rows) - keep}\n")
    test.write_text("".join(lines))
    truth.write_text("".join(remaining))
    return test, truth


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def write_snapshot(
    archive: Path,
    *,
    name: str,
    asset_type: str,
    units: int,
    seed: int,
    origin: datetime = datetime(2026, 1, 1, tzinfo=UTC),
) -> ingest_pb2.DatasetSnapshot:
    """Parquet files of a fleet under ``archive`` and the snapshot message that lists them."""
    files = []
    step = timedelta(hours=1)
    for unit, rows in enumerate(fleet(units, seed), start=1):
        asset = f"{name}-unit-{unit}"
        times = [origin + step * int(c) for c in rows[:, 0]]
        columns: dict[str, pa.Array] = {
            "time": pa.array(times, _TIME),
            "asset_id": pa.array([asset] * len(rows), pa.string()),
            "batch_id": pa.array(["b0"] * len(rows), pa.string()),
            "stream_sequence": pa.array(np.full(len(rows), unit, dtype=np.int64)),
        }
        for i in range(3):
            columns[f"op_setting_{i + 1}"] = pa.array(rows[:, 1 + i])
        for i in range(21):
            columns[f"sensor_{i + 1}"] = pa.array(rows[:, 4 + i])
        relative = (
            f"telemetry/asset_type={asset_type}/asset={asset}/day=all/part-{unit:012d}.parquet"
        )
        files.append(_write(archive, relative, pa.table(columns), len(rows), asset, "telemetry"))
        labels = pa.table(
            {
                "time": pa.array([times[-1]], _TIME),
                "asset_id": pa.array([asset], pa.string()),
                "asset_type": pa.array([asset_type], pa.string()),
                "failure_confirmed": pa.array([True]),
                "source": pa.array([f"test:{name}"], pa.string()),
                "failure_mode": pa.array([""], pa.string()),
                "event_id": pa.array([f"{name}-{unit}"], pa.string()),
            }
        )
        relative = f"labels/asset_type={asset_type}/asset={asset}/day=all/labels-{name}.parquet"
        files.append(_write(archive, relative, labels, 1, asset, "labels"))
    return _listing(archive, name, asset_type, files)


def _listing(
    archive: Path, name: str, asset_type: str, files: list[ingest_pb2.DatasetFile]
) -> ingest_pb2.DatasetSnapshot:
    files.sort(key=lambda f: f.path)
    listing = "".join(f"{f.path} {f.content_hash}\n" for f in files)
    snapshot = ingest_pb2.DatasetSnapshot(
        id=f"snap-{hashlib.sha256(name.encode()).hexdigest()[:12]}",
        name=name,
        asset_type=asset_type,
        files=files,
        content_hash="sha256:" + hashlib.sha256(listing.encode()).hexdigest(),
        row_count=sum(
            f.row_count for f in files if f.kind == ingest_pb2.DATASET_FILE_KIND_TELEMETRY
        ),
        created_by="user:ingest-test",
        root_uri=archive.resolve().as_uri(),
    )
    snapshot.created_at.FromDatetime(datetime.now(UTC))
    return snapshot


def _write(
    archive: Path, relative: str, table: pa.Table, rows: int, asset: str, kind: str
) -> ingest_pb2.DatasetFile:
    path = archive / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return ingest_pb2.DatasetFile(
        path=relative,
        content_hash=_sha256(path),
        row_count=rows,
        size_bytes=path.stat().st_size,
        kind=(
            ingest_pb2.DATASET_FILE_KIND_TELEMETRY
            if kind == "telemetry"
            else ingest_pb2.DATASET_FILE_KIND_LABELS
        ),
        asset_id=asset,
    )


def write_frames(
    archive: Path,
    *,
    name: str,
    asset_type: str,
    readings: pd.DataFrame,
    failures: pd.DataFrame,
) -> ingest_pb2.DatasetSnapshot:
    """The snapshot of any asset type's readings (``time``, ``asset_id``, channels) and failures.

    ``failures`` has ``time``, ``asset_id``, and optionally ``failure_mode`` and
    ``repaired_at``; one labels file per asset that failed, one telemetry file per asset.
    """
    files = []
    channels = [c for c in readings.columns if c not in ("time", "asset_id")]
    for n, (asset, rows) in enumerate(readings.groupby("asset_id", sort=True), start=1):
        columns: dict[str, pa.Array] = {
            "time": pa.array(rows["time"].dt.floor("us"), _TIME),
            "asset_id": pa.array(rows["asset_id"], pa.string()),
            "batch_id": pa.array(["b0"] * len(rows), pa.string()),
            "stream_sequence": pa.array(np.full(len(rows), n, dtype=np.int64)),
        }
        for channel in channels:
            columns[channel] = pa.array(rows[channel].to_numpy(np.float64))
        relative = f"telemetry/asset_type={asset_type}/asset={asset}/day=all/part-{n:012d}.parquet"
        files.append(_write(archive, relative, pa.table(columns), len(rows), asset, "telemetry"))
        failed = failures[failures["asset_id"] == asset]
        if failed.empty:
            continue
        count = len(failed)
        label_columns = {
            "time": pa.array(failed["time"].dt.floor("us"), _TIME),
            "asset_id": pa.array([asset] * count, pa.string()),
            "asset_type": pa.array([asset_type] * count, pa.string()),
            "failure_confirmed": pa.array([True] * count),
            "source": pa.array([f"test:{name}"] * count, pa.string()),
            "failure_mode": pa.array(
                failed.get("failure_mode", pd.Series([""] * count)).tolist(), pa.string()
            ),
            "event_id": pa.array([f"{name}-{asset}-{i}" for i in range(count)], pa.string()),
        }
        if "repaired_at" in failed.columns:
            label_columns["repaired_at"] = pa.array(failed["repaired_at"].dt.floor("us"), _TIME)
        relative = f"labels/asset_type={asset_type}/asset={asset}/day=all/labels-{name}.parquet"
        files.append(_write(archive, relative, pa.table(label_columns), count, asset, "labels"))
    return _listing(archive, name, asset_type, files)

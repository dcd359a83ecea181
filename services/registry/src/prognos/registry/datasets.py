"""Training data for a worker: a C-MAPSS text file, or a dataset snapshot's Parquet files.

A snapshot of any asset type becomes the lives of its assets on the type's own time base
and channels (``training.lives``): failed lives and censored ones, settings and features
as the type declares them, horizon in the type's unit. A type that has not failed yet (no
labels, or none confirmed) has censored lives only, which a health model learns from.

The turbofan layout keeps its own path, so its figures stay those of the C-MAPSS files: a
C-MAPSS file, or a snapshot whose type has the turbofan channels, becomes a frame in the
``load_cmapss`` layout (``unit``, ``cycle``, three operating settings, 21 sensors) in which
every unit runs to failure. The turbofan channels ``op_setting_<n>`` and ``sensor_<n>``
become ``setting_<n>`` and ``s<n>``. Its label
files say when each asset failed: the rows of an asset up to (and including) a confirmed
failure are one run to failure, a "unit"; rows after an asset's last failure are censored and
left out. Missing readings (NaN) are carried forward within a unit. Units are numbered in
the natural order of their asset ids (``p1-unit-2`` before ``p1-unit-10``), so an imported
C-MAPSS file gives the same units, and the same held-out split, as the file itself.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from prognos.api.ingest.v1 import ingest_pb2
from prognos.registry.artifacts import local_path, sha256_of
from prognos.registry.training.data import COLUMNS, CYCLE, SENSORS, SETTINGS, UNIT, load_cmapss
from prognos.registry.training.lives import Layout, LivesError, assemble, natural_key

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp

_CHANNEL = re.compile(r"^(?:op_setting_(\d+)|sensor_(\d+))$")
#: The labels of a snapshot that has none: no asset is known to have failed.
_NO_LABELS = pd.DataFrame(
    {
        "time": pd.Series([], dtype="datetime64[ns, UTC]"),
        "asset_id": pd.Series([], dtype=str),
        "failure_confirmed": pd.Series([], dtype=bool),
    }
)


class TrainingDataError(ValueError):
    """The training data cannot be used: a file changed, channels or labels are missing."""


@dataclass(frozen=True)
class TrainingData:
    """Units (lives) to train on, and where they came from.

    ``layout`` is ``None`` for the C-MAPSS layout (every unit ran to failure); otherwise it
    names the type's channels and time base, and the frame has ``rul`` and ``failed``.
    """

    frame: pd.DataFrame
    label_set: str
    assets: dict[int, str] = field(default_factory=dict)
    layout: Layout | None = None

    @property
    def units(self) -> int:
        return int(self.frame[UNIT].nunique())


def from_cmapss_file(path: Path, content_hash: str) -> TrainingData:
    """A NASA training file: every unit's last cycle is its failure, so the labels are the
    file itself."""
    return TrainingData(load_cmapss(path), label_set=f"run-to-failure:{content_hash}")


def column_of(channel: str) -> str | None:
    """The training column of a turbofan channel name, or ``None``."""
    match = _CHANNEL.match(channel)
    if match is None:
        return None
    setting, sensor = match.groups()
    return f"setting_{setting}" if setting else f"s{sensor}"


def is_turbofan(asset_type: ingest_pb2.AssetType) -> bool:
    """Whether the type has every C-MAPSS channel, so it trains in the C-MAPSS layout."""
    names = {column_of(c.name) for c in asset_type.channels}
    return set(SETTINGS) | set(SENSORS) <= names


def layout_of(asset_type: ingest_pb2.AssetType, *, gap_fill_steps: int = 3) -> Layout:
    """The channels and time base of an asset type, as training reads them.

    A type whose horizon counts cycles steps once per reading; any other steps at the
    shortest expected interval of its channels.

    Raises:
        TrainingDataError: the type has no condition channel, or steps in wall time without
            an expected interval.
    """
    settings = tuple(c.name for c in asset_type.channels if _is_setting(c))
    features = tuple(c.name for c in asset_type.channels if not _is_setting(c))
    if not features:
        raise TrainingDataError(
            f"asset type {asset_type.name} has no channel besides its operating settings"
        )
    modes = tuple(m.name for m in asset_type.failure_modes)
    if asset_type.horizon.WhichOneof("horizon") == "cycles":
        return Layout(
            features,
            settings,
            None,
            float(asset_type.horizon.cycles),
            gap_fill_steps,
            failure_modes=modes,
        )
    intervals = [
        c.expected_interval.ToTimedelta().total_seconds()
        for c in asset_type.channels
        if c.HasField("expected_interval") and c.expected_interval.ToTimedelta().total_seconds() > 0
    ]
    if not intervals:
        raise TrainingDataError(
            f"asset type {asset_type.name} gives no expected interval for its channels: "
            "training needs it to put readings on a time base"
        )
    step = min(intervals)
    horizon = asset_type.horizon.duration.ToTimedelta().total_seconds()
    if horizon <= 0:
        raise TrainingDataError(f"asset type {asset_type.name} has no failure horizon")
    return Layout(features, settings, step, horizon / step, gap_fill_steps, failure_modes=modes)


def _is_setting(channel: ingest_pb2.SensorChannel) -> bool:
    # Types stored before channels could be marked carry no such field.
    return bool(getattr(channel, "operating_setting", False))


def from_snapshot(
    snapshot: ingest_pb2.DatasetSnapshot,
    asset_type: ingest_pb2.AssetType | None = None,
    *,
    gap_fill_steps: int = 3,
) -> TrainingData:
    """Read, verify and assemble the Parquet files of a dataset snapshot.

    Args:
        snapshot: The snapshot.
        asset_type: Its asset type's definition; without it, or for the turbofan channels,
            the C-MAPSS layout.
        gap_fill_steps: Steps a missing reading is carried forward on the type's time base.

    Returns:
        The lives. Those of a type in its own layout may all be censored (no labels, or no
        confirmed failure yet): whether they teach a supervised model or only a health
        model is the trainer's call.

    Raises:
        TrainingDataError: a file is missing or differs from its hash, channels are missing,
            or, in the C-MAPSS layout, no asset has a confirmed failure.
    """
    root = local_path(snapshot.root_uri)
    telemetry: list[pd.DataFrame] = []
    labels: list[pd.DataFrame] = []
    label_lines: list[str] = []
    for item in sorted(snapshot.files, key=lambda f: f.path):
        path = root / item.path
        if not path.is_file():
            raise TrainingDataError(f"snapshot {snapshot.name}: {item.path} is missing")
        if sha256_of(path) != item.content_hash:
            raise TrainingDataError(
                f"snapshot {snapshot.name}: {item.path} no longer matches {item.content_hash}"
            )
        if item.kind == ingest_pb2.DATASET_FILE_KIND_LABELS:
            labels.append(_read(path))
            label_lines.append(f"{item.path} {item.content_hash}\n")
        elif item.kind == ingest_pb2.DATASET_FILE_KIND_TELEMETRY:
            telemetry.append(_read(path))
    if not telemetry:
        raise TrainingDataError(f"snapshot {snapshot.name} holds no telemetry files")
    layout = None
    if asset_type is not None and not is_turbofan(asset_type):
        layout = layout_of(asset_type, gap_fill_steps=gap_fill_steps)
    if not labels and layout is None:
        raise TrainingDataError(
            f"snapshot {snapshot.name} holds no labels: no asset is known to have failed"
        )
    readings = _in_range(pd.concat(telemetry, ignore_index=True), snapshot)
    outcomes = _in_range(
        pd.concat(labels, ignore_index=True) if labels else _NO_LABELS.copy(), snapshot
    )
    if "repaired_at" in outcomes.columns:
        outcomes["repaired_at"] = pd.to_datetime(outcomes["repaired_at"], utc=True)
    if "asset_type" in outcomes.columns:
        outcomes = outcomes[outcomes["asset_type"] == snapshot.asset_type]
    failures = outcomes[outcomes["failure_confirmed"].astype(bool)]
    digest = hashlib.sha256("".join(label_lines).encode()).hexdigest()
    if layout is not None:
        try:
            frame, assets = assemble(readings, failures, layout)
        except LivesError as e:
            raise TrainingDataError(f"snapshot {snapshot.name}: {e}") from None
        return TrainingData(frame, f"sha256:{digest}", assets, layout)
    frame, assets = _units(readings, failures)
    return TrainingData(frame, label_set=f"sha256:{digest}", assets=assets)


def _read(path: Path) -> pd.DataFrame:
    """A Parquet file as a frame, dictionary-encoded strings as plain strings."""
    table = pq.read_table(path)
    plain = pa.schema(
        [
            pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
            for f in table.schema
        ]
    )
    return table.cast(plain).to_pandas()


def _in_range(readings: pd.DataFrame, snapshot: ingest_pb2.DatasetSnapshot) -> pd.DataFrame:
    times = pd.to_datetime(readings["time"], utc=True)
    keep = np.ones(len(readings), dtype=bool)
    if snapshot.HasField("start_time"):
        keep &= (times >= _time(snapshot.start_time)).to_numpy()
    if snapshot.HasField("end_time"):
        keep &= (times < _time(snapshot.end_time)).to_numpy()
    out = readings.loc[keep].copy()
    out["time"] = times[keep]
    return out


def _time(stamp: Timestamp) -> pd.Timestamp:
    return pd.Timestamp(stamp.ToDatetime(tzinfo=UTC))


def _units(readings: pd.DataFrame, failures: pd.DataFrame) -> tuple[pd.DataFrame, dict[int, str]]:
    renamed = {c: column_of(c) for c in readings.columns if column_of(c)}
    missing = [c for c in (*SETTINGS, *SENSORS) if c not in set(renamed.values())]
    if missing:
        raise TrainingDataError(
            "the snapshot lacks the turbofan channels for "
            + ", ".join(missing)
            + " (op_setting_1..3 and sensor_1..21 are needed)"
        )
    readings = readings.rename(columns=renamed)
    readings = readings.sort_values(["asset_id", "time"], kind="stable")
    readings = readings.drop_duplicates(["asset_id", "time"], keep="last")
    failure_times = (
        pd.to_datetime(failures["time"], utc=True).groupby(failures["asset_id"]).apply(sorted)
    )
    pieces: list[pd.DataFrame] = []
    assets: dict[int, str] = {}
    unit = 0
    groups = dict(list(readings.groupby("asset_id", sort=False)))
    for asset in sorted(groups, key=natural_key):
        rows = groups[asset]
        start = None
        for failed_at in failure_times.get(asset, []):
            mask = rows["time"] <= failed_at
            if start is not None:
                mask &= rows["time"] > start
            life = rows.loc[mask, list(SETTINGS) + list(SENSORS)]
            start = failed_at
            life = life.ffill().bfill().dropna()
            if len(life) < 2:
                continue
            unit += 1
            life = life.copy()
            life.insert(0, CYCLE, np.arange(1, len(life) + 1, dtype=np.int64))
            life.insert(0, UNIT, unit)
            pieces.append(life)
            assets[unit] = str(asset)
    if not pieces:
        raise TrainingDataError("no asset of the snapshot ran to a confirmed failure")
    frame = pd.concat(pieces, ignore_index=True)[list(COLUMNS)]
    frame[UNIT] = frame[UNIT].astype(np.int64)
    return frame.reset_index(drop=True), assets

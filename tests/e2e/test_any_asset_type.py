"""A machine type that has nothing in common with C-MAPSS learns through the real services.

A plant registers a pump type (wall time every ten minutes, a 48-hour horizon, the speed
set point as its operating setting), uploads its pumps' history as CSV (the pumps that wore
out, and the ones still running), freezes a snapshot and runs `prognos train`. The model is
trained on the pump's own channels and time base, censored lives included; once a second
person approves and promotes it, inference scores a pump with it beside any other type,
with the pump's horizon and a remaining life in hours.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import ModuleType

import grpc
import numpy as np
import pytest

from prognos.api.inference.v1 import inference_pb2, inference_pb2_grpc
from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.cli.client import open_channel, secrets_of
from prognos.cli.launcher import RunInfo
from prognos.core.auth import issue_token, load_private_key
from prognos.core.errors import UnavailableError, from_grpc_error
from prognos.core.testing.waiting import assert_eventually

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600)]

TINY = [
    "epochs=2",
    "window=24",
    "members=1",
    "units=16",
    "batch=128",
    "holdout_units=3",
    "truncations=2",
    "verification_samples=16",
    "folds=2",
]


def _load(name: str) -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "helpers" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


pumps = _load("pump_fleet")


async def prognos(fleet: RunInfo, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the command line (in a thread: it runs its own event loop) against the fleet."""
    argv = [sys.executable, "-m", "prognos.cli.main", *args, "--data-dir", fleet.data_dir]
    done = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=500, check=False
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


async def _snapshot(fleet: RunInfo, name: str) -> ingest_pb2.DatasetSnapshot:
    """A snapshot of the pump type, asked again while the archive catches up."""

    async def attempt() -> ingest_pb2.DatasetSnapshot:
        async with open_channel(fleet, "ingest", role="ml-engineer") as channel:
            try:
                response = await ingest_pb2_grpc.IngestServiceStub(channel).CreateDatasetSnapshot(
                    ingest_pb2.CreateDatasetSnapshotRequest(name=name, asset_type="pump"),
                    timeout=60,
                )
            except grpc.aio.AioRpcError as error:
                typed = from_grpc_error(error)
                assert not (
                    isinstance(typed, UnavailableError) and typed.reason == "ARCHIVE_CATCHING_UP"
                ), typed.message
                raise
        return response.snapshot

    snapshot: ingest_pb2.DatasetSnapshot = await assert_eventually(
        attempt, timeout=180, interval=1.0
    )
    return snapshot


def _write_csv(path: Path, frame: object) -> Path:
    frame.assign(time=frame["time"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")).to_csv(  # type: ignore[attr-defined]
        path, index=False
    )
    return path


def _batch(readings: object, asset: str) -> ingest_pb2.TelemetryBatch:
    rows = readings[readings["asset_id"] == asset]  # type: ignore[index]
    batch = ingest_pb2.TelemetryBatch(
        batch_id="probe",
        timestamps_us=(rows["time"].astype("int64") // 1000).tolist(),
    )
    for name, *_ in pumps.CHANNELS:
        batch.channels.add(name=name, values=rows[name].tolist())
    return batch


async def test_a_pump_type_trains_on_its_own_channels_and_serves_in_hours(
    fleet: RunInfo, tmp_path: Path
) -> None:
    async with open_channel(fleet, "ingest") as channel:
        await ingest_pb2_grpc.IngestServiceStub(channel).RegisterAssetType(
            ingest_pb2.RegisterAssetTypeRequest(asset_type=pumps.asset_type()), timeout=10
        )
    history = pumps.pump_fleet(9, failing=6, days=5, seed=11, start="2026-02-01T00:00:00Z")
    worn = set(history.failures["asset_id"])
    readings = history.readings
    mapping = [arg for name, *_ in pumps.CHANNELS for arg in ("--mapping", f"{name}={name}")]
    common = ["--asset-type", "pump", "--asset-column", "asset_id", "--register-in-plant", "P2"]
    failed_csv = _write_csv(tmp_path / "worn.csv", readings[readings["asset_id"].isin(worn)])
    running_csv = _write_csv(tmp_path / "running.csv", readings[~readings["asset_id"].isin(worn)])
    await prognos(fleet, "ingest", str(failed_csv), *common, *mapping, "--run-to-failure")
    await prognos(fleet, "ingest", str(running_csv), *common, *mapping)
    snapshot = await _snapshot(fleet, "pumps-feb")
    assert snapshot.row_count == len(readings)

    params = [arg for p in TINY for arg in ("--param", p)]
    trained = await prognos(
        fleet, "train", "--asset-type", "pump", "--snapshot", snapshot.name, *params, "--json"
    )

    version = json.loads(trained.stdout)
    assert version["id"] == "pump-v1"
    assert version["lineage"]["dataset_snapshot_id"] == snapshot.id
    assert np.isfinite(version["metrics"]["rmse"])
    files = {a["name"]: Path(a["uri"].removeprefix("file://")) for a in version["artifacts"]}
    preprocessing = json.loads(files["preprocessing.json"].read_text())
    assert tuple(preprocessing["setting_columns"]) == pumps.SETTINGS
    assert set(preprocessing["features"]) <= set(pumps.FEATURES)
    assert len(preprocessing["regime_centroids"]) == 2  # the drive's two speeds
    # 48 hours of 10-minute steps; lives cut at the six failures, three censored.
    assert preprocessing["horizon_cycles"] == pytest.approx(288.0)
    assert version["lineage"]["training_metrics"]["censored_units"] == 3.0
    assert (
        version["lineage"]["training_metrics"]["train_units"]
        + version["lineage"]["training_metrics"]["held_out_units"]
        == len(worn) + 3
    )

    key = load_private_key(secrets_of(fleet).token_signing_key)
    bob = tmp_path / "bob.token"
    bob.write_text(issue_token(key, "user:bob", ["approver"], timedelta(hours=1)))
    await prognos(fleet, "models", "approve", "pump-v1", "--token-file", str(bob))
    await prognos(fleet, "models", "promote", "pump-v1", "--token-file", str(bob))

    probe = _batch(readings, sorted(worn)[0])

    async def scored_by_the_pump_model() -> inference_pb2.Prediction:
        async with open_channel(fleet, "inference") as channel:
            response = await inference_pb2_grpc.InferenceServiceStub(channel).Predict(
                inference_pb2.PredictRequest(
                    asset_id="probe-pump", asset_type="pump", readings=probe
                ),
                timeout=10,
            )
        assert response.prediction.model_version == "pump-v1"
        return response.prediction

    prediction = await assert_eventually(
        scored_by_the_pump_model, timeout=60, interval=0.5, retry_on=(AssertionError, grpc.RpcError)
    )
    assert prediction.horizon.duration.ToTimedelta() == timedelta(hours=48)
    assert prediction.rul.WhichOneof("value") == "duration"
    assert 0.0 <= prediction.failure_probability <= 1.0

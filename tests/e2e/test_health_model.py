"""A model from day one, then the supervised model once failures are known, through the services.

A plant registers a pump type and streams its pumps' history; none has failed. The
registry's schedule finds the snapshot and, with no failure to learn from, trains a health
model of the pumps' normal operation; once approved it serves, and the pumps that start to
wear get live anomaly scores naming the deviating sensors and an inspection work order.
Then the plant imports its failure history: on its next turn the schedule trains the
supervised model, which waits for the usual approval and then serves failure risk and a
remaining life in hours. Nobody starts a training run.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import grpc
import pandas as pd
import pytest
import pytest_asyncio

from prognos.api.inference.v1 import inference_pb2, inference_pb2_grpc
from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.api.registry.v1 import registry_pb2, registry_pb2_grpc
from prognos.api.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from prognos.cli.client import open_channel, secrets_of
from prognos.cli.launcher import Launcher, LaunchError, RunInfo
from prognos.core.auth import issue_token, load_private_key
from prognos.core.config import Settings
from prognos.core.errors import UnavailableError, from_grpc_error
from prognos.core.testing.waiting import assert_eventually

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600)]

#: Small training settings for every run the schedule starts (the site's defaults).
TINY = {
    "architecture": "cnn",
    "epochs": "2",
    "window": "24",
    "members": "1",
    "batch": "128",
    "holdout_units": "3",
    "truncations": "2",
    "verification_samples": "16",
}
MIN_FAILURES = 3
ANOMALY_OPEN = 0.99


def _load(name: str) -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "helpers" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


pumps = _load("pump_fleet")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunInfo]:
    """The four services, retraining every few seconds with small settings."""
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("PROGNOS_")]:
            patch.delenv(key)
        patch.setenv("PROGNOS_RETRAIN_PERIOD_S", "3")
        patch.setenv("PROGNOS_SUPERVISED_MIN_FAILURES", str(MIN_FAILURES))
        patch.setenv("PROGNOS_TRAINING_HYPERPARAMETERS", json.dumps(TINY))
        data_dir = tmp_path_factory.mktemp("health-fleet") / "data"
        try:
            launcher = await Launcher(Settings.load("launcher", data_dir=data_dir)).__aenter__()
        except LaunchError as error:
            pytest.fail(f"{error}\n{error.detail}")
        try:
            assert launcher.info is not None
            yield launcher.info
        finally:
            await launcher.stop()


async def prognos(fleet: RunInfo, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the command line (in a thread: it runs its own event loop) against the fleet."""
    argv = [sys.executable, "-m", "prognos.cli.main", *args, "--data-dir", fleet.data_dir]
    done = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


async def ingest_csv(fleet: RunInfo, path: Path, frame: pd.DataFrame) -> None:
    """Upload readings as a plant would, registering their pumps in plant P3."""
    frame.assign(time=frame["time"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")).to_csv(path, index=False)
    mapping = [arg for name, *_ in pumps.CHANNELS for arg in ("--mapping", f"{name}={name}")]
    await prognos(
        fleet,
        "ingest",
        str(path),
        "--asset-type",
        "pump",
        "--asset-column",
        "asset_id",
        "--register-in-plant",
        "P3",
        *mapping,
    )


async def snapshot(fleet: RunInfo, name: str, rows: int) -> ingest_pb2.DatasetSnapshot:
    """Freeze the pump type's data once the archive holds all ``rows`` readings."""

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
        assert response.snapshot.row_count == rows
        return response.snapshot

    made: ingest_pb2.DatasetSnapshot = await assert_eventually(attempt, timeout=120, interval=1.0)
    return made


async def version_trained_on(fleet: RunInfo, snapshot_id: str) -> registry_pb2.ModelVersion:
    """The pump version the schedule trains on a snapshot, once it is registered."""

    async def registered() -> registry_pb2.ModelVersion:
        async with open_channel(fleet, "registry", role="ml-engineer") as channel:
            stub = registry_pb2_grpc.ModelRegistryStub(channel)
            runs = await stub.ListTrainingRuns(
                registry_pb2.ListTrainingRunsRequest(asset_type="pump"), timeout=10
            )
            for run in runs.runs:
                assert run.state != registry_pb2.TRAINING_RUN_STATE_FAILED, run.error_message
            versions = await stub.ListModelVersions(
                registry_pb2.ListModelVersionsRequest(asset_type="pump"), timeout=10
            )
        found = [v for v in versions.model_versions if v.lineage.dataset_snapshot_id == snapshot_id]
        assert found, f"no version on {snapshot_id} yet"
        run = next(r for r in runs.runs if r.id == found[0].lineage.training_run_id)
        assert run.trigger == registry_pb2.TRAINING_TRIGGER_SCHEDULE
        return found[0]

    version: registry_pb2.ModelVersion = await assert_eventually(
        registered, timeout=240, interval=1.0
    )
    return version


async def approve_and_promote(fleet: RunInfo, version_id: str, token: Path) -> None:
    await prognos(fleet, "models", "approve", version_id, "--token-file", str(token))
    await prognos(fleet, "models", "promote", version_id, "--token-file", str(token))


async def predict(
    fleet: RunInfo,
    asset_id: str,
    version_id: str,
    check: Callable[[inference_pb2.Prediction], bool] = lambda _: True,
) -> inference_pb2.Prediction:
    """The champion's prediction on an asset's live window, once ``version_id`` serves it
    and the prediction passes ``check`` (the window may still be filling)."""

    async def scored() -> inference_pb2.Prediction:
        async with open_channel(fleet, "inference") as channel:
            response = await inference_pb2_grpc.InferenceServiceStub(channel).Predict(
                inference_pb2.PredictRequest(asset_id=asset_id), timeout=10
            )
        assert response.prediction.model_version == version_id
        assert check(response.prediction), response.prediction
        return response.prediction

    prediction: inference_pb2.Prediction = await assert_eventually(
        scored, timeout=60, interval=0.5, retry_on=(AssertionError, grpc.RpcError)
    )
    return prediction


async def test_a_pump_type_gets_a_health_model_first_and_the_supervised_one_when_it_has_failed(
    fleet: RunInfo, tmp_path: Path
) -> None:
    started = time.monotonic()
    async with open_channel(fleet, "ingest") as channel:
        await ingest_pb2_grpc.IngestServiceStub(channel).RegisterAssetType(
            ingest_pb2.RegisterAssetTypeRequest(asset_type=pumps.asset_type()), timeout=10
        )
    key = load_private_key(secrets_of(fleet).token_signing_key)
    bob = tmp_path / "bob.token"
    bob.write_text(issue_token(key, "user:bob", ["approver"], timedelta(hours=1)))
    origin = (datetime.now(UTC) - timedelta(days=30)).strftime("%Y-%m-%dT00:00:00Z")

    # Day one: six pumps' history, none of them ever failed.
    healthy = pumps.pump_fleet(6, failing=0, days=4, seed=3, start=origin).readings
    await ingest_csv(fleet, tmp_path / "healthy.csv", healthy)
    day_one = await snapshot(fleet, "pumps-day-one", len(healthy))
    health = await version_trained_on(fleet, day_one.id)
    health_at = time.monotonic() - started

    assert health.lineage.hyperparameters["model_kind"] == "health"
    assert health.lineage.training_metrics["failed_units"] == 0.0
    assert 0.0 <= health.metrics["false_alarm_rate"] < 0.05
    assert "rmse" not in health.metrics
    assert registry_pb2.MODEL_ALIAS_CHALLENGER in health.aliases  # shadowing until approved
    await approve_and_promote(fleet, health.id, bob)
    async with open_channel(fleet, "scheduler", role="erp") as channel:
        policy = scheduler_pb2.WorkOrderPolicy(
            open_anomaly_score=ANOMALY_OPEN, close_anomaly_score=0.9
        )
        await scheduler_pb2_grpc.MaintenanceSchedulerStub(channel).SetWorkOrderPolicy(
            scheduler_pb2.SetWorkOrderPolicyRequest(
                idempotency_key="pump-inspections", asset_type="pump", policy=policy
            ),
            timeout=10,
        )

    # Four more pumps stream in live, and wear out: the health model sees them deviate.
    worn = pumps.pump_fleet(4, failing=4, days=4, seed=31, start=origin, prefix="wear-")
    await ingest_csv(fleet, tmp_path / "worn.csv", worn.readings)
    # The last readings of each lie just before its failure; odd pumps wear their bearing.
    bearing = await predict(fleet, "wear-1", health.id, lambda p: p.anomaly_score >= ANOMALY_OPEN)

    assert bearing.anomaly_score >= ANOMALY_OPEN
    assert not bearing.HasField("rul") and bearing.failure_probability == 0.0
    assert {s.channel for s in bearing.top_sensors[:2]} == {"vibration_rms", "bearing_temperature"}

    async def inspection() -> scheduler_pb2.WorkOrder:
        async with open_channel(fleet, "scheduler", role="erp") as channel:
            orders = await scheduler_pb2_grpc.MaintenanceSchedulerStub(channel).ListWorkOrders(
                scheduler_pb2.ListWorkOrdersRequest(asset_id="wear-2"), timeout=10
            )
        assert len(orders.work_orders) == 1
        return orders.work_orders[0]

    order = await assert_eventually(inspection, timeout=60, interval=0.5)
    anomalies_at = time.monotonic() - started
    assert order.failure_mode == "inspection"
    assert order.cause.model_version == health.id and order.cause.anomaly_score >= ANOMALY_OPEN
    assert order.risk == pytest.approx(order.cause.anomaly_score)
    assert order.cause.top_sensors and set(order.cause.top_sensors) <= set(pumps.FEATURES)
    # Even pumps leak at the seal: by the end, their pressure and flow have fallen.
    seal = await predict(fleet, "wear-2", health.id, lambda p: p.anomaly_score >= ANOMALY_OPEN)
    assert {s.channel for s in seal.top_sensors[:2]} == {"discharge_pressure", "flow_rate"}

    # The maintenance system's history: all four wore out. The schedule takes it from here.
    history = tmp_path / "failures.csv"
    worn.failures.assign(time=worn.failures["time"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(
        history, index=False
    )
    await prognos(
        fleet,
        "import",
        "failures",
        str(history),
        "--asset-column",
        "asset_id",
        "--time-column",
        "time",
        "--mode-column",
        "failure_mode",
    )
    with_failures = await snapshot(fleet, "pumps-with-failures", len(healthy) + len(worn.readings))
    supervised = await version_trained_on(fleet, with_failures.id)
    supervised_at = time.monotonic() - started

    assert supervised.lineage.hyperparameters["model_kind"] == "supervised"
    assert supervised.lineage.training_metrics["censored_units"] == 6.0
    assert "rmse" in supervised.metrics and "false_alarm_rate" not in supervised.metrics
    # Nothing comparable to beat, so it waits for the approval; the health model serves.
    assert registry_pb2.MODEL_ALIAS_CHAMPION not in supervised.aliases
    assert (await predict(fleet, "wear-3", health.id)).HasField("anomaly_score")
    await approve_and_promote(fleet, supervised.id, bob)
    risk = await predict(fleet, "wear-3", supervised.id)

    assert not risk.HasField("anomaly_score")
    assert risk.rul.WhichOneof("value") == "duration"
    assert 0.0 <= risk.failure_probability <= 1.0
    assert {m.failure_mode for m in risk.failure_modes} == set(pumps.MODES)
    print(
        f"health model after {health_at:.0f} s, anomaly scores and an inspection after "
        f"{anomalies_at:.0f} s, supervised model after {supervised_at:.0f} s; "
        f"health metrics {dict(health.metrics)}"
    )

"""AI4I 2020 through the real services: milling operations in, a model per failure mode out.

`prognos import ai4i` registers the milling-machine type, uploads the data set's 10,000
operations as one machine's telemetry and its failures as a failure history; a snapshot
freezes them and `prognos train` cross-validates the model families over the machine's
lives (grouped folds: no life is both trained on and validated) and reports, per failure
mode and overall, precision, recall, F1 and AUC with intervals.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.cli.ai4i import AI4I_TYPE, MODES
from prognos.cli.client import open_channel
from prognos.cli.launcher import RunInfo
from prognos.core.errors import UnavailableError, from_grpc_error
from prognos.core.testing.waiting import assert_eventually

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(900)]

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "ai4i2020" / "ai4i2020.csv"
needs_data = pytest.mark.skipif(
    not DATA.is_file(), reason=f"the AI4I 2020 data set is not at {DATA}"
)
#: Small but real: the default families and the grouped folds, fewer trees and epochs.
QUICK = [
    "window=5",
    "epochs=1",
    "members=1",
    "units=16",
    "trees=100",
    "folds=2",
    "holdout_units=40",
    "verification_samples=16",
]


async def prognos(fleet: RunInfo, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the command line (in a thread: it runs its own event loop) against the fleet."""
    argv = [sys.executable, "-m", "prognos.cli.main", *args, "--data-dir", fleet.data_dir]
    done = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=800, check=False
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


async def _snapshot(fleet: RunInfo, name: str) -> ingest_pb2.DatasetSnapshot:
    async def attempt() -> ingest_pb2.DatasetSnapshot:
        async with open_channel(fleet, "ingest", role="ml-engineer") as channel:
            try:
                response = await ingest_pb2_grpc.IngestServiceStub(channel).CreateDatasetSnapshot(
                    ingest_pb2.CreateDatasetSnapshotRequest(name=name, asset_type=AI4I_TYPE),
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


@needs_data
async def test_ai4i_trains_through_the_services_with_figures_per_failure_mode(
    fleet: RunInfo,
) -> None:
    imported = await prognos(fleet, "import", "ai4i", str(DATA), "--plant", "mills")
    assert "machine mills-mill-1: 10,000 operations, 50,000 readings stored" in imported.stdout
    assert "failures: 348 recorded" in imported.stdout
    assert "not imported: 9 failures flagged with no mode" in imported.stdout
    again = await prognos(fleet, "import", "ai4i", str(DATA), "--plant", "mills")
    assert "failures: 0 recorded, 348 recorded before" in again.stdout

    snapshot = await _snapshot(fleet, "ai4i")
    assert snapshot.row_count == 10_000
    params = [arg for p in QUICK for arg in ("--param", p)]
    trained = await prognos(
        fleet, "train", "--asset-type", AI4I_TYPE, "--snapshot", snapshot.name, *params, "--json"
    )

    version = json.loads(trained.stdout)
    metrics = version["metrics"]
    hyperparameters = version["lineage"]["hyperparameters"]
    assert hyperparameters["families"] == "cnn,gbt"
    chosen = hyperparameters["architecture"]
    assert metrics["cv.brier"] == metrics[f"cv.{chosen}.brier"]
    assert metrics["cv.brier"] <= min(metrics["cv.cnn.brier"], metrics["cv.gbt.brier"])
    for figure in ("precision", "recall", "f1", "auc"):
        assert 0.0 <= metrics[f"cv.{figure}"] <= 1.0
    for _, mode, _ in MODES:
        assert f"cv.mode.{mode}.precision" in metrics and f"cv.mode.{mode}.f1" in metrics
    # The process physics behind these three modes is in the channels: a model that did not
    # learn them would rank their failing operations no better than chance.
    for mode in ("heat_dissipation", "power", "overstrain"):
        assert metrics[f"cv.mode.{mode}.auc"] > 0.9, (mode, metrics)

"""The ingest commands of the CLI, as a user runs them, against a real ingest process.

``prognos import cmapss`` stores all 20,631 cycles of the 100 engines of FD001 and their
100 failures, and a dataset snapshot of them reads back exactly the numbers of the file.
``prognos ingest`` uploads a CSV through a column mapping, and ``prognos quarantine``
lists what it kept out.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.cli.client import open_channel
from prognos.cli.launcher import RunInfo
from prognos.core.testing.waiting import assert_eventually
from prognos.ingest.archive import read_snapshot, read_snapshot_labels
from prognos.ingest.formats import cmapss_asset_type

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture(scope="module")
def running(ingest_module: tuple[Any, Any]) -> RunInfo:
    """The module's ingest process, with the run file `prognos up` would write for it."""
    _, process = ingest_module
    process.write_run_file()
    info: RunInfo = process.info
    return info


FD001 = (
    Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "cmapss" / "train_FD001.txt"
)
PROGNOS = [sys.executable, "-m", "prognos.cli.main"]
HOUR_US = 3_600_000_000
ENVIRONMENT = {k: v for k, v in os.environ.items() if not k.startswith("PROGNOS_")}
ORIGIN_US = 1_577_836_800_000_000  # 2020-01-01T00:00:00Z, the importer's default


async def prognos(*args: str, data_dir: str) -> subprocess.CompletedProcess[str]:
    """Run the ``prognos`` command line as a user would, against the service's data directory."""
    process = await asyncio.create_subprocess_exec(
        *PROGNOS,
        *args,
        "--data-dir",
        data_dir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("PROGNOS_")},
            "COLUMNS": "200",
        },
    )
    out, _ = await asyncio.wait_for(process.communicate(), 300)
    assert process.returncode is not None
    return subprocess.CompletedProcess(args, process.returncode, out.decode(), "")


@pytest.mark.skipif(not FD001.is_file(), reason=f"C-MAPSS data not found at {FD001}")
async def test_importing_cmapss_stores_every_cycle_and_failure_and_a_snapshot_reads_back_the_file(
    running: RunInfo, snapshot_of: Any
) -> None:
    result = await prognos(
        "import", "cmapss", str(FD001), "--plant", "fd001", data_dir=running.data_dir
    )
    assert result.returncode == 0, result.stdout
    assert "20,631" in result.stdout and "495,144" in result.stdout, result.stdout

    snapshot = await snapshot_of(
        running, ingest_pb2.CreateDatasetSnapshotRequest(name="fd001", asset_type="turbofan")
    )
    table = read_snapshot(snapshot)
    labels = read_snapshot_labels(snapshot)

    raw = np.loadtxt(FD001)
    assert raw.shape == (20_631, 26)
    assert table.num_rows == snapshot.row_count == 20_631
    assert len(set(table["asset_id"].to_pylist())) == 100
    ordered = sorted(range(raw.shape[0]), key=lambda i: (f"fd001-unit-{int(raw[i, 0])}", raw[i, 1]))
    raw = raw[ordered]
    assert table["asset_id"].to_pylist() == [f"fd001-unit-{int(u)}" for u in raw[:, 0]]
    times = table["time"].cast("int64").to_numpy()
    assert np.array_equal(times, ORIGIN_US + raw[:, 1].astype(np.int64) * HOUR_US)
    for j, channel in enumerate(cmapss_asset_type().channels):
        assert np.array_equal(table[channel.name].to_numpy(), raw[:, 2 + j]), channel.name

    assert labels.num_rows == 100
    last_cycle = {}
    for unit, cycle in raw[:, :2]:
        last_cycle[f"fd001-unit-{int(unit)}"] = ORIGIN_US + int(cycle) * HOUR_US
    found = dict(
        zip(labels["asset_id"].to_pylist(), labels["time"].cast("int64").to_pylist(), strict=True)
    )
    assert found == last_cycle
    assert all(labels["failure_confirmed"].to_pylist())

    again = await prognos(
        "import", "cmapss", str(FD001), "--plant", "fd001", data_dir=running.data_dir
    )
    assert again.returncode == 0, again.stdout
    assert "readings stored before" in again.stdout and "495,144" in again.stdout, again.stdout


async def test_ingest_uploads_a_mapped_csv_and_quarantine_lists_what_it_kept_out(
    running: RunInfo, tmp_path: Path
) -> None:
    pump = ingest_pb2.AssetType(name="cli-pump", display_name="Pump")
    for name, unit, low, high in (("bearing_temp", "degC", -40, 150), ("flow", "m^3/h", 0, 500)):
        channel = pump.channels.add(name=name, unit=unit, min_value=low, max_value=high)
        channel.expected_interval.FromSeconds(10)
    pump.horizon.duration.FromSeconds(48 * 3600)
    async with open_channel(running, "ingest", role="ml-engineer") as channel:
        await ingest_pb2_grpc.IngestServiceStub(channel).RegisterAssetType(
            ingest_pb2.RegisterAssetTypeRequest(asset_type=pump), timeout=10
        )
    start = int(time.time()) - 7_200
    rows = [f"{start + 10 * i},{100 + i},{i / 3600:.6f}" for i in range(50)]
    rows[7] = f"{start + 70},900,0.1"  # 900 degF is above 150 degC
    rows[9] = f"{start + 90},warm,0.1"  # not a number
    csv = tmp_path / "pump-7.csv"
    csv.write_text("ts,temp_f,flow_m3s\n" + "\n".join(rows) + "\n")

    result = await prognos(
        "ingest",
        str(csv),
        "--asset-type",
        "cli-pump",
        "--mapping",
        "temp_f=bearing_temp:degF,flow_m3s=flow:m^3/s",
        "--time-column",
        "ts",
        "--time-kind",
        "unix",
        "--asset-id",
        "plant-9/pump-7",
        "--register-in-plant",
        "plant-9",
        data_dir=running.data_dir,
    )
    assert result.returncode == 0, result.stdout
    assert "│ 97 " in result.stdout.replace("┃", "│"), result.stdout

    async def listed() -> str:
        shown = await prognos("quarantine", "--asset", "plant-9/pump-7", data_dir=running.data_dir)
        assert shown.returncode == 0, shown.stdout
        assert "OUT_OF_RANGE" in shown.stdout and "MALFORMED" in shown.stdout, shown.stdout
        return shown.stdout

    shown = await assert_eventually(listed, timeout=30, interval=0.5)
    assert "bearing_temp=900 degF" in shown

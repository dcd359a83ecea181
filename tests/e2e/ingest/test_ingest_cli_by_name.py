"""Files that need no mapping, against a real ingest process, through the command line.

A CSV whose columns carry the asset type's channel names maps itself (units from the asset
type), with its cycles placed by ``--cycle-origin`` and ``--cycle-duration``; a NASA C-MAPSS
test file (engines that have not failed) goes in with ``import cmapss --no-failures`` and
stores the very readings the run-to-failure import stores for it, without a label.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.cli.client import open_channel
from prognos.cli.launcher import RunInfo
from prognos.ingest.archive import read_snapshot, read_snapshot_labels
from prognos.ingest.formats import cmapss_asset_type

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

FD001 = (
    Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "cmapss" / "train_FD001.txt"
)
PROGNOS = [sys.executable, "-m", "prognos.cli.main"]
MINUTE_US = 60_000_000
HOUR_US = 60 * MINUTE_US


@pytest.fixture(scope="module")
def running(ingest_module: tuple[Any, Any]) -> RunInfo:
    """The module's ingest process, with the run file `prognos up` would write for it."""
    _, process = ingest_module
    process.write_run_file()
    info: RunInfo = process.info
    return info


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
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return subprocess.CompletedProcess(args, process.returncode, out.decode(), "")


def _row(stdout: str, label: str) -> str:
    """The value of one row of the upload's summary table."""
    for line in stdout.replace("┃", "│").splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 2 and cells[0] == label:
            return cells[1]
    raise AssertionError(f"no {label!r} row in:\n{stdout}")


async def _register(info: RunInfo, asset_type: ingest_pb2.AssetType) -> None:
    async with open_channel(info, "ingest", role="ml-engineer") as channel:
        await ingest_pb2_grpc.IngestServiceStub(channel).RegisterAssetType(
            ingest_pb2.RegisterAssetTypeRequest(asset_type=asset_type), timeout=10
        )


async def test_a_csv_with_channel_names_maps_itself_and_places_cycles_as_told(
    running: RunInfo, snapshot_of: Any, asset_type_of: Any, tmp_path: Path
) -> None:
    await _register(
        running,
        asset_type_of("cli-press", [("pressure", "bar", 0, 400), ("oil_temp", "degC", -40, 200)]),
    )
    rows = [
        (unit, cycle, 100 + cycle + unit / 10, 40 + cycle / 4)
        for unit in (1, 2)
        for cycle in (1, 2, 3)
    ]
    csv = tmp_path / "presses.csv"
    csv.write_text(
        "cycle,press,pressure,oil_temp,operator\n"
        + "".join(f"{c},{u},{p},{t},kim\n" for u, c, p, t in rows)
    )

    result = await prognos(
        "ingest",
        str(csv),
        "--asset-type",
        "cli-press",
        "--time-column",
        "cycle",
        "--time-kind",
        "cycle",
        "--cycle-origin",
        "2021-03-01T06:00:00Z",
        "--cycle-duration",
        "10m",
        "--asset-column",
        "press",
        "--asset-id",
        "line-4/press-",
        "--register-in-plant",
        "line-4",
        data_dir=running.data_dir,
    )

    assert result.returncode == 0, result.stdout
    assert "mapped by name: pressure, oil_temp" in result.stdout, result.stdout
    assert _row(result.stdout, "readings stored") == "12", result.stdout
    snapshot = await snapshot_of(
        running, ingest_pb2.CreateDatasetSnapshotRequest(name="presses", asset_type="cli-press")
    )
    table = read_snapshot(snapshot)
    assert table["asset_id"].to_pylist() == [f"line-4/press-{u}" for u, _, _, _ in rows]
    origin_us = int(datetime(2021, 3, 1, 6, tzinfo=UTC).timestamp()) * 1_000_000
    expected_times = [origin_us + c * 10 * MINUTE_US for _, c, _, _ in rows]
    assert table["time"].cast("int64").to_pylist() == expected_times
    # In the asset type's units: stored as written.
    assert table["pressure"].to_pylist() == [p for _, _, p, _ in rows]
    assert table["oil_temp"].to_pylist() == [t for _, _, _, t in rows]


async def test_a_file_whose_columns_name_no_channel_is_refused_with_the_channels(
    running: RunInfo, asset_type_of: Any, tmp_path: Path
) -> None:
    await _register(running, asset_type_of("cli-gauge", [("level", "m", 0, 10)]))
    csv = tmp_path / "elsewhere.csv"
    csv.write_text("time,height,depth\n2024-01-01T00:00:00Z,1,2\n")

    result = await prognos(
        "ingest",
        str(csv),
        "--asset-type",
        "cli-gauge",
        "--asset-id",
        "g",
        data_dir=running.data_dir,
    )

    assert result.returncode == 1
    assert "no column of elsewhere.csv is named after a channel of 'cli-gauge'" in result.stdout
    assert "(level)" in result.stdout and "--mapping" in result.stdout, result.stdout


def _nasa_test_file(path: Path) -> np.ndarray:
    """A NASA-format test file: the first cycles of three FD001 engines, cut before failure.

    NASA's lines end in two spaces; here every other one ends in none, as an edited file
    may, and the columns still line up (runs of spaces count as one).
    """
    kept = []
    for line in FD001.read_text().splitlines():
        unit, cycle = (int(f) for f in line.split()[:2])
        if unit <= 3 and cycle <= 12 + unit:
            kept.append(line if len(kept) % 2 else line.rstrip())
    path.write_text("\n".join(kept) + "\n")
    return np.loadtxt(path)


@pytest.mark.skipif(not FD001.is_file(), reason=f"C-MAPSS data not found at {FD001}")
async def test_a_cmapss_test_file_stores_the_readings_of_the_cmapss_format_without_labels(
    running: RunInfo, snapshot_of: Any, tmp_path: Path
) -> None:
    source = tmp_path / "test_FD001.txt"
    raw = _nasa_test_file(source)
    assert raw.shape == (13 + 14 + 15, 26)

    # First, while the turbofan type is not registered yet: the import registers it.
    unfailed = await prognos(
        "import", "cmapss", str(source), "--plant", "tst", "--no-failures",
        data_dir=running.data_dir,
    )  # fmt: skip
    failed = await prognos(
        "import", "cmapss", str(source), "--plant", "trn", data_dir=running.data_dir
    )

    assert unfailed.returncode == 0, unfailed.stdout
    assert failed.returncode == 0, failed.stdout
    assert _row(unfailed.stdout, "readings stored") == _row(failed.stdout, "readings stored")
    assert _row(unfailed.stdout, "readings stored") == f"{42 * 24:,}"
    assert _row(unfailed.stdout, "labels") == "0" and _row(failed.stdout, "labels") == "3"
    tables = {}
    labels = {}
    for plant in ("tst", "trn"):
        request = ingest_pb2.CreateDatasetSnapshotRequest(
            name=f"fd001-{plant}",
            asset_type="turbofan",
            asset_ids=[f"{plant}-unit-{u}" for u in (1, 2, 3)],
        )
        snapshot = await snapshot_of(running, request)
        tables[plant] = read_snapshot(snapshot)
        labels[plant] = read_snapshot_labels(snapshot).num_rows
    tst, trn = tables["tst"], tables["trn"]
    assert labels == {"tst": 0, "trn": 3}
    assert tst.num_rows == trn.num_rows == raw.shape[0]
    assert [a.replace("tst-", "trn-") for a in tst["asset_id"].to_pylist()] == trn[
        "asset_id"
    ].to_pylist()
    assert tst["time"].equals(trn["time"])
    origin_us = int(datetime(2020, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000
    assert tst["time"].cast("int64").to_pylist() == [
        origin_us + int(c) * HOUR_US for c in raw[:, 1]
    ]
    for j, channel in enumerate(cmapss_asset_type().channels):
        assert tst[channel.name].equals(trn[channel.name]), channel.name
        assert np.array_equal(tst[channel.name].to_numpy(), raw[:, 2 + j]), channel.name

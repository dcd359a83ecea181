"""``prognos import ai4i``: the AI4I 2020 milling data set, imported like any plant's data.

The file (``ai4i2020.csv``: 10,000 operations of one milling machine with air and process
temperature, rotational speed, torque and tool wear, and five failure flags) goes in
through the generic paths a plant would use:

1. the ``milling-machine`` asset type is registered when missing: its five channels in
   their units, one reading a minute, the five failure modes, and a 30-second horizon, so
   "fails within the horizon" means "this operation fails" (the data set's own question);
2. the file itself is uploaded as CSV telemetry, its columns mapped to the channels, the
   ``UDI`` column as the operation's number (cycle) from ``--origin``, one minute apart;
3. its failures become a failure history (asset, time, mode), as a CMMS would export it,
   imported through ``ImportFailureHistory``.

The rows are taken as one machine's successive operations (``<plant>-mill-1``); the
product quality variant (L, M, H) is not a sensor and is not imported. A failure flagged
with several modes is recorded under the first of TWF, HDF, PWF, OSF, RNF; a failure
flagged with none cannot be labelled with a mode the type declares and is reported, not
imported.
"""

from __future__ import annotations

import asyncio
import csv
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from rich.console import Console
from rich.text import Text

from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.cli._tables import echo_json
from prognos.cli.client import ServiceNotRunningError, open_channel, read_run_info
from prognos.cli.failures import import_failure_history
from prognos.cli.ingest import DATA_DIR_HELP, rpc_failure, upload_file
from prognos.core.config import Settings

__all__ = ["AI4I_TYPE", "CHANNELS", "MODES", "asset_type", "failure_rows", "import_ai4i"]

AI4I_TYPE = "milling-machine"
OPERATION = timedelta(minutes=1)
HORIZON = timedelta(seconds=30)
#: (file column, channel, unit, lowest, highest plausible value).
CHANNELS: tuple[tuple[str, str, str, float, float], ...] = (
    ("Air temperature [K]", "air_temperature", "kelvin", 250.0, 350.0),
    ("Process temperature [K]", "process_temperature", "kelvin", 250.0, 370.0),
    ("Rotational speed [rpm]", "rotational_speed", "revolutions_per_minute", 0.0, 5000.0),
    ("Torque [Nm]", "torque", "newton * meter", 0.0, 200.0),
    ("Tool wear [min]", "tool_wear", "minute", 0.0, 400.0),
)
#: (flag column, failure mode, description), in the order a multiply flagged row is named.
MODES: tuple[tuple[str, str, str], ...] = (
    ("TWF", "tool_wear", "The tool is worn out (replaced or failing at 200 to 240 minutes)."),
    (
        "HDF",
        "heat_dissipation",
        "Too little difference between air and process temperature at low speed.",
    ),
    ("PWF", "power", "The power (torque times speed) is outside 3,500 to 9,000 W."),
    ("OSF", "overstrain", "Tool wear times torque exceeds the product variant's limit."),
    ("RNF", "random", "A failure at random, whatever the process parameters (0.1%)."),
)


def asset_type() -> ingest_pb2.AssetType:
    """The milling machine type: the data set's channels, failure modes and horizon."""
    kind = ingest_pb2.AssetType(
        name=AI4I_TYPE,
        display_name="Milling machine (AI4I 2020)",
        description="One operation a minute; the question is whether this operation fails.",
        failure_modes=[
            ingest_pb2.FailureMode(name=name, description=text) for _, name, text in MODES
        ],
    )
    for _, channel, unit, low, high in CHANNELS:
        added = kind.channels.add(name=channel, unit=unit, min_value=low, max_value=high)
        added.expected_interval.FromTimedelta(OPERATION)
    kind.horizon.duration.FromTimedelta(HORIZON)
    return kind


@dataclass(frozen=True)
class FailureRows:
    """The failures of the file: ``(operation, mode)`` each, and those without a mode."""

    rows: list[tuple[int, str]]
    without_mode: list[int]


def failure_rows(path: Path) -> FailureRows:
    """Read the file's failures, each under its first flagged mode.

    A row is a failure when any mode is flagged (the data set's description: "if at least
    one of the above failure modes is true, the process fails") or ``Machine failure`` is
    1; the file has rows of either kind without the other.
    """
    rows: list[tuple[int, str]] = []
    without: list[int] = []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        for record in csv.DictReader(fh):
            mode = next((name for flag, name, _ in MODES if record.get(flag, "0") == "1"), "")
            if not mode and record.get("Machine failure", "0").strip() != "1":
                continue
            operation = int(record["UDI"])
            if mode:
                rows.append((operation, mode))
            else:
                without.append(operation)
    return FailureRows(rows, without)


def telemetry_header(path: Path, plant: str, origin: datetime) -> ingest_pb2.TelemetryFileHeader:
    """The upload of the file itself: columns mapped to channels, UDI as the operation."""
    header = ingest_pb2.TelemetryFileHeader(
        file_name=path.name,
        format=ingest_pb2.TELEMETRY_FILE_FORMAT_CSV,
        asset_type=AI4I_TYPE,
        has_header=True,
        asset_id=machine_id(plant),
        time_column="UDI",
        time_kind=ingest_pb2.TIME_COLUMN_KIND_CYCLE,
        columns=[
            ingest_pb2.ColumnMapping(column=column, channel=channel, unit=unit)
            for column, channel, unit, _, _ in CHANNELS
        ],
        register_in_plant=plant,
    )
    header.cycle_origin.FromDatetime(origin)
    header.cycle_duration.FromTimedelta(OPERATION)
    return header


def machine_id(plant: str) -> str:
    return f"{plant}-mill-1"


def write_failure_history(
    failures: FailureRows, plant: str, origin: datetime, out: Path
) -> ingest_pb2.FailureHistoryHeader:
    """Write the failures as a CMMS export (asset, time, mode, confirmed); its header."""
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["asset", "failed_at", "failure_mode", "confirmed"])
        for operation, mode in failures.rows:
            at = origin + operation * OPERATION
            writer.writerow([machine_id(plant), at.isoformat(), mode, "true"])
    return ingest_pb2.FailureHistoryHeader(
        file_name=out.name,
        format=ingest_pb2.FAILURE_HISTORY_FORMAT_CSV,
        asset_id_column="asset",
        time_column="failed_at",
        time_kind=ingest_pb2.TIME_COLUMN_KIND_RFC3339,
        failure_mode_column="failure_mode",
        confirmed_column="confirmed",
    )


async def _register_type(stub: ingest_pb2_grpc.IngestServiceStub) -> bool:
    """Register the milling machine type unless it exists; whether it was registered now."""
    try:
        await stub.GetAssetType(ingest_pb2.GetAssetTypeRequest(name=AI4I_TYPE))
        return False
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
    await stub.RegisterAssetType(ingest_pb2.RegisterAssetTypeRequest(asset_type=asset_type()))
    return True


def import_ai4i(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    plant: Annotated[str, typer.Option(help="Plant of the machine; it is <plant>-mill-1.")],
    origin: Annotated[
        datetime,
        typer.Option(help="Time of operation 0 (UTC).", formats=["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
    ] = datetime(2020, 1, 1),
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the service's answers as JSON.")
    ] = False,
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
) -> None:
    """Import the AI4I 2020 milling data set (ai4i2020.csv): telemetry and failure history.

    Registers the milling-machine type when missing, uploads the operations as telemetry of
    one machine, and imports its failures with their modes as outcome labels.
    """
    console = Console(stderr=as_json)
    start = origin.replace(tzinfo=UTC)
    overrides: dict[str, Any] = {"data_dir": data_dir} if data_dir is not None else {}
    try:
        info = read_run_info(Settings.load("prognos", **overrides).data_dir.resolve())
    except ServiceNotRunningError as e:
        console.print(Text(f"error: {e}", style="bold red"))
        raise typer.Exit(1) from None
    failures = failure_rows(file)

    async def go() -> tuple[bool, Any, Any]:
        async with open_channel(info, "ingest", role="ml-engineer") as channel:
            registered = await _register_type(ingest_pb2_grpc.IngestServiceStub(channel))
        async with open_channel(info, "ingest", role="gateway") as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            console.print(f"uploading {file.name}", markup=False, highlight=False)
            telemetry = await upload_file(stub, file, telemetry_header(file, plant, start))
            with tempfile.TemporaryDirectory() as work:
                history = Path(work) / f"{file.stem}-failures.csv"
                header = write_failure_history(failures, plant, start, history)
                labels = await import_failure_history(stub, history, header)
        return registered, telemetry, labels

    try:
        registered, telemetry, labels = asyncio.run(go())
    except grpc.aio.AioRpcError as error:
        raise rpc_failure(console, error) from None
    if as_json:
        echo_json(telemetry)
        echo_json(labels)
    summary = [
        f"asset type {AI4I_TYPE}: {'registered' if registered else 'already registered'}",
        f"machine {machine_id(plant)}: {telemetry.row_count:,} operations, "
        f"{telemetry.accepted_count:,} readings stored, "
        f"{telemetry.quarantined_count:,} quarantined",
        f"failures: {labels.recorded_count:,} recorded, {labels.duplicate_count:,} recorded "
        f"before, {labels.quarantined_count:,} quarantined",
    ]
    if failures.without_mode:
        summary.append(
            f"not imported: {len(failures.without_mode)} failures flagged with no mode "
            f"(UDI {', '.join(map(str, failures.without_mode[:10]))}"
            f"{', ...' if len(failures.without_mode) > 10 else ''})"
        )
    for line in summary:
        console.print(line, markup=False, highlight=False)

"""``prognos ingest``, ``prognos import cmapss``, ``prognos quarantine`` and ``prognos snapshot``.

Files go to the ingest service's ``UploadTelemetryFile`` in 1 MiB chunks behind a progress
bar; the service parses, validates and stores them and answers with the counts. Columns
named after a channel of the asset type (``GetAssetType``) map themselves, in the channel's
unit. Quarantined readings and dataset snapshots are read back through the same service.
"""

from __future__ import annotations

import asyncio
import csv
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.cli._tables import AsJson, echo_json
from prognos.cli.client import ServiceNotRunningError, open_channel, read_run_info
from prognos.core.config import Settings
from prognos.core.errors import InvalidArgumentError, from_grpc_error

__all__ = [
    "CMAPSS_CHANNELS",
    "DATA_DIR_HELP",
    "call_ingest",
    "file_columns",
    "import_app",
    "import_cmapss",
    "ingest",
    "parse_duration",
    "parse_mapping",
    "reason_name",
    "rpc_failure",
    "same_name_mappings",
    "snapshot_app",
    "upload_file",
]

CHUNK_BYTES = 1 << 20
_UPLOAD_TIMEOUT_S = 3600.0
DATA_DIR_HELP = "Data directory of `prognos up` (default: $PROGNOS_DATA_DIR, else .prognos)."
_TIME_KINDS = {
    "rfc3339": ingest_pb2.TIME_COLUMN_KIND_RFC3339,
    "unix": ingest_pb2.TIME_COLUMN_KIND_UNIX_SECONDS,
    "cycle": ingest_pb2.TIME_COLUMN_KIND_CYCLE,
}
_FORMATS = {
    "csv": ingest_pb2.TELEMETRY_FILE_FORMAT_CSV,
    "jsonl": ingest_pb2.TELEMETRY_FILE_FORMAT_JSONL,
    "cmapss": ingest_pb2.TELEMETRY_FILE_FORMAT_CMAPSS,
}

CMAPSS_CHANNELS = (
    *(f"op_setting_{k}" for k in range(1, 4)),
    *(f"sensor_{k}" for k in range(1, 22)),
)
"""The channels of NASA C-MAPSS text after its unit and cycle columns, in file order."""
_CMAPSS_ASSET_TYPE = "turbofan"
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|m|min|h|d)?\s*", re.IGNORECASE)
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_HEADER_SAMPLE_LINES = 100

import_app = typer.Typer(help="Import public data sets.", no_args_is_help=True)
snapshot_app = typer.Typer(help="Freeze and show dataset snapshots.", no_args_is_help=True)


def _data_dir(data_dir: Path | None) -> Path:
    overrides: dict[str, Any] = {"data_dir": data_dir} if data_dir is not None else {}
    return Settings.load("prognos", **overrides).data_dir.resolve()


def parse_mapping(items: list[str]) -> list[ingest_pb2.ColumnMapping]:
    """Read ``COLUMN=CHANNEL[:UNIT]`` items (each item may hold several, comma-separated).

    Raises:
        typer.BadParameter: an item is not of that form.
    """
    mappings = []
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(","))):
            column, sep, target = part.partition("=")
            channel, _, unit = target.partition(":")
            if not sep or not column.strip() or not channel.strip():
                raise typer.BadParameter(f"{part!r}: expected COLUMN=CHANNEL[:UNIT]")
            mappings.append(
                ingest_pb2.ColumnMapping(
                    column=column.strip(), channel=channel.strip(), unit=unit.strip()
                )
            )
    return mappings


def parse_duration(text: str) -> timedelta:
    """Read a positive duration: seconds (``3600``) or a number with a unit (``90s``, ``5m``,
    ``1.5h``, ``1d``).

    Raises:
        typer.BadParameter: the text is not of that form, or not positive.
    """
    match = _DURATION.fullmatch(text)
    if match is None:
        raise typer.BadParameter(f"{text!r}: expected seconds or a number with s, m, h or d")
    seconds = float(match[1]) * _DURATION_UNITS[(match[2] or "s").lower()]
    if seconds <= 0:
        raise typer.BadParameter(f"{text!r}: must be positive")
    return timedelta(seconds=seconds)


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: expected an RFC 3339 time such as 2020-01-01T00:00:00Z"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def file_columns(path: Path, file_format: str, delimiter: str = ",") -> list[str]:
    """The column names of a CSV file's header line, or the keys of a JSON-lines file.

    For JSON lines, the keys of the first 100 objects, in order of first appearance. Lines
    that cannot be read are passed over here: the service reports them.
    """
    with path.open("rb") as fh:
        if file_format == "csv":
            first = fh.readline().decode("utf-8-sig", "replace").rstrip("\r\n")
            if delimiter == " ":
                return first.split()
            return [name.strip() for name in next(csv.reader([first], delimiter=delimiter), [])]
        keys: dict[str, None] = {}
        for _, raw in zip(range(_HEADER_SAMPLE_LINES), fh, strict=False):
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict):
                keys.update(dict.fromkeys(record))
        return list(keys)


def same_name_mappings(
    columns: Sequence[str],
    asset_type: ingest_pb2.AssetType,
    mapped: Sequence[ingest_pb2.ColumnMapping] = (),
    skip: Sequence[str] = (),
) -> list[ingest_pb2.ColumnMapping]:
    """Map each column named after a channel of ``asset_type`` to it, in the channel's unit.

    Args:
        columns: The file's column names.
        asset_type: The asset type of the file's assets.
        mapped: Mappings given explicitly; their columns and channels are left to them.
        skip: Columns that hold something else (the time, the asset id).

    Returns:
        The new mappings, in column order.
    """
    units = {channel.name: channel.unit for channel in asset_type.channels}
    taken_columns = {m.column for m in mapped} | set(skip)
    taken_channels = {m.channel for m in mapped}
    found = []
    for column in dict.fromkeys(columns):
        if column in units and column not in taken_columns and column not in taken_channels:
            found.append(
                ingest_pb2.ColumnMapping(column=column, channel=column, unit=units[column])
            )
    return found


async def upload_file(
    stub: ingest_pb2_grpc.IngestServiceStub,
    path: Path,
    header: ingest_pb2.TelemetryFileHeader,
    on_sent: Callable[[int], None] = lambda n: None,
) -> ingest_pb2.UploadTelemetryFileResponse:
    """Stream a file to ``UploadTelemetryFile``; ``on_sent`` is told each chunk's size."""

    async def requests() -> AsyncIterator[ingest_pb2.UploadTelemetryFileRequest]:
        yield ingest_pb2.UploadTelemetryFileRequest(header=header)
        with path.open("rb") as fh:
            while chunk := await asyncio.to_thread(fh.read, CHUNK_BYTES):
                yield ingest_pb2.UploadTelemetryFileRequest(chunk=chunk)
                on_sent(len(chunk))

    response: ingest_pb2.UploadTelemetryFileResponse = await stub.UploadTelemetryFile(
        requests(), timeout=_UPLOAD_TIMEOUT_S
    )
    return response


def rpc_failure(console: Console, error: grpc.aio.AioRpcError) -> typer.Exit:
    """Print a failed call's status, message and field violations; the exit to raise."""
    typed = from_grpc_error(error)
    console.print(Text(f"error: {error.code().name}: {typed.message}", style="bold red"))
    if isinstance(typed, InvalidArgumentError):
        for field, description in typed.violations:
            console.print(f"  {field}: {description}", markup=False, highlight=False)
    return typer.Exit(1)


Prepare = Callable[[ingest_pb2_grpc.IngestServiceStub, Console], Awaitable[None]]
"""Completes the header before the upload, through the same channel."""


def _run_upload(
    data_dir: Path | None,
    path: Path,
    header: ingest_pb2.TelemetryFileHeader,
    prepare: Prepare | None = None,
    as_json: bool = False,
) -> ingest_pb2.UploadTelemetryFileResponse:
    console = Console(stderr=as_json)
    try:
        info = read_run_info(_data_dir(data_dir))
    except ServiceNotRunningError as e:
        console.print(Text(f"error: {e}", style="bold red"))
        raise typer.Exit(1) from None
    size = path.stat().st_size

    async def go() -> ingest_pb2.UploadTelemetryFileResponse:
        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        with progress:
            task = progress.add_task(f"uploading {path.name}", total=size)

            def sent(n: int) -> None:
                progress.advance(task, n)
                if progress.tasks[task].completed >= size:
                    progress.update(task, description=f"storing {path.name}")

            async with open_channel(info, "ingest", role="gateway") as channel:
                stub = ingest_pb2_grpc.IngestServiceStub(channel)
                if prepare is not None:
                    await prepare(stub, console)
                return await upload_file(stub, path, header, sent)

    try:
        response = asyncio.run(go())
    except grpc.aio.AioRpcError as error:
        raise rpc_failure(console, error) from None
    if as_json:
        echo_json(response)
    else:
        _print_result(console, path, response)
    return response


def _print_result(
    console: Console, path: Path, response: ingest_pb2.UploadTelemetryFileResponse
) -> None:
    table = Table(title=path.name, show_header=False)
    table.add_column()
    table.add_column(overflow="fold")
    table.add_row("content hash", response.content_hash)
    table.add_row("rows read", f"{response.row_count:,}")
    table.add_row("readings stored", f"{response.accepted_count:,}")
    table.add_row("readings quarantined", f"{response.quarantined_count:,}")
    if response.duplicate_count:
        table.add_row("readings stored before", f"{response.duplicate_count:,}")
    table.add_row("assets", f"{len(response.asset_ids):,}")
    table.add_row("labels", f"{response.label_count:,}")
    console.print(table)
    for reading in response.sample_rejections:
        console.print(
            f"  quarantined: {reason_name(reading.reason)}: {reading.detail}",
            markup=False,
            highlight=False,
        )


def reason_name(value: int) -> str:
    """A quarantine reason without its enum prefix: ``OUT_OF_RANGE``."""
    return ingest_pb2.QuarantineReason.Name(value).removeprefix("QUARANTINE_REASON_")  # type: ignore[arg-type]


def ingest(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    asset_type: Annotated[str, typer.Option(help="Asset type of every asset in the file.")],
    mapping: Annotated[
        list[str] | None,
        typer.Option(
            help="COLUMN=CHANNEL[:UNIT]; repeat, or separate with commas. Columns named "
            "after a channel of the asset type map themselves, in the channel's unit."
        ),
    ] = None,
    time_column: Annotated[str, typer.Option(help="Column holding the time.")] = "time",
    time_kind: Annotated[str, typer.Option(help="rfc3339, unix (seconds) or cycle.")] = "rfc3339",
    cycle_origin: Annotated[
        str | None,
        typer.Option(help="--time-kind cycle: time of cycle 0, RFC 3339 (default 2020-01-01)."),
    ] = None,
    cycle_duration: Annotated[
        str | None,
        typer.Option(help="--time-kind cycle: one cycle, e.g. 3600, 90s, 5m, 1h (default 1h)."),
    ] = None,
    asset_id: Annotated[
        str | None, typer.Option(help="The file's one asset (or, with --asset-column, a prefix).")
    ] = None,
    asset_column: Annotated[
        str | None, typer.Option(help="Column naming each row's asset.")
    ] = None,
    file_format: Annotated[
        str | None, typer.Option("--format", help="csv or jsonl (default: from the suffix).")
    ] = None,
    delimiter: Annotated[
        str, typer.Option(help='CSV field separator (" ": runs of spaces count as one).')
    ] = ",",
    header: Annotated[
        bool, typer.Option(help="Whether the CSV's first line names columns.")
    ] = True,
    register_in_plant: Annotated[
        str | None, typer.Option(help="Register unknown assets in this plant.")
    ] = None,
    run_to_failure: Annotated[
        bool, typer.Option(help="Each asset's last row is a confirmed failure.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the service's answer as JSON.")
    ] = False,
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
) -> None:
    """Upload a CSV or JSON-lines file of telemetry, with a progress bar."""
    chosen = (file_format or ("jsonl" if file.suffix in (".jsonl", ".ndjson") else "csv")).lower()
    if chosen not in ("csv", "jsonl"):
        raise typer.BadParameter("choose csv or jsonl", param_hint="--format")
    if time_kind not in _TIME_KINDS:
        raise typer.BadParameter(
            f"choose one of {', '.join(_TIME_KINDS)}", param_hint="--time-kind"
        )
    if not asset_id and not asset_column:
        raise typer.BadParameter("give --asset-id or --asset-column", param_hint="--asset-id")
    explicit = parse_mapping(mapping or [])
    named_columns = chosen == "jsonl" or header
    if not explicit and not named_columns:
        raise typer.BadParameter(
            "a file without a header line names no columns: map them by number (3=CHANNEL)",
            param_hint="--mapping",
        )
    message = ingest_pb2.TelemetryFileHeader(
        file_name=file.name,
        format=_FORMATS[chosen],
        asset_type=asset_type,
        delimiter=delimiter,
        has_header=header,
        asset_id_column=asset_column or "",
        asset_id=asset_id or "",
        time_column=time_column,
        time_kind=_TIME_KINDS[time_kind],
        columns=explicit,
        register_in_plant=register_in_plant or "",
        run_to_failure=run_to_failure,
    )
    for value, name in ((cycle_origin, "--cycle-origin"), (cycle_duration, "--cycle-duration")):
        if value is not None and time_kind != "cycle":
            raise typer.BadParameter("only with --time-kind cycle", param_hint=name)
    if cycle_origin is not None:
        message.cycle_origin.FromDatetime(_parse_time(cycle_origin))
    if cycle_duration is not None:
        message.cycle_duration.FromTimedelta(parse_duration(cycle_duration))
    if not named_columns:
        _run_upload(data_dir, file, message, as_json=as_json)
        return
    columns = file_columns(file, chosen, delimiter)

    async def map_by_name(stub: ingest_pb2_grpc.IngestServiceStub, console: Console) -> None:
        reply = await stub.GetAssetType(ingest_pb2.GetAssetTypeRequest(name=asset_type), timeout=30)
        skip = [time_column, *([asset_column] if asset_column else [])]
        found = same_name_mappings(columns, reply.asset_type, explicit, skip)
        if not explicit and not found:
            channels = ", ".join(c.name for c in reply.asset_type.channels)
            console.print(
                Text(
                    f"error: no column of {file.name} is named after a channel of "
                    f"{asset_type!r} ({channels}); map columns with --mapping COLUMN=CHANNEL",
                    style="bold red",
                )
            )
            raise typer.Exit(1)
        if found:
            names = ", ".join(m.column for m in found)
            console.print(f"mapped by name: {names}", markup=False, highlight=False)
        message.columns.extend(found)

    _run_upload(data_dir, file, message, map_by_name, as_json=as_json)


@import_app.command("cmapss")
def import_cmapss(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    plant: Annotated[str, typer.Option(help="Plant of the engines; assets are <plant>-unit-<n>.")],
    cycle_hours: Annotated[float, typer.Option(help="Hours one operating cycle stands for.")] = 1.0,
    origin: Annotated[
        datetime,
        typer.Option(help="Time of cycle 0 (UTC).", formats=["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
    ] = datetime(2020, 1, 1),
    no_failures: Annotated[
        bool,
        typer.Option(
            "--no-failures",
            help="The engines have not failed (test_FD001.txt and kin): no failure labels.",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the service's answer as JSON.")
    ] = False,
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
) -> None:
    """Import a NASA C-MAPSS file: run-to-failure (train_FD001.txt) or, with --no-failures, test.

    Registers the turbofan asset type when missing and each engine as an asset, and stores
    every cycle as telemetry. Each engine's last cycle is a confirmed failure, unless
    --no-failures: then the file goes up as space-separated text without labels, and the
    readings are those the run-to-failure import would store.
    """
    if no_failures:
        message = ingest_pb2.TelemetryFileHeader(
            file_name=file.name,
            format=ingest_pb2.TELEMETRY_FILE_FORMAT_CSV,
            asset_type=_CMAPSS_ASSET_TYPE,
            delimiter=" ",
            has_header=False,
            asset_id_column="1",
            asset_id=f"{plant}-unit-",
            time_column="2",
            time_kind=ingest_pb2.TIME_COLUMN_KIND_CYCLE,
            columns=[
                ingest_pb2.ColumnMapping(column=str(3 + j), channel=name)
                for j, name in enumerate(CMAPSS_CHANNELS)
            ],
            register_in_plant=plant,
            run_to_failure=False,
        )
    else:
        message = ingest_pb2.TelemetryFileHeader(
            file_name=file.name,
            format=ingest_pb2.TELEMETRY_FILE_FORMAT_CMAPSS,
            asset_type=_CMAPSS_ASSET_TYPE,
            register_in_plant=plant,
            run_to_failure=True,
        )
    message.cycle_origin.FromDatetime(origin.replace(tzinfo=UTC))
    message.cycle_duration.FromTimedelta(timedelta(hours=cycle_hours))
    _run_upload(data_dir, file, message, as_json=as_json)


@snapshot_app.command("create")
def snapshot_create(
    name: Annotated[str, typer.Argument(help="Unique name of the snapshot.")],
    asset_type: Annotated[str, typer.Option(help="Asset type whose data to freeze.")],
    asset: Annotated[list[str] | None, typer.Option(help="Only this asset; repeat.")] = None,
    as_json: AsJson = False,
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
) -> None:
    """Freeze the archived telemetry and labels of an asset type as a named snapshot."""
    request = ingest_pb2.CreateDatasetSnapshotRequest(
        name=name, asset_type=asset_type, asset_ids=asset or []
    )
    snapshot = call_ingest(
        data_dir, "ml-engineer", lambda stub: stub.CreateDatasetSnapshot(request, timeout=120)
    ).snapshot
    _print_snapshot(snapshot, as_json)


@snapshot_app.command("show")
def snapshot_show(
    name: Annotated[str, typer.Argument(help="Name of the snapshot.")],
    as_json: AsJson = False,
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
) -> None:
    """Show a snapshot: its content hash and its files (--json: each file too)."""
    request = ingest_pb2.GetDatasetSnapshotRequest(name=name)
    snapshot = call_ingest(
        data_dir, "ml-engineer", lambda stub: stub.GetDatasetSnapshot(request, timeout=30)
    ).snapshot
    _print_snapshot(snapshot, as_json)


def call_ingest(data_dir: Path | None, role: str, call: Callable[[Any], Any]) -> Any:
    """Run ``call`` on an ingest stub of the running fleet, in ``role``; errors exit 1."""
    console = Console()
    try:
        info = read_run_info(_data_dir(data_dir))
    except ServiceNotRunningError as e:
        console.print(Text(f"error: {e}", style="bold red"))
        raise typer.Exit(1) from None

    async def go() -> Any:
        async with open_channel(info, "ingest", role=role) as channel:
            return await call(ingest_pb2_grpc.IngestServiceStub(channel))

    try:
        return asyncio.run(go())
    except grpc.aio.AioRpcError as error:
        raise rpc_failure(console, error) from None


def _print_snapshot(snapshot: ingest_pb2.DatasetSnapshot, as_json: bool = False) -> None:
    if as_json:
        echo_json(snapshot)
        return
    console = Console()
    console.print(f"snapshot {snapshot.name} ({snapshot.id})", highlight=False)
    console.print(f"  content hash {snapshot.content_hash}", highlight=False)
    console.print(f"  root {snapshot.root_uri}", highlight=False)
    console.print(f"  {len(snapshot.files)} files, {snapshot.row_count:,} telemetry rows")

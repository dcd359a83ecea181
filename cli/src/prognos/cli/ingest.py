"""``prognos ingest``, ``prognos import cmapss``, ``prognos quarantine`` and ``prognos snapshot``.

Files go to the ingest service's ``UploadTelemetryFile`` in 1 MiB chunks behind a progress
bar; the service parses, validates and stores them and answers with the counts. Quarantined
readings and dataset snapshots are read back through the same service.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
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
from prognos.cli.client import ServiceNotRunningError, open_channel, read_run_info
from prognos.core.config import Settings
from prognos.core.errors import InvalidArgumentError, from_grpc_error

__all__ = [
    "import_app",
    "import_cmapss",
    "ingest",
    "parse_mapping",
    "quarantine",
    "snapshot_app",
    "upload_file",
]

CHUNK_BYTES = 1 << 20
_UPLOAD_TIMEOUT_S = 3600.0
_DATA_DIR_HELP = "Data directory of `prognos up` (default: $PROGNOS_DATA_DIR, else .prognos)."
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


def _fail(console: Console, error: grpc.aio.AioRpcError) -> typer.Exit:
    typed = from_grpc_error(error)
    console.print(Text(f"error: {error.code().name}: {typed.message}", style="bold red"))
    if isinstance(typed, InvalidArgumentError):
        for field, description in typed.violations:
            console.print(f"  {field}: {description}", markup=False, highlight=False)
    return typer.Exit(1)


def _run_upload(
    data_dir: Path | None, path: Path, header: ingest_pb2.TelemetryFileHeader
) -> ingest_pb2.UploadTelemetryFileResponse:
    console = Console()
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
                return await upload_file(
                    ingest_pb2_grpc.IngestServiceStub(channel), path, header, sent
                )

    try:
        response = asyncio.run(go())
    except grpc.aio.AioRpcError as error:
        raise _fail(console, error) from None
    _print_result(console, path, response)
    return response


def _print_result(
    console: Console, path: Path, response: ingest_pb2.UploadTelemetryFileResponse
) -> None:
    table = Table(title=f"{path.name} ({response.content_hash[:19]}...)", show_header=False)
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
            f"  quarantined: {_reason(reading.reason)}: {reading.detail}",
            markup=False,
            highlight=False,
        )


def _reason(value: int) -> str:
    return ingest_pb2.QuarantineReason.Name(value).removeprefix("QUARANTINE_REASON_")  # type: ignore[arg-type]


def ingest(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    asset_type: Annotated[str, typer.Option(help="Asset type of every asset in the file.")],
    mapping: Annotated[
        list[str],
        typer.Option(help="COLUMN=CHANNEL[:UNIT]; repeat, or separate with commas."),
    ],
    time_column: Annotated[str, typer.Option(help="Column holding the time.")] = "time",
    time_kind: Annotated[str, typer.Option(help="rfc3339, unix (seconds) or cycle.")] = "rfc3339",
    asset_id: Annotated[
        str | None, typer.Option(help="The file's one asset (or, with --asset-column, a prefix).")
    ] = None,
    asset_column: Annotated[
        str | None, typer.Option(help="Column naming each row's asset.")
    ] = None,
    file_format: Annotated[
        str | None, typer.Option("--format", help="csv or jsonl (default: from the suffix).")
    ] = None,
    delimiter: Annotated[str, typer.Option(help="CSV field separator.")] = ",",
    header: Annotated[
        bool, typer.Option(help="Whether the CSV's first line names columns.")
    ] = True,
    register_in_plant: Annotated[
        str | None, typer.Option(help="Register unknown assets in this plant.")
    ] = None,
    run_to_failure: Annotated[
        bool, typer.Option(help="Each asset's last row is a confirmed failure.")
    ] = False,
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
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
        columns=parse_mapping(mapping),
        register_in_plant=register_in_plant or "",
        run_to_failure=run_to_failure,
    )
    _run_upload(data_dir, file, message)


@import_app.command("cmapss")
def import_cmapss(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    plant: Annotated[str, typer.Option(help="Plant of the engines; assets are <plant>-unit-<n>.")],
    cycle_hours: Annotated[float, typer.Option(help="Hours one operating cycle stands for.")] = 1.0,
    origin: Annotated[
        datetime,
        typer.Option(help="Time of cycle 0 (UTC).", formats=["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
    ] = datetime(2020, 1, 1),
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
) -> None:
    """Import a NASA C-MAPSS run-to-failure file (train_FD001.txt and kin).

    Registers the turbofan asset type when missing and each engine as an asset, stores
    every cycle as telemetry and each engine's last cycle as a confirmed failure.
    """
    message = ingest_pb2.TelemetryFileHeader(
        file_name=file.name,
        format=ingest_pb2.TELEMETRY_FILE_FORMAT_CMAPSS,
        asset_type="turbofan",
        register_in_plant=plant,
        run_to_failure=True,
    )
    message.cycle_origin.FromDatetime(origin.replace(tzinfo=UTC))
    message.cycle_duration.FromTimedelta(timedelta(hours=cycle_hours))
    _run_upload(data_dir, file, message)


def quarantine(
    asset: Annotated[str | None, typer.Option(help="Only this asset.")] = None,
    reason: Annotated[
        str | None, typer.Option(help="Only this reason, e.g. OUT_OF_RANGE or LATE.")
    ] = None,
    limit: Annotated[int, typer.Option(help="Readings to list.")] = 20,
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
) -> None:
    """List quarantined readings, newest first, with totals per asset and reason."""
    console = Console()
    reason_value = 0
    if reason:
        name = "QUARANTINE_REASON_" + reason.upper().removeprefix("QUARANTINE_REASON_")
        try:
            reason_value = ingest_pb2.QuarantineReason.Value(name)
        except ValueError:
            choices = [_reason(v) for v in ingest_pb2.QuarantineReason.values() if v]
            raise typer.BadParameter(f"choose one of {', '.join(choices)}") from None
    request = ingest_pb2.ListQuarantineRequest(
        asset_id=asset or "",
        reason=reason_value,
        page_size=max(1, limit),  # type: ignore[arg-type]
    )
    try:
        info = read_run_info(_data_dir(data_dir))
    except ServiceNotRunningError as e:
        console.print(Text(f"error: {e}", style="bold red"))
        raise typer.Exit(1) from None

    async def go() -> ingest_pb2.ListQuarantineResponse:
        async with open_channel(info, "ingest", role="gateway") as channel:
            response: ingest_pb2.ListQuarantineResponse = await ingest_pb2_grpc.IngestServiceStub(
                channel
            ).ListQuarantine(request, timeout=30)
            return response

    try:
        response = asyncio.run(go())
    except grpc.aio.AioRpcError as error:
        raise _fail(console, error) from None
    totals = Table(title="Quarantined readings per asset and reason")
    for column in ("Asset", "Reason", "Readings"):
        totals.add_column(column)
    for count in response.counts:
        totals.add_row(count.asset_id or "(file)", _reason(count.reason), f"{count.count:,}")
    console.print(totals)
    listed = Table(title=f"Newest {len(response.readings)}")
    for column in ("Quarantined at", "Asset", "Batch", "Time", "Channel", "Reason", "Detail"):
        listed.add_column(column)
    for reading in response.readings:
        listed.add_row(
            reading.quarantined_at.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds"),
            reading.asset_id,
            reading.batch_id,
            reading.time.ToDatetime(tzinfo=UTC).isoformat() if reading.HasField("time") else "",
            reading.channel,
            _reason(reading.reason),
            Text(reading.detail),
        )
    console.print(listed)


@snapshot_app.command("create")
def snapshot_create(
    name: Annotated[str, typer.Argument(help="Unique name of the snapshot.")],
    asset_type: Annotated[str, typer.Option(help="Asset type whose data to freeze.")],
    asset: Annotated[list[str] | None, typer.Option(help="Only this asset; repeat.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
) -> None:
    """Freeze the archived telemetry and labels of an asset type as a named snapshot."""
    request = ingest_pb2.CreateDatasetSnapshotRequest(
        name=name, asset_type=asset_type, asset_ids=asset or []
    )
    snapshot = _call(
        data_dir, "ml-engineer", lambda stub: stub.CreateDatasetSnapshot(request, timeout=120)
    ).snapshot
    _print_snapshot(snapshot)


@snapshot_app.command("show")
def snapshot_show(
    name: Annotated[str, typer.Argument(help="Name of the snapshot.")],
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
) -> None:
    """Show a snapshot: its content hash and its files."""
    request = ingest_pb2.GetDatasetSnapshotRequest(name=name)
    snapshot = _call(
        data_dir, "ml-engineer", lambda stub: stub.GetDatasetSnapshot(request, timeout=30)
    ).snapshot
    _print_snapshot(snapshot)


def _call(data_dir: Path | None, role: str, call: Callable[[Any], Any]) -> Any:
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
        raise _fail(console, error) from None


def _print_snapshot(snapshot: ingest_pb2.DatasetSnapshot) -> None:
    console = Console()
    console.print(f"snapshot {snapshot.name} ({snapshot.id})", highlight=False)
    console.print(f"  content hash {snapshot.content_hash}", highlight=False)
    console.print(f"  root {snapshot.root_uri}", highlight=False)
    console.print(f"  {len(snapshot.files)} files, {snapshot.row_count:,} telemetry rows")

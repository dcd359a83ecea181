"""``prognos import failures``: a plant's failure history, imported as outcome labels.

The file (an export of a historian or a maintenance management system, CSV or JSON lines)
goes to the ingest service's ``ImportFailureHistory`` in 1 MiB chunks; the service records
each good row as a label once, however often the file is imported, and quarantines the
rows it cannot use with their reasons, which ``prognos quarantine`` lists.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.cli._tables import echo_json
from prognos.cli.client import ServiceNotRunningError, open_channel, read_run_info
from prognos.cli.ingest import rpc_failure
from prognos.core.config import Settings

__all__ = ["import_failure_history", "import_failures"]

CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 3600.0
_DATA_DIR_HELP = "Data directory of `prognos up` (default: $PROGNOS_DATA_DIR, else .prognos)."
_FORMATS = {
    "csv": ingest_pb2.FAILURE_HISTORY_FORMAT_CSV,
    "jsonl": ingest_pb2.FAILURE_HISTORY_FORMAT_JSONL,
}
_TIME_KINDS = {
    "rfc3339": ingest_pb2.TIME_COLUMN_KIND_RFC3339,
    "unix": ingest_pb2.TIME_COLUMN_KIND_UNIX_SECONDS,
}


async def import_failure_history(
    stub: ingest_pb2_grpc.IngestServiceStub,
    path: Path,
    header: ingest_pb2.FailureHistoryHeader,
) -> ingest_pb2.ImportFailureHistoryResponse:
    """Stream a failure history file to ``ImportFailureHistory``."""

    async def requests() -> AsyncIterator[ingest_pb2.ImportFailureHistoryRequest]:
        yield ingest_pb2.ImportFailureHistoryRequest(header=header)
        with path.open("rb") as fh:
            while chunk := await asyncio.to_thread(fh.read, CHUNK_BYTES):
                yield ingest_pb2.ImportFailureHistoryRequest(chunk=chunk)

    response: ingest_pb2.ImportFailureHistoryResponse = await stub.ImportFailureHistory(
        requests(), timeout=_TIMEOUT_S
    )
    return response


def _reason(value: int) -> str:
    return ingest_pb2.QuarantineReason.Name(value).removeprefix("QUARANTINE_REASON_")  # type: ignore[arg-type]


def _print(console: Console, path: Path, response: ingest_pb2.ImportFailureHistoryResponse) -> None:
    table = Table(title=path.name, show_header=False)
    table.add_column()
    table.add_column(overflow="fold")
    table.add_row("content hash", response.content_hash)
    table.add_row("rows read", f"{response.row_count:,}")
    table.add_row("labels recorded", f"{response.recorded_count:,}")
    table.add_row("labels recorded before", f"{response.duplicate_count:,}")
    table.add_row("rows quarantined", f"{response.quarantined_count:,}")
    by_reason: Counter[str] = Counter()
    for count in response.counts:
        by_reason[_reason(count.reason)] += count.count
    for reason, count in sorted(by_reason.items()):
        table.add_row(f"  {reason}", f"{count:,}")
    console.print(table)
    for reading in response.sample_rejections:
        console.print(
            f"  quarantined: {_reason(reading.reason)}: {reading.detail}",
            markup=False,
            highlight=False,
        )


def import_failures(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    asset_column: Annotated[str, typer.Option(help="Column naming each row's asset.")],
    time_column: Annotated[str, typer.Option(help="Column holding the time of the failure.")],
    mode_column: Annotated[str, typer.Option(help="Column holding the failure mode.")],
    confirmed_column: Annotated[
        str | None,
        typer.Option(help="Column saying whether the failure was confirmed (default: all are)."),
    ] = None,
    repaired_column: Annotated[
        str | None, typer.Option(help="Column holding when the asset was back in service.")
    ] = None,
    file_format: Annotated[
        str | None, typer.Option("--format", help="csv or jsonl (default: from the suffix).")
    ] = None,
    time_kind: Annotated[
        str, typer.Option(help="rfc3339 or unix (seconds), for both time columns.")
    ] = "rfc3339",
    asset_prefix: Annotated[str, typer.Option(help="Put in front of each asset id.")] = "",
    delimiter: Annotated[str, typer.Option(help="CSV field separator.")] = ",",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the service's answer as JSON.")
    ] = False,
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
) -> None:
    """Import a failure history (CSV or JSON lines) as outcome labels for training."""
    chosen = (file_format or ("jsonl" if file.suffix in (".jsonl", ".ndjson") else "csv")).lower()
    if chosen not in _FORMATS:
        raise typer.BadParameter("choose csv or jsonl", param_hint="--format")
    if time_kind not in _TIME_KINDS:
        raise typer.BadParameter(
            f"choose one of {', '.join(_TIME_KINDS)}", param_hint="--time-kind"
        )
    header = ingest_pb2.FailureHistoryHeader(
        file_name=file.name,
        format=_FORMATS[chosen],
        delimiter=delimiter,
        asset_id_column=asset_column,
        asset_id_prefix=asset_prefix,
        time_column=time_column,
        time_kind=_TIME_KINDS[time_kind],
        failure_mode_column=mode_column,
        confirmed_column=confirmed_column or "",
        repaired_at_column=repaired_column or "",
    )
    console = Console(stderr=as_json)
    overrides: dict[str, Any] = {"data_dir": data_dir} if data_dir is not None else {}
    try:
        info = read_run_info(Settings.load("prognos", **overrides).data_dir.resolve())
    except ServiceNotRunningError as e:
        console.print(Text(f"error: {e}", style="bold red"))
        raise typer.Exit(1) from None

    async def go() -> ingest_pb2.ImportFailureHistoryResponse:
        async with open_channel(info, "ingest", role="gateway") as channel:
            return await import_failure_history(
                ingest_pb2_grpc.IngestServiceStub(channel), file, header
            )

    try:
        response = asyncio.run(go())
    except grpc.aio.AioRpcError as error:
        raise rpc_failure(console, error) from None
    if as_json:
        echo_json(response)
        return
    _print(console, file, response)

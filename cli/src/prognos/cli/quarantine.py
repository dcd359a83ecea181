"""``prognos quarantine``: the readings ingest refused, with totals per asset and reason."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from prognos.api.ingest.v1 import ingest_pb2
from prognos.cli._tables import AsJson, Column, Wide, echo_json, listing, print_table
from prognos.cli.ingest import DATA_DIR_HELP, call_ingest, reason_name

__all__ = ["quarantine", "quarantine_tables"]


def quarantine(
    asset: Annotated[str | None, typer.Option(help="Only this asset.")] = None,
    reason: Annotated[
        str | None, typer.Option(help="Only this reason, e.g. OUT_OF_RANGE or LATE.")
    ] = None,
    limit: Annotated[int, typer.Option(help="Readings to list.")] = 20,
    as_json: AsJson = False,
    wide: Wide = False,
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
) -> None:
    """List quarantined readings, newest first, with totals per asset and reason.

    --wide adds when each reading was quarantined and the batch it came in.
    """
    console = Console()
    reason_value = 0
    if reason:
        name = "QUARANTINE_REASON_" + reason.upper().removeprefix("QUARANTINE_REASON_")
        try:
            reason_value = ingest_pb2.QuarantineReason.Value(name)
        except ValueError:
            choices = [reason_name(v) for v in ingest_pb2.QuarantineReason.values() if v]
            raise typer.BadParameter(f"choose one of {', '.join(choices)}") from None
    request = ingest_pb2.ListQuarantineRequest(
        asset_id=asset or "",
        reason=reason_value,
        page_size=max(1, limit),  # type: ignore[arg-type]
    )
    response: ingest_pb2.ListQuarantineResponse = call_ingest(
        data_dir, "gateway", lambda stub: stub.ListQuarantine(request, timeout=30)
    )
    if as_json:
        echo_json(response)
        return
    for table in quarantine_tables(response, wide, console.width):
        print_table(console, table, wide=wide)


_TOTAL_COLUMNS = (
    Column("Asset", ident=True),
    Column("Reason"),
    Column("Readings", justify="right"),
)
_READING_COLUMNS = (
    Column("Quarantined at (UTC)", wide=True),
    Column("Asset", ident=True),
    Column("Batch", ident=True, wide=True),
    Column("Time (UTC)"),
    Column("Channel"),
    Column("Reason"),
    Column("Detail"),
)


def _utc(stamp: Any) -> str:
    """``2030-01-02 03:04:05.123`` (milliseconds only when there are any)."""
    at = stamp.ToDatetime()
    return f"{at:%Y-%m-%d %H:%M:%S}" + (f".{at.microsecond // 1000:03d}" if at.microsecond else "")


def quarantine_tables(
    response: ingest_pb2.ListQuarantineResponse, wide: bool = False, width: int | None = None
) -> tuple[Table, Table]:
    """The totals per asset and reason, and the newest readings, asset ids whole."""
    totals = [
        (count.asset_id or "(file)", reason_name(count.reason), f"{count.count:,}")
        for count in response.counts
    ]
    readings = [
        (
            _utc(reading.quarantined_at),
            reading.asset_id,
            reading.batch_id,
            _utc(reading.time) if reading.HasField("time") else "",
            reading.channel,
            reason_name(reading.reason),
            Text(reading.detail),
        )
        for reading in response.readings
    ]
    return (
        listing(
            "Quarantined readings per asset and reason",
            _TOTAL_COLUMNS,
            totals,
            wide=wide,
            width=width,
        ),
        listing(
            f"Newest {len(response.readings)}", _READING_COLUMNS, readings, wide=wide, width=width
        ),
    )

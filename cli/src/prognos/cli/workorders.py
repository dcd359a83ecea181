"""``prognos workorders``: list, show, watch and decide about work orders as an ERP would.

Every command talks to the running scheduler's ``MaintenanceScheduler`` API with the
``erp`` role. ``watch`` prints each change as one JSON line and, given ``--after``,
resumes after that position, so a script can follow the feed the way an ERP does.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import grpc
import typer
from google.protobuf import json_format
from rich.console import Console
from rich.text import Text

from prognos.api.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from prognos.cli._tables import AsJson, Column, Wide, echo_json, listing, print_table
from prognos.cli.client import ServiceNotRunningError, open_channel, read_run_info
from prognos.cli.launcher import RunInfo
from prognos.core.config import Settings

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["app", "orders_table"]

app = typer.Typer(help="Follow and handle maintenance work orders.", no_args_is_help=True)
_DATA_DIR_HELP = "Data directory (default: $PROGNOS_DATA_DIR, else .prognos)."
_ROLE = "erp"
_TIMEOUT_S = 10.0
S = scheduler_pb2


def _run_info(console: Console, data_dir: Path | None) -> RunInfo:
    settings = Settings.load("cli", **({"data_dir": data_dir} if data_dir else {}))
    try:
        return read_run_info(settings.data_dir.resolve())
    except ServiceNotRunningError as error:
        console.print(Text(f"error: {error}", "red"), highlight=False)
        raise typer.Exit(1) from None


def _state(value: int) -> str:
    return S.WorkOrderState.Name(value).removeprefix("WORK_ORDER_STATE_")  # type: ignore[arg-type]


def _fail(console: Console, error: grpc.aio.AioRpcError) -> typer.Exit:
    console.print(Text(f"error: {error.code().name}: {error.details()}", "red"), highlight=False)
    return typer.Exit(1)


async def _list(info: RunInfo, plant: str, asset: str, states: list[str]) -> list[S.WorkOrder]:
    wanted = [S.WorkOrderState.Value(f"WORK_ORDER_STATE_{s.upper()}") for s in states]
    orders: list[S.WorkOrder] = []
    async with open_channel(info, "scheduler", role=_ROLE) as channel:
        stub = scheduler_pb2_grpc.MaintenanceSchedulerStub(channel)
        token = ""
        while True:
            page = await stub.ListWorkOrders(
                S.ListWorkOrdersRequest(
                    plant=plant, asset_id=asset, states=wanted, page_size=500, page_token=token
                ),
                timeout=_TIMEOUT_S,
            )
            orders.extend(page.work_orders)
            token = page.next_page_token
            if not token:
                return orders


@app.command("list")
def list_orders(
    plant: Annotated[str, typer.Option(help="Only this plant.")] = "",
    asset: Annotated[str, typer.Option(help="Only this asset.")] = "",
    state: Annotated[
        list[str] | None, typer.Option(help="Only this state (e.g. released); repeat.")
    ] = None,
    as_json: AsJson = False,
    wide: Wide = False,
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
) -> None:
    """Work orders, newest first: state, asset, risk, due time, slot or why it has none.

    --wide adds the slot (or why there is none), the plant and the ERP's order number.
    """
    console = Console()
    info = _run_info(console, data_dir)
    try:
        orders = asyncio.run(_list(info, plant, asset, state or []))
    except grpc.aio.AioRpcError as error:
        raise _fail(console, error) from None
    except ValueError as error:
        console.print(Text(f"error: unknown state ({error})", "red"), highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        echo_json(
            {
                "work_orders": [
                    json_format.MessageToDict(o, preserving_proto_field_name=True) for o in orders
                ]
            }
        )
        return
    print_table(console, orders_table(orders, wide, console.width), wide=wide)


_ORDER_COLUMNS = (
    Column("work order", ident=True),
    Column("state"),
    Column("asset", ident=True),
    Column("plant"),
    Column("risk", justify="right"),
    Column("due"),
    Column("slot / unplaced"),
    Column("ERP order"),
)
# At 80 columns an order's asset stands under its id: both whole, and room for the rest.
_NARROW_COLUMNS = (
    Column("work order / asset", ident=True),
    Column("state"),
    Column("risk", justify="right"),
    Column("due"),
)


def _where(order: S.WorkOrder) -> str:
    if order.HasField("slot"):
        return f"{order.slot.start_time.ToDatetime():%Y-%m-%d %H:%M} {order.slot.crew_id}"
    if order.HasField("unplaced"):
        return S.UnplacedReason.Name(order.unplaced.reason).removeprefix("UNPLACED_REASON_")
    return "-"


def orders_table(
    orders: Iterable[S.WorkOrder], wide: bool = False, width: int | None = None
) -> Table:
    """Work orders, one a row, each id whole (``acknowledge`` and ``show`` take it)."""
    orders = list(orders)
    due = [f"{o.due_time.ToDatetime():%Y-%m-%d %H:%M}" for o in orders]
    if not wide:
        rows = [
            (f"{o.id}\n{o.asset_id}", _state(o.state), f"{o.risk:.2f}", when)
            for o, when in zip(orders, due, strict=True)
        ]
        return listing(None, _NARROW_COLUMNS, rows, width=width)
    wide_rows = [
        (
            o.id,
            _state(o.state),
            o.asset_id,
            o.plant,
            f"{o.risk:.2f}",
            when,
            _where(o),
            o.erp_order_number,
        )
        for o, when in zip(orders, due, strict=True)
    ]
    return listing(None, _ORDER_COLUMNS, wide_rows, wide=True)


@app.command("show")
def show(
    work_order_id: Annotated[str, typer.Argument(help="The work order's id.")],
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
) -> None:
    """One work order as JSON, with its cause and outcome."""
    console = Console()
    info = _run_info(console, data_dir)

    async def get() -> S.WorkOrder:
        async with open_channel(info, "scheduler", role=_ROLE) as channel:
            stub = scheduler_pb2_grpc.MaintenanceSchedulerStub(channel)
            response = await stub.GetWorkOrder(
                S.GetWorkOrderRequest(work_order_id=work_order_id), timeout=_TIMEOUT_S
            )
            return response.work_order

    try:
        order = asyncio.run(get())
    except grpc.aio.AioRpcError as error:
        raise _fail(console, error) from None
    typer.echo(json_format.MessageToJson(order, indent=2))


@app.command("watch")
def watch(
    after: Annotated[int, typer.Option(help="Resume after this position (0: from the start).")] = 0,
    plant: Annotated[str, typer.Option(help="Only this plant.")] = "",
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
) -> None:
    """Print every work order change as a JSON line, then new ones as they happen."""
    console = Console(stderr=True)
    info = _run_info(console, data_dir)

    async def follow() -> None:
        async with open_channel(info, "scheduler", role=_ROLE) as channel:
            stub = scheduler_pb2_grpc.MaintenanceSchedulerStub(channel)
            request = S.WatchWorkOrdersRequest(after_position=after, plant=plant)
            async for change in stub.WatchWorkOrders(request):
                typer.echo(json.dumps(json_format.MessageToDict(change), sort_keys=True))

    try:
        asyncio.run(follow())
    except grpc.aio.AioRpcError as error:
        raise _fail(console, error) from None
    except KeyboardInterrupt:
        pass


@app.command("acknowledge")
def acknowledge(
    work_order_id: Annotated[str, typer.Argument(help="The work order's id.")],
    erp_order_number: Annotated[str, typer.Option(help="The ERP's own order number.")],
    key: Annotated[str, typer.Option(help="Idempotency key (default: a new one).")] = "",
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
) -> None:
    """Take over a released work order under the ERP's order number."""
    console = Console()
    info = _run_info(console, data_dir)

    async def call() -> S.WorkOrder:
        async with open_channel(info, "scheduler", role=_ROLE) as channel:
            stub = scheduler_pb2_grpc.MaintenanceSchedulerStub(channel)
            response = await stub.AcknowledgeWorkOrder(
                S.AcknowledgeWorkOrderRequest(
                    idempotency_key=key or str(uuid.uuid4()),
                    work_order_id=work_order_id,
                    erp_order_number=erp_order_number,
                ),
                timeout=_TIMEOUT_S,
            )
            return response.work_order

    try:
        order = asyncio.run(call())
    except grpc.aio.AioRpcError as error:
        raise _fail(console, error) from None
    console.print(f"{order.id}: {_state(order.state)} as {order.erp_order_number}")

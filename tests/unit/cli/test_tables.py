"""The command line's tables fit 80 columns with every id whole on one line."""

from __future__ import annotations

import io
import uuid

import pytest
from rich.console import Console
from rich.table import Table

from prognos.api.ingest.v1 import ingest_pb2
from prognos.api.registry.v1 import registry_pb2
from prognos.api.scheduler.v1 import scheduler_pb2
from prognos.cli._tables import Column, fit, listing, print_table
from prognos.cli.models import history_table, versions_table
from prognos.cli.quarantine import quarantine_tables
from prognos.cli.training import runs_table
from prognos.cli.workorders import orders_table

R = registry_pb2
S = scheduler_pb2
LONG_TYPE = "pump_station_north"  # an id longer than the old tables left room for


def _lines(table: Table, width: int = 80, *, wide: bool = False) -> list[str]:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    print_table(console, table, wide=wide)
    output = console.file.getvalue()  # type: ignore[attr-defined]
    return output.splitlines()


def _whole_on_a_line(ident: str, lines: list[str]) -> bool:
    return any(ident in line for line in lines)


def _versions() -> list[R.ModelVersion]:
    versions = []
    for number, asset_type in enumerate(["turbofan", LONG_TYPE, LONG_TYPE], start=9):
        version = R.ModelVersion(
            id=f"{asset_type}-v{number}",
            status=R.MODEL_VERSION_STATUS_APPROVED,
            aliases=[R.MODEL_ALIAS_CHAMPION, R.MODEL_ALIAS_CHALLENGER],
            metrics={"rmse": 17.234, "phm08_score": 456.7},
            trained_by="user:alice.longname",
            approved_by="user:bob",
        )
        version.created_at.FromJsonString("2030-01-02T03:04:05Z")
        versions.append(version)
    return versions


def test_model_versions_fit_80_columns_with_whole_ids() -> None:
    versions = _versions()

    lines = _lines(versions_table(versions, width=80))

    assert max(len(line) for line in lines) <= 80
    for version in versions:
        assert _whole_on_a_line(version.id, lines), "\n".join(lines)
    assert "…" not in "".join(lines)
    assert not any("phm08" in line for line in lines), "--wide only"


def test_wide_model_versions_show_every_column_on_one_line_each() -> None:
    versions = _versions()

    lines = _lines(versions_table(versions, wide=True, width=80), wide=True)

    assert any("approved by" in line and "phm08" in line for line in lines)
    row = next(line for line in lines if versions[1].id in line)
    assert "user:alice.longname" in row and "2030-01-02 03:04" in row


def test_alias_history_fits_80_columns_with_both_versions_whole() -> None:
    change = R.AliasChange(
        asset_type=LONG_TYPE,
        alias=R.MODEL_ALIAS_CHAMPION,
        from_model_version_id=f"{LONG_TYPE}-v11",
        to_model_version_id=f"{LONG_TYPE}-v12",
        actor="user:bob",
        kind=R.ALIAS_CHANGE_KIND_ROLLED_BACK,
        reason="the error rate went up after the release " * 3,
    )
    change.time.FromJsonString("2030-01-02T03:04:05Z")

    lines = _lines(history_table("aliases", [change], width=80))

    assert max(len(line) for line in lines) <= 80
    row = next(line for line in lines if change.from_model_version_id in line)
    assert change.to_model_version_id in row


def test_alias_history_of_usual_ids_wraps_no_word() -> None:
    change = R.AliasChange(
        alias=R.MODEL_ALIAS_CHALLENGER,
        from_model_version_id="turbofan-v11",
        to_model_version_id="turbofan-v12",
        actor="user:bob",
        kind=R.ALIAS_CHANGE_KIND_PROMOTED,
    )
    change.time.FromJsonString("2030-01-02T03:04:05Z")

    lines = _lines(history_table("aliases", [change], width=80))

    row = next(line for line in lines if "turbofan-v11" in line)
    for word in ("2030-01-02", "challenger", "turbofan-v12", "user:bob", "promotion"):
        assert word in row, "\n".join(lines)


def test_training_runs_fit_80_columns_with_run_and_version_whole() -> None:
    run = R.TrainingRun(
        id=f"run-{uuid.uuid4().hex[:12]}",
        asset_type=LONG_TYPE,
        state=R.TRAINING_RUN_STATE_SUCCEEDED,
        progress=1.0,
        model_version_id=f"{LONG_TYPE}-v12",
        requested_by="user:alice",
        reason="drift alert on plant 3 after the bearing change",
    )

    lines = _lines(runs_table([run], width=80))

    assert max(len(line) for line in lines) <= 80
    row = next(line for line in lines if run.id in line)
    assert run.model_version_id in row


def test_work_orders_fit_80_columns_with_whole_ids() -> None:
    orders = []
    for asset in ("plant-9/pump-7", "plant-north/compressor-12"):
        order = S.WorkOrder(
            id=str(uuid.uuid4()),
            state=S.WORK_ORDER_STATE_RELEASED,
            asset_id=asset,
            plant="plant-north",
            risk=0.87,
        )
        order.due_time.FromJsonString("2030-01-02T03:04:05Z")
        order.unplaced.reason = S.UNPLACED_REASON_NO_WINDOW_FOR_PLANT
        orders.append(order)

    lines = _lines(orders_table(orders, width=80))

    assert max(len(line) for line in lines) <= 80
    for order in orders:
        at = next(n for n, line in enumerate(lines) if order.id in line)
        assert order.asset_id in lines[at + 1], "the asset under its order"
        assert "RELEASED" in lines[at] and "0.87" in lines[at] and "2030-01-02" in lines[at]
    wide = _lines(orders_table(orders, wide=True), wide=True)
    row = next(line for line in wide if orders[1].id in line)
    assert orders[1].asset_id in row and "NO_WINDOW_FOR_PLANT" in row


def test_quarantine_fits_80_columns_with_whole_asset_ids() -> None:
    response = ingest_pb2.ListQuarantineResponse()
    response.counts.add(
        asset_id="plant-north/compressor-12", reason=ingest_pb2.QUARANTINE_REASON_OUT_OF_RANGE
    )
    reading = response.readings.add(
        asset_id="plant-north/compressor-12",
        batch_id=f"file:{uuid.uuid4().hex}:lines",
        channel="bearing_temp",
        reason=ingest_pb2.QUARANTINE_REASON_OUT_OF_RANGE,
        detail="bearing_temp=900 degF is above the valid range (at most 400 degF)",
    )
    reading.time.FromJsonString("2030-01-02T03:04:05Z")

    for table in quarantine_tables(response, width=80):
        lines = _lines(table)
        assert max(len(line) for line in lines) <= 80
        assert _whole_on_a_line(reading.asset_id, lines)
    wide = _lines(quarantine_tables(response, wide=True)[1], wide=True)
    assert _whole_on_a_line(reading.batch_id, wide)


@pytest.mark.parametrize("width", [40, 60, 80, 120])
def test_other_columns_give_way_before_ids_do(width: int) -> None:
    ident = "x" * 20
    cells = [["id", ident], ["what", "a few words of text " * 4], ["n", "12345"]]

    widths = fit(cells, [True, False, False], width)

    room = width - 3 * (len(cells) - 1)
    if widths is None:
        assert sum(len(max(c, key=len)) for c in cells) <= room
    else:
        assert sum(widths) <= room
        assert widths[0] == len(ident)


def test_ids_fold_rather_than_being_cut_when_nothing_else_makes_room() -> None:
    ident = "y" * 50
    columns = (Column("id", ident=True), Column("note"))

    lines = _lines(listing(None, columns, [(ident, "fine")], width=30), width=30)

    assert max(len(line) for line in lines) <= 30
    assert "".join(lines).count("y") == 50

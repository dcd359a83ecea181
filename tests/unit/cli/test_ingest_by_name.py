"""``prognos ingest`` without ``--mapping``: which columns map themselves, and cycle options."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from prognos.api.ingest.v1 import ingest_pb2
from prognos.cli.ingest import file_columns, parse_duration, parse_mapping, same_name_mappings
from prognos.cli.main import app


def _press() -> ingest_pb2.AssetType:
    press = ingest_pb2.AssetType(name="press")
    press.channels.add(name="pressure", unit="bar")
    press.channels.add(name="oil_temp", unit="degC")
    press.channels.add(name="time", unit="s")
    return press


def test_columns_named_after_channels_map_in_the_channels_units() -> None:
    found = same_name_mappings(["time", "press", "oil_temp", "pressure", "operator"], _press())

    assert [(m.column, m.channel, m.unit) for m in found] == [
        ("time", "time", "s"),
        ("oil_temp", "oil_temp", "degC"),
        ("pressure", "pressure", "bar"),
    ]


def test_an_explicit_mapping_and_the_time_and_asset_columns_are_left_alone() -> None:
    explicit = parse_mapping(["pressure=oil_temp:degF"])

    found = same_name_mappings(
        ["time", "press", "oil_temp", "pressure"], _press(), explicit, skip=["time", "press"]
    )

    # "pressure" is mapped explicitly, and "oil_temp" is the channel it was mapped to.
    assert found == []


def test_a_header_names_the_columns_of_csv_space_delimited_text_and_json_lines(
    tmp_path: Path,
) -> None:
    csv = tmp_path / "a.csv"
    csv.write_bytes(b"\xef\xbb\xbftime, pressure ,oil_temp\r\n1,2,3\r\n")
    text = tmp_path / "a.txt"
    text.write_text("time   pressure  oil_temp  \n1 2 3\n")
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"time": 1, "pressure": 2}\nnot json\n{"oil_temp": 3, "time": 2}\n')

    assert file_columns(csv, "csv") == ["time", "pressure", "oil_temp"]
    assert file_columns(text, "csv", " ") == ["time", "pressure", "oil_temp"]
    assert file_columns(jsonl, "jsonl") == ["time", "pressure", "oil_temp"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("3600", 3600), ("90s", 90), ("5m", 300), ("5min", 300), ("1.5h", 5400), ("1d", 86400)],
)
def test_a_cycle_duration_is_seconds_or_a_number_with_a_unit(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["0", "0s", "-5m", "5 weeks", "h", ""])
def test_a_cycle_duration_that_is_not_positive_or_not_a_duration_is_refused(text: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_duration(text)


@pytest.mark.parametrize(
    "option", [["--cycle-origin", "2021-03-01T06:00:00Z"], ["--cycle-duration", "10m"]]
)
def test_cycle_options_are_refused_unless_the_time_is_a_cycle(
    option: list[str], tmp_path: Path
) -> None:
    csv = tmp_path / "a.csv"
    csv.write_text("time,pressure\n2021-03-01T06:00:00Z,1\n")

    result = CliRunner().invoke(
        app,
        ["ingest", str(csv), "--asset-type", "press", "--asset-id", "p-1", *option],
        env={"COLUMNS": "200", "PROGNOS_DATA_DIR": str(tmp_path / "none")},
    )

    assert result.exit_code == 2, result.output
    assert "only with --time-kind cycle" in result.output
    assert option[0] in result.output

"""Failure histories: asset types that declare failure modes, rows read, screened and bounded."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from prognos.api.ingest.v1 import ingest_pb2
from prognos.core.errors import InvalidArgumentError
from prognos.core.events import decode, encode
from prognos.ingest import failures
from prognos.ingest.domain import (
    Asset,
    AssetSpec,
    AssetTypeInvalidError,
    AssetTypeRegistered,
    AssetTypeSpec,
    FailureHorizon,
    FailureMode,
    Outcome,
    OutcomeRecorded,
    SensorChannel,
    validate_spec,
)
from prognos.ingest.failures import (
    FUTURE,
    MALFORMED,
    UNKNOWN_ASSET,
    UNKNOWN_FAILURE_MODE,
    HistoryPlan,
    plan_of,
    read_history,
    screen,
)
from prognos.ingest.formats import cmapss_asset_type
from prognos.ingest.translate import outcome_to_proto, spec_from_proto, spec_to_proto

MILL = AssetTypeSpec(
    name="mill",
    display_name="Milling machine",
    channels=(
        SensorChannel("torque", "newton * meter", 0, 100, 1.0),
        SensorChannel("speed_set_point", "revolutions_per_minute", 0, 3000, 1.0, True),
    ),
    horizon=FailureHorizon(48, "hours"),
    failure_modes=(
        FailureMode("tool_wear", "the cutting tool wore out"),
        FailureMode("overstrain"),
    ),
)
OPEN = replace(MILL, name="open", failure_modes=())
T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
T0_US = int(T0.timestamp()) * 1_000_000
HOUR_US = 3_600_000_000
NOW_US = T0_US + 1_000 * HOUR_US
PLAN = HistoryPlan(
    file_name="history.csv",
    jsonl=False,
    asset_column="machine",
    time_column="failed_at",
    mode_column="mode",
    confirmed_column="confirmed",
    repaired_column="back_in_service",
)


def read(text: str, plan: HistoryPlan = PLAN) -> failures.ParsedHistory:
    return read_history(io.BytesIO(text.encode()), plan)


# --- asset types -------------------------------------------------------------------------------


def test_failure_modes_and_operating_settings_survive_the_contract_both_ways() -> None:
    message = spec_to_proto(MILL)
    assert [m.name for m in message.failure_modes] == ["tool_wear", "overstrain"]
    assert message.failure_modes[0].description == "the cutting tool wore out"
    assert [c.operating_setting for c in message.channels] == [False, True]
    assert spec_from_proto(message) == MILL


@pytest.mark.parametrize(
    ("modes", "field", "words"),
    [
        ((FailureMode("Tool Wear"),), "asset_type.failure_modes[0].name", "lower_snake_case"),
        ((FailureMode(""),), "asset_type.failure_modes[0].name", "lower_snake_case"),
        ((FailureMode("a" * 64),), "asset_type.failure_modes[0].name", "63"),
        (
            (FailureMode("wear"), FailureMode("wear")),
            "asset_type.failure_modes[1].name",
            "duplicate",
        ),
        ((FailureMode("wear", "x" * 1025),), "asset_type.failure_modes[0].description", "1024"),
        (tuple(FailureMode(f"mode_{i}") for i in range(65)), "asset_type.failure_modes", "64"),
    ],
)
def test_a_failure_mode_that_breaks_a_rule_is_named_with_its_limit(
    modes: tuple[FailureMode, ...], field: str, words: str
) -> None:
    with pytest.raises(AssetTypeInvalidError) as raised:
        validate_spec(replace(MILL, failure_modes=modes))
    assert raised.value.field == field
    assert words in raised.value.description


def test_the_longest_names_and_most_modes_allowed_are_accepted() -> None:
    modes = tuple(FailureMode(f"m{i}_" + "x" * 59, "d" * 1024) for i in range(10))
    validate_spec(replace(MILL, failure_modes=modes))
    validate_spec(replace(MILL, failure_modes=tuple(FailureMode(f"m_{i}") for i in range(64))))


def test_an_asset_type_of_operating_settings_only_is_rejected() -> None:
    settings_only = tuple(replace(c, operating_setting=True) for c in MILL.channels)
    with pytest.raises(AssetTypeInvalidError) as raised:
        validate_spec(replace(MILL, channels=settings_only))
    assert raised.value.field == "asset_type.channels"


def test_the_built_in_turbofan_type_is_still_valid() -> None:
    validate_spec(cmapss_asset_type())


def test_asset_types_and_labels_stored_before_the_new_fields_still_load() -> None:
    _, version, data = encode(AssetTypeRegistered(spec=MILL))
    assert version == 2
    data["spec"].pop("failure_modes")
    for channel in data["spec"]["channels"]:
        channel.pop("operating_setting")
    old = decode("ingest.AssetTypeRegistered", 1, data)
    assert isinstance(old, AssetTypeRegistered)
    assert old.spec == replace(
        MILL,
        failure_modes=(),
        channels=tuple(replace(c, operating_setting=False) for c in MILL.channels),
    )

    _, version, data = encode(OutcomeRecorded("m-1", "mill", Outcome(T0_US, True, "file:x")))
    assert version == 2
    data["outcome"].pop("repaired_at_us")
    label = decode("ingest.OutcomeRecorded", 1, data)
    assert isinstance(label, OutcomeRecorded)
    assert label.outcome == Outcome(T0_US, True, "file:x")


def test_a_label_carries_its_repair_time_and_two_modes_at_one_time_are_two_labels() -> None:
    asset = Asset.register(AssetSpec("m-1", "plant-1", "mill"), T0_US)
    wear = Outcome(T0_US, True, "failure-history:x", "tool_wear", T0_US + HOUR_US)
    assert asset.record_outcome(wear)
    assert asset.record_outcome(replace(wear, failure_mode="overstrain"))
    assert not asset.record_outcome(wear)
    message = outcome_to_proto("m-1", "mill", wear)
    assert message.repaired_at.ToMicroseconds() == T0_US + HOUR_US
    assert not outcome_to_proto("m-1", "mill", replace(wear, repaired_at_us=None)).HasField(
        "repaired_at"
    )


# --- the header ---------------------------------------------------------------------------------


def test_a_header_without_its_columns_names_every_missing_field() -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        plan_of(ingest_pb2.FailureHistoryHeader(delimiter=";;"))
    fields = {field for field, _ in raised.value.violations}
    assert fields == {
        "header.format",
        "header.time_kind",
        "header.delimiter",
        "header.asset_id_column",
        "header.time_column",
        "header.failure_mode_column",
    }


def test_a_header_becomes_a_plan() -> None:
    plan = plan_of(
        ingest_pb2.FailureHistoryHeader(
            file_name="h.jsonl",
            format=ingest_pb2.FAILURE_HISTORY_FORMAT_JSONL,
            asset_id_column="machine",
            asset_id_prefix="plant-1/",
            time_column="t",
            time_kind=ingest_pb2.TIME_COLUMN_KIND_UNIX_SECONDS,
            failure_mode_column="mode",
        )
    )
    assert plan.jsonl and plan.unix_seconds and plan.asset_prefix == "plant-1/"
    assert plan.confirmed_column == "" and plan.delimiter == ","


# --- reading ------------------------------------------------------------------------------------


def test_good_csv_rows_are_read_with_their_mode_verdict_and_repair_time() -> None:
    parsed = read(
        "\ufeffmachine,failed_at,mode,confirmed,back_in_service,note\n"
        "m-1,2026-03-01T12:00:00Z,tool_wear,yes,2026-03-01T14:00:00+00:00,worn\n"
        'm-2,2026-03-01T13:00:00+01:00,,false,,"inspected,\nall fine"\n'
        "\n"
        "m-3,2026-03-01T12:00:00.5Z,overstrain,1,,\n"
    )
    assert parsed.rejections == []
    assert [(r.line, r.asset_id, r.time_us) for r in parsed.rows] == [
        (2, "m-1", T0_US),
        (3, "m-2", T0_US),
        (6, "m-3", T0_US + 500_000),
    ]
    assert [r.failure_mode for r in parsed.rows] == ["tool_wear", "", "overstrain"]
    assert [r.failure_confirmed for r in parsed.rows] == [True, False, True]
    assert [r.repaired_at_us for r in parsed.rows] == [T0_US + 2 * HOUR_US, None, None]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (",2026-03-01T12:00:00Z,tool_wear,yes,", "machine: no asset id"),
        ("m-1,yesterday,tool_wear,yes,", "failed_at: not an RFC 3339 time"),
        ("m-1,2026-03-01T12:00:00,tool_wear,yes,", "no UTC offset"),
        ("m-1,,tool_wear,yes,", "failed_at: no time"),
        ("m-1,2026-03-01T12:00:00Z,tool_wear,maybe,", "confirmed: 'maybe' is not true/false"),
        ("m-1,2026-03-01T12:00:00Z,tool_wear,,", "confirmed: empty"),
        (
            "m-1,2026-03-01T12:00:00Z,tool_wear,yes,2026-03-01T11:00:00Z",
            "back_in_service: before the failure",
        ),
        ("m-1,2026-03-01T12:00:00Z,tool_wear", "3 fields, the header line has 5"),
        ('m-1,"2026-03-01T12:00:00Z"x,tool_wear,yes,', "not CSV"),
        ("m-1," + "x" * 70_000, "over 65536 bytes"),
    ],
)
def test_an_unreadable_row_is_rejected_as_malformed_naming_its_line_and_column(
    line: str, words: str
) -> None:
    parsed = read(
        "machine,failed_at,mode,confirmed,back_in_service\n"
        f"{line}\n"
        "m-9,2026-03-01T12:00:00Z,tool_wear,yes,\n"
    )
    assert [r.asset_id for r in parsed.rows] == ["m-9"]
    (rejection,) = parsed.rejections
    assert rejection.reason == MALFORMED
    assert rejection.line == 2
    assert rejection.detail.startswith("history.csv line 2: ")
    assert words in rejection.detail
    assert parsed.row_count == 2


def test_bytes_that_are_not_utf8_are_a_malformed_row() -> None:
    data = b"machine,failed_at,mode,confirmed,back_in_service\n\xff\xfe,1,2,3,4\n"
    parsed = read_history(io.BytesIO(data), PLAN)
    assert [r.detail for r in parsed.rejections] == ["history.csv line 2: not UTF-8"]


def test_json_lines_are_read_with_unix_seconds_and_booleans() -> None:
    plan = replace(PLAN, jsonl=True, unix_seconds=True, asset_prefix="plant-1/")
    lines = [
        {"machine": "m-1", "failed_at": T0_US / 1e6, "mode": "tool_wear", "confirmed": True},
        {"machine": 7, "failed_at": str(T0_US // 1_000_000), "mode": None, "confirmed": 0},
        {"machine": "m-1", "failed_at": True, "mode": "tool_wear", "confirmed": True},
        {"failed_at": 1, "mode": "tool_wear", "confirmed": True},
        {"machine": "m-1", "failed_at": "nan", "mode": "tool_wear", "confirmed": True},
        [1, 2],
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\nnot json\n"
    parsed = read(text, plan)
    assert [(r.asset_id, r.time_us, r.failure_confirmed) for r in parsed.rows] == [
        ("plant-1/m-1", T0_US, True),
        ("plant-1/7", T0_US, False),
    ]
    details = [r.detail for r in parsed.rejections]
    assert all(r.reason == MALFORMED for r in parsed.rejections)
    assert "failed_at: not Unix seconds" in details[0]
    assert "machine: no asset id" in details[1]
    assert "not a time in years 1 to 9999" in details[2]
    assert details[3].endswith("not a JSON object")
    assert "not JSON" in details[4]


def test_a_csv_whose_header_line_lacks_a_column_is_refused_naming_the_header_field() -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        read("machine,when,mode,confirmed,back_in_service\n")
    assert [field for field, _ in raised.value.violations] == ["header.time_column"]
    with pytest.raises(InvalidArgumentError):
        read("")


def test_a_history_over_the_row_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(failures, "MAX_HISTORY_ROWS", 3)
    row = "m-1,2026-03-01T12:00:00Z,tool_wear,yes,\n"
    header = "machine,failed_at,mode,confirmed,back_in_service\n"
    assert read(header + row * 3).row_count == 3
    with pytest.raises(InvalidArgumentError) as raised:
        read(header + row * 4)
    assert raised.value.violations[0][0] == "file"
    assert "3 rows" in raised.value.violations[0][1]


# --- screening ----------------------------------------------------------------------------------


def test_screening_quarantines_unknown_assets_future_times_and_undeclared_modes() -> None:
    parsed = read(
        "machine,failed_at,mode,confirmed,back_in_service\n"
        "m-1,2026-03-01T12:00:00Z,tool_wear,yes,\n"
        "ghost,2026-03-01T12:00:00Z,tool_wear,yes,\n"
        "m-1,2099-01-01T00:00:00Z,tool_wear,yes,\n"
        "m-1,2026-03-01T12:00:00Z,tool_wear,yes,2099-01-01T00:00:00Z\n"
        "m-1,2026-03-01T13:00:00Z,spindle_crash,yes,\n"
        "m-1,2026-03-01T14:00:00Z,,yes,\n"
        "m-1,2026-03-01T15:00:00Z,,no,\n"
        "o-1,2026-03-01T12:00:00Z,Anything At All,yes,\n"
        "o-1,2026-03-01T13:00:00Z,,yes,\n"
    )
    screened = screen(
        PLAN, parsed.rows, {"m-1": MILL, "o-1": OPEN}, now_us=NOW_US, max_future_us=300_000_000
    )
    assert [(t, r.line) for t, r in screened.accepted] == [
        ("mill", 2),
        ("mill", 8),
        ("open", 9),
        ("open", 10),
    ]
    assert [(r.line, r.reason) for r in screened.rejections] == [
        (3, UNKNOWN_ASSET),
        (4, FUTURE),
        (5, FUTURE),
        (6, UNKNOWN_FAILURE_MODE),
        (7, UNKNOWN_FAILURE_MODE),
    ]
    details = [r.detail for r in screened.rejections]
    assert "machine: asset 'ghost' is not registered" in details[0]
    assert "failed_at: 2099-01-01T00:00:00Z is in the future" in details[1]
    assert "back_in_service: 2099-01-01T00:00:00Z is in the future" in details[2]
    assert "'spindle_crash' is not declared by asset type 'mill'" in details[3]
    assert "(declared: tool_wear, overstrain)" in details[3]


def test_a_time_within_the_clock_skew_allowance_is_accepted() -> None:
    parsed = read(
        "machine,failed_at,mode,confirmed,back_in_service\n"
        "m-1,2026-03-01T12:04:00Z,tool_wear,yes,\n"
        "m-1,2026-03-01T12:06:00Z,tool_wear,yes,\n"
    )
    screened = screen(PLAN, parsed.rows, {"m-1": MILL}, now_us=T0_US, max_future_us=300_000_000)
    assert [r.line for _, r in screened.accepted] == [2]
    assert [(r.line, r.reason) for r in screened.rejections] == [(3, FUTURE)]

"""Rendering a trace as a tree, and pruning old spans from the local span store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console

from prognos.cli.traces import prune_spans, render_trace
from prognos.core.telemetry import SpanRecord, read_spans

NOW_NS = int(datetime.now(UTC).timestamp() * 1e9)
DAY_NS = 86_400 * 10**9


def _span(trace: str, span: str, parent: str, name: str, start: int, service: str) -> SpanRecord:
    return SpanRecord(
        trace_id=trace,
        span_id=span,
        parent_span_id=parent,
        name=name,
        kind="SERVER",
        service=service,
        start_unix_ns=start,
        end_unix_ns=start + 2_500_000,
        status="ERROR" if name == "fails" else "UNSET",
        status_message="boom" if name == "fails" else "",
    )


def _text(spans: list[SpanRecord]) -> str:
    console = Console(width=200, record=True)
    console.print(render_trace(spans))
    return console.export_text()


def test_a_trace_renders_each_span_under_its_parent() -> None:
    trace = "a" * 32
    spans = [
        _span(trace, "1" * 16, "", "/IngestService/Register", NOW_NS, "ingest"),
        _span(trace, "2" * 16, "1" * 16, "INSERT", NOW_NS + 1, "ingest"),
        _span(trace, "3" * 16, "1" * 16, "consume", NOW_NS + 2, "registry"),
        _span(trace, "4" * 16, "3" * 16, "fails", NOW_NS + 3, "registry"),
    ]

    lines = _text(spans).splitlines()

    assert "4 spans" in lines[0]
    register = next(i for i, line in enumerate(lines) if "/IngestService/Register" in line)
    consume = next(i for i, line in enumerate(lines) if "consume" in line)
    fails = next(i for i, line in enumerate(lines) if "fails" in line)
    indent = [len(lines[i]) - len(lines[i].lstrip("│├└─ ")) for i in (register, consume, fails)]
    assert indent[0] < indent[1] < indent[2]
    assert "registry" in lines[fails] and "ERROR boom" in lines[fails] and "2.5 ms" in lines[fails]


def test_a_span_whose_parent_is_missing_becomes_a_root() -> None:
    trace = "b" * 32
    spans = [_span(trace, "1" * 16, "f" * 16, "orphan", NOW_NS, "scheduler")]

    assert "orphan" in _text(spans)


def test_pruning_drops_old_traces_whole_and_keeps_recent_ones(tmp_path: Path) -> None:
    old, recent, mixed = "0" * 32, "1" * 32, "2" * 32
    spans = [
        _span(old, "1" * 16, "", "old", NOW_NS - 200 * DAY_NS, "ingest"),
        _span(recent, "2" * 16, "", "recent", NOW_NS - DAY_NS, "ingest"),
        _span(mixed, "3" * 16, "", "started long ago", NOW_NS - 200 * DAY_NS, "registry"),
        _span(mixed, "4" * 16, "3" * 16, "ended lately", NOW_NS - DAY_NS, "registry"),
    ]
    for service in ("ingest", "registry"):
        lines = [s.to_json() + "\n" for s in spans if s.service == service]
        (tmp_path / f"{service}.jsonl").write_text("".join(lines) + "{not json\n")

    dropped = prune_spans(tmp_path, datetime.now(UTC) - timedelta(days=180))

    assert dropped == 1
    assert {s.trace_id for s in read_spans(tmp_path)} == {recent, mixed}
    assert "{not json" in (tmp_path / "ingest.jsonl").read_text()

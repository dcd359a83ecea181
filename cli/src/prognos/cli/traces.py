"""``prognos trace``: show a trace as a tree from the local span store, and prune old spans.

Every audit entry names the trace of the work that wrote it; ``prognos trace show`` renders
that trace (service, operation, duration, status) from ``<data_dir>/spans/*.jsonl``, where
services write spans when no OTLP collector is configured.
"""

from __future__ import annotations

import os
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from prognos.core.config import Settings
from prognos.core.telemetry import SpanRecord, read_spans

__all__ = ["app", "prune_spans", "render_trace"]

app = typer.Typer(help="Read traces from the local span store.", no_args_is_help=True)
_DATA_DIR_HELP = "Data directory (default: $PROGNOS_DATA_DIR, else .prognos)."
_STATUS_STYLE = {"ERROR": "bold red", "OK": "green", "UNSET": "dim"}


def _label(span: SpanRecord) -> Text:
    label = Text()
    label.append(f"{span.service}", "bold cyan")
    label.append(f"  {span.name}")
    label.append(f"  {span.kind.lower()}", "dim")
    label.append(f"  {span.duration_ms:.1f} ms", "yellow")
    label.append(f"  {span.status}", _STATUS_STYLE.get(span.status, ""))
    if span.status_message:
        label.append(f" {span.status_message}", "red")
    return label


def render_trace(spans: list[SpanRecord]) -> Tree:
    """A tree of a trace's spans: each under its parent, siblings by start time.

    Spans whose parent is not in the store (a client that keeps no spans) are roots.
    """
    trace_id = spans[0].trace_id if spans else ""
    start = min((s.start_unix_ns for s in spans), default=0)
    end = max((s.end_unix_ns for s in spans), default=0)
    root = Tree(
        Text(f"trace {trace_id}  {len(spans)} spans  {(end - start) / 1e6:.1f} ms", "bold"),
        guide_style="dim",
    )
    known = {s.span_id for s in spans}
    children: dict[str, list[SpanRecord]] = defaultdict(list)
    for span in spans:
        parent = span.parent_span_id if span.parent_span_id in known else ""
        children[parent].append(span)

    def add(node: Tree, parent_id: str, seen: set[str]) -> None:
        for span in sorted(children.get(parent_id, []), key=lambda s: s.start_unix_ns):
            if span.span_id in seen:  # a malformed store must not loop forever
                continue
            seen.add(span.span_id)
            add(node.add(_label(span)), span.span_id, seen)

    add(root, "", set())
    return root


@app.command("show")
def show(
    trace_id: Annotated[str, typer.Argument(help="The trace id (32 hex digits).")],
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
) -> None:
    """Render a trace as a tree: service, operation, duration and status of each span."""
    settings = Settings.load("cli", **({"data_dir": data_dir} if data_dir else {}))
    spans = read_spans(settings.spans_dir, trace_id.strip())
    console = Console()
    if not spans:
        console.print(f"No spans of trace {trace_id} in {settings.spans_dir}.", highlight=False)
        raise typer.Exit(1)
    console.print(render_trace(spans))


def prune_spans(spans_dir: Path, older_than: datetime) -> int:
    """Drop the spans of traces that ended before ``older_than`` from every span file.

    A trace is kept whole while any of its spans is recent. Each file is rewritten and
    swapped in atomically; lines appended while it is rewritten are carried over.

    Args:
        spans_dir: The directory holding ``<service>.jsonl`` files.
        older_than: The cut-off (UTC).

    Returns:
        How many spans were dropped.
    """
    cutoff_ns = int(older_than.timestamp() * 1e9)
    last_end: dict[str, int] = {}
    for span in read_spans(spans_dir):
        last_end[span.trace_id] = max(last_end.get(span.trace_id, 0), span.end_unix_ns)
    stale = {trace for trace, end in last_end.items() if end < cutoff_ns}
    dropped = 0
    for path in sorted(spans_dir.glob("*.jsonl")) if spans_dir.is_dir() else []:
        partial = path.with_name(path.name + ".prune")
        with path.open("rb") as source, partial.open("wb") as target:
            while True:
                line = source.readline()
                if not line:
                    # Carry over what a writer appended meanwhile, then swap.
                    if source.tell() == os.path.getsize(path):
                        break
                    continue
                try:
                    span = SpanRecord.from_json(line.decode())
                except (ValueError, KeyError, TypeError):
                    target.write(line)
                    continue
                if span.trace_id in stale:
                    dropped += 1
                else:
                    target.write(line)
        partial.replace(path)
    return dropped


@app.command("prune")
def prune(
    days: Annotated[
        int | None,
        typer.Option(help="Keep this many days (default: trace_retention_days, 180)."),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
) -> None:
    """Drop local spans of traces older than the retention period."""
    settings = Settings.load("cli", **({"data_dir": data_dir} if data_dir else {}))
    keep = days if days is not None else settings.trace_retention_days
    dropped = prune_spans(settings.spans_dir, datetime.now(UTC) - timedelta(days=keep))
    Console().print(f"dropped {dropped} spans older than {keep} days", highlight=False)

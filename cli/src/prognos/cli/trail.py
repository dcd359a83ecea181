"""``prognos audit trail``: everything that led to a work order and followed it, from every chain.

One call: the scheduler, which owns work orders, answers ``AuditService.GetTrail`` with
``whole`` set by asking every other service for its part on the auditor's behalf (with the
auditor's token) and following what each part names: the prediction, its input window and
model version, that model version's lineage, the telemetry batches of the input window with
their receipts. Every part says whether its service's whole chain verifies; a service that
did not answer is named with the reason. This module only renders the answer.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from prognos.api.common.v1 import audit_pb2, audit_pb2_grpc
from prognos.cli.client import open_channel
from prognos.cli.launcher import RunInfo

__all__ = [
    "Trail",
    "TrailStep",
    "collect_trail",
    "render_html",
    "render_trail",
    "trail_from_proto",
]

_ROLE = "auditor"
_TIMEOUT_S = 120.0
_STAGES = {
    "ingest": "telemetry",
    "inference": "prediction",
    "registry": "model lineage",
    "scheduler": "work order",
}


@dataclass(frozen=True)
class TrailStep:
    """One step of a trail, from one service."""

    service: str
    at: datetime
    actor: str
    action: str
    subject: str
    summary: str
    trace_id: str
    details: dict[str, Any]
    audit_seq: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "service": self.service,
            "stage": _STAGES.get(self.service, self.service),
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "summary": self.summary,
            "trace_id": self.trace_id,
            "audit_seq": self.audit_seq,
            "details": self.details,
        }


@dataclass
class Trail:
    """A work order's trail: steps in time order and the verdict on every chain involved."""

    work_order_id: str
    steps: list[TrailStep] = field(default_factory=list)
    chains: dict[str, dict[str, Any]] = field(default_factory=dict)
    asset_id: str = ""
    window: tuple[str, str] | None = None
    people: dict[str, str | None] = field(default_factory=dict)
    """Names of the people the steps name by ``person/<id>``; ``None`` once erased."""
    missing: dict[str, str] = field(default_factory=dict)
    """Services that gave no part, and why."""

    @property
    def complete(self) -> bool:
        """Whether every service gave its part."""
        return not self.missing

    @property
    def verified(self) -> bool:
        """Whether every service answered and every chain verifies."""
        return self.complete and bool(self.chains) and all(c["ok"] for c in self.chains.values())

    def of(self, service: str) -> list[TrailStep]:
        """The steps one service recorded."""
        return [s for s in self.steps if s.service == service]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "work_order_id": self.work_order_id,
            "asset_id": self.asset_id,
            "input_window": list(self.window) if self.window else None,
            "verified": self.verified,
            "complete": self.complete,
            "missing": self.missing,
            "chains": self.chains,
            "people": self.people,
            "steps": [s.to_dict() for s in self.steps],
        }


def _time(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def _step(message: audit_pb2.TrailStep) -> TrailStep:
    return TrailStep(
        service=message.service,
        at=_time(message.at),
        actor=message.actor,
        action=message.action,
        subject=message.subject,
        summary=message.summary,
        trace_id=message.trace_id,
        details=json.loads(message.details_json or "{}"),
        audit_seq=message.audit_seq,
    )


def trail_from_proto(reply: audit_pb2.GetTrailResponse, work_order_id: str) -> Trail:
    """The trail a whole ``GetTrail`` answer describes."""
    trail = Trail(work_order_id, asset_id=reply.asset_id)
    if reply.HasField("window_end"):
        trail.window = (
            _time(reply.window_start).isoformat(),
            _time(reply.window_end).isoformat(),
        )
    for part in reply.parts:
        if not part.answered:
            trail.missing[part.service] = part.error
            continue
        chain = part.chain
        trail.chains[part.service] = {
            "ok": chain.ok,
            "entries": chain.entries,
            "head_seq": chain.head.seq,
            "head_hash": chain.head.hash,
            "broken_seq": chain.broken_seq or None,
            "broken_entry_id": chain.broken_entry_id or None,
            "problem": chain.problem or None,
        }
    trail.steps = [_step(s) for s in reply.steps]
    for person in reply.people:
        trail.people[person.ref] = None if person.erased else person.name
    return trail


async def collect_trail(info: RunInfo, work_order_id: str) -> Trail:
    """Ask the scheduler for a work order's whole trail (one call).

    Args:
        info: What `prognos up` started.
        work_order_id: The work order.

    Returns:
        The trail, steps in time order.

    Raises:
        grpc.aio.AioRpcError: NOT_FOUND for an unknown work order; the scheduler's status
            when it cannot answer at all.
    """
    request = audit_pb2.GetTrailRequest(work_order_id=work_order_id, whole=True)
    async with open_channel(info, "scheduler", role=_ROLE) as channel:
        reply = await audit_pb2_grpc.AuditServiceStub(channel).GetTrail(request, timeout=_TIMEOUT_S)
    return trail_from_proto(reply, work_order_id)


# --- rendering ----------------------------------------------------------------------------


def _person(trail: Trail, ref: str) -> str:
    if ref not in trail.people:
        return ref
    name = trail.people[ref]
    return f"{name} ({ref})" if name else f"[erased] ({ref})"


def _detail_line(trail: Trail, step: TrailStep) -> str:
    d = step.details
    if step.action == "work_order.acknowledged":
        by = d.get("acknowledged_by")
        return f"ERP order {d.get('erp_order_number')}" + (
            f", acknowledged by {_person(trail, str(by))}" if by else ""
        )
    if step.action == "telemetry.batch_received":
        # The step's time is the receipt; the readings may be much older.
        return f"batch {d.get('batch_id')}, readings {d.get('first_time')} .. {d.get('last_time')}"
    if step.action.startswith("work_order.") and "prediction_id" in d:
        sensors = ", ".join(str(s) for s in d.get("top_sensors", [])[:5])
        return (
            f"prediction {d.get('prediction_id')} by {d.get('model_version')}: "
            f"p={d.get('failure_probability')} input {d.get('input_digest')} top [{sensors}]"
        )
    if step.action == "prediction.alert_raised":
        sensors = ", ".join(str(s.get("channel")) for s in d.get("top_sensors", [])[:5])
        return (
            f"{d.get('model_version')} p={d.get('failure_probability')} "
            f"input {d.get('input_digest')} top [{sensors}]"
        )
    if step.action == "model_version.registered":
        return (
            f"run {d.get('training_run_id') or '-'} on {d.get('dataset_content_hash') or '-'} "
            f"metrics {json.dumps(d.get('metrics', {}), sort_keys=True)}"
        )
    return ""


def render_trail(trail: Trail) -> Group:
    """A readable report: the chains' verdict, then the steps grouped by stage, as a tree."""
    verdict = Table(title=f"Trail of work order {trail.work_order_id}")
    for column in ("Service", "Steps", "Chain entries", "Chain"):
        verdict.add_column(column)
    for service, chain in trail.chains.items():
        if chain["ok"]:
            result = Text("verified", "green")
        else:
            result = Text(f"BROKEN at entry {chain['broken_seq']}: {chain['problem']}", "bold red")
        verdict.add_row(service, str(len(trail.of(service))), str(chain["entries"]), result)
    for service, error in trail.missing.items():
        verdict.add_row(service, "-", "-", Text(f"NO ANSWER: {error}", "bold red"))
    tree = Tree(
        Text(
            f"work order {trail.work_order_id} — asset {trail.asset_id or '?'}"
            + (f", input window {trail.window[0]} .. {trail.window[1]}" if trail.window else ""),
            "bold",
        )
    )
    for step in trail.steps:
        label = Text()
        label.append(step.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "  ", "dim")
        label.append(f"[{_STAGES.get(step.service, step.service)}] ", "cyan")
        label.append(step.action, "bold")
        label.append(f"  {step.subject}  by {step.actor or '-'}  trace {step.trace_id or '-'}")
        node = tree.add(label)
        if step.summary:
            node.add(Text(step.summary))
        line = _detail_line(trail, step)
        if line:
            node.add(Text(line, "dim"))
    if trail.verified:
        overall = Text("every chain involved verifies", "bold green")
    elif not trail.complete:
        overall = Text(
            f"INCOMPLETE: no part from {', '.join(trail.missing)}; their chains are unchecked",
            "bold red",
        )
    else:
        overall = Text("a chain involved does NOT verify", "bold red")
    return Group(verdict, tree, overall)


def _chain_words(chain: dict[str, Any]) -> str:
    if chain["ok"]:
        return "verified"
    return f"BROKEN at entry {chain['broken_seq']}: {chain['problem']}"


def _verdict_words(trail: Trail) -> str:
    if trail.verified:
        return "Every chain involved verifies."
    if not trail.complete:
        return f"INCOMPLETE: no part from {', '.join(trail.missing)}."
    return "A chain does NOT verify."


def render_html(trail: Trail) -> str:
    """The report as a standalone HTML page."""
    rows = []
    for step in trail.steps:
        cells = (
            step.at.isoformat(),
            _STAGES.get(step.service, step.service),
            step.action,
            step.subject,
            step.actor,
            step.trace_id,
            step.summary,
            _detail_line(trail, step),
        )
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    chains = "".join(
        f"<li>{html.escape(name)}: {html.escape(_chain_words(c))} ({c['entries']} entries)</li>"
        for name, c in trail.chains.items()
    ) + "".join(
        f"<li>{html.escape(name)}: NO ANSWER: {html.escape(error)}</li>"
        for name, error in trail.missing.items()
    )
    title = html.escape(f"Trail of work order {trail.work_order_id}")
    head = "".join(
        f"<th>{h}</th>"
        for h in ("Time", "Stage", "Action", "Subject", "Actor", "Trace", "Why", "Facts")
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px;"
        "font-size:13px}table{border-collapse:collapse}</style></head><body>"
        f"<h1>{title}</h1><p>Asset {html.escape(trail.asset_id or '?')}. "
        f"{_verdict_words(trail)}"
        f"</p><ul>{chains}</ul><table><tr>{head}</tr>{''.join(rows)}</table></body></html>\n"
    )

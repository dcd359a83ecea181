"""``prognos audit trail``: everything that led to a work order and followed it, from every chain.

Each service answers ``AuditService.GetTrail`` for its own part. The trail is put together
here, following what each part names: the scheduler's part (the work order's transitions and
ERP replies) names the prediction, its input window and the model version; inference's part
is the prediction's alert when it raised one; the registry's part is that model version's
lineage (training run, dataset snapshot, metrics, registration, approval, promotion); ingest's
part is the telemetry batches of the input window with their receipts, the asset and the
dataset snapshot. Every call is made with the auditor's own token, and every part says
whether its service's whole chain verifies.
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

__all__ = ["Trail", "TrailStep", "collect_trail", "render_html", "render_trail"]

_ROLE = "auditor"
_TIMEOUT_S = 60.0
_ORDER = ("scheduler", "inference", "registry", "ingest")
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

    @property
    def verified(self) -> bool:
        """Whether every chain asked verifies."""
        return bool(self.chains) and all(c["ok"] for c in self.chains.values())

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


async def _ask(info: RunInfo, service: str, request: audit_pb2.GetTrailRequest) -> Any:
    async with open_channel(info, service, role=_ROLE) as channel:
        return await audit_pb2_grpc.AuditServiceStub(channel).GetTrail(request, timeout=_TIMEOUT_S)


def _kind(references: Any, kind: str) -> list[str]:
    return sorted(r for r in references if r.startswith(kind + "/"))


async def collect_trail(info: RunInfo, work_order_id: str) -> Trail:
    """Ask every service for its part of a work order's trail and put the parts together.

    Args:
        info: What `prognos up` started.
        work_order_id: The work order.

    Returns:
        The trail, steps in time order (empty when no service knows the work order).
    """
    trail = Trail(work_order_id)
    parts: dict[str, Any] = {}

    scheduler = await _ask(
        info, "scheduler", audit_pb2.GetTrailRequest(work_order_id=work_order_id)
    )
    parts["scheduler"] = scheduler
    found = set(scheduler.references)
    trail.asset_id = scheduler.asset_id

    inference = await _ask(
        info,
        "inference",
        audit_pb2.GetTrailRequest(
            work_order_id=work_order_id, references=_kind(found, "prediction")
        ),
    )
    parts["inference"] = inference
    found |= set(inference.references)
    trail.asset_id = trail.asset_id or inference.asset_id

    registry = await _ask(
        info,
        "registry",
        audit_pb2.GetTrailRequest(
            work_order_id=work_order_id, references=_kind(found, "model_version")
        ),
    )
    parts["registry"] = registry
    found |= set(registry.references)

    request = audit_pb2.GetTrailRequest(
        work_order_id=work_order_id,
        references=_kind(found, "dataset_snapshot")
        + ([f"asset/{trail.asset_id}"] if trail.asset_id else []),
        asset_id=trail.asset_id,
    )
    # The input window: from the prediction as inference audited it, else as the scheduler
    # recorded it; without either, the asset's batches up to the work order's first step.
    windowed = next((p for p in (inference, scheduler) if p.HasField("window_end")), None)
    if windowed is not None:
        request.window_start.CopyFrom(windowed.window_start)
        request.window_end.CopyFrom(windowed.window_end)
        trail.window = (
            _time(windowed.window_start).isoformat(),
            _time(windowed.window_end).isoformat(),
        )
    elif scheduler.steps:
        request.window_end.CopyFrom(scheduler.steps[0].at)
    parts["ingest"] = await _ask(info, "ingest", request)

    for service in _ORDER:
        part = parts[service]
        chain = part.chain
        trail.chains[service] = {
            "ok": chain.ok,
            "entries": chain.entries,
            "head_seq": chain.head.seq,
            "head_hash": chain.head.hash,
            "broken_seq": chain.broken_seq or None,
            "broken_entry_id": chain.broken_entry_id or None,
            "problem": chain.problem or None,
        }
        trail.steps.extend(_step(s) for s in part.steps)
        for person in part.people:
            trail.people[person.ref] = None if person.erased else person.name
    trail.steps.sort(key=lambda s: (s.at, _ORDER.index(s.service), s.audit_seq))
    return trail


# --- rendering ----------------------------------------------------------------------------


def _short(trace_id: str) -> str:
    return trace_id[:12] if trace_id else "-"


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
        return f"batch {d.get('batch_id')} {d.get('first_time')} .. {d.get('last_time')}"
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
        label.append(f"  {step.subject}  by {step.actor or '-'}  trace {_short(step.trace_id)}")
        node = tree.add(label)
        if step.summary:
            node.add(Text(step.summary))
        line = _detail_line(trail, step)
        if line:
            node.add(Text(line, "dim"))
    overall = (
        Text("every chain involved verifies", "bold green")
        if trail.verified
        else Text("a chain involved does NOT verify", "bold red")
    )
    return Group(verdict, tree, overall)


def _chain_words(chain: dict[str, Any]) -> str:
    if chain["ok"]:
        return "verified"
    return f"BROKEN at entry {chain['broken_seq']}: {chain['problem']}"


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
        f"{'Every chain involved verifies.' if trail.verified else 'A chain does NOT verify.'}"
        f"</p><ul>{chains}</ul><table><tr>{head}</tr>{''.join(rows)}</table></body></html>\n"
    )

"""One service's part of a work order's trail: the audit entries that concern it, by reference.

A trail starts from ``work_order/<id>`` and references (``prediction/<id>``,
``model_version/<id>``, ``training_run/<id>``, ``dataset_snapshot/<id>``, ``asset/<id>``).
An entry belongs to the trail when its subject is one of the references, or when a value of
its details (or an item of a list value) is the id of a reference the trail starts from;
the entries found name further references under well-known detail keys (``prediction_id``,
``model_version``, ``training_run_id``, ...): training runs and dataset snapshots are
followed until nothing new turns up, the others are returned for the caller to ask the
service that owns them.

A trail holds what led to its work order, so the lineage is followed backwards only: a
training run or dataset snapshot reached by following brings in the entries about it (its
subject), not every entry that mentions it (many runs train on one snapshot). Nor does an
entry join by a mention that says what something was before (an alias moved ``from`` a
version) or by a mention in a fact about a whole asset type (drift, retraining decisions),
which concern every work order of that type.

A service may add steps of its own that are not audit entries (ingest: the telemetry batches
of the input window with their receipts) through a ``TrailSource``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prognos.api.common.v1 import audit_pb2
from prognos.core import audit
from prognos.core.people import PERSON_PREFIX

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "FOLLOWED_KINDS",
    "PAST_KEYS",
    "REFERENCE_KEYS",
    "WHOLE_TYPE_KINDS",
    "TrailPart",
    "TrailQuery",
    "TrailSource",
    "find_part",
    "person_refs",
    "references_in",
    "step_from_entry",
]

REFERENCE_KEYS: dict[str, str] = {
    "prediction_id": "prediction",
    "model_version": "model_version",
    "model_version_id": "model_version",
    "training_run_id": "training_run",
    "dataset_snapshot_id": "dataset_snapshot",
    "work_order_id": "work_order",
}
"""Detail keys whose values are references, and the kind each names."""

FOLLOWED_KINDS = frozenset({"training_run", "dataset_snapshot"})
"""Kinds a service follows in its own chain. The others name things shared by many work
orders (a model version makes many predictions), so following them would pull in the
trails of other work orders; they are reported for the caller to ask about."""

PAST_KEYS = frozenset({"from"})
"""Detail keys that name what something was before the change (an alias's previous
version): an entry does not join a trail by them."""

WHOLE_TYPE_KINDS = frozenset({"asset_type"})
"""Subject kinds of facts about everything of a kind (a type's drift, its retraining): such
an entry joins a trail only by its subject, never by a mention."""


@dataclass(frozen=True)
class TrailQuery:
    """What a trail is about: a work order, references, and an asset's input window."""

    work_order_id: str = ""
    references: frozenset[str] = frozenset()
    asset_id: str = ""
    window_start: datetime | None = None
    window_end: datetime | None = None

    @classmethod
    def from_proto(cls, request: audit_pb2.GetTrailRequest) -> TrailQuery:
        """Read a ``GetTrailRequest``."""
        return cls(
            work_order_id=request.work_order_id,
            references=frozenset(r for r in request.references if "/" in r),
            asset_id=request.asset_id,
            window_start=(
                request.window_start.ToDatetime(tzinfo=UTC)
                if request.HasField("window_start")
                else None
            ),
            window_end=(
                request.window_end.ToDatetime(tzinfo=UTC)
                if request.HasField("window_end")
                else None
            ),
        )

    def start_references(self) -> set[str]:
        """The references the trail starts from."""
        found = set(self.references)
        if self.work_order_id:
            found.add(f"work_order/{self.work_order_id}")
        return found


@dataclass
class TrailPart:
    """One service's part: matched entries, the references they name, and the input window."""

    entries: list[audit.AuditEntry] = field(default_factory=list)
    references: set[str] = field(default_factory=set)
    asset_id: str = ""
    window_start: str = ""
    window_end: str = ""


TrailSource = Callable[
    ["AsyncConnection", TrailQuery, list[audit.AuditEntry]], Awaitable[list[audit_pb2.TrailStep]]
]
"""Adds a service's own steps; gets the query and the service's whole chain."""


def _values(details: dict[str, Any], skip: frozenset[str] = frozenset()) -> Iterable[str]:
    for key, value in details.items():
        if key in skip:
            continue
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            yield from (v for v in value if isinstance(v, str))


def references_in(entry: audit.AuditEntry) -> set[str]:
    """The references an entry names under ``REFERENCE_KEYS``."""
    found = set()
    for key, kind in REFERENCE_KEYS.items():
        value = entry.details.get(key)
        if isinstance(value, str) and value:
            found.add(f"{kind}/{value}")
    return found


def _matches(entry: audit.AuditEntry, references: set[str], mentioned: set[str]) -> bool:
    """Whether ``entry`` is about a reference, or mentions the id of one in ``mentioned``."""
    if entry.subject in references:
        return True
    if entry.subject.split("/", 1)[0] in WHOLE_TYPE_KINDS:
        return False
    return any(value in mentioned for value in _values(entry.details, PAST_KEYS))


def find_part(chain: list[audit.AuditEntry], query: TrailQuery) -> TrailPart:
    """The entries of ``chain`` that belong to the trail, following references to a fixpoint.

    Args:
        chain: the service's entries in sequence order.
        query: where the trail starts.

    Returns:
        The matched entries in sequence order, every reference they name, and the asset and
        input window named by them (``asset_id``, ``window_start`` and ``window_end``
        details, or an ``asset/<id>`` subject).
    """
    references = query.start_references()
    # Only the starting references join entries by a mention; followed ones by subject.
    mentioned = {r.split("/", 1)[1] for r in references}
    found = set(references)
    matched: dict[int, audit.AuditEntry] = {}
    while True:
        grown = False
        for entry in chain:
            if entry.seq in matched or not _matches(entry, references, mentioned):
                continue
            matched[entry.seq] = entry
            found |= references_in(entry)
            new = {r for r in found - references if r.split("/", 1)[0] in FOLLOWED_KINDS}
            if new:
                references |= new
                grown = True
        if not grown:
            break
    part = TrailPart(entries=[matched[s] for s in sorted(matched)], references=found)
    for entry in part.entries:
        if not part.asset_id:
            asset = entry.details.get("asset_id")
            if isinstance(asset, str) and asset:
                part.asset_id = asset
            elif entry.subject.startswith("asset/") and entry.subject != "asset/*":
                part.asset_id = entry.subject.removeprefix("asset/")
        start, end = entry.details.get("window_start"), entry.details.get("window_end")
        if isinstance(start, str) and isinstance(end, str) and start and end:
            part.window_start, part.window_end = start, end
    return part


def person_refs(step: audit_pb2.TrailStep) -> set[str]:
    """The ``person/<id>`` references among a step's detail values."""
    details = json.loads(step.details_json or "{}")
    return {v for v in _values(details) if v.startswith(PERSON_PREFIX)}


def step_from_entry(service: str, entry: audit.AuditEntry) -> audit_pb2.TrailStep:
    """A trail step that is an audit entry."""
    step = audit_pb2.TrailStep(
        service=service,
        actor=entry.actor,
        action=entry.action,
        subject=entry.subject,
        summary=entry.reason,
        trace_id=entry.trace_id,
        details_json=json.dumps(entry.details, sort_keys=True, ensure_ascii=False),
        audit_seq=entry.seq,
    )
    step.at.FromDatetime(entry.at)
    return step

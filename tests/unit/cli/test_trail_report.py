"""The trail report: what the scheduler's one answer says, for people and as JSON."""

from __future__ import annotations

import json

from rich.console import Console

from prognos.api.common.v1 import audit_pb2
from prognos.cli.trail import render_html, render_trail, trail_from_proto


def _answer(*, registry_down: bool) -> audit_pb2.GetTrailResponse:
    reply = audit_pb2.GetTrailResponse(service="scheduler", asset_id="engine-7")
    step = reply.steps.add(
        service="scheduler",
        actor="service:scheduler",
        action="work_order.acknowledged",
        subject="work_order/wo-1",
        trace_id="a" * 32,
        details_json=json.dumps({"erp_order_number": "SAP-1", "acknowledged_by": "person/p1"}),
        audit_seq=3,
    )
    step.at.FromJsonString("2030-01-01T00:00:00Z")
    reply.people.add(ref="person/p1", name="", erased=True)
    reply.window_start.FromJsonString("2029-12-31T23:00:00Z")
    reply.window_end.FromJsonString("2030-01-01T00:00:00Z")
    for service in ("scheduler", "inference", "registry", "ingest"):
        part = reply.parts.add(service=service, answered=True, steps=1)
        part.chain.ok = True
        part.chain.entries = 5
        if service == "registry" and registry_down:
            part.Clear()
            part.service, part.error = service, "UNAVAILABLE: failed to connect"
    return reply


def test_a_complete_verified_answer_reads_as_verified() -> None:
    trail = trail_from_proto(_answer(registry_down=False), "wo-1")

    document = trail.to_dict()
    assert document["verified"] is True and document["complete"] is True
    assert set(document["chains"]) == {"scheduler", "inference", "registry", "ingest"}
    assert document["people"] == {"person/p1": None}
    assert document["input_window"] == ["2029-12-31T23:00:00+00:00", "2030-01-01T00:00:00+00:00"]
    console = Console(record=True, width=160)
    console.print(render_trail(trail))
    text = console.export_text()
    assert "every chain involved verifies" in text and "[erased] (person/p1)" in text


def test_a_service_that_gave_no_part_makes_the_trail_incomplete_and_unverified() -> None:
    trail = trail_from_proto(_answer(registry_down=True), "wo-1")

    assert trail.verified is False and trail.complete is False
    assert trail.missing == {"registry": "UNAVAILABLE: failed to connect"}
    assert "registry" not in trail.chains
    console = Console(record=True, width=160)
    console.print(render_trail(trail))
    text = console.export_text()
    assert "NO ANSWER: UNAVAILABLE: failed to connect" in text
    assert "INCOMPLETE: no part from registry" in text
    assert "INCOMPLETE: no part from registry" in render_html(trail)

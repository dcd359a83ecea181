"""The wire protocol lives in the contracts: routes, streams, owners, and no copies in code."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from prognos.api import wire
from prognos.api.common.v1 import envelope_pb2
from prognos.api.inference.v1 import events_pb2 as inference_events
from prognos.api.ingest.v1 import events_pb2 as ingest_events
from prognos.api.ingest.v1 import ingest_pb2
from prognos.api.registry.v1 import events_pb2 as registry_events
from prognos.api.scheduler.v1 import events_pb2 as scheduler_events

ROOT = Path(__file__).resolve().parents[3]
EVENT_MODULES = (ingest_events, registry_events, inference_events, scheduler_events)


def test_every_event_message_declares_a_route() -> None:
    missing = [
        f"{module.DESCRIPTOR.name}: {name}"
        for module in EVENT_MODULES
        for name, descriptor in module.DESCRIPTOR.message_types_by_name.items()
        # Parts of events (FeatureDrift inside DriftDetected) are not published alone.
        if not any(
            f.message_type is descriptor
            for other in module.DESCRIPTOR.message_types_by_name.values()
            for f in other.fields
        )
        and name not in {c.DESCRIPTOR.name for c in wire.event_classes()}
    ]
    assert missing == []


def test_every_subject_has_exactly_one_route_and_one_owning_stream() -> None:
    seen: dict[str, str] = {}
    for cls in wire.event_classes():
        found = wire.route(cls)
        for template in found.subjects:
            assert template not in seen, f"{template}: {seen.get(template)} and {found.message}"
            seen[template] = found.message
            if found.stream:
                stream = wire.streams()[found.stream]
                concrete = re.sub(r"\{\w+\}", "x", template)
                assert any(wire._filter_matches(f, concrete) for f in stream.subjects), template
    assert len(seen) >= 30


def test_each_consumed_subject_has_exactly_one_producer() -> None:
    """Every filter a service consumes with is owned by one service, never by nobody."""
    from prognos.core.config import Settings
    from prognos.inference.consumers import ALIAS_EVENTS, ASSET_EVENTS, POLICY_EVENTS
    from prognos.ingest.consumers import subscriptions as ingest_subscriptions
    from prognos.registry.consumers import subscriptions as registry_subscriptions
    from prognos.scheduler.consumers import subscriptions as scheduler_subscriptions
    from prognos.scheduler.handlers import PolicyBook

    filters = [s.filter_subject for s in ingest_subscriptions()]
    filters += [s.filter_subject for s in registry_subscriptions(Settings.load("registry"))]
    filters += [s.filter_subject for s in scheduler_subscriptions(lambda: None, PolicyBook())]  # type: ignore[arg-type,return-value]
    filters += wire.subjects(*ASSET_EVENTS, *ALIAS_EVENTS, *POLICY_EVENTS)
    owners = {f: wire.owner(f.replace(">", "x").replace("*", "x")) for f in filters}
    assert None not in owners.values(), owners
    assert owners["inference.prediction.made"] == "inference"
    assert owners["registry.alias.moved"] == "registry"


def test_owners_of_templated_subjects() -> None:
    assert wire.owner("audit.head.ingest") == "ingest"
    assert wire.owner("audit.checkpoint.scheduler") == "scheduler"
    assert wire.owner("registry.outbox.dead_lettered") == "registry"
    assert wire.owner("telemetry.turbofan.engine-7") == "ingest"
    assert wire.owner("elsewhere.thing") is None


def test_subjects_render_from_the_contracts() -> None:
    assert wire.subject(inference_events.PredictionMade, "shadow") == "inference.prediction.shadow"
    with pytest.raises(ValueError, match="kind="):
        wire.subject(inference_events.PredictionMade)
    assert wire.subject(envelope_pb2.OutboxMessageDeadLettered, service="ingest") == (
        "ingest.outbox.dead_lettered"
    )
    with pytest.raises(ValueError, match="one subject token"):
        wire.subject(envelope_pb2.OutboxMessageDeadLettered, service="a.b")
    assert wire.wildcard(*wire.WORK_ORDER_EVENTS) == "scheduler.work_order.>"


def test_telemetry_subject_round_trips_any_asset_id() -> None:
    subject = wire.telemetry_subject("turbofan", "line 3/engine.7")
    assert subject == "telemetry.turbofan.line%203%2Fengine%2E7"
    asset_type, token = wire.parse_telemetry_subject(subject)
    assert (asset_type, wire.decode_subject_token(token)) == ("turbofan", "line 3/engine.7")
    with pytest.raises(ValueError, match="not a telemetry subject"):
        wire.parse_telemetry_subject("quarantine.turbofan.x")
    assert wire.quarantine_subject("", "a") == "quarantine._unknown.a"


def test_the_columnar_codec_reads_every_encoding_and_names_bad_bytes() -> None:
    times = np.array([3, 1, 2], "<i8")
    batch = ingest_pb2.TelemetryBatch(timestamps_us_le=times.tobytes())
    batch.channels.add(name="a", values_f64_le=np.array([30.0, 10.0, 20.0]).tobytes())
    batch.channels.add(name="b", values_f32_le=np.array([3, 1, 2], "<f4").tobytes())
    batch.channels.add(name="c", values=[3.0, 1.0, 2.0])
    got_times, names, values = wire.batch_columns(batch)
    assert got_times.tolist() == [1, 2, 3] and names == ("a", "b", "c")
    assert values.tolist() == [[10.0, 1.0, 1.0], [20.0, 2.0, 2.0], [30.0, 3.0, 3.0]]
    broken = ingest_pb2.ChannelColumn(name="x", values_f64_le=b"\x00" * 9)
    with pytest.raises(wire.ColumnError, match=r"channels\[4\].values_f64_le: 9 bytes"):
        wire.column_values(broken, "channels[4]")


SOURCES = [ROOT / "services", ROOT / "cli"]
SUBJECT_LITERAL = re.compile(
    r"""["'](?:(?:ingest|registry|inference|scheduler|telemetry|quarantine)\.[a-z_]+\.[a-z_.>*]+"""
    r"""|audit\.(?:head|checkpoint)\.[a-z_{}]*|audit\.>"""
    r"""|INGEST|REGISTRY|INFERENCE|SCHEDULER|TELEMETRY|QUARANTINE|AUDIT"""
    r"""|Prognos-[A-Za-z-]+|Nats-Msg-Id)["']"""
)


def test_no_subject_stream_or_header_name_is_written_outside_the_contracts() -> None:
    found = []
    for source in SOURCES:
        for path in source.rglob("*.py"):
            if "_pb2" in path.name or "migrations" in path.parts:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if SUBJECT_LITERAL.search(line) and not line.lstrip().startswith("#"):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []

"""One trace from telemetry to prediction: each prediction continues its telemetry's trace.

Micro-batching scores many assets' telemetry at once; the batch's span links every trace it
scored (fan-in), and each asset's prediction event, and the audit entry of its alert, carry
the trace of the telemetry message that last changed the asset's window.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from prognos.core import telemetry
from prognos.core.store import audit_table
from prognos.core.testing import assert_eventually

from .conftest import Bus, running_inference, sim
from .test_inference_live import TYPE, serve_champion

pytestmark = pytest.mark.timeout(300)


def _traceparent() -> tuple[str, str]:
    trace_id = os.urandom(16).hex()
    return trace_id, f"00-{trace_id}-{os.urandom(8).hex()}-01"


async def test_each_prediction_continues_the_trace_of_its_telemetry(
    inference_settings: Any, nats_bus: Bus, model_dirs: list[Path]
) -> None:
    fleet = sim.live_fleet(6, seed=13)
    traces = {asset.asset_id: _traceparent() for asset in fleet}
    untraced = sim.live_fleet(1, seed=14, prefix="untraced")[0]
    carried: dict[str, str] = {}

    async def on_prediction(msg: Any) -> None:
        headers = msg.headers or {}
        carried[headers.get("Nats-Msg-Id", "")] = headers.get("traceparent", "")

    await nats_bus.nc.subscribe("inference.prediction.made", cb=on_prediction)
    settings = inference_settings(
        inference_alert_threshold=0.0, inference_attribution_threshold=0.0
    )
    async with running_inference(settings) as replica:
        await serve_champion(replica, nats_bus, model_dirs[0], "turbofan-v1")
        now_us = time.time_ns() // 1000
        for asset in fleet:
            batch = sim.telemetry_batch(asset.asset_id, asset.readings(35), now_us, asset_type=TYPE)
            await nats_bus.js.publish(
                sim.telemetry_subject(TYPE, asset.asset_id),
                batch.SerializeToString(),
                headers={
                    "Nats-Msg-Id": f"{asset.asset_id}:{batch.batch_id}",
                    "traceparent": traces[asset.asset_id][1],
                },
            )
        await nats_bus.feed(TYPE, [untraced], rows=35)

        seen = nats_bus.observed
        everyone = [*fleet, untraced]
        await assert_eventually(
            lambda: all(seen.latest(a.asset_id) for a in everyone), timeout=20, message="scored"
        )
        await assert_eventually(
            lambda: all(seen.latest(a.asset_id).prediction_id in carried for a in everyone)
        )
        for asset in fleet:
            header = carried[seen.latest(asset.asset_id).prediction_id]
            # The telemetry's trace, continued: same trace id, the sender's span as parent.
            assert header == traces[asset.asset_id][1]
        # Telemetry that carried no trace: the prediction is in the scoring batch's trace.
        own = telemetry.trace_id_of(carried[seen.latest(untraced.asset_id).prediction_id])
        assert own is not None and own not in {t for t, _ in traces.values()}

        async def alerts_in_the_telemetry_traces() -> None:
            async with replica.store.reader() as conn:
                rows = list(
                    await conn.execute(
                        select(audit_table).where(audit_table.c.action == "prediction.alert_raised")
                    )
                )
            by_asset = {row.subject.removeprefix("asset/"): row.trace_id for row in rows}
            for asset in fleet:
                assert by_asset.get(asset.asset_id) == traces[asset.asset_id][0]

        await assert_eventually(alerts_in_the_telemetry_traces, timeout=10)

        def linked() -> None:
            telemetry.flush()
            spans = telemetry.read_spans(settings.spans_dir)
            links = {
                link["trace_id"]
                for span in spans
                if span.name == "inference score batch"
                for link in span.links
            }
            assert {t for t, _ in traces.values()} <= links

        await assert_eventually(linked, timeout=10)


def test_links_keep_distinct_valid_spans_up_to_the_limit() -> None:
    first, second = _traceparent()[1], _traceparent()[1]
    broken = ["", "00-xyz", "00-" + "0" * 32 + "-" + "1" * 16 + "-01", first[:-1] + "g"]

    links = telemetry.links_to([first, *broken, first, second])
    capped = telemetry.links_to([_traceparent()[1] for _ in range(10)], limit=4)

    assert [format(link.context.trace_id, "032x") for link in links] == [
        first[3:35],
        second[3:35],
    ]
    assert all(link.context.is_remote for link in links)
    assert len(capped) == 4
    assert telemetry.trace_id_of(first) == first[3:35]
    assert telemetry.trace_id_of("not a traceparent") is None

"""Drift alerts: a shifted sensor in a simulated fleet raises one, the same fleet unshifted none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from prognos.core.store import audit_table
from prognos.core.testing import assert_eventually
from prognos.inference import adapters

from .conftest import Bus, running_inference, sim

# The first test of a session may train the models (about a minute).
pytestmark = pytest.mark.timeout(300)

TYPE = "turbofan"
CHECKS = {
    "inference_drift_interval_s": 0.3,
    # The fleet's first windows (60 x 30 rows): a check on part of it would see fewer lives.
    "inference_drift_min_samples": 1_500,
    "inference_drift_sample_rows": 3_000,
}


@pytest.mark.parametrize(
    ("shift", "drifted"), [({"s7": 3.0}, ["sensor_7"]), (None, [])], ids=["shifted", "unshifted"]
)
async def test_only_a_shifted_sensor_raises_a_drift_alert(
    inference_settings: Any,
    nats_bus: Bus,
    model_dirs: list[Path],
    shift: dict[str, float] | None,
    drifted: list[str],
) -> None:
    fleet = sim.live_fleet(60, seed=21)
    async with running_inference(inference_settings(**CHECKS)) as replica:
        await nats_bus.alias(sim.alias_moved(TYPE, "turbofan-v1", model_dirs[0]))
        await assert_eventually(lambda: replica.inference.models.pair(TYPE).champion, timeout=30)
        await nats_bus.feed(TYPE, fleet, rows=35, shift=shift)
        await assert_eventually(
            lambda: replica.inference.drift.checks.get(TYPE, 0) >= 3,
            timeout=30,
            message="three drift checks with enough samples",
        )
        if drifted:
            await assert_eventually(lambda: nats_bus.observed.drift, timeout=10)

        async def recorded_and_published() -> tuple[int, int, list[Any]]:
            async with replica.store.reader() as conn:
                recorded = await adapters.drift_alert_count(conn, TYPE)
                audited = list(
                    await conn.execute(
                        select(audit_table).where(audit_table.c.action == "drift.detected")
                    )
                )
            alerts = list(nats_bus.observed.drift)
            # Alerts leave through the outbox: the relay publishes each shortly after.
            assert recorded == len(audited) == len(alerts)
            return recorded, len(audited), alerts

        recorded, _, alerts = await assert_eventually(recorded_and_published, timeout=10)

    # One alert per check period at most, each recorded, audited and published.
    assert (recorded > 0) == bool(drifted)
    for alert in alerts:
        assert alert.asset_type == TYPE and alert.model_version == "turbofan-v1"
        assert [f.feature for f in alert.features if f.drifted] == drifted
        assert alert.sample_count >= 1_500
        names = {f.feature for f in alert.features}
        assert "sensor_2" in names and "s2" not in names

"""A prediction that can open a work order carries its top sensors, whatever the policy.

Inference explains live predictions at or above its attribution threshold, lowered to where
the scheduler's policy for the asset type opens work orders (``WorkOrderPolicySet`` on the
SCHEDULER stream); a policy with a remaining-useful-life rule can open at any probability.
``Predict`` explains its answers from the same threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from prognos.api.inference.v1 import inference_pb2
from prognos.api.scheduler.v1 import events_pb2 as scheduler_events
from prognos.core import bus
from prognos.core.testing import assert_eventually

from .conftest import Bus, Replica, running_inference, sim
from .test_inference_live import TYPE, serve_champion

pytestmark = pytest.mark.timeout(300)


async def announce(nats_bus: Bus, asset_type: str, open_probability: float, **rul: float) -> None:
    """Publish a ``WorkOrderPolicySet`` as the scheduler's relay would."""
    event = scheduler_events.WorkOrderPolicySet(asset_type=asset_type)
    event.policy.open_probability = open_probability
    if rul:
        event.policy.open_remaining_useful_life = rul["open_rul"]
        event.policy.close_remaining_useful_life = rul["open_rul"] * 2
    await bus.ensure_stream(nats_bus.scheduler_js, "SCHEDULER")
    await nats_bus.scheduler_js.publish("scheduler.policy.set", sim.envelope(event))


async def assert_predict_explains_alike(replica: Replica, nats_bus: Bus, fleet: list[Any]) -> None:
    """``Predict`` of each asset's held window says what its live prediction said."""
    for asset in fleet:
        live = nats_bus.observed.latest(asset.asset_id)
        reply = await replica.stub.Predict(
            inference_pb2.PredictRequest(asset_id=asset.asset_id), timeout=5
        )
        answered = reply.prediction
        assert answered.prediction_id == live.prediction_id, "not the same window and model"
        assert answered.failure_probability == pytest.approx(live.failure_probability, abs=1e-5)
        assert {s.channel: s.contribution for s in answered.top_sensors} == pytest.approx(
            {s.channel: s.contribution for s in live.top_sensors}, abs=1e-4
        ), asset.asset_id


async def test_predictions_that_can_open_a_work_order_are_explained(
    inference_settings: Any, nats_bus: Bus, model_dirs: list[Path]
) -> None:
    fleet = sim.live_fleet(30, seed=21)
    threshold = 0.5
    async with running_inference(inference_settings()) as replica:
        assert replica.inference.live.explain_threshold(TYPE) == threshold
        await serve_champion(replica, nats_bus, model_dirs[0], "turbofan-v1")
        seen = nats_bus.observed

        async def scored(previous: dict[str, int]) -> None:
            await nats_bus.feed(TYPE, fleet, rows=35 if not previous else 1)
            await assert_eventually(
                lambda: all(
                    len(seen.predictions[a.asset_id]) > previous.get(a.asset_id, 0) for a in fleet
                ),
                timeout=20,
            )

        def counts() -> dict[str, int]:
            return {a.asset_id: len(seen.predictions[a.asset_id]) for a in fleet}

        # The default: explained from the attribution threshold up.
        await scored({})
        latest = [seen.latest(a.asset_id) for a in fleet]
        assert all(bool(p.top_sensors) == (p.failure_probability >= threshold) for p in latest)
        quiet = [p for p in latest if p.failure_probability < threshold]
        assert quiet, "the fleet has no low-risk engine to tell the thresholds apart"
        assert len(quiet) < len(latest), "the fleet has no engine to explain"
        await assert_predict_explains_alike(replica, nats_bus, fleet)

        # The scheduler opens work orders from 0.001: those predictions are explained too.
        await announce(nats_bus, TYPE, 0.001)
        await assert_eventually(lambda: replica.inference.live.explain_threshold(TYPE) == 0.001)
        await scored(counts())
        latest = [seen.latest(a.asset_id) for a in fleet]
        assert all(p.top_sensors or p.failure_probability < 0.001 for p in latest)
        assert any(p.top_sensors and p.failure_probability < threshold for p in latest)
        await assert_predict_explains_alike(replica, nats_bus, fleet)

        # A remaining-useful-life rule opens at any probability: every prediction explained.
        await announce(nats_bus, TYPE, 0.9, open_rul=15.0)
        await assert_eventually(lambda: replica.inference.live.explain_threshold(TYPE) == 0.0)
        await scored(counts())
        assert all(seen.latest(a.asset_id).top_sensors for a in fleet)
        await assert_predict_explains_alike(replica, nats_bus, fleet)
        # Another asset type keeps the attribution threshold.
        assert replica.inference.live.explain_threshold("pump") == threshold

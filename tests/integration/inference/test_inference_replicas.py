"""Replicas share the telemetry stream: assets split between them, windows move with them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from prognos.api.inference.v1 import inference_pb2
from prognos.core.testing import assert_eventually

from .conftest import Bus, Replica, running_inference, sim

# The first test of a session may train the models (about a minute).
pytestmark = pytest.mark.timeout(300)

TYPE = "turbofan"


async def windows_of(replica: Replica) -> dict[str, int]:
    state = await replica.stub.GetServingState(
        inference_pb2.GetServingStateRequest(include_windows=True), timeout=5
    )
    return {w.asset_id: w.rows for w in state.windows if not w.rebuilding}


def made_since(bus: Bus, asset_id: str, since_us: int) -> bool:
    return any(p.made_at.ToMicroseconds() >= since_us for p in bus.observed.predictions[asset_id])


async def test_a_second_replica_takes_a_share_and_gives_it_back_when_it_leaves(
    inference_settings: Any, nats_bus: Bus, model_dirs: list[Path]
) -> None:
    fleet = sim.live_fleet(60, seed=12)
    ids = {a.asset_id for a in fleet}
    await nats_bus.alias(sim.alias_moved(TYPE, "turbofan-v1", model_dirs[0]))
    async with running_inference(inference_settings(inference_replica_id="replica-a")) as a:
        await assert_eventually(lambda: a.inference.models.pair(TYPE).champion, timeout=60)
        await nats_bus.feed(TYPE, fleet, rows=35)
        await assert_eventually(lambda: all(nats_bus.observed.latest(x) for x in ids), timeout=60)
        assert set(await windows_of(a)) == ids

        async with running_inference(inference_settings(inference_replica_id="replica-b")) as b:
            await assert_eventually(
                lambda: a.inference.membership.view == ("replica-a", "replica-b"), timeout=60
            )

            async def split() -> None:
                held_a, held_b = await windows_of(a), await windows_of(b)
                assert held_a and held_b and not set(held_a) & set(held_b)
                assert set(held_a) | set(held_b) == ids
                # B rebuilt the whole windows of its share from the stream, not just new rows.
                assert set(held_b.values()) == {35}

            await assert_eventually(split, timeout=60)
            joined_us = time.time_ns() // 1000
            await nats_bus.feed(TYPE, fleet, rows=1)
            await assert_eventually(
                lambda: all(made_since(nats_bus, x, joined_us) for x in ids), timeout=60
            )
            # Either replica answers for any asset: the other one's are forwarded to it.
            theirs = sorted(set(await windows_of(b)))[0]
            reply = await a.stub.Predict(inference_pb2.PredictRequest(asset_id=theirs), timeout=5)
            assert reply.prediction.asset_id == theirs
            batch = await b.stub.PredictBatch(
                inference_pb2.PredictBatchRequest(asset_ids=sorted(ids)), timeout=10
            )
            assert len(batch.predictions) == len(ids) and not batch.errors

        # B left cleanly: A holds every window again, rebuilt in full.
        async def all_back() -> None:
            held = await windows_of(a)
            assert set(held) == ids and set(held.values()) == {36}

        await assert_eventually(all_back, timeout=60)
        left_us = time.time_ns() // 1000
        await nats_bus.feed(TYPE, fleet, rows=1)
        await assert_eventually(
            lambda: all(made_since(nats_bus, x, left_us) for x in ids), timeout=60
        )


async def test_a_restarted_replica_rebuilds_its_windows_from_the_stream(
    inference_settings: Any, nats_bus: Bus, model_dirs: list[Path]
) -> None:
    fleet = sim.live_fleet(20, seed=13)
    ids = {a.asset_id for a in fleet}
    await nats_bus.alias(sim.alias_moved(TYPE, "turbofan-v1", model_dirs[0]))
    settings = inference_settings(inference_replica_id="replica-a")
    async with running_inference(settings) as a:
        await nats_bus.feed(TYPE, fleet, rows=35)
        await assert_eventually(lambda: all(nats_bus.observed.latest(x) for x in ids), timeout=60)
    before = {x: nats_bus.observed.latest(x) for x in ids}

    # Alone again, nobody says where its windows start: it replays the lookback.
    async with running_inference(settings) as a:

        async def rebuilt() -> None:
            held = await windows_of(a)
            assert set(held) == ids and set(held.values()) == {35}

        await assert_eventually(rebuilt, timeout=60)
        # Rebuilt windows are scored again: the same inputs, so the same predictions.
        await assert_eventually(
            lambda: all(len(nats_bus.observed.predictions[x]) >= 2 for x in ids), timeout=60
        )
        for asset_id in ids:
            again = nats_bus.observed.predictions[asset_id][-1]
            assert again.prediction_id == before[asset_id].prediction_id
            assert again.input_digest == before[asset_id].input_digest


async def test_a_replica_with_nothing_to_replay_scores_new_readings(
    inference_settings: Any, nats_bus: Bus, model_dirs: list[Path]
) -> None:
    fleet = sim.live_fleet(10, seed=14)
    ids = {a.asset_id for a in fleet}
    await nats_bus.alias(sim.alias_moved(TYPE, "turbofan-v1", model_dirs[0]))
    # Readings older than the lookback: the rebuild finds nothing and must not wait forever.
    old_us = time.time_ns() // 1000 - 60_000_000
    last_seq = 0
    for asset in fleet:
        last_seq = await nats_bus.telemetry(TYPE, asset.asset_id, asset.readings(35), old_us)
    await assert_eventually(lambda: last_seq > 0)
    settings = inference_settings(inference_rebuild_lookback_s=0.001)
    async with running_inference(settings) as replica:
        live = replica.inference.live
        await assert_eventually(lambda: not live._rebuilds, timeout=60, message="rebuild done")
        await assert_eventually(lambda: replica.inference.models.pair(TYPE).champion, timeout=60)
        await nats_bus.feed(TYPE, fleet, rows=3)
        await assert_eventually(lambda: all(nats_bus.observed.latest(x) for x in ids), timeout=60)
        assert set((await windows_of(replica)).values()) == {3}

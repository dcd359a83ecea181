"""Live scoring in one replica: telemetry in, predictions out, models swapped while serving."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from prognos.api.inference.v1 import inference_pb2
from prognos.core.store import audit_table
from prognos.core.testing import assert_eventually

from .conftest import Bus, Replica, running_inference, sim

# The first test of a session may train the models (about a minute).
pytestmark = pytest.mark.timeout(300)

TYPE = "turbofan"


async def serve_champion(replica: Replica, nats_bus: Bus, export: Path, version: str) -> None:
    await nats_bus.alias(sim.alias_moved(TYPE, version, export))

    def serving() -> bool:
        champion = replica.inference.models.pair(TYPE).champion
        return champion is not None and champion.version == version

    await assert_eventually(serving, timeout=30, message=f"{version} served")


async def audit_actions(replica: Replica, action: str) -> list[Any]:
    async with replica.store.reader() as conn:
        rows = await conn.execute(select(audit_table).where(audit_table.c.action == action))
        return list(rows)


async def test_every_asset_is_scored_with_its_model_version_and_top_sensors(
    inference_settings: Any, nats_bus: Bus, model_dirs: list[Path]
) -> None:
    fleet = sim.live_fleet(40, seed=3)
    # Threshold 0: every prediction is an alert, so every one is explained and audited.
    settings = inference_settings(
        inference_alert_threshold=0.0, inference_attribution_threshold=0.0
    )
    async with running_inference(settings) as replica:
        await serve_champion(replica, nats_bus, model_dirs[0], "turbofan-v1")
        await nats_bus.feed(TYPE, fleet, rows=35)

        seen = nats_bus.observed
        await assert_eventually(
            lambda: all(seen.latest(a.asset_id) for a in fleet), timeout=20, message="all scored"
        )
        for asset in fleet:
            p = seen.latest(asset.asset_id)
            assert p is not None
            assert p.model_version == "turbofan-v1" and not p.shadow
            assert 0.0 <= p.failure_probability <= 1.0 and p.rul.cycles >= 0.0
            assert p.horizon.cycles == 30 and p.input_digest.startswith("sha256:")
            assert 1 <= len(p.top_sensors) <= 5
            assert all(s.channel.startswith("sensor_") for s in p.top_sensors)
            assert sum(abs(s.contribution) for s in p.top_sensors) <= 1.0 + 1e-9
            assert p.window.end_time.ToMicroseconds() > p.window.start_time.ToMicroseconds()

        async def audited() -> None:
            entries = await audit_actions(replica, "prediction.alert_raised")
            assert len(entries) == len(fleet)
            assert {e.subject for e in entries} == {f"asset/{a.asset_id}" for a in fleet}

        await assert_eventually(audited, timeout=10)
        entry = (await audit_actions(replica, "prediction.alert_raised"))[0]
        assert entry.details["model_version"] == "turbofan-v1"
        assert entry.details["input_digest"].startswith("sha256:")

        # New readings of one asset make one new prediction; an unchanged window makes none.
        before = {a.asset_id: len(seen.predictions[a.asset_id]) for a in fleet}
        await nats_bus.feed(TYPE, fleet[:1], rows=1)
        await assert_eventually(
            lambda: len(seen.predictions[fleet[0].asset_id]) == before[fleet[0].asset_id] + 1
        )
        assert all(len(seen.predictions[a.asset_id]) == before[a.asset_id] for a in fleet[1:])


async def test_a_promotion_swaps_the_model_without_failing_a_request(
    inference_settings: Any, nats_bus: Bus, model_dirs: list[Path]
) -> None:
    fleet = sim.live_fleet(30, seed=5)
    async with running_inference(inference_settings()) as replica:
        await serve_champion(replica, nats_bus, model_dirs[0], "turbofan-v1")
        await nats_bus.feed(TYPE, fleet, rows=35)
        seen = nats_bus.observed
        await assert_eventually(lambda: all(seen.latest(a.asset_id) for a in fleet), timeout=20)

        versions: list[str] = []
        failures: list[grpc.aio.AioRpcError] = []
        promoted = asyncio.Event()

        async def keep_asking() -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                for asset in fleet:
                    try:
                        reply = await replica.stub.Predict(
                            inference_pb2.PredictRequest(asset_id=asset.asset_id), timeout=5
                        )
                        versions.append(reply.prediction.model_version)
                    except grpc.aio.AioRpcError as e:
                        failures.append(e)
                if promoted.is_set() and versions[-len(fleet) :] == ["turbofan-v2"] * len(fleet):
                    return

        asker = asyncio.create_task(keep_asking())
        await assert_eventually(lambda: len(versions) > 2 * len(fleet), timeout=20)
        await nats_bus.alias(
            sim.alias_moved(TYPE, "turbofan-v2", model_dirs[1], previous="turbofan-v1")
        )
        promoted.set()
        await asker

        assert failures == []
        switch = versions.index("turbofan-v2")
        assert set(versions[:switch]) == {"turbofan-v1"}
        assert set(versions[switch:]) == {"turbofan-v2"}
        # The live path rescored every asset with the new champion.
        await assert_eventually(
            lambda: all(seen.latest(a.asset_id).model_version == "turbofan-v2" for a in fleet),
            timeout=20,
        )
        state = await replica.stub.GetServingState(inference_pb2.GetServingStateRequest())
        assert [(m.asset_type, m.champion_version) for m in state.models] == [(TYPE, "turbofan-v2")]

        # A rollback is the same move back.
        await nats_bus.alias(
            sim.alias_moved(
                TYPE, "turbofan-v1", model_dirs[0], previous="turbofan-v2", rollback=True
            )
        )
        await assert_eventually(
            lambda: all(seen.latest(a.asset_id).model_version == "turbofan-v1" for a in fleet),
            timeout=20,
        )
        served = await audit_actions(replica, "model.served")
        assert [e.details["model_version"] for e in served] == [
            "turbofan-v1",
            "turbofan-v2",
            "turbofan-v1",
        ]


async def test_the_challenger_scores_the_same_windows_in_shadow_only(
    inference_settings: Any, nats_bus: Bus, model_dirs: list[Path]
) -> None:
    fleet = sim.live_fleet(12, seed=6)
    async with running_inference(inference_settings()) as replica:
        await serve_champion(replica, nats_bus, model_dirs[0], "turbofan-v1")
        await nats_bus.alias(sim.alias_moved(TYPE, "turbofan-v2", model_dirs[1], challenger=True))
        await assert_eventually(
            lambda: replica.inference.models.pair(TYPE).challenger is not None, timeout=30
        )
        await nats_bus.feed(TYPE, fleet, rows=35)

        seen = nats_bus.observed
        await assert_eventually(lambda: all(seen.shadow.get(a.asset_id) for a in fleet), timeout=20)
        await assert_eventually(lambda: all(seen.latest(a.asset_id) for a in fleet), timeout=20)
        for asset in fleet:
            champion = seen.latest(asset.asset_id)
            shadow = seen.shadow[asset.asset_id][-1]
            assert champion is not None and shadow.shadow and not champion.shadow
            assert (champion.model_version, shadow.model_version) == ("turbofan-v1", "turbofan-v2")
            assert shadow.window == champion.window
            assert shadow.prediction_id != champion.prediction_id
        # Shadow predictions never reach the subject the scheduler acts on.
        assert all(not p.shadow for made in seen.predictions.values() for p in made)

        state = await replica.stub.GetServingState(inference_pb2.GetServingStateRequest())
        (served,) = state.models
        assert served.challenger_version == "turbofan-v2"
        assert served.shadow.pairs >= len(fleet)
        assert 0.0 <= served.shadow.alert_agreement <= 1.0


async def test_a_model_whose_file_differs_from_its_digest_is_refused(
    inference_settings: Any, nats_bus: Bus, model_dirs: list[Path], tmp_path: Path
) -> None:
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for name in ("model.tflite", "preprocessing.json", "reference.json"):
        (tampered / name).write_bytes((model_dirs[1] / name).read_bytes())
    event = sim.alias_moved(TYPE, "turbofan-v9", tampered)
    (tampered / "model.tflite").write_bytes(b"not the registered model")

    async with running_inference(inference_settings()) as replica:
        await serve_champion(replica, nats_bus, model_dirs[0], "turbofan-v1")
        await nats_bus.alias(event)

        async def refused() -> None:
            entries = await audit_actions(replica, "model.load_failed")
            assert len(entries) == 1
            entry = entries[0]
            assert entry.details["model_version"] == "turbofan-v9"
            assert "differs from the registered" in entry.reason

        await assert_eventually(refused, timeout=20)
        assert replica.inference.models.pair(TYPE).champion.version == "turbofan-v1"


async def test_predict_on_request(
    inference_settings: Any, nats_bus: Bus, model_dirs: list[Path]
) -> None:
    fleet = sim.live_fleet(6, seed=7)
    async with running_inference(inference_settings()) as replica:
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await replica.stub.Predict(inference_pb2.PredictRequest(asset_id="nope"), timeout=5)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

        end_us = await nats_bus.feed(TYPE, fleet, rows=40)
        await assert_eventually(lambda: replica.inference.live.tables.get(TYPE) is not None)
        await assert_eventually(lambda: len(replica.inference.live.tables[TYPE]) == len(fleet))
        with pytest.raises(grpc.aio.AioRpcError) as no_model:
            await replica.stub.Predict(
                inference_pb2.PredictRequest(asset_id=fleet[0].asset_id), timeout=5
            )
        assert no_model.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        await serve_champion(replica, nats_bus, model_dirs[0], "turbofan-v1")
        live = (
            await replica.stub.Predict(
                inference_pb2.PredictRequest(asset_id=fleet[0].asset_id), timeout=5
            )
        ).prediction
        assert live.time.ToMicroseconds() == end_us

        # The same readings sent in the request give the same prediction.
        held = replica.inference.live.tables[TYPE]
        slot = held.slot_of(fleet[0].asset_id)
        assert slot is not None
        raw, _, _ = held.windows([slot], 30)
        readings = sim.telemetry_batch(
            fleet[0].asset_id,
            raw[0][:, [held.channels.index(c) for c in sim.CHANNEL_NAMES]],
            end_us,
        )
        again = (
            await replica.stub.Predict(
                inference_pb2.PredictRequest(asset_id=fleet[0].asset_id, readings=readings),
                timeout=5,
            )
        ).prediction
        assert again.input_digest == live.input_digest
        assert again.prediction_id == live.prediction_id

        # An older range of the held readings.
        window = inference_pb2.TimeWindow()
        window.end_time.FromMicroseconds(end_us - 5_000_000)
        older = (
            await replica.stub.Predict(
                inference_pb2.PredictRequest(asset_id=fleet[0].asset_id, window=window),
                timeout=5,
            )
        ).prediction
        assert older.time.ToMicroseconds() == end_us - 6_000_000
        window.end_time.FromMicroseconds(end_us - 3_600_000_000)
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await replica.stub.Predict(
                inference_pb2.PredictRequest(asset_id=fleet[0].asset_id, window=window),
                timeout=5,
            )
        assert gone.value.code() == grpc.StatusCode.OUT_OF_RANGE

        batch = await replica.stub.PredictBatch(
            inference_pb2.PredictBatchRequest(asset_ids=[a.asset_id for a in fleet] + ["nope"]),
            timeout=10,
        )
        assert [p.asset_id for p in batch.predictions] == [a.asset_id for a in fleet]
        assert [(e.asset_id, e.code) for e in batch.errors] == [("nope", "NOT_FOUND")]
        everything = await replica.stub.PredictBatch(
            inference_pb2.PredictBatchRequest(asset_type=TYPE), timeout=10
        )
        assert sorted(p.asset_id for p in everything.predictions) == sorted(
            a.asset_id for a in fleet
        )


async def test_stream_predictions_follows_live_scoring_with_filters(
    inference_settings: Any, nats_bus: Bus, model_dirs: list[Path]
) -> None:
    fleet = sim.live_fleet(10, seed=8)
    async with running_inference(inference_settings()) as replica:
        await serve_champion(replica, nats_bus, model_dirs[0], "turbofan-v1")
        await nats_bus.feed(TYPE, fleet, rows=35)
        seen = nats_bus.observed
        await assert_eventually(lambda: all(seen.latest(a.asset_id) for a in fleet), timeout=20)
        risks = sorted(seen.latest(a.asset_id).failure_probability for a in fleet)
        cut = risks[len(risks) // 2]

        everything = replica.stub.StreamPredictions(
            inference_pb2.StreamPredictionsRequest(asset_type=TYPE)
        )
        risky = replica.stub.StreamPredictions(
            inference_pb2.StreamPredictionsRequest(min_failure_probability=cut)
        )
        other = replica.stub.StreamPredictions(
            inference_pb2.StreamPredictionsRequest(asset_type="pump")
        )

        async def keep_feeding() -> None:
            # A stream starts with the predictions made after it opened: keep making some.
            while True:
                await nats_bus.feed(TYPE, fleet, rows=1)
                await asyncio.sleep(0.3)

        async def read(call: Any, n: int) -> list[inference_pb2.Prediction]:
            out = []
            async for response in call:
                out.append(response.prediction)
                if len(out) == n:
                    break
            return out

        feeder = asyncio.create_task(keep_feeding())
        try:
            got_all = await asyncio.wait_for(read(everything, 3 * len(fleet)), 30)
            assert {p.asset_id for p in got_all} == {a.asset_id for a in fleet}
            got_risky = await asyncio.wait_for(read(risky, 5), 30)
            assert all(p.failure_probability >= cut for p in got_risky)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(read(other, 1), 1.0)
        finally:
            feeder.cancel()
            for call in (everything, risky, other):
                call.cancel()

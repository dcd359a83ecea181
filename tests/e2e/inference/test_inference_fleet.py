"""A fleet of 500 engines through the real ingest and inference services.

Telemetry goes in through ingest's ``StreamTelemetry`` (mutual TLS, gateway token), comes
out of inference as ``PredictionMade`` events; a promotion while telemetry flows and
``Predict`` calls run switches the model version without failing any of them. A second
inference process started mid-run takes over part of the assets, and after one replica
is SIGKILLed every asset still gets predictions.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from prognos.api.inference.v1 import inference_pb2, inference_pb2_grpc
from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.cli.client import open_channel
from prognos.core.testing import assert_eventually

from .conftest import Fleet, Gateway, Watcher, send_round, serving_state, sim

pytestmark = [
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(600),
]

TYPE = "turbofan"
ASSETS = 500
FLEET = sim.live_fleet(ASSETS, seed=31, prefix="plant-1/engine")
IDS = {a.asset_id for a in FLEET}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scored(fleet: Fleet, watcher: Watcher, model_dirs: list[Path]) -> None:
    """The fleet's engines registered, ``turbofan-v1`` champion, and every engine scored.

    Each engine gets a window's worth of readings, so a replica that rebuilds its windows
    from the stream finds them whole.
    """
    async with open_channel(fleet.info, "ingest", role="ml-engineer") as channel:
        await ingest_pb2_grpc.IngestServiceStub(channel).RegisterAssetType(
            ingest_pb2.RegisterAssetTypeRequest(asset_type=sim.asset_type_proto(TYPE)), timeout=10
        )
    async with open_channel(fleet.info, "ingest", role="gateway") as channel:
        await ingest_pb2_grpc.IngestServiceStub(channel).RegisterAssets(
            ingest_pb2.RegisterAssetsRequest(
                assets=[
                    ingest_pb2.RegisterAssetRequest(
                        asset_id=a.asset_id, plant=f"plant-{i % 5 + 1}", asset_type=TYPE
                    )
                    for i, a in enumerate(FLEET)
                ]
            ),
            timeout=30,
        )
    await watcher.alias(sim.alias_moved(TYPE, "turbofan-v1", model_dirs[0]))

    async def champion(version: str) -> None:
        state = await serving_state(fleet.info)
        assert [(m.asset_type, m.champion_version) for m in state.models] == [(TYPE, version)]

    await assert_eventually(lambda: champion("turbofan-v1"), timeout=60, interval=0.2)

    async with open_channel(fleet.info, "ingest", role="gateway") as channel:
        gateway = Gateway(channel)
        try:
            await send_round(gateway, FLEET, rows=35)
        finally:
            await gateway.close()
        assert not gateway.errors
    await assert_eventually(
        lambda: all(watcher.latest(a) for a in IDS), timeout=60, message="all 500 scored"
    )


async def test_every_asset_is_scored_and_a_promotion_fails_no_request(
    fleet: Fleet, watcher: Watcher, model_dirs: list[Path], scored: None
) -> None:
    async with open_channel(fleet.info, "ingest", role="gateway") as channel:
        gateway = Gateway(channel)
        for asset_id in IDS:
            p = watcher.latest(asset_id)
            assert p is not None and p.model_version == "turbofan-v1"
            assert p.plant.startswith("plant-") and p.horizon.cycles == 30
            assert p.top_sensors and p.top_sensors[0].channel.startswith("sensor_")

        # Promote while telemetry flows and an ERP keeps asking.
        versions: list[str] = []
        failures: list[grpc.aio.AioRpcError] = []
        stop = asyncio.Event()

        async def ask() -> None:
            rng = random.Random(5)
            async with open_channel(fleet.info, "inference", role="erp") as inference:
                stub = inference_pb2_grpc.InferenceServiceStub(inference)
                while not stop.is_set():
                    asset_id = rng.choice(FLEET).asset_id
                    try:
                        reply = await stub.Predict(
                            inference_pb2.PredictRequest(asset_id=asset_id), timeout=10
                        )
                        versions.append(reply.prediction.model_version)
                    except grpc.aio.AioRpcError as error:
                        failures.append(error)

        async def stream() -> None:
            while not stop.is_set():
                await send_round(gateway, FLEET, rows=1)

        tasks = [asyncio.create_task(ask()), asyncio.create_task(stream())]
        try:
            await assert_eventually(lambda: len(versions) >= 20, timeout=60)
            promoted = time.monotonic()
            await watcher.alias(
                sim.alias_moved(TYPE, "turbofan-v2", model_dirs[1], previous="turbofan-v1")
            )
            await assert_eventually(
                lambda: all(
                    any(p.model_version == "turbofan-v2" for p in watcher.seen_since(a, promoted))
                    for a in IDS
                ),
                timeout=90,
                message="every asset scored by the new champion",
            )
            await assert_eventually(lambda: versions[-5:] == ["turbofan-v2"] * 5, timeout=30)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await gateway.close()
        assert failures == []
        assert not gateway.errors
        switch = versions.index("turbofan-v2")
        assert set(versions[:switch]) == {"turbofan-v1"} and set(versions[switch:]) == {
            "turbofan-v2"
        }


async def test_a_second_replica_takes_over_part_and_a_killed_one_leaves_no_asset_behind(
    fleet: Fleet, watcher: Watcher, scored: None
) -> None:
    stop = asyncio.Event()
    async with open_channel(fleet.info, "ingest", role="gateway") as channel:
        gateway = Gateway(channel)

        async def stream() -> None:
            while not stop.is_set():
                await send_round(gateway, FLEET, rows=1)

        streaming = asyncio.create_task(stream())
        try:
            second = fleet.start_replica("inference-2")

            async def split() -> str:
                assert second.process.poll() is None, second.log.read_text()[-2000:]
                first_state = await serving_state(fleet.info)
                second_state = await serving_state(second.run_info)
                first = {w.asset_id for w in first_state.windows if not w.rebuilding}
                taken = {w.asset_id for w in second_state.windows if not w.rebuilding}
                assert len(first_state.replicas) == len(second_state.replicas) == 2
                assert taken and first and not first & taken and first | taken == IDS
                return first_state.replica_id

            original = await assert_eventually(
                split,
                timeout=90,
                interval=0.5,
                message="assets split",
                retry_on=(AssertionError, grpc.aio.AioRpcError),  # until it listens
            )

            # SIGKILL the second replica: it never says goodbye. The launcher's replica takes
            # its assets back, and serves on for the module's other test.
            killed_at = time.monotonic()
            second.kill()
            await assert_eventually(
                lambda: all(watcher.seen_since(a, killed_at + 0.5) for a in IDS),
                timeout=90,
                message="every asset scored after the kill",
            )
            state = await serving_state(fleet.info)
            assert [r.replica_id for r in state.replicas] == [original]
            assert {w.asset_id for w in state.windows} == IDS
            # The windows came back whole: rebuilt from the stream, not just new rows.
            short = [(w.asset_id, w.rows, w.rebuilding) for w in state.windows if w.rows < 30]
            assert not short, (short[:5], len(short))
        finally:
            stop.set()
            await streaming
            await gateway.close()

"""Two asset types side by side: each scored on its own horizon, each order on its own mode.

One inference replica serves a turbofan model (cycles, a 30-cycle horizon, no failure
modes) and a pump model (wall time every ten minutes, a 48-hour horizon, two failure
modes) at once; one scheduler holds a policy per type and opens their work orders. A
turbofan's order is for "any" failure and due a number of cycles after its prediction; a
pump's is for the mode the model finds most likely and due a number of hours after.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from prognos.api.inference.v1 import inference_pb2
from prognos.api.ingest.v1 import events_pb2 as ingest_events
from prognos.api.ingest.v1 import ingest_pb2
from prognos.api.scheduler.v1 import scheduler_pb2
from prognos.core.config import Settings
from prognos.core.testing import assert_eventually
from prognos.core.testing.identities import AuthorizedNats

from .conftest import Bus, running_inference, sim

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

S = scheduler_pb2
HELPERS = Path(__file__).resolve().parents[2] / "helpers"
HOURS_PER_CYCLE = 2.0


def _load(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


pump_models = _load("pump_models", HELPERS / "pump_models.py")
pumps = pump_models.pumps
scheduling = _load(
    "scheduler_service_fixtures",
    Path(__file__).resolve().parents[1] / "scheduler" / "conftest.py",
)


@pytest.fixture(scope="module")
def pump_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return pump_models.train_pump_model(tmp_path_factory.mktemp("pump-model"))


async def register_type(nats_bus: Bus, asset_type: ingest_pb2.AssetType) -> None:
    """Announce an asset type as ingest's relay would."""
    event = ingest_events.AssetTypeRegistered(asset_type=asset_type)
    await nats_bus.js.publish(
        "ingest.asset_type.registered",
        sim.envelope(event, stream=f"asset_type-{asset_type.name}"),
    )


def pump_batch(asset_id: str, rows: Any, end_us: int) -> ingest_pb2.TelemetryBatch:
    """The last readings of a simulated pump, normalised as ingest publishes them."""
    step_us = int(pumps.STEP_SECONDS * 1e6)
    stamps = end_us - step_us * np.arange(len(rows) - 1, -1, -1, dtype=np.int64)
    batch = ingest_pb2.TelemetryBatch(
        batch_id=uuid.uuid4().hex,
        asset_id=asset_id,
        asset_type="pump",
        timestamps_us_le=stamps.astype("<i8").tobytes(),
    )
    for name, unit, _, _ in pumps.CHANNELS:
        values = rows[name].to_numpy(np.float64)
        batch.channels.add(
            name=name, unit=unit, values_f64_le=np.ascontiguousarray(values, "<f8").tobytes()
        )
    return batch


def due_hours(order: S.WorkOrder, cause: inference_pb2.Prediction) -> float:
    return (order.due_time.ToDatetime() - cause.time.ToDatetime()).total_seconds() / 3600.0


async def test_two_asset_types_are_scored_and_ordered_on_their_own_horizons_and_modes(
    inference_settings: Any,
    nats_bus: Bus,
    authorized_nats: AuthorizedNats,
    model_dirs: list[Path],
    pump_model: dict[str, Any],
    tmp_path: Path,
) -> None:
    scheduler_settings = Settings.load(
        "scheduler",
        **scheduling.FAST,
        data_dir=tmp_path / "scheduler",
        nats_url=authorized_nats.url,
        nats_nkey_seed_file=authorized_nats.seeds["scheduler"],
        grpc_port=0,
    )
    turbofans = sim.live_fleet(4, seed=11, prefix="fan")
    readings = pump_model["fleet"].readings
    pump_ids = sorted(readings["asset_id"].unique())[:4]

    async with (
        scheduling.running_scheduler(scheduler_settings) as s,
        running_inference(inference_settings(inference_alert_threshold=0.0)) as replica,
    ):
        # Every prediction opens an order, so every one shows how its type is decided.
        for asset_type, policy in (
            ("turbofan", S.WorkOrderPolicy(open_probability=1e-9, hours_per_cycle=HOURS_PER_CYCLE)),
            ("pump", S.WorkOrderPolicy(open_probability=1e-9)),
        ):
            policy.horizon.FromTimedelta(timedelta(hours=48))
            await s.stub.SetWorkOrderPolicy(
                S.SetWorkOrderPolicyRequest(
                    idempotency_key=str(uuid.uuid4()), asset_type=asset_type, policy=policy
                )
            )
        await register_type(nats_bus, sim.asset_type_proto("turbofan"))
        await register_type(nats_bus, pumps.asset_type())
        await nats_bus.alias(sim.alias_moved("turbofan", "turbofan-v1", model_dirs[0]))
        await nats_bus.alias(sim.alias_moved("pump", "pump-v1", pump_model["bundle"]))

        def serving() -> bool:
            models = replica.inference.models
            return all(
                models.pair(kind).champion is not None
                and models.pair(kind).champion.version == f"{kind}-v1"
                for kind in ("turbofan", "pump")
            )

        await assert_eventually(serving, timeout=30, message="both champions served")

        def pump_type_known() -> bool:
            return "pump" in replica.inference.directory.types

        await assert_eventually(pump_type_known, timeout=10, message="pump type announced")

        now_us = time.time_ns() // 1000
        await nats_bus.feed("turbofan", turbofans, rows=35, end_us=now_us)
        for asset_id in pump_ids:
            rows = readings[readings["asset_id"] == asset_id].tail(30)
            batch = pump_batch(asset_id, rows, now_us)
            await nats_bus.js.publish(
                sim.telemetry_subject("pump", asset_id),
                batch.SerializeToString(),
                headers={"Nats-Msg-Id": f"{asset_id}:{batch.batch_id}"},
            )

        seen = nats_bus.observed
        everyone = [a.asset_id for a in turbofans] + pump_ids
        await assert_eventually(
            lambda: all(seen.latest(a) for a in everyone), timeout=30, message="all scored"
        )
        for fan in turbofans:
            p = seen.latest(fan.asset_id)
            assert p is not None and p.model_version == "turbofan-v1"
            assert p.horizon.WhichOneof("horizon") == "cycles" and p.horizon.cycles == 30
            assert p.rul.WhichOneof("value") == "cycles"
            assert not p.failure_modes
        for asset_id in pump_ids:
            p = seen.latest(asset_id)
            assert p is not None and p.model_version == "pump-v1"
            assert p.horizon.WhichOneof("horizon") == "duration"
            assert p.horizon.duration.ToTimedelta() == timedelta(hours=48)
            assert p.rul.WhichOneof("value") == "duration"
            risks = [r.probability for r in p.failure_modes]
            assert {r.failure_mode for r in p.failure_modes} == set(pumps.MODES)
            assert risks == sorted(risks, reverse=True)

        async def ordered() -> list[S.WorkOrder]:
            reply = await s.stub.ListWorkOrders(S.ListWorkOrdersRequest(page_size=100))
            orders = list(reply.work_orders)
            assert {o.asset_id for o in orders} == set(everyone)
            return orders

        orders = await assert_eventually(ordered, timeout=30)
        made = {p.prediction_id: p for ps in seen.predictions.values() for p in ps}
        for order in orders:
            cause = made[order.cause.prediction_id]
            assert order.asset_type == cause.asset_type
            if order.asset_type == "turbofan":
                assert order.failure_mode == "any"
                expected = cause.rul.cycles * HOURS_PER_CYCLE
            else:
                assert order.failure_mode == cause.failure_modes[0].failure_mode
                expected = cause.rul.duration.ToTimedelta().total_seconds() / 3600.0
            assert due_hours(order, cause) == pytest.approx(expected, abs=1e-3)

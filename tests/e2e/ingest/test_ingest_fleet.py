"""A fleet of 1,000 assets of 3 types streams through a real ingest process that is SIGKILLed.

Its archive process is SIGKILLed with it, so neither flushes anything on the way out.

The client keeps 16 batches in flight on each of 4 streams and resends every batch without
a receipt, with the same batch id, once the service is back. The TELEMETRY stream is
created beforehand with a duplicate window of half a second, so JetStream's own dedup has
lapsed by the time the resends arrive: only the service's own check keeps them out.
Afterwards every batch has a receipt, and every acknowledged reading is on the stream and
in the archive exactly once, with the values sent (converted to canonical units).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import grpc
import nats
import numpy as np
import pytest
from nats.js import api

from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.cli.client import open_channel
from prognos.core.natsserver import EmbeddedNats
from prognos.ingest.archive import read_snapshot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

S = 1_000_000
ASSETS = 1_000
BATCHES = 3
ROWS = 20
STREAMS = 4
WINDOW = 16
# (type, [(channel, canonical unit, min, max, unit sent, to canonical)])
TYPES: list[tuple[str, list[tuple[str, str, float, float, str, Any]]]] = [
    (
        "pump",
        [
            ("bearing_temp", "degC", -40, 200, "degF", lambda f: (f - 32) * 5 / 9),
            ("pressure", "kPa", 0, 2_000, "kPa", lambda v: v),
            ("vibration", "mm/s", 0, 50, "mm/s", lambda v: v),
        ],
    ),
    (
        "fan",
        [
            ("speed", "rpm", 0, 5_000, "rpm", lambda v: v),
            ("current", "A", 0, 100, "mA", lambda v: v / 1_000),
        ],
    ),
    (
        "press",
        [
            ("force", "kN", 0, 500, "kN", lambda v: v),
            ("oil_temp", "degC", -20, 150, "degC", lambda v: v),
            ("stroke", "mm", 0, 300, "mm", lambda v: v),
            ("pressure", "bar", 0, 400, "bar", lambda v: v),
        ],
    ),
]


@dataclass
class Planned:
    """One batch as sent, and the canonical values the service should store."""

    asset_id: str
    asset_type: str
    batch_id: str
    request: ingest_pb2.StreamTelemetryRequest
    timestamps: np.ndarray
    expected: dict[str, np.ndarray]


@dataclass
class Client:
    """What one gateway stream sent and got back."""

    plan: list[Planned]
    receipts: dict[str, ingest_pb2.TelemetryReceipt] = field(default_factory=dict)


def plan_fleet(start_us: int) -> tuple[list[Client], dict[str, str]]:
    rng = np.random.default_rng(11)
    type_of = {f"a{i:04d}": TYPES[i % 3][0] for i in range(ASSETS)}
    by_type = dict(TYPES)
    clients = [Client([]) for _ in range(STREAMS)]
    for k in range(BATCHES):
        for i, (asset_id, type_name) in enumerate(type_of.items()):
            first = start_us + (k * ROWS) * S
            stamps = np.arange(first, first + ROWS * S, S, dtype=np.int64)
            batch = ingest_pb2.TelemetryBatch(
                batch_id=f"{asset_id}-{k}", asset_id=asset_id, timestamps_us_le=stamps.tobytes()
            )
            expected = {}
            for name, _, low, high, unit, convert in by_type[type_name]:
                canonical = rng.uniform(low + 1, high - 1, ROWS)
                if unit == "degF":
                    sent = canonical * 9 / 5 + 32
                elif unit == "mA":
                    sent = canonical * 1_000
                else:
                    sent = canonical
                batch.channels.add(name=name, unit=unit, values_f64_le=sent.tobytes())
                expected[name] = convert(sent)
            clients[i % STREAMS].plan.append(
                Planned(
                    asset_id,
                    type_name,
                    batch.batch_id,
                    ingest_pb2.StreamTelemetryRequest(batch=batch),
                    stamps,
                    expected,
                )
            )
    return clients, type_of


async def send(channel: grpc.aio.Channel, client: Client, progress: Any = None) -> str:
    """Send every batch without a receipt, ``WINDOW`` in flight; return how it ended."""
    todo = [p for p in client.plan if p.batch_id not in client.receipts]
    if not todo:
        return "done"
    slots = asyncio.Semaphore(WINDOW)
    ended = False

    async def requests() -> Any:
        for planned in todo:
            await slots.acquire()
            if ended:
                return
            yield planned.request

    call = ingest_pb2_grpc.IngestServiceStub(channel).StreamTelemetry(requests())
    try:
        async for response in call:
            client.receipts[response.receipt.batch_id] = response.receipt
            slots.release()
            if progress is not None:
                progress()
        return "done"
    except grpc.aio.AioRpcError as error:
        # A call cut by the server's death: UNAVAILABLE, or INTERNAL when the client's
        # own send of the next request is what fails first.
        assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL), error
        return "cut"
    finally:
        ended = True
        for _ in range(WINDOW):
            slots.release()


async def test_a_fleet_streams_through_a_kill_and_every_reading_is_stored_once(
    make_ingest: Any,
    asset_type_of: Any,
    stream_reader: Any,
    snapshot_of: Any,
    tmp_path_factory: Any,
) -> None:
    with EmbeddedNats(tmp_path_factory.mktemp("nats")) as server:
        nc = await nats.connect(server.url)
        await nc.jetstream().add_stream(
            api.StreamConfig(
                name="TELEMETRY",
                subjects=["telemetry.>"],
                storage=api.StorageType.FILE,
                duplicate_window=0.5,
            )
        )
        await nc.close()
        service = make_ingest(
            server.url,
            archive_flush_interval_s="30",
            telemetry_max_lateness_s="86400",
            telemetry_window=str(WINDOW),
        )
        await service.start()
        start_us = (int(time.time()) - 3_600) * S
        clients, type_of = plan_fleet(start_us)
        total = sum(len(c.plan) for c in clients)

        async with open_channel(service.info, "ingest", role="admin") as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            for name, channels in TYPES:
                await stub.RegisterAssetType(
                    ingest_pb2.RegisterAssetTypeRequest(
                        asset_type=asset_type_of(name, [c[:4] for c in channels])
                    ),
                    timeout=10,
                )
            registered = await stub.RegisterAssets(
                ingest_pb2.RegisterAssetsRequest(
                    assets=[
                        ingest_pb2.RegisterAssetRequest(asset_id=a, plant="plant-1", asset_type=t)
                        for a, t in type_of.items()
                    ]
                ),
                timeout=60,
            )
            assert registered.registered_count == ASSETS

        # First run: SIGKILL once 40% of the batches have receipts.
        enough = asyncio.Event()

        def progress() -> None:
            if sum(len(c.receipts) for c in clients) >= total * 0.4:
                enough.set()

        async with open_channel(service.info, "ingest", role="gateway") as channel:
            runs = [asyncio.create_task(send(channel, c, progress)) for c in clients]
            await asyncio.wait_for(enough.wait(), 120)
            assert service.children(), "the archive runs in a process of its own"
            service.kill()
            outcomes = await asyncio.gather(*runs)
        acknowledged_before = sum(len(c.receipts) for c in clients)
        assert "cut" in outcomes
        assert acknowledged_before < total
        await asyncio.sleep(1.0)  # let JetStream's half-second duplicate window lapse

        # Second run: the same ids again, for everything without a receipt.
        await service.start()
        async with open_channel(service.info, "ingest", role="gateway") as channel:
            outcomes = await asyncio.gather(*(send(channel, c) for c in clients))
        assert outcomes == ["done"] * STREAMS

        receipts = {b: r for c in clients for b, r in c.receipts.items()}
        planned = {p.batch_id: p for c in clients for p in c.plan}
        assert set(receipts) == set(planned)
        for batch_id, receipt in receipts.items():
            expected_values = ROWS * len(planned[batch_id].expected)
            assert receipt.accepted_count == expected_values, batch_id
            assert receipt.quarantined_count == 0, batch_id

        # On the stream: each batch once, with the canonical values.
        messages = await stream_reader(server.url, "TELEMETRY")
        ids = Counter(headers["Nats-Msg-Id"] for _, _, headers, _ in messages)
        assert len(messages) == total, ids.most_common(3)
        assert set(ids) == {f"{p.asset_id}:{p.batch_id}" for p in planned.values()}
        stream_sum = 0.0
        for _, subject, _, data in messages:
            batch = ingest_pb2.TelemetryBatch.FromString(data)
            plan = planned[batch.batch_id]
            assert subject == f"telemetry.{plan.asset_type}.{plan.asset_id}"
            assert np.array_equal(np.frombuffer(batch.timestamps_us_le, "<i8"), plan.timestamps)
            for column in batch.channels:
                values = np.frombuffer(column.values_f64_le, "<f8")
                np.testing.assert_allclose(
                    values, plan.expected[column.name], rtol=1e-12, atol=1e-9
                )
                stream_sum += float(values.sum())
        expected_sum = sum(float(v.sum()) for p in planned.values() for v in p.expected.values())
        assert stream_sum == pytest.approx(expected_sum, rel=1e-12)

        # In the archive: each reading once, found through a snapshot per asset type.
        archive_sum = 0.0
        rows_per_asset: dict[str, int] = defaultdict(int)
        for name, channels in TYPES:
            snapshot = await snapshot_of(
                service.info,
                ingest_pb2.CreateDatasetSnapshotRequest(name=f"fleet-{name}", asset_type=name),
            )
            table = read_snapshot(snapshot)
            assert snapshot.row_count == table.num_rows
            keys = list(
                zip(
                    table["asset_id"].to_pylist(),
                    table["time"].cast("int64").to_pylist(),
                    strict=True,
                )
            )
            assert len(keys) == len(set(keys)), "a reading is archived twice"
            for asset_id, count in Counter(table["asset_id"].to_pylist()).items():
                rows_per_asset[asset_id] += count
            for channel_name, *_ in channels:
                archive_sum += float(np.nansum(table[channel_name].to_numpy()))
        assert rows_per_asset == dict.fromkeys(type_of, BATCHES * ROWS)
        assert archive_sum == pytest.approx(expected_sum, rel=1e-12)
        service.stop()

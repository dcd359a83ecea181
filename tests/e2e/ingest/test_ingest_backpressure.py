"""When JetStream stalls, a telemetry stream slows, then fails with UNAVAILABLE; nothing is lost.

The nats-server is frozen with SIGSTOP while clients stream, twice:

- a client that keeps as many batches in flight as the service's window gets UNAVAILABLE
  with a RetryInfo once the stall timeout has passed;
- a client that writes as fast as the stream takes its batches is held back: the service
  stops reading once its window is full, and HTTP/2 flow control stops the client's writes.
  (Such a client may see its own blocked write fail first, which gRPC's Python client
  reports as INTERNAL instead of the server's UNAVAILABLE; either way it resends.)

After SIGCONT everything without a receipt is resent with the same ids, and each batch is
on the stream once, with the values sent.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from typing import Any

import grpc
import numpy as np
import pytest

from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.cli.client import open_channel
from prognos.core.errors import UnavailableError, from_grpc_error
from prognos.core.natsserver import EmbeddedNats

pytestmark = [pytest.mark.slow]

S = 1_000_000
ROWS = 2_000
WINDOW = 8
BATCHES = 200
# What HTTP/2 flow control lets a client write past a service that stopped reading: the
# ingest service's 4 MiB stream window, and some slack for the connection's buffers.
TRANSPORT_WINDOW_BYTES = 6 << 20


def batches(start_us: int) -> list[ingest_pb2.TelemetryBatch]:
    rng = np.random.default_rng(5)
    made = []
    for k in range(BATCHES):
        first = start_us + k * ROWS * S
        stamps = np.arange(first, first + ROWS * S, S, dtype="<i8")
        batch = ingest_pb2.TelemetryBatch(
            batch_id=f"bp-{k}", asset_id="press-1", timestamps_us_le=stamps.tobytes()
        )
        for name in ("force", "stroke", "oil_temp"):
            batch.channels.add(name=name, values_f64_le=rng.uniform(1, 99, ROWS).tobytes())
        made.append(batch)
    return made


async def send(
    process: Any,
    todo: list[Any],
    receipts: dict[str, Any],
    *,
    window: int | None,
    on_receipt: Any = None,
) -> tuple[int, grpc.aio.AioRpcError | None]:
    """Send batches, at most ``window`` without a receipt (None: as fast as the stream takes
    them); returns how many were written and the error that ended the stream, if any."""
    written = 0
    slots = asyncio.Semaphore(window or len(todo) or 1)
    async with open_channel(process.info, "ingest", role="gateway") as channel:
        call = ingest_pb2_grpc.IngestServiceStub(channel).StreamTelemetry()

        async def read() -> None:
            try:
                async for response in call:
                    receipts[response.receipt.batch_id] = response.receipt
                    slots.release()
                    if on_receipt is not None:
                        on_receipt()
            finally:
                slots.release()  # the stream ended: wake the writer

        reader = asyncio.create_task(read())
        try:
            for batch in todo:
                await slots.acquire()
                if reader.done():
                    break
                await call.write(ingest_pb2.StreamTelemetryRequest(batch=batch))
                written += 1
            else:
                await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the call ended: its status is what the reader sees
        try:
            await reader
        except grpc.aio.AioRpcError as error:
            return written, error
    return written, None


async def frozen_while_sending(
    server: EmbeddedNats,
    service: Any,
    todo: list[Any],
    receipts: dict[str, Any],
    *,
    window: int | None,
) -> tuple[int, grpc.aio.AioRpcError | None]:
    """Send ``todo``, freezing nats-server with SIGSTOP after ten receipts; thawed after."""
    before = len(receipts)
    frozen = asyncio.Event()

    def freeze_after_ten() -> None:
        if len(receipts) - before == 10 and not frozen.is_set():
            os.kill(server.pid, signal.SIGSTOP)
            frozen.set()

    try:
        result = await asyncio.wait_for(
            send(service, todo, receipts, window=window, on_receipt=freeze_after_ten), 60
        )
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert frozen.is_set()
    return result


async def test_a_stalled_jetstream_slows_then_fails_the_stream_and_resending_stores_once(
    make_ingest: Any, asset_type_of: Any, stream_reader: Any, tmp_path_factory: Any
) -> None:
    with EmbeddedNats(tmp_path_factory.mktemp("nats")) as server:
        service = make_ingest(
            server.url,
            telemetry_stall_timeout_s="2",
            telemetry_window=str(WINDOW),
            telemetry_max_lateness_s="86400",
            archive_enabled="false",
        )
        await service.start()
        async with open_channel(service.info, "ingest", role="admin") as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            channels = [(n, "1", 0.0, 100.0) for n in ("force", "stroke", "oil_temp")]
            await stub.RegisterAssetType(
                ingest_pb2.RegisterAssetTypeRequest(asset_type=asset_type_of("press", channels)),
                timeout=10,
            )
            await stub.RegisterAsset(
                ingest_pb2.RegisterAssetRequest(asset_id="press-1", plant="p", asset_type="press"),
                timeout=10,
            )
        planned = batches((int(time.time()) - BATCHES * ROWS - 3_600) * S)
        receipts: dict[str, Any] = {}

        # A client within the window: UNAVAILABLE with a retry hint, after the stall timeout.
        started = time.monotonic()
        _, error = await frozen_while_sending(server, service, planned, receipts, window=WINDOW)
        assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE, error
        typed = from_grpc_error(error)
        assert isinstance(typed, UnavailableError)
        assert typed.retry_after_s >= 1.0
        assert typed.reason == "TELEMETRY_STORE_STALLED"
        assert time.monotonic() - started < 30

        # A client writing as fast as it can is held back by the stream.
        todo = [b for b in planned if b.batch_id not in receipts]
        acknowledged = len(receipts)
        written, error = await frozen_while_sending(server, service, todo, receipts, window=None)
        assert error is not None
        assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL), error
        batch_bytes = planned[0].ByteSize()
        assert written < len(todo)
        ahead = written - (len(receipts) - acknowledged)
        assert ahead <= WINDOW + TRANSPORT_WINDOW_BYTES // batch_bytes, ahead
        acknowledged_before = dict(receipts)

        # Thawed: the rest, with the same ids, is stored once.
        todo = [b for b in planned if b.batch_id not in receipts]
        _, error = await asyncio.wait_for(send(service, todo, receipts, window=WINDOW), 60)
        assert error is None, error
        assert set(receipts) == {b.batch_id for b in planned}
        assert all(r.accepted_count == 3 * ROWS for r in receipts.values())
        for batch_id, receipt in acknowledged_before.items():
            assert receipts[batch_id] == receipt

        messages = await stream_reader(server.url, "TELEMETRY")
        ids = Counter(headers["Nats-Msg-Id"] for _, _, headers, _ in messages)
        assert sorted(ids) == sorted(f"press-1:{b.batch_id}" for b in planned)
        assert set(ids.values()) == {1}
        for _, _, _, data in messages:
            stored = ingest_pb2.TelemetryBatch.FromString(data)
            sent = next(b for b in planned if b.batch_id == stored.batch_id)
            for column, original in zip(stored.channels, sent.channels, strict=True):
                assert column.values_f64_le == original.values_f64_le
        service.stop()

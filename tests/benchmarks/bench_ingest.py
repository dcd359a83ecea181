"""Telemetry intake throughput against JetStream's own limit, printed as JSON.

Starts a nats-server and the ingest service (real processes: gRPC, validation, JetStream,
the archive following along in its child process), then measures, in rounds that
alternate so that a busy machine weighs on both alike:

- sensor values/s acknowledged through ``StreamTelemetry``: batches of 1,000 timestamps x
  16 channels (raw little-endian float64), 4 concurrent streams of 16 batches in flight;
- raw JetStream publish throughput of the very payloads the service published (read back
  from the stream), with the same headers and the same number of messages in flight;
- their ratio in bytes/s, and the CPU milliseconds per batch that each process spent (the
  service, its archive process, nats-server, this client), which shows what bounds it;
- all of it twice: with the archive (the default deployment) and without (the archive left
  to another replica);
- CSV values/s: a CSV file of 16 channels uploaded through ``UploadTelemetryFile`` and
  acknowledged (parse, validate, publish), and the reader alone.

The top-level numbers are the medians of the rounds with the archive.

Run: ``make bench`` or ``.venv/bin/python tests/benchmarks/bench_ingest.py [--seconds S]``.
"""

from __future__ import annotations

import prognos.core.grpc_io  # noqa: F401  (first: this client runs on the services' gRPC I/O)

# isort: split
import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import nats
import numpy as np
from nats.js import api

from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.cli.client import open_channel
from prognos.cli.launcher import RunInfo, ServiceRecord
from prognos.core.natsserver import EmbeddedNats, free_port

CHANNELS = 16
ROWS = 1_000
S = 1_000_000
PYTHON = sys.executable
METHOD = "/prognos.api.ingest.v1.IngestService/StreamTelemetry"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Process ids of a process's children (the ingest service's archive process)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class CpuMeter:
    """CPU seconds that each of some processes spent between ``start`` and ``stop``."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = pids
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self._pids.items()}

    def stop(self) -> dict[str, float]:
        self.used = {name: cpu_seconds(pid) - self._start[name] for name, pid in self._pids.items()}
        return self.used


def asset_type() -> ingest_pb2.AssetType:
    message = ingest_pb2.AssetType(name="bench", display_name="Benchmark machine")
    for i in range(CHANNELS):
        channel = message.channels.add(
            name=f"ch{i}", unit="degC", min_value=-1_000.0, max_value=1_000.0
        )
        channel.expected_interval.FromSeconds(1)
    message.horizon.duration.FromSeconds(48 * 3600)
    return message


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


class Batches:
    """Pre-encoded ``StreamTelemetryRequest`` bytes: fresh ids and times, the same values."""

    def __init__(self, start_us: int) -> None:
        rng = np.random.default_rng(7)
        template = ingest_pb2.TelemetryBatch()
        for i in range(CHANNELS):
            template.channels.add(
                name=f"ch{i}", values_f64_le=rng.uniform(-100, 100, ROWS).astype("<f8").tobytes()
            )
        self._channels = template.SerializeToString()
        self._start = start_us
        self.bytes_sent = 0

    def request(self, asset_id: str, sequence: int) -> bytes:
        first = self._start + sequence * ROWS * S
        stamps = np.arange(first, first + ROWS * S, S, dtype="<i8").tobytes()
        batch = (
            _field(1, f"b{sequence}".encode())
            + _field(2, asset_id.encode())
            + _field(4, stamps)
            + self._channels
        )
        request = _field(1, batch)
        self.bytes_sent += len(request)
        return request


@contextlib.contextmanager
def ingest_process(work: Path, nats_url: str, **env: str) -> Iterator[RunInfo]:
    port = free_port()
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PROGNOS_")},
        "PROGNOS_NATS_URL": nats_url,
        "PROGNOS_DATA_DIR": str(work),
        "PROGNOS_INGEST_GRPC_PORT": str(port),
        "PROGNOS_LOG_LEVEL": "WARNING",
        # Plaintext on loopback, as the numbers before fail-closed services were measured:
        # the explicit development mode, so they stay comparable.
        "PROGNOS_INSECURE_DEVELOPMENT": "true",
        **env,
    }
    subprocess.run(
        [PYTHON, "-m", "prognos.ingest", "migrate"],
        env=environment,
        check=True,
        capture_output=True,
    )
    log = (work / "ingest.log").open("wb")
    process = subprocess.Popen(
        [PYTHON, "-m", "prognos.ingest", "serve"],
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield RunInfo(
            data_dir=str(work),
            launcher_pid=os.getpid(),
            started_at=datetime.now(UTC).isoformat(),
            nats_url=nats_url,
            nats_pid=None,
            services=(ServiceRecord("ingest", f"127.0.0.1:{port}", process.pid, str(log.name)),),
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


async def wait_ready(info: RunInfo) -> None:
    async with open_channel(info, "ingest", role="gateway") as channel:
        await asyncio.wait_for(channel.channel_ready(), 60)


async def setup(info: RunInfo, assets: list[str]) -> None:
    async with open_channel(info, "ingest", role="admin") as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        await stub.RegisterAssetType(
            ingest_pb2.RegisterAssetTypeRequest(asset_type=asset_type()), timeout=10
        )
        for asset_id in assets:
            await stub.RegisterAsset(
                ingest_pb2.RegisterAssetRequest(
                    asset_id=asset_id, plant="bench", asset_type="bench"
                ),
                timeout=10,
            )


async def stream_telemetry(
    info: RunInfo, assets: list[str], streams: int, window: int, seconds: float, batches: Batches
) -> dict[str, Any]:
    """Each stream sends batches of its own assets for ``seconds``, ``window`` in flight."""
    accepted = 0
    receipts = 0
    sequences: dict[str, int] = dict.fromkeys(assets, 0)
    deadline = time.perf_counter() + seconds

    async def one(index: int, channel: Any) -> None:
        nonlocal accepted, receipts
        mine = assets[index::streams]
        call = channel.stream_stream(
            METHOD,
            request_serializer=lambda b: b,
            response_deserializer=ingest_pb2.StreamTelemetryResponse.FromString,
        )()
        slots = asyncio.Semaphore(window)

        async def read() -> None:
            nonlocal accepted, receipts
            async for response in call:
                accepted += response.receipt.accepted_count
                receipts += 1
                slots.release()

        reader = asyncio.create_task(read())
        k = 0
        while time.perf_counter() < deadline:
            await slots.acquire()
            asset_id = mine[k % len(mine)]
            k += 1
            await call.write(batches.request(asset_id, sequences[asset_id]))
            sequences[asset_id] += 1
        await call.done_writing()
        await reader

    async with open_channel(info, "ingest", role="gateway") as channel:
        started = time.perf_counter()
        await asyncio.gather(*(one(i, channel) for i in range(streams)))
        elapsed = time.perf_counter() - started
    return {"accepted_values": accepted, "receipts": receipts, "seconds": elapsed}


async def raw_jetstream(
    nats_url: str, payloads: list[tuple[str, bytes]], window: int, count: int, meter: CpuMeter
) -> tuple[dict[str, Any], dict[str, float]]:
    """Publish the service's own payloads to a stream of their own, ``window`` in flight.

    Returns the throughput and the CPU each process spent on the publishing alone.
    """
    nc = await nats.connect(nats_url)
    js = nc.jetstream(publish_async_max_pending=window)
    await js.add_stream(
        api.StreamConfig(
            name="BENCHRAW",
            subjects=["benchraw.>"],
            storage=api.StorageType.FILE,
            duplicate_window=120,
        )
    )
    sent = 0
    futures = []
    meter.start()
    started = time.perf_counter()
    for i in range(count):
        subject, payload = payloads[i % len(payloads)]
        futures.append(
            await js.publish_async(
                "benchraw." + subject,
                payload,
                headers={"Nats-Msg-Id": f"raw:{i}", "Prognos-Watermark-Us": str(i)},
            )
        )
        sent += len(payload)
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - started
    cpu = meter.stop()
    await js.delete_stream("BENCHRAW")
    await nc.close()
    return {"messages": count, "bytes": sent, "seconds": elapsed}, cpu


async def stored_payloads(nats_url: str, count: int) -> list[tuple[str, bytes]]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    info = await js.stream_info("TELEMETRY")
    last = info.state.last_seq
    payloads = []
    for seq in range(max(1, last - count + 1), last + 1):
        msg = await js.get_msg("TELEMETRY", seq)
        payloads.append((msg.subject or "x", msg.data or b""))
    await nc.close()
    return payloads


def write_csv(path: Path, rows: int, assets: int, start_us: int) -> int:
    rng = np.random.default_rng(3)
    with path.open("w") as fh:
        fh.write("asset,time," + ",".join(f"c{i}" for i in range(CHANNELS)) + "\n")
        chunk = 10_000
        for first in range(0, rows, chunk):
            n = min(chunk, rows - first)
            values = rng.uniform(-100, 100, (n, CHANNELS))
            lines = []
            for r in range(n):
                row = first + r
                asset = f"csv-{row % assets}"
                seconds = (start_us + (row // assets) * S) / S
                lines.append(f"{asset},{seconds:.0f}," + ",".join(f"{v:.3f}" for v in values[r]))
            fh.write("\n".join(lines) + "\n")
    return rows * CHANNELS


async def upload_csv(info: RunInfo, path: Path, assets: int) -> dict[str, Any]:
    header = ingest_pb2.TelemetryFileHeader(
        file_name=path.name,
        format=ingest_pb2.TELEMETRY_FILE_FORMAT_CSV,
        asset_type="bench",
        has_header=True,
        asset_id_column="asset",
        time_column="time",
        time_kind=ingest_pb2.TIME_COLUMN_KIND_UNIX_SECONDS,
        register_in_plant="bench",
        columns=[
            ingest_pb2.ColumnMapping(column=f"c{i}", channel=f"ch{i}") for i in range(CHANNELS)
        ],
    )

    async def requests() -> AsyncIterator[ingest_pb2.UploadTelemetryFileRequest]:
        yield ingest_pb2.UploadTelemetryFileRequest(header=header)
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                yield ingest_pb2.UploadTelemetryFileRequest(chunk=chunk)

    async with open_channel(info, "ingest", role="gateway") as channel:
        started = time.perf_counter()
        response = await ingest_pb2_grpc.IngestServiceStub(channel).UploadTelemetryFile(
            requests(), timeout=600
        )
        elapsed = time.perf_counter() - started
    return {
        "accepted_values": response.accepted_count,
        "quarantined_values": response.quarantined_count,
        "rows": response.row_count,
        "assets": len(response.asset_ids),
        "seconds": elapsed,
    }


def csv_reader_only(path: Path) -> dict[str, Any]:
    from prognos.ingest.formats import ChannelColumn, ColumnMapping, TimeFormat, read_csv

    mapping = ColumnMapping(
        timestamp="time",
        channels=tuple(ChannelColumn(f"c{i}", f"ch{i}", "degC") for i in range(CHANNELS)),
        time_format=TimeFormat.UNIX_S,
        asset_column="asset",
    )
    started = time.perf_counter()
    values = sum(len(b) * len(b.columns) for b in read_csv(path, mapping))
    elapsed = time.perf_counter() - started
    return {"values": values, "seconds": elapsed}


async def settle(info: RunInfo, name: str) -> float:
    """Wait until the archive holds everything streamed so far; returns the seconds it took."""
    started = time.perf_counter()
    async with open_channel(info, "ingest", role="ml-engineer") as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        while True:
            try:
                await stub.CreateDatasetSnapshot(
                    ingest_pb2.CreateDatasetSnapshotRequest(name=name, asset_type="bench"),
                    timeout=600,
                )
                return time.perf_counter() - started
            except grpc.aio.AioRpcError as error:
                # The archive runs at a lower priority: on a busy machine it takes a while.
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                if time.perf_counter() - started > 900:
                    raise


def _per_batch_ms(cpu: dict[str, float], batches: int) -> dict[str, float]:
    return {name: round(1_000 * seconds / batches, 3) for name, seconds in cpu.items()}


def _median(rounds: list[dict[str, Any]], key: str) -> Any:
    values = sorted(r[key] for r in rounds)
    return values[len(values) // 2]


async def measure(args: argparse.Namespace, archive: bool) -> dict[str, Any]:
    """Rounds of streaming, each followed by raw JetStream on the same payloads.

    A fresh nats-server and ingest service; with ``archive`` the service also archives what
    it receives (the default: in a child process of its own, at a lower CPU priority),
    without it the archive is left to another replica.
    """
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    assets = [f"m-{i}" for i in range(args.assets)]
    in_flight = args.window * args.streams
    result: dict[str, Any] = {}
    with (
        EmbeddedNats(work / "nats") as server,
        ingest_process(
            work,
            server.url,
            PROGNOS_INGEST_TELEMETRY_WINDOW=str(args.window),
            PROGNOS_INGEST_ARCHIVE_ENABLED=str(archive).lower(),
        ) as info,
    ):
        await wait_ready(info)
        await setup(info, assets)
        start_us = (int(time.time()) - 30 * 86_400) * S
        batches = Batches(start_us)
        # Warm-up: first batch per asset (watermark lookups, connections, first flush).
        await stream_telemetry(info, assets, args.streams, args.window, 4.0, batches)
        if archive:
            await settle(info, "warm-up")
        payloads = await stored_payloads(server.url, 32)
        payload_bytes = sum(len(p) for _, p in payloads) / len(payloads)
        pids = {"ingest": info.services[0].pid, "nats_server": server.pid, "client": os.getpid()}
        for pid in children(info.services[0].pid):
            pids["ingest_archive"] = pid
        meter = CpuMeter(pids)
        rounds = []
        for index in range(args.rounds):
            meter.start()
            measured = await stream_telemetry(
                info, assets, args.streams, args.window, args.seconds, batches
            )
            stream_cpu = meter.stop()
            archive_s = await settle(info, f"round-{index}") if archive else 0.0
            raw, raw_cpu = await raw_jetstream(
                server.url, payloads, in_flight, measured["receipts"], meter
            )
            ingest_bytes = measured["receipts"] * payload_bytes / measured["seconds"]
            raw_bytes = raw["bytes"] / raw["seconds"]
            rounds.append(
                {
                    "values_per_s": round(measured["accepted_values"] / measured["seconds"]),
                    "batches_per_s": round(measured["receipts"] / measured["seconds"], 1),
                    "bytes_per_s": round(ingest_bytes),
                    "raw_jetstream_bytes_per_s": round(raw_bytes),
                    "raw_jetstream_messages_per_s": round(raw["messages"] / raw["seconds"], 1),
                    "ratio_of_raw_jetstream_bytes": round(ingest_bytes / raw_bytes, 3),
                    "archive_catch_up_s": round(archive_s, 2),
                    "cpu_ms_per_batch_streamed": _per_batch_ms(stream_cpu, measured["receipts"]),
                    "cpu_ms_per_batch_raw": _per_batch_ms(raw_cpu, raw["messages"]),
                }
            )
        result = {
            "archive_in_process": archive,
            "values_per_s": _median(rounds, "values_per_s"),
            "bytes_per_s": _median(rounds, "bytes_per_s"),
            "raw_jetstream_bytes_per_s": _median(rounds, "raw_jetstream_bytes_per_s"),
            "ratio_of_raw_jetstream_bytes": _median(rounds, "ratio_of_raw_jetstream_bytes"),
            "payload_bytes_per_batch": round(payload_bytes),
            "rounds": rounds,
        }
        if archive:
            csv_path = work / "bench.csv"
            csv_values = write_csv(csv_path, args.csv_rows, 50, start_us + 5 * 86_400 * S)
            warm_up = work / "warm-up.csv"
            write_csv(warm_up, 1_000, 50, start_us + 4 * 86_400 * S)
            csv_reader_only(warm_up)
            await upload_csv(info, warm_up, 50)
            reader = csv_reader_only(csv_path)
            uploaded = await upload_csv(info, csv_path, 50)
            result["csv"] = {
                "rows": args.csv_rows,
                "values": csv_values,
                "upload_values_per_s": round(uploaded["accepted_values"] / uploaded["seconds"]),
                "upload_seconds": round(uploaded["seconds"], 3),
                "upload_accepted_values": uploaded["accepted_values"],
                "upload_quarantined_values": uploaded["quarantined_values"],
                "reader_values_per_s": round(reader["values"] / reader["seconds"]),
            }
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    deployed = await measure(args, archive=True)
    intake_only = await measure(args, archive=False)
    csv = deployed.pop("csv")
    return {
        "benchmark": "ingest",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
        "stream_telemetry": {
            "streams": args.streams,
            "window_per_stream": args.window,
            "in_flight": args.window * args.streams,
            "batch": f"{ROWS} timestamps x {CHANNELS} channels, float64 little-endian",
            "payload_bytes_per_batch": deployed["payload_bytes_per_batch"],
            "seconds_per_round": args.seconds,
            "values_per_s": deployed["values_per_s"],
            "bytes_per_s": deployed["bytes_per_s"],
        },
        "raw_jetstream": {"bytes_per_s": deployed["raw_jetstream_bytes_per_s"]},
        "ratio_of_raw_jetstream_bytes": deployed["ratio_of_raw_jetstream_bytes"],
        "with_archive": deployed,
        "without_archive": intake_only,
        "csv": csv,
        "targets": {
            "values_per_s": 5_000_000,
            "ratio_of_raw_jetstream_bytes": 0.5,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--assets", type=int, default=32)
    parser.add_argument("--csv-rows", type=int, default=200_000)
    print(json.dumps(asyncio.run(run(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()

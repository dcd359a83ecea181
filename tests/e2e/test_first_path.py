"""The first path through the system: an RPC's event crosses JetStream into another service."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.api.registry.v1 import registry_pb2, registry_pb2_grpc
from prognos.cli.client import open_channel
from prognos.cli.launcher import RunInfo
from prognos.core.errors import ConcurrencyError, InvalidArgumentError, from_grpc_error
from prognos.core.telemetry import read_spans
from prognos.core.testing.waiting import assert_eventually

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


def pump(name: str = "pump", max_temp: float = 120.0) -> ingest_pb2.AssetType:
    asset_type = ingest_pb2.AssetType(name=name, display_name="Centrifugal pump")
    asset_type.channels.add(name="bearing_temp", unit="degC", min_value=-40, max_value=max_temp)
    asset_type.channels.add(name="vibration", unit="mm/s", min_value=0, max_value=50)
    for channel in asset_type.channels:
        channel.expected_interval.FromSeconds(10)
    asset_type.horizon.duration.FromSeconds(48 * 3600)
    return asset_type


async def _registry_types(info: RunInfo) -> dict[str, int]:
    async with open_channel(info, "registry") as channel:
        response = await registry_pb2_grpc.ModelRegistryStub(channel).ListAssetTypes(
            registry_pb2.ListAssetTypesRequest(), timeout=5
        )
    return {t.asset_type.name: t.asset_type_version for t in response.asset_types}


async def test_an_asset_type_registered_at_ingest_reaches_the_registry_once(
    fleet: RunInfo,
) -> None:
    async with open_channel(fleet, "ingest") as channel:
        ingest = ingest_pb2_grpc.IngestServiceStub(channel)
        registered = await ingest.RegisterAssetType(
            ingest_pb2.RegisterAssetTypeRequest(asset_type=pump()), timeout=5
        )
        assert registered.version == 1
        updated = await ingest.UpdateAssetType(
            ingest_pb2.UpdateAssetTypeRequest(asset_type=pump(max_temp=130), expected_version=1),
            timeout=5,
        )
        assert updated.version == 2

    async def registry_knows_version_2() -> None:
        assert (await _registry_types(fleet)).get("pump") == 2

    await assert_eventually(registry_knows_version_2, timeout=20)


async def test_two_concurrent_updates_at_the_same_version_one_is_aborted(fleet: RunInfo) -> None:
    async with open_channel(fleet, "ingest") as channel:
        ingest = ingest_pb2_grpc.IngestServiceStub(channel)
        await ingest.RegisterAssetType(
            ingest_pb2.RegisterAssetTypeRequest(asset_type=pump("press")), timeout=5
        )

        async def update(max_temp: float) -> str:
            try:
                await ingest.UpdateAssetType(
                    ingest_pb2.UpdateAssetTypeRequest(
                        asset_type=pump("press", max_temp), expected_version=1
                    ),
                    timeout=5,
                )
                return "ok"
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.ABORTED
                typed = from_grpc_error(error)
                assert isinstance(typed, ConcurrencyError)
                assert typed.reason == "CONCURRENCY_CONFLICT"
                return "aborted"

        outcomes = await asyncio.gather(update(130), update(140))
        assert sorted(outcomes) == ["aborted", "ok"]


async def test_a_bad_asset_type_gets_invalid_argument_naming_the_field(fleet: RunInfo) -> None:
    bad = pump("bad")
    bad.channels[1].max_value = -1
    async with open_channel(fleet, "ingest") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ingest_pb2_grpc.IngestServiceStub(channel).RegisterAssetType(
                ingest_pb2.RegisterAssetTypeRequest(asset_type=bad), timeout=5
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    typed = from_grpc_error(caught.value)
    assert isinstance(typed, InvalidArgumentError)
    assert typed.violations[0][0] == "asset_type.channels[1].max_value"


async def test_the_trace_of_a_call_continues_into_the_consuming_service(fleet: RunInfo) -> None:
    started_ns = time.time_ns()
    async with open_channel(fleet, "ingest") as channel:
        await ingest_pb2_grpc.IngestServiceStub(channel).RegisterAssetType(
            ingest_pb2.RegisterAssetTypeRequest(asset_type=pump("fan")), timeout=5
        )
    spans_dir = Path(fleet.data_dir) / "spans"

    def trace_reaches_registry() -> tuple[str, list[str]]:
        spans = read_spans(spans_dir)
        # Earlier tests of the module registered asset types too; spans are exported a
        # moment after the call returns.
        calls = [
            s
            for s in spans
            if s.service == "ingest"
            and s.name.endswith("RegisterAssetType")
            and s.kind == "SERVER"
            and s.start_unix_ns >= started_ns
        ]
        assert len(calls) == 1, f"{len(calls)} RegisterAssetType calls since the test began"
        (call,) = calls
        in_trace = [s for s in spans if s.trace_id == call.trace_id]
        consumer = [s for s in in_trace if s.service == "registry" and s.kind == "CONSUMER"]
        assert consumer, f"no registry span in trace {call.trace_id} yet"
        by_id = {s.span_id: s for s in in_trace}
        # Walk up from the consumer span: it must descend from the gRPC call.
        chain = [consumer[0].name]
        parent = by_id.get(consumer[0].parent_span_id)
        while parent is not None:
            chain.append(f"{parent.service}:{parent.name}")
            parent = by_id.get(parent.parent_span_id)
        assert any(link.startswith("ingest:") for link in chain), chain
        return call.trace_id, chain

    await assert_eventually(trace_reaches_registry, timeout=20)

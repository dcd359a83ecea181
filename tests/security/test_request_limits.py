"""Every request field has a declared maximum, and the real services enforce it.

The contracts declare the limits (protovalidate rules in the ``.proto`` files); one server
interceptor checks them on every call of every service, after authentication. Over mutual
TLS to the four real services: an oversized field gets INVALID_ARGUMENT naming the field and
the limit without echoing the value, while the same call with sane values is served; a file
upload with an endless line or a stalled sender gets a clear error naming its limit.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import grpc
import grpc.aio
import pytest
from google.protobuf.descriptor import ServiceDescriptor

from prognos.api.common.v1 import audit_pb2
from prognos.api.inference.v1 import inference_pb2, inference_pb2_grpc
from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.api.registry.v1 import registry_pb2, registry_pb2_grpc
from prognos.api.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from prognos.cli.client import open_channel, open_channel_with_token
from prognos.cli.launcher import RunInfo
from prognos.core.errors import (
    DETAILS_METADATA_KEY,
    InvalidArgumentError,
    ResourceExhaustedError,
    from_grpc_error,
)
from prognos.core.validation import LIMIT_REASON, unbounded_fields

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

HUGE = 2_000_000
"""Characters of an oversized field: far past every limit, well inside gRPC's 4 MiB."""
MARK = "Z"
DEADLINE_S = 30.0

SERVICES: list[ServiceDescriptor] = [
    *ingest_pb2.DESCRIPTOR.services_by_name.values(),
    *registry_pb2.DESCRIPTOR.services_by_name.values(),
    *inference_pb2.DESCRIPTOR.services_by_name.values(),
    *scheduler_pb2.DESCRIPTOR.services_by_name.values(),
    *audit_pb2.DESCRIPTOR.services_by_name.values(),
]


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
async def test_every_text_bytes_and_list_field_of_every_request_declares_a_maximum(
    service: ServiceDescriptor,
) -> None:
    # Walked from the descriptors: a field added to a contract without a limit fails here.
    assert unbounded_fields(service) == []


def _refused(error: grpc.aio.AioRpcError, field: str, limit: str) -> InvalidArgumentError:
    """Check that ``error`` names ``field`` and ``limit`` and echoes none of the value."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    typed = from_grpc_error(error)
    assert isinstance(typed, InvalidArgumentError)
    assert typed.reason == LIMIT_REASON
    violations = dict(typed.violations)
    assert field in violations, violations
    assert limit in violations[field], violations[field]
    assert f"{field}: {limit}" in (error.details() or "")
    trailer = dict(error.trailing_metadata() or ()).get(DETAILS_METADATA_KEY, b"")
    assert len(error.details() or "") < 1_000
    assert len(trailer) < 2_000
    assert MARK * 32 not in (error.details() or "")
    assert (MARK * 32).encode() not in trailer
    return typed


async def _fails(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def _pump(name: str, description: str) -> ingest_pb2.AssetType:
    asset_type = ingest_pb2.AssetType(name=name, display_name="Pump", description=description)
    channel = asset_type.channels.add(name="bearing_temp", unit="degC", min_value=-40)
    channel.max_value = 120
    channel.expected_interval.FromSeconds(10)
    asset_type.horizon.duration.FromSeconds(48 * 3600)
    return asset_type


async def test_ingest_refuses_an_oversized_description_and_serves_a_sane_one(
    fleet: RunInfo,
) -> None:
    name = f"pump-{uuid.uuid4().hex[:8]}"
    async with open_channel(fleet, "ingest") as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        request = ingest_pb2.RegisterAssetTypeRequest(asset_type=_pump(name, MARK * HUGE))
        error = await _fails(stub.RegisterAssetType(request, timeout=DEADLINE_S))
        _refused(error, "asset_type.description", f"at most 4096 characters (got {HUGE})")

        request = ingest_pb2.RegisterAssetTypeRequest(asset_type=_pump(name, "a pump"))
        registered = await stub.RegisterAssetType(request, timeout=DEADLINE_S)
        assert registered.version == 1


async def test_registry_refuses_an_oversized_asset_type_and_serves_a_sane_one(
    fleet: RunInfo,
) -> None:
    async with open_channel(fleet, "registry") as channel:
        stub = registry_pb2_grpc.ModelRegistryStub(channel)
        request = registry_pb2.ListModelVersionsRequest(asset_type=MARK * HUGE)
        error = await _fails(stub.ListModelVersions(request, timeout=DEADLINE_S))
        _refused(error, "asset_type", f"at most 200 characters (got {HUGE})")

        listed = await stub.ListModelVersions(
            registry_pb2.ListModelVersionsRequest(asset_type="pump"), timeout=DEADLINE_S
        )
        assert list(listed.model_versions) == []


async def test_inference_refuses_an_oversized_asset_id_and_serves_a_sane_call(
    fleet: RunInfo,
) -> None:
    async with open_channel(fleet, "inference") as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        request = inference_pb2.PredictBatchRequest(asset_ids=["p1/pump-1", MARK * HUGE])
        error = await _fails(stub.PredictBatch(request, timeout=DEADLINE_S))
        _refused(error, "asset_ids[1]", f"at most 200 characters (got {HUGE})")

        state = await stub.GetServingState(
            inference_pb2.GetServingStateRequest(), timeout=DEADLINE_S
        )
        assert state.replica_id


def _erp_asset(description: str) -> scheduler_pb2.ErpAsset:
    asset = scheduler_pb2.ErpAsset(
        asset_id=f"p1/pump-{uuid.uuid4().hex[:8]}",
        erp_id="EQ-1",
        plant="p1",
        asset_type="pump",
        required_skill="mechanical",
        description=description,
    )
    asset.service_duration.FromTimedelta(timedelta(hours=1))
    return asset


async def test_scheduler_refuses_an_oversized_description_and_serves_a_sane_one(
    fleet: RunInfo,
) -> None:
    async with open_channel(fleet, "scheduler") as channel:
        stub = scheduler_pb2_grpc.MaintenanceSchedulerStub(channel)
        request = scheduler_pb2.UpsertAssetsRequest(
            idempotency_key=str(uuid.uuid4()), assets=[_erp_asset(MARK * HUGE)]
        )
        error = await _fails(stub.UpsertAssets(request, timeout=DEADLINE_S))
        _refused(error, "assets[0].description", f"at most 4096 characters (got {HUGE})")

        request = scheduler_pb2.UpsertAssetsRequest(
            idempotency_key=str(uuid.uuid4()), assets=[_erp_asset("by the north gate")]
        )
        upserted = await stub.UpsertAssets(request, timeout=DEADLINE_S)
        assert upserted.upserted_count == 1


async def test_a_caller_without_a_token_is_unauthenticated_before_its_request_is_checked(
    fleet: RunInfo,
) -> None:
    async with open_channel_with_token(fleet, "scheduler", None) as channel:
        stub = scheduler_pb2_grpc.MaintenanceSchedulerStub(channel)
        request = scheduler_pb2.UpsertAssetsRequest(
            idempotency_key=str(uuid.uuid4()), assets=[_erp_asset(MARK * HUGE)]
        )
        error = await _fails(stub.UpsertAssets(request, timeout=DEADLINE_S))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
        assert "4096" not in (error.details() or "")


# --- uploads -------------------------------------------------------------------------------


def _header(asset_type: str, file_name: str = "plant.csv") -> ingest_pb2.TelemetryFileHeader:
    return ingest_pb2.TelemetryFileHeader(
        file_name=file_name,
        format=ingest_pb2.TELEMETRY_FILE_FORMAT_CSV,
        asset_type=asset_type,
        has_header=True,
        asset_id="p1/pump-1",
        time_column="time",
        time_kind=ingest_pb2.TIME_COLUMN_KIND_UNIX_SECONDS,
        columns=[ingest_pb2.ColumnMapping(column="temp", channel="bearing_temp")],
    )


async def _registered_pump(stub: ingest_pb2_grpc.IngestServiceStub) -> str:
    name = f"pump-{uuid.uuid4().hex[:8]}"
    request = ingest_pb2.RegisterAssetTypeRequest(asset_type=_pump(name, ""))
    await stub.RegisterAssetType(request, timeout=DEADLINE_S)
    return name


Messages = Callable[[], AsyncIterator[ingest_pb2.UploadTelemetryFileRequest]]


async def test_an_upload_header_over_its_limits_is_refused_as_the_stream_arrives(
    fleet: RunInfo,
) -> None:
    async with open_channel(fleet, "ingest") as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        name = await _registered_pump(stub)

        async def messages() -> AsyncIterator[ingest_pb2.UploadTelemetryFileRequest]:
            yield ingest_pb2.UploadTelemetryFileRequest(header=_header(name, MARK * 10_000))
            yield ingest_pb2.UploadTelemetryFileRequest(chunk=b"time,temp\n1,20\n")

        error = await _fails(stub.UploadTelemetryFile(messages(), timeout=DEADLINE_S))
        _refused(error, "messages[0].header.file_name", "at most 255 characters (got 10000)")


async def test_an_endless_line_is_refused_naming_the_line_limit(fleet: RunInfo) -> None:
    async with open_channel(fleet, "ingest") as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        name = await _registered_pump(stub)

        never = asyncio.Event()

        async def messages() -> AsyncIterator[ingest_pb2.UploadTelemetryFileRequest]:
            yield ingest_pb2.UploadTelemetryFileRequest(header=_header(name))
            yield ingest_pb2.UploadTelemetryFileRequest(chunk=b"time,temp\n1,")
            yield ingest_pb2.UploadTelemetryFileRequest(chunk=b"9" * (1 << 20))
            # The line goes on: the server must refuse it without waiting for its end. (A
            # sender still writing when the call ends sees a failed write, not the status.)
            await never.wait()

        error = await _fails(stub.UploadTelemetryFile(messages(), timeout=DEADLINE_S))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
        typed = from_grpc_error(error)
        assert isinstance(typed, InvalidArgumentError)
        assert dict(typed.violations) == {
            "file": "line 2 is longer than 65536 bytes (upload_max_line_bytes)"
        }

        async def sane() -> AsyncIterator[ingest_pb2.UploadTelemetryFileRequest]:
            yield ingest_pb2.UploadTelemetryFileRequest(header=_header(name))
            yield ingest_pb2.UploadTelemetryFileRequest(chunk=b"time,temp\n1700000000,20\n")

        response = await stub.UploadTelemetryFile(sane(), timeout=DEADLINE_S)
        assert response.row_count == 1


async def test_a_stalled_upload_is_ended_naming_the_idle_limit(fleet: RunInfo) -> None:
    async with open_channel(fleet, "ingest") as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        name = await _registered_pump(stub)
        never = asyncio.Event()

        async def stalled() -> AsyncIterator[ingest_pb2.UploadTelemetryFileRequest]:
            yield ingest_pb2.UploadTelemetryFileRequest(header=_header(name))
            yield ingest_pb2.UploadTelemetryFileRequest(chunk=b"time,temp\n")
            await never.wait()  # the sender hangs; the server must not wait for it forever

        loop = asyncio.get_running_loop()
        started = loop.time()
        error = await _fails(stub.UploadTelemetryFile(stalled(), timeout=DEADLINE_S))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        typed = from_grpc_error(error)
        assert isinstance(typed, ResourceExhaustedError)
        assert typed.reason == "UPLOAD_IDLE"
        assert "upload_idle_timeout_s" in typed.message
        # The fleet runs with a 6 s idle limit: the server ended it, not the client deadline.
        assert loop.time() - started < DEADLINE_S / 2

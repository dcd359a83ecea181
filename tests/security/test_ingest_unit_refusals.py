"""A unit that pint would evaluate as arithmetic reaches a real ingest process and is refused.

``9**9**9`` as an asset type's channel unit or an uploaded file's column unit gets
INVALID_ARGUMENT naming the field, well within a short deadline, and the very next
legitimate call is served: the event loop never froze.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from google.protobuf.duration_pb2 import Duration

from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.core.errors import InvalidArgumentError, from_grpc_error

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

BOMB = "9**9**9"
#: Before the grammar, pint computed 9**9**9 for hours; a refusal takes milliseconds. The
#: margins are wide for a busy test machine.
DEADLINE_S = 15.0
PROMPT_S = 5.0


def _asset_type(name: str, temp_unit: str) -> ingest_pb2.AssetType:
    return ingest_pb2.AssetType(
        name=name,
        display_name=name,
        channels=[
            ingest_pb2.SensorChannel(
                name="pressure", unit="kPa", max_value=1000, expected_interval=Duration(seconds=1)
            ),
            ingest_pb2.SensorChannel(
                name="temp", unit=temp_unit, max_value=200, expected_interval=Duration(seconds=1)
            ),
        ],
        horizon=ingest_pb2.FailureHorizon(duration=Duration(seconds=48 * 3600)),
    )


def _refused_field(error: grpc.aio.AioRpcError) -> list[str]:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    typed = from_grpc_error(error)
    assert isinstance(typed, InvalidArgumentError)
    for _field, description in typed.violations:
        assert BOMB in description, description
    return [field for field, _ in typed.violations]


@pytest_asyncio.fixture(loop_scope="module")
async def stub(ingest_address: str) -> AsyncIterator[ingest_pb2_grpc.IngestServiceStub]:
    async with grpc.aio.insecure_channel(ingest_address) as channel:
        yield ingest_pb2_grpc.IngestServiceStub(channel)


async def test_an_arithmetic_channel_unit_is_refused_at_once_and_the_next_call_served(
    stub: ingest_pb2_grpc.IngestServiceStub,
) -> None:
    name = f"pump-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterAssetType(
            ingest_pb2.RegisterAssetTypeRequest(asset_type=_asset_type(name, BOMB)),
            timeout=DEADLINE_S,
        )
    assert _refused_field(caught.value) == ["asset_type.channels[1].unit"]
    assert time.monotonic() - started < PROMPT_S

    registered = await stub.RegisterAssetType(
        ingest_pb2.RegisterAssetTypeRequest(asset_type=_asset_type(name, "degC")),
        timeout=DEADLINE_S,
    )
    assert registered.version == 1


async def test_an_arithmetic_column_unit_is_refused_at_once_and_the_next_upload_served(
    stub: ingest_pb2_grpc.IngestServiceStub,
) -> None:
    name = f"pump-{uuid.uuid4().hex[:8]}"
    await stub.RegisterAssetType(
        ingest_pb2.RegisterAssetTypeRequest(asset_type=_asset_type(name, "degC")),
        timeout=DEADLINE_S,
    )

    async def upload(temp_unit: str) -> ingest_pb2.UploadTelemetryFileResponse:
        header = ingest_pb2.TelemetryFileHeader(
            file_name="readings.csv",
            format=ingest_pb2.TELEMETRY_FILE_FORMAT_CSV,
            asset_type=name,
            has_header=True,
            asset_id=f"{name}-1",
            register_in_plant="plant-1",
            time_column="time",
            time_kind=ingest_pb2.TIME_COLUMN_KIND_UNIX_SECONDS,
            columns=[
                ingest_pb2.ColumnMapping(column="kpa", channel="pressure", unit="kPa"),
                ingest_pb2.ColumnMapping(column="degf", channel="temp", unit=temp_unit),
            ],
        )
        now = int(time.time()) - 60

        async def requests() -> AsyncIterator[ingest_pb2.UploadTelemetryFileRequest]:
            yield ingest_pb2.UploadTelemetryFileRequest(header=header)
            yield ingest_pb2.UploadTelemetryFileRequest(
                chunk=f"time,kpa,degf\n{now},500,104\n{now + 1},501,105\n".encode()
            )

        response: ingest_pb2.UploadTelemetryFileResponse = await stub.UploadTelemetryFile(
            requests(), timeout=DEADLINE_S
        )
        return response

    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await upload(BOMB)
    assert _refused_field(caught.value) == ["header.columns[1].unit"]
    assert time.monotonic() - started < PROMPT_S

    imported = await upload("degF")
    assert imported.row_count == 2

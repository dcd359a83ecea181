"""The ingest service's composition root."""

from __future__ import annotations

from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.core.errors import InvalidArgumentError
from prognos.core.service import Runtime
from prognos.ingest.domain import AssetTypeInvalidError
from prognos.ingest.grpc_api import IngestServicer

STREAM = "INGEST"

TRANSLATORS = {
    AssetTypeInvalidError: lambda e: InvalidArgumentError(
        [(e.field, e.description)], reason="ASSET_TYPE_INVALID"
    ),
}


async def build(runtime: Runtime) -> None:
    runtime.server.add_service(
        ingest_pb2_grpc.add_IngestServiceServicer_to_server,
        IngestServicer(runtime.store),
        ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,
    )

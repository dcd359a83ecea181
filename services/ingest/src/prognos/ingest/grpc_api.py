"""The IngestService servicer: protobuf in, commands to handlers, protobuf out."""

from __future__ import annotations

import grpc

from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.core.store import EventStore
from prognos.ingest import adapters, handlers
from prognos.ingest.translate import spec_from_proto, spec_to_proto


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """Asset types now; telemetry streaming, files and snapshots are added on top."""

    def __init__(self, store: EventStore) -> None:
        self._store = store

    async def RegisterAssetType(
        self, request: ingest_pb2.RegisterAssetTypeRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.RegisterAssetTypeResponse:
        spec = spec_from_proto(request.asset_type)
        async with self._store.transaction() as uow:
            version = await handlers.register_asset_type(uow, handlers.RegisterAssetType(spec))
        return ingest_pb2.RegisterAssetTypeResponse(asset_type=spec_to_proto(spec), version=version)

    async def UpdateAssetType(
        self, request: ingest_pb2.UpdateAssetTypeRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.UpdateAssetTypeResponse:
        spec = spec_from_proto(request.asset_type)
        async with self._store.transaction() as uow:
            version = await handlers.update_asset_type(
                uow, handlers.UpdateAssetType(spec, request.expected_version)
            )
        return ingest_pb2.UpdateAssetTypeResponse(asset_type=spec_to_proto(spec), version=version)

    async def GetAssetType(
        self, request: ingest_pb2.GetAssetTypeRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.GetAssetTypeResponse:
        async with self._store.transaction() as uow:
            asset_type = await handlers.get_asset_type(uow, request.name)
        return ingest_pb2.GetAssetTypeResponse(
            asset_type=spec_to_proto(asset_type.spec), version=asset_type.version
        )

    async def ListAssetTypes(
        self, request: ingest_pb2.ListAssetTypesRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.ListAssetTypesResponse:
        async with self._store.reader() as conn:
            rows = await adapters.list_asset_types(conn)
        return ingest_pb2.ListAssetTypesResponse(
            asset_types=[spec_to_proto(spec) for spec, _ in rows]
        )

"""The ModelRegistry servicer."""

from __future__ import annotations

import grpc

from prognos.api.ingest.v1 import ingest_pb2
from prognos.api.registry.v1 import registry_pb2, registry_pb2_grpc
from prognos.core.store import EventStore
from prognos.registry import adapters


class RegistryServicer(registry_pb2_grpc.ModelRegistryServicer):
    """Asset types learned from ingest now; model versions and training are added on top."""

    def __init__(self, store: EventStore) -> None:
        self._store = store

    async def ListAssetTypes(
        self, request: registry_pb2.ListAssetTypesRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListAssetTypesResponse:
        async with self._store.reader() as conn:
            rows = await adapters.list_asset_types(conn)
        return registry_pb2.ListAssetTypesResponse(
            asset_types=[
                registry_pb2.RegisteredAssetType(
                    asset_type=ingest_pb2.AssetType.FromString(definition),
                    asset_type_version=version,
                )
                for _, version, definition in rows
            ]
        )

"""The registry service's composition root."""

from __future__ import annotations

from prognos.api.registry.v1 import registry_pb2, registry_pb2_grpc
from prognos.core.service import Runtime
from prognos.registry.consumers import subscriptions
from prognos.registry.grpc_api import RegistryServicer

STREAM = "REGISTRY"


async def build(runtime: Runtime) -> None:
    runtime.server.add_service(
        registry_pb2_grpc.add_ModelRegistryServicer_to_server,
        RegistryServicer(runtime.store),
        registry_pb2.DESCRIPTOR.services_by_name["ModelRegistry"].full_name,
    )
    for sub in subscriptions():
        runtime.subscribe(sub)

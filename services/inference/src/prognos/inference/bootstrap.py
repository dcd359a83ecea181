"""The inference service's composition root."""

from __future__ import annotations

from prognos.api.inference.v1 import inference_pb2, inference_pb2_grpc
from prognos.core.service import Runtime
from prognos.core.store import new_metadata

STREAM = "INFERENCE"

#: The service's own read models (none yet beyond the core tables).
metadata = new_metadata()


async def build(runtime: Runtime) -> None:
    # Every RPC answers UNIMPLEMENTED until its handler is written; health, reflection,
    # InfoService, the outbox relay and the audit chain are live.
    runtime.server.add_service(
        inference_pb2_grpc.add_InferenceServiceServicer_to_server,
        inference_pb2_grpc.InferenceServiceServicer(),
        inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
    )

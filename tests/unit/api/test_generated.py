"""The generated API code imports, serves the agreed RPCs and carries events in envelopes."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import any_pb2, timestamp_pb2

from prognos.api.common.v1 import envelope_pb2
from prognos.api.ingest.v1 import events_pb2 as ingest_events_pb2
from prognos.api.ingest.v1 import ingest_pb2

PROTOS = Path(__file__).resolve().parents[3] / "protos"
PROTO_FILES = sorted(PROTOS.joinpath("prognos").rglob("*.proto"))

# Generated module base name -> service name -> RPC names, in declaration order.
EXPECTED_SERVICES: dict[str, dict[str, list[str]]] = {
    "prognos.api.common.v1.info": {"InfoService": ["GetInfo"]},
    "prognos.api.ingest.v1.ingest": {
        "IngestService": [
            "RegisterAssetType",
            "UpdateAssetType",
            "GetAssetType",
            "ListAssetTypes",
            "RegisterAsset",
            "GetAsset",
            "StreamTelemetry",
            "UploadTelemetryFile",
            "ListQuarantine",
            "CreateDatasetSnapshot",
            "GetDatasetSnapshot",
        ]
    },
    "prognos.api.registry.v1.registry": {
        "ModelRegistry": [
            "ListAssetTypes",
            "RegisterModelVersion",
            "GetModelVersion",
            "ListModelVersions",
            "ApproveModelVersion",
            "PromoteModelVersion",
            "RollbackAlias",
            "GetAliasHistory",
            "StartTraining",
            "GetTrainingRun",
            "WatchTrainingRun",
            "CancelTraining",
        ]
    },
    "prognos.api.inference.v1.inference": {
        "InferenceService": ["Predict", "PredictBatch", "StreamPredictions"]
    },
    "prognos.api.scheduler.v1.scheduler": {
        "MaintenanceScheduler": [
            "UpsertAssets",
            "UpsertCalendar",
            "UpsertCrews",
            "ListWorkOrders",
            "GetWorkOrder",
            "WatchWorkOrders",
            "AcknowledgeWorkOrder",
            "StartWorkOrder",
            "CompleteWorkOrder",
            "CancelWorkOrder",
            "SetWorkOrderPolicy",
            "GetWorkOrderPolicy",
            "ListPolicyDecisions",
            "UpsertWebhookEndpoint",
        ]
    },
}

# Full method name -> (client streaming, server streaming); every other RPC is unary.
STREAMING = {
    "prognos.api.ingest.v1.IngestService.StreamTelemetry": (True, True),
    "prognos.api.ingest.v1.IngestService.UploadTelemetryFile": (True, False),
    "prognos.api.registry.v1.ModelRegistry.WatchTrainingRun": (False, True),
    "prognos.api.inference.v1.InferenceService.StreamPredictions": (False, True),
    "prognos.api.scheduler.v1.MaintenanceScheduler.WatchWorkOrders": (False, True),
}


def _module_base(proto: Path) -> str:
    return ".".join(proto.relative_to(PROTOS).with_suffix("").parts)


def _import(name: str) -> ModuleType:
    return importlib.import_module(name)


def test_the_protos_directory_holds_every_contract() -> None:
    stems = {_module_base(p) for p in PROTO_FILES}
    assert set(EXPECTED_SERVICES) <= stems
    assert "prognos.api.common.v1.envelope" in stems


@pytest.mark.parametrize("proto", PROTO_FILES, ids=lambda p: _module_base(p))
@pytest.mark.parametrize("suffix", ["_pb2", "_pb2_grpc"])
def test_every_proto_file_has_an_importable_generated_module(proto: Path, suffix: str) -> None:
    module = _import(_module_base(proto) + suffix)
    assert module.__name__.startswith("prognos.api.")


@pytest.mark.parametrize("base", sorted(EXPECTED_SERVICES))
def test_services_keep_the_agreed_rpcs(base: str) -> None:
    """v1 grows by adding RPCs: the first agreed ones stay, in order, with their shapes."""
    pb2 = _import(base + "_pb2")
    pb2_grpc = _import(base + "_pb2_grpc")
    assert set(pb2.DESCRIPTOR.services_by_name) == set(EXPECTED_SERVICES[base])
    for service_name, rpcs in EXPECTED_SERVICES[base].items():
        service = pb2.DESCRIPTOR.services_by_name[service_name]
        names = [m.name for m in service.methods]
        assert [n for n in names if n in rpcs] == rpcs
        for method in service.methods:
            assert method.input_type.name == f"{method.name}Request"
            assert method.output_type.name == f"{method.name}Response"
            shape = (method.client_streaming, method.server_streaming)
            if method.name in rpcs:
                assert shape == STREAMING.get(method.full_name, (False, False)), method.full_name
        # The gRPC plugin's stub, servicer and registration function exist for the service.
        assert hasattr(pb2_grpc, f"{service_name}Stub")
        assert hasattr(pb2_grpc, f"{service_name}Servicer")
        assert hasattr(pb2_grpc, f"add_{service_name}Servicer_to_server")


def test_envelope_round_trips_an_event_payload() -> None:
    event = ingest_events_pb2.AssetTypeRegistered(
        asset_type=ingest_pb2.AssetType(
            name="turbofan",
            display_name="Turbofan engine",
            channels=[ingest_pb2.SensorChannel(name="t24", unit="degree_Rankine", max_value=700)],
            horizon=ingest_pb2.FailureHorizon(cycles=30),
        )
    )
    payload = any_pb2.Any()
    payload.Pack(event)
    envelope = envelope_pb2.Envelope(
        id="0b9e4c1a-7d1f-4e55-9a57-3f0c2b7d8e11",
        type=event.DESCRIPTOR.full_name,
        schema_version=1,
        stream="asset-type/turbofan",
        version=1,
        time=timestamp_pb2.Timestamp(seconds=1_772_000_000),
        actor="user:alice",
        correlation_id="corr-1",
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        payload=payload,
    )

    decoded = envelope_pb2.Envelope.FromString(envelope.SerializeToString())

    assert decoded == envelope
    assert decoded.type == "prognos.api.ingest.v1.AssetTypeRegistered"
    assert decoded.payload.type_url.rsplit("/", 1)[-1] == decoded.type
    assert decoded.payload.Is(ingest_events_pb2.AssetTypeRegistered.DESCRIPTOR)
    assert not decoded.payload.Is(ingest_events_pb2.AssetTypeUpdated.DESCRIPTOR)
    unpacked = ingest_events_pb2.AssetTypeRegistered()
    assert decoded.payload.Unpack(unpacked)
    assert unpacked == event
    assert unpacked.asset_type.horizon.WhichOneof("horizon") == "cycles"


def test_committed_generated_code_matches_the_protos() -> None:
    result = subprocess.run(
        [sys.executable, str(PROTOS / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr

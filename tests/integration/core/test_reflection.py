"""Server reflection v1 and v1alpha over a real mutual-TLS server with access control on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from prognos.cli.certs import DevSecrets, ensure_dev_secrets
from prognos.core.config import Settings
from prognos.core.server import (
    INFO_SERVICE,
    REFLECTION_SERVICE,
    REFLECTION_V1_SERVICE,
    GrpcServer,
)
from prognos.core.service import access_interceptors
from prognos.core.tls import channel_credentials, server_credentials

BUF = Path(__file__).resolve().parents[3] / ".venv" / "bin" / "buf"

# The client's own copy of grpc/reflection/v1/reflection.proto (the messages this test
# uses, with upstream's field numbers), kept apart from the server's descriptor pool so the
# test speaks v1 as an outside client does.
_V1_CLIENT_FILE = """
name: "test/grpc/reflection/v1/reflection.proto"
package: "grpc.reflection.v1"
syntax: "proto3"
message_type {
  name: "ServerReflectionRequest"
  field { name: "host" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
  field {
    name: "file_containing_symbol" number: 4 label: LABEL_OPTIONAL type: TYPE_STRING
    oneof_index: 0
  }
  field { name: "list_services" number: 7 label: LABEL_OPTIONAL type: TYPE_STRING oneof_index: 0 }
  oneof_decl { name: "message_request" }
}
message_type {
  name: "ServerReflectionResponse"
  field { name: "valid_host" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
  field {
    name: "original_request" number: 2 label: LABEL_OPTIONAL type: TYPE_MESSAGE
    type_name: ".grpc.reflection.v1.ServerReflectionRequest"
  }
  field {
    name: "file_descriptor_response" number: 4 label: LABEL_OPTIONAL type: TYPE_MESSAGE
    type_name: ".grpc.reflection.v1.FileDescriptorResponse" oneof_index: 0
  }
  field {
    name: "list_services_response" number: 6 label: LABEL_OPTIONAL type: TYPE_MESSAGE
    type_name: ".grpc.reflection.v1.ListServiceResponse" oneof_index: 0
  }
  field {
    name: "error_response" number: 7 label: LABEL_OPTIONAL type: TYPE_MESSAGE
    type_name: ".grpc.reflection.v1.ErrorResponse" oneof_index: 0
  }
  oneof_decl { name: "message_response" }
}
message_type {
  name: "FileDescriptorResponse"
  field { name: "file_descriptor_proto" number: 1 label: LABEL_REPEATED type: TYPE_BYTES }
}
message_type {
  name: "ListServiceResponse"
  field {
    name: "service" number: 1 label: LABEL_REPEATED type: TYPE_MESSAGE
    type_name: ".grpc.reflection.v1.ServiceResponse"
  }
}
message_type {
  name: "ServiceResponse"
  field { name: "name" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
}
message_type {
  name: "ErrorResponse"
  field { name: "error_code" number: 1 label: LABEL_OPTIONAL type: TYPE_INT32 }
  field { name: "error_message" number: 2 label: LABEL_OPTIONAL type: TYPE_STRING }
}
"""


def _v1_messages() -> tuple[Any, Any]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(text_format.Parse(_V1_CLIENT_FILE, descriptor_pb2.FileDescriptorProto()))
    request = pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")
    response = pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")
    return message_factory.GetMessageClass(request), message_factory.GetMessageClass(response)


V1Request, V1Response = _v1_messages()


@dataclass
class Served:
    server: GrpcServer
    secrets: DevSecrets


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    """A GrpcServer configured as a service is: mutual TLS and token checks."""
    secrets = ensure_dev_secrets(tmp_path / "secrets", ["probe"])
    settings = Settings.load(
        "probe",
        data_dir=tmp_path,
        grpc_port=0,
        shutdown_grace_s=1.0,
        tls_ca_file=secrets.ca_cert,
        tls_cert_file=secrets.service_cert("probe"),
        tls_key_file=secrets.service_key("probe"),
        auth_public_key_file=secrets.token_public_key,
    )
    interceptors = access_interceptors(settings, None)
    assert interceptors, "access control must be on, as in a service"
    async with GrpcServer(
        settings,
        version="1.2.3",
        extra_interceptors=interceptors,
        credentials=server_credentials(settings),
    ) as server:
        await server.start()
        yield Served(server, secrets)


@pytest.fixture
async def channel(served: Served) -> AsyncIterator[grpc.aio.Channel]:
    """A mutual-TLS channel with the client certificate and no token."""
    s = served.secrets
    credentials = channel_credentials(s.ca_cert, s.client_cert, s.client_key)
    async with grpc.aio.secure_channel(served.server.address, credentials) as channel:
        yield channel


async def _ask_v1(channel: grpc.aio.Channel, **request: str) -> Any:
    info = channel.stream_stream(
        f"/{REFLECTION_V1_SERVICE}/ServerReflectionInfo",
        request_serializer=V1Request.SerializeToString,
        response_deserializer=V1Response.FromString,
    )
    responses = [r async for r in info(iter([V1Request(**request)]), timeout=5)]
    assert len(responses) == 1
    assert responses[0].WhichOneof("message_response") != "error_response", responses[0]
    return responses[0]


async def test_v1_lists_every_service_to_a_caller_without_a_token(
    served: Served, channel: grpc.aio.Channel
) -> None:
    response = await _ask_v1(channel, list_services="")
    listed = [s.name for s in response.list_services_response.service]
    assert sorted(listed) == served.server.service_names
    assert {INFO_SERVICE, REFLECTION_SERVICE, REFLECTION_V1_SERVICE} <= set(listed)


@pytest.mark.parametrize(
    ("symbol", "package"),
    [(INFO_SERVICE, "prognos.api.common.v1"), (REFLECTION_V1_SERVICE, "grpc.reflection.v1")],
)
async def test_v1_describes_a_service_by_symbol(
    channel: grpc.aio.Channel, symbol: str, package: str
) -> None:
    response = await _ask_v1(channel, file_containing_symbol=symbol)
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    package_of_symbol, _, service = symbol.rpartition(".")
    (described,) = [f for f in files if service in [s.name for s in f.service]]
    assert described.package == package_of_symbol == package


async def test_v1_reflection_describes_itself_in_the_v1_package(channel: grpc.aio.Channel) -> None:
    response = await _ask_v1(channel, file_containing_symbol=REFLECTION_V1_SERVICE)
    (raw,) = response.file_descriptor_response.file_descriptor_proto
    described = descriptor_pb2.FileDescriptorProto.FromString(raw)
    assert described.name == "grpc/reflection/v1/reflection.proto"
    (method,) = described.service[0].method
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert method.output_type == ".grpc.reflection.v1.ServerReflectionResponse"
    assert not described.options.deprecated


async def test_v1alpha_still_answers(served: Served, channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = [r async for r in stub.ServerReflectionInfo(iter([request]), timeout=5)]
    listed = sorted(s.name for s in responses[0].list_services_response.service)
    assert listed == served.server.service_names


@pytest.mark.skipif(not BUF.is_file(), reason=f"the repository's pinned buf is not at {BUF}")
@pytest.mark.parametrize("reflect", [[], ["--reflect-protocol", "grpc-v1"]], ids=["default", "v1"])
async def test_buf_curl_lists_the_services(served: Served, reflect: list[str]) -> None:
    s = served.secrets
    process = await asyncio.create_subprocess_exec(
        str(BUF),
        "curl",
        "--protocol",
        "grpc",
        "--cacert",
        str(s.ca_cert),
        "--cert",
        str(s.client_cert),
        "--key",
        str(s.client_key),
        *reflect,
        "--list-services",
        f"https://{served.server.address}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, err.decode()
    assert sorted(out.decode().split()) == served.server.service_names
    assert REFLECTION_V1_SERVICE in out.decode().split()

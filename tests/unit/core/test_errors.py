"""The error table: typed errors to gRPC statuses with details, and back."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from prognos.core.errors import (
    DETAILS_METADATA_KEY,
    AlreadyExistsError,
    ConcurrencyError,
    ErrorDetails,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    PrognosError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    from_grpc_error,
    to_rpc_status,
    typed_rpc_errors,
)

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


class _FailedCall(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """What a synchronous stub raises: an RpcError that is also a Call."""

    def __init__(self, status: grpc.Status) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str:
        return self._status.details

    def trailing_metadata(self) -> Any:
        return self._status.trailing_metadata

    def initial_metadata(self) -> Any:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


class _PlainStatus(grpc.Status):  # type: ignore[misc]
    """A status as a server sends it without rich details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = ()


def _rich_status(status: grpc.Status) -> status_pb2.Status:
    (key, value), *_ = status.trailing_metadata
    assert key == DETAILS_METADATA_KEY
    return status_pb2.Status.FromString(value)


def _round_trip(exc: BaseException, domain: str = "ingest") -> PrognosError:
    return from_grpc_error(_FailedCall(to_rpc_status(exc, domain, TRACE_ID)))


def test_invalid_argument_carries_field_violations() -> None:
    exc = InvalidArgumentError([("asset_type.name", "must not be empty"), ("unit", "unknown")])
    status = to_rpc_status(exc, "ingest", TRACE_ID)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    details = ErrorDetails.unpack(_rich_status(status).details)
    assert details.bad_request is not None
    assert [(v.field, v.description) for v in details.bad_request.field_violations] == [
        ("asset_type.name", "must not be empty"),
        ("unit", "unknown"),
    ]
    back = _round_trip(exc)
    assert isinstance(back, InvalidArgumentError)
    assert back.violations == exc.violations
    assert (
        back.message
        == exc.message
        == "invalid argument: asset_type.name: must not be empty; unit: unknown"
    )


@pytest.mark.parametrize("cls", [NotFoundError, AlreadyExistsError])
def test_resource_errors_carry_resource_info(cls: type[NotFoundError]) -> None:
    exc = cls("model_version", "mv-7", owner="registry", reason="MODEL_VERSION_MISSING")
    details = ErrorDetails.unpack(_rich_status(to_rpc_status(exc, "registry")).details)
    assert details.resource_info is not None
    assert details.resource_info.resource_type == "model_version"
    assert details.resource_info.resource_name == "mv-7"
    back = _round_trip(exc, "registry")
    assert type(back) is cls
    assert (back.resource_type, back.name, back.owner) == ("model_version", "mv-7", "registry")
    assert back.reason == "MODEL_VERSION_MISSING"
    assert back.domain == "registry"


def test_failed_precondition_round_trips_its_violations() -> None:
    exc = FailedPreconditionError(
        [("APPROVAL", "model_version/7", "needs an approver")], reason="MODEL_NOT_APPROVED"
    )
    back = _round_trip(exc)
    assert isinstance(back, FailedPreconditionError)
    assert back.code == grpc.StatusCode.FAILED_PRECONDITION
    assert back.violations == [("APPROVAL", "model_version/7", "needs an approver")]
    assert back.reason == "MODEL_NOT_APPROVED"


def test_concurrency_conflict_is_aborted_with_versions_in_error_info() -> None:
    exc = ConcurrencyError("asset_type-pump", 3, 5, metadata={"hint": "reload"})
    status = to_rpc_status(exc, "ingest", TRACE_ID)
    assert status.code == grpc.StatusCode.ABORTED
    info = ErrorDetails.unpack(_rich_status(status).details).error_info
    assert info is not None and info.reason == "CONCURRENCY_CONFLICT"
    assert dict(info.metadata) == {
        "stream_id": "asset_type-pump",
        "expected_version": "3",
        "actual_version": "5",
        "hint": "reload",
        "trace_id": TRACE_ID,
    }
    back = _round_trip(exc)
    assert isinstance(back, ConcurrencyError)
    assert (back.stream_id, back.expected_version, back.actual_version) == ("asset_type-pump", 3, 5)
    assert back.metadata == {"hint": "reload"}
    assert back.trace_id == TRACE_ID


def test_concurrency_conflict_with_unknown_actual_version() -> None:
    back = _round_trip(ConcurrencyError("s", 0))
    assert isinstance(back, ConcurrencyError)
    assert back.actual_version is None and back.expected_version == 0


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (
            UnauthenticatedError("token expired", reason="TOKEN_EXPIRED"),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        (PermissionDeniedError(metadata={"role": "auditor"}), grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_auth_errors_carry_error_info_only(exc: PrognosError, code: grpc.StatusCode) -> None:
    rich = _rich_status(to_rpc_status(exc, "scheduler"))
    assert rich.code == code.value[0]
    assert len(rich.details) == 1 and rich.details[0].Is(error_details_pb2.ErrorInfo.DESCRIPTOR)
    back = _round_trip(exc, "scheduler")
    assert type(back) is type(exc)
    assert (back.reason, back.metadata, back.message) == (exc.reason, exc.metadata, exc.message)


def test_resource_exhausted_carries_quota_failure_and_retry_info() -> None:
    exc = ResourceExhaustedError(
        "GPU capacity used up", retry_after_s=2.5, violations=[("gpu:pool-a", "8 of 8 in use")]
    )
    details = ErrorDetails.unpack(_rich_status(to_rpc_status(exc, "inference")).details)
    assert details.quota_failure is not None and details.retry_info is not None
    back = _round_trip(exc, "inference")
    assert isinstance(back, ResourceExhaustedError)
    assert back.retry_after_s == pytest.approx(2.5)
    assert back.violations == [("gpu:pool-a", "8 of 8 in use")]


def test_unavailable_carries_retry_info() -> None:
    back = _round_trip(UnavailableError("NATS is down", retry_after_s=0.25))
    assert isinstance(back, UnavailableError)
    assert back.retry_after_s == pytest.approx(0.25)
    assert back.message == "NATS is down"


def test_unmapped_exception_becomes_internal_naming_only_the_trace_id() -> None:
    status = to_rpc_status(KeyError("password=hunter2"), "ingest", TRACE_ID)
    assert status.code == grpc.StatusCode.INTERNAL
    assert status.details == f"internal error (trace_id={TRACE_ID})"
    assert b"hunter2" not in status.trailing_metadata[0][1]
    back = from_grpc_error(_FailedCall(status))
    assert isinstance(back, InternalError)
    assert back.trace_id == TRACE_ID
    assert back.domain == "ingest" and back.reason == "INTERNAL"


def test_an_error_names_its_own_domain_over_the_default() -> None:
    back = _round_trip(NotFoundError("asset", "a1", domain="registry"), "ingest")
    assert back.domain == "registry"


def test_reason_must_be_upper_snake() -> None:
    with pytest.raises(ValueError, match="UPPER_SNAKE"):
        NotFoundError("asset", "a1", reason="not-found")


def test_status_without_details_still_gives_the_class_of_its_code() -> None:
    back = from_grpc_error(_FailedCall(_PlainStatus(grpc.StatusCode.NOT_FOUND, "gone")))
    assert isinstance(back, NotFoundError)
    assert back.message == "gone" and back.domain == "" and back.trace_id == ""


def test_code_without_a_class_comes_back_as_plain_prognos_error() -> None:
    plain = _PlainStatus(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    back = from_grpc_error(_FailedCall(plain))
    assert type(back) is PrognosError
    assert back.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert back.reason == "DEADLINE_EXCEEDED"


def test_unknown_detail_types_are_kept_packed() -> None:
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.Help(links=[error_details_pb2.Help.Link(url="https://x")]))
    details = ErrorDetails.unpack([packed])
    assert details.error_info is None and details.other == (packed,)


def test_typed_rpc_errors_reraises_the_typed_error_chained() -> None:
    call = _FailedCall(to_rpc_status(NotFoundError("asset", "a1"), "ingest"))
    with pytest.raises(NotFoundError) as caught, typed_rpc_errors():
        raise call
    assert caught.value.__cause__ is call

"""Typed errors and the one table that turns them into gRPC statuses and back.

Handlers raise the exceptions below (or plain domain exceptions that a service translates
into them); ``ErrorInterceptor`` turns each into a status code, a message and
``google.rpc`` details carried in the ``grpc-status-details-bin`` trailer; clients turn the
``grpc.RpcError`` back into the same typed exception with ``from_grpc_error``.

=========================  ===================  ==========================================
exception                  code                 details (besides ``ErrorInfo``)
=========================  ===================  ==========================================
InvalidArgumentError       INVALID_ARGUMENT     BadRequest (field violations)
NotFoundError              NOT_FOUND            ResourceInfo
AlreadyExistsError         ALREADY_EXISTS       ResourceInfo
FailedPreconditionError    FAILED_PRECONDITION  PreconditionFailure
ConcurrencyError           ABORTED              (reason CONCURRENCY_CONFLICT)
UnauthenticatedError       UNAUTHENTICATED      -
PermissionDeniedError      PERMISSION_DENIED    -
ResourceExhaustedError     RESOURCE_EXHAUSTED   QuotaFailure, RetryInfo
UnavailableError           UNAVAILABLE          RetryInfo
InternalError              INTERNAL             - (the trace id only)
=========================  ===================  ==========================================

Every status carries an ``ErrorInfo`` whose ``reason`` (UPPER_SNAKE) is what clients branch
on, whose ``domain`` names the service, and whose metadata holds the trace id under
``trace_id``. Any other exception becomes ``INTERNAL``: its traceback goes to the log and to
the server span, never to the caller.

Error texts speak the contract: a field violation names the request field as the ``.proto``
spells it and states the limit ("at most 200 characters", "must be in (0, 1]"; NaN and
infinities are ``NOT_FINITE``, "must be a finite number"). A bad value is shown only through
``quote`` (``shorten`` where it stands unquoted), at most ``QUOTE_LIMIT`` characters of it;
``NotFoundError`` and ``AlreadyExistsError`` shorten the names they are given themselves.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeAlias

import grpc
import grpc.aio
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import trace
from opentelemetry.trace import StatusCode as SpanStatusCode

from prognos.core.handlers import responses, rewrap
from prognos.core.quoting import NOT_FINITE, QUOTE_LIMIT, quote, shorten

__all__ = [
    "DETAILS_METADATA_KEY",
    "NOT_FINITE",
    "QUOTE_LIMIT",
    "TRACE_ID_KEY",
    "AlreadyExistsError",
    "ConcurrencyError",
    "ErrorDetails",
    "ErrorInterceptor",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "PrognosError",
    "ResourceExhaustedError",
    "Translator",
    "UnauthenticatedError",
    "UnavailableError",
    "from_grpc_error",
    "quote",
    "shorten",
    "to_rpc_status",
    "typed_rpc_errors",
]

_log = logging.getLogger(__name__)

DETAILS_METADATA_KEY = "grpc-status-details-bin"
"""Trailing metadata key of the serialized ``google.rpc.Status``."""

TRACE_ID_KEY = "trace_id"
"""``ErrorInfo`` metadata key of the trace id of the failed call."""

_REASON = re.compile(r"^[A-Z][A-Z0-9_]{0,61}[A-Z0-9]$")


@dataclass(frozen=True)
class ErrorDetails:
    """The ``google.rpc`` detail messages unpacked from a status, by type.

    Attributes:
        error_info: The ``ErrorInfo``, if the status carried one.
        bad_request: The ``BadRequest``, if any.
        resource_info: The ``ResourceInfo``, if any.
        precondition_failure: The ``PreconditionFailure``, if any.
        quota_failure: The ``QuotaFailure``, if any.
        retry_info: The ``RetryInfo``, if any.
        other: Detail messages of other types, still packed.
    """

    error_info: error_details_pb2.ErrorInfo | None = None
    bad_request: error_details_pb2.BadRequest | None = None
    resource_info: error_details_pb2.ResourceInfo | None = None
    precondition_failure: error_details_pb2.PreconditionFailure | None = None
    quota_failure: error_details_pb2.QuotaFailure | None = None
    retry_info: error_details_pb2.RetryInfo | None = None
    other: tuple[any_pb2.Any, ...] = field(default=())

    @classmethod
    def unpack(cls, details: Sequence[any_pb2.Any]) -> ErrorDetails:
        """Sort packed detail messages by type; unknown types stay packed in ``other``."""
        found: dict[str, Message] = {}
        other: list[any_pb2.Any] = []
        for packed in details:
            for name, message_type in _DETAIL_TYPES.items():
                if packed.TypeName() == message_type.DESCRIPTOR.full_name:
                    message = message_type()
                    packed.Unpack(message)
                    found.setdefault(name, message)
                    break
            else:
                other.append(packed)
        return cls(**found, other=tuple(other))  # type: ignore[arg-type]


_DETAIL_TYPES: dict[str, type[Message]] = {
    "error_info": error_details_pb2.ErrorInfo,
    "bad_request": error_details_pb2.BadRequest,
    "resource_info": error_details_pb2.ResourceInfo,
    "precondition_failure": error_details_pb2.PreconditionFailure,
    "quota_failure": error_details_pb2.QuotaFailure,
    "retry_info": error_details_pb2.RetryInfo,
}


class PrognosError(Exception):
    """Base of the errors that cross a gRPC boundary with a status code and details.

    A client receives a subclass chosen by status code (see the module table); a code
    without a subclass comes back as a plain ``PrognosError`` whose ``code`` is that code.

    Attributes:
        code: The gRPC status code this error maps to.
        message: The human-readable message (the status details string).
        reason: UPPER_SNAKE reason, stable for clients to branch on.
        domain: The service that raised it ("ingest"); the interceptor fills it if empty.
        metadata: String key-value facts about the error, sent in ``ErrorInfo``.
        trace_id: Hex trace id of the failed call, set on errors rebuilt by a client.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason: ClassVar[str] = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Create the error.

        Args:
            message: Human-readable message for the caller.
            reason: UPPER_SNAKE reason; the class default when omitted.
            domain: Name of the service raising it; filled by the interceptor when empty.
            metadata: String facts about the error.

        Raises:
            ValueError: ``reason`` is not UPPER_SNAKE (2 to 63 characters).
        """
        super().__init__(message)
        reason = reason or self.default_reason
        if not _REASON.match(reason):
            raise ValueError(f"error reason must be UPPER_SNAKE, got {reason!r}")
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.trace_id = ""

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"

    def details(self) -> list[Message]:
        """The ``google.rpc`` detail messages of this error, besides ``ErrorInfo``."""
        return []

    def _error_info_metadata(self) -> dict[str, str]:
        """Metadata sent in ``ErrorInfo``; subclasses add their own fields."""
        return dict(self.metadata)

    @classmethod
    def _from_status(cls, message: str, metadata: dict[str, str], details: ErrorDetails) -> Self:
        """Rebuild the error on the client side; ``reason``/``domain`` are set afterwards."""
        return cls(message, metadata=metadata)


class InvalidArgumentError(PrognosError):
    """The request is malformed: ``INVALID_ARGUMENT`` with a ``BadRequest``.

    Attributes:
        violations: ``(field, description)`` pairs; ``field`` is a path such as
            ``"asset_type.channels[2].unit"``.
    """

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        violations: Sequence[tuple[str, str]],
        message: str | None = None,
        *,
        reason: str | None = None,
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Create the error.

        Args:
            violations: ``(field, description)`` pairs naming each bad field.
            message: Message for the caller; built from the violations when omitted.
            reason: UPPER_SNAKE reason (default ``INVALID_ARGUMENT``).
            domain: Name of the raising service.
            metadata: String facts about the error.
        """
        self.violations = [(f, d) for f, d in violations]
        if message is None:
            message = "invalid argument: " + "; ".join(f"{f}: {d}" for f, d in self.violations)
        super().__init__(message, reason=reason, domain=domain, metadata=metadata)

    def details(self) -> list[Message]:
        """A ``BadRequest`` with one field violation per pair."""
        return [
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in self.violations
                ]
            )
        ]

    @classmethod
    def _from_status(cls, message: str, metadata: dict[str, str], details: ErrorDetails) -> Self:
        violations = (
            [(v.field, v.description) for v in details.bad_request.field_violations]
            if details.bad_request
            else []
        )
        return cls(violations, message, metadata=metadata)


class _ResourceError(PrognosError):
    """An error about one named resource, carried as ``ResourceInfo``."""

    _verb: ClassVar[str] = ""

    def __init__(
        self,
        resource_type: str,
        name: str,
        message: str | None = None,
        *,
        owner: str = "",
        reason: str | None = None,
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Create the error.

        Args:
            resource_type: Kind of resource, for example ``"asset_type"`` or ``"model_version"``.
            name: The resource's id or name.
            message: Message for the caller; built from type and name when omitted.
            owner: Owner of the resource, if that helps the caller.
            reason: UPPER_SNAKE reason (the class default when omitted).
            domain: Name of the raising service.
            metadata: String facts about the error.
        """
        self.resource_type = resource_type
        # The caller chose the name: keep only a short prefix of a long one (see quoting).
        self.name = shorten(name)
        self.owner = owner
        if message is None:
            message = f"{resource_type} {quote(name)} {self._verb}"
        super().__init__(message, reason=reason, domain=domain, metadata=metadata)

    def details(self) -> list[Message]:
        """A ``ResourceInfo`` naming the resource."""
        return [
            error_details_pb2.ResourceInfo(
                resource_type=self.resource_type,
                resource_name=self.name,
                owner=self.owner,
                description=self.message,
            )
        ]

    @classmethod
    def _from_status(cls, message: str, metadata: dict[str, str], details: ErrorDetails) -> Self:
        info = details.resource_info or error_details_pb2.ResourceInfo()
        error = cls(
            info.resource_type, info.resource_name, message, owner=info.owner, metadata=metadata
        )
        error.name = info.resource_name  # as the server sent it, already shortened there
        return error


class NotFoundError(_ResourceError):
    """A named resource does not exist: ``NOT_FOUND`` with a ``ResourceInfo``.

    Attributes:
        resource_type: Kind of resource.
        name: The missing resource's id or name.
        owner: Owner of the resource, or "".
    """

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "RESOURCE_NOT_FOUND"
    _verb = "not found"


class AlreadyExistsError(_ResourceError):
    """A create names a resource that exists: ``ALREADY_EXISTS`` with a ``ResourceInfo``.

    Attributes:
        resource_type: Kind of resource.
        name: The existing resource's id or name.
        owner: Owner of the resource, or "".
    """

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "RESOURCE_ALREADY_EXISTS"
    _verb = "already exists"


class FailedPreconditionError(PrognosError):
    """The system is not in the state the call needs: ``FAILED_PRECONDITION``.

    Attributes:
        violations: ``(type, subject, description)`` triples, for example
            ``("APPROVAL", "model_version/7", "needs an approver's approval")``.
    """

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"

    def __init__(
        self,
        violations: Sequence[tuple[str, str, str]],
        message: str | None = None,
        *,
        reason: str | None = None,
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Create the error.

        Args:
            violations: ``(type, subject, description)`` triples.
            message: Message for the caller; built from the violations when omitted.
            reason: UPPER_SNAKE reason (default ``FAILED_PRECONDITION``).
            domain: Name of the raising service.
            metadata: String facts about the error.
        """
        self.violations = [(t, s, d) for t, s, d in violations]
        if message is None:
            message = "failed precondition: " + "; ".join(
                f"{s}: {d}" for _, s, d in self.violations
            )
        super().__init__(message, reason=reason, domain=domain, metadata=metadata)

    def details(self) -> list[Message]:
        """A ``PreconditionFailure`` with one violation per triple."""
        return [
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=t, subject=s, description=d
                    )
                    for t, s, d in self.violations
                ]
            )
        ]

    @classmethod
    def _from_status(cls, message: str, metadata: dict[str, str], details: ErrorDetails) -> Self:
        failure = details.precondition_failure
        violations = (
            [(v.type, v.subject, v.description) for v in failure.violations] if failure else []
        )
        return cls(violations, message, metadata=metadata)


class ConcurrencyError(PrognosError):
    """An append found the stream at another version: ``ABORTED``; the caller retries.

    The versions travel as ``ErrorInfo`` metadata (``stream_id``, ``expected_version``,
    ``actual_version``).

    Attributes:
        stream_id: The event stream whose version clashed.
        expected_version: The version the writer expected.
        actual_version: The version found, or ``None`` when unknown.
    """

    code = grpc.StatusCode.ABORTED
    default_reason = "CONCURRENCY_CONFLICT"

    def __init__(
        self,
        stream_id: str,
        expected_version: int,
        actual_version: int | None = None,
        message: str | None = None,
        *,
        reason: str | None = None,
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Create the error.

        Args:
            stream_id: The event stream whose version clashed.
            expected_version: The version the writer expected.
            actual_version: The version found, or ``None`` when unknown.
            message: Message for the caller; built from the versions when omitted.
            reason: UPPER_SNAKE reason (default ``CONCURRENCY_CONFLICT``).
            domain: Name of the raising service.
            metadata: Further string facts about the error.
        """
        self.stream_id = stream_id
        self.expected_version = expected_version
        self.actual_version = actual_version
        if message is None:
            found = "another version" if actual_version is None else f"version {actual_version}"
            message = (
                f"stream {stream_id!r} expected at version {expected_version} but found {found}"
            )
        super().__init__(message, reason=reason, domain=domain, metadata=metadata)

    def _error_info_metadata(self) -> dict[str, str]:
        metadata = dict(self.metadata)
        metadata["stream_id"] = self.stream_id
        metadata["expected_version"] = str(self.expected_version)
        if self.actual_version is not None:
            metadata["actual_version"] = str(self.actual_version)
        return metadata

    @classmethod
    def _from_status(cls, message: str, metadata: dict[str, str], details: ErrorDetails) -> Self:
        stream_id = metadata.pop("stream_id", "")
        expected = int(metadata.pop("expected_version", "-1"))
        actual_text = metadata.pop("actual_version", None)
        actual = int(actual_text) if actual_text is not None else None
        return cls(stream_id, expected, actual, message, metadata=metadata)


class UnauthenticatedError(PrognosError):
    """No credentials, or credentials that do not verify: ``UNAUTHENTICATED``."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"

    def __init__(
        self,
        message: str = "authentication required",
        *,
        reason: str | None = None,
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Create the error; see ``PrognosError``."""
        super().__init__(message, reason=reason, domain=domain, metadata=metadata)


class PermissionDeniedError(PrognosError):
    """The caller is known but not allowed to do this: ``PERMISSION_DENIED``."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"

    def __init__(
        self,
        message: str = "permission denied",
        *,
        reason: str | None = None,
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Create the error; see ``PrognosError``."""
        super().__init__(message, reason=reason, domain=domain, metadata=metadata)


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def _retry_after(details: ErrorDetails) -> float | None:
    if details.retry_info is None or not details.retry_info.HasField("retry_delay"):
        return None
    return float(details.retry_info.retry_delay.ToNanoseconds() / 1e9)


class ResourceExhaustedError(PrognosError):
    """A quota or capacity is used up: ``RESOURCE_EXHAUSTED`` with ``QuotaFailure``.

    Attributes:
        retry_after_s: When the caller may retry (sent as ``RetryInfo``), or ``None``.
        violations: ``(subject, description)`` pairs naming each exhausted quota.
    """

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str = "resource exhausted",
        *,
        retry_after_s: float | None = None,
        violations: Sequence[tuple[str, str]] = (),
        reason: str | None = None,
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Create the error.

        Args:
            message: Message for the caller.
            retry_after_s: Seconds after which a retry may succeed, or ``None``.
            violations: ``(subject, description)`` pairs, for example
                ``("plant:p1", "telemetry rate above 10000 readings/s")``.
            reason: UPPER_SNAKE reason (default ``RESOURCE_EXHAUSTED``).
            domain: Name of the raising service.
            metadata: String facts about the error.
        """
        self.retry_after_s = retry_after_s
        self.violations = [(s, d) for s, d in violations]
        super().__init__(message, reason=reason, domain=domain, metadata=metadata)

    def details(self) -> list[Message]:
        """A ``QuotaFailure``, and a ``RetryInfo`` when ``retry_after_s`` is set."""
        result: list[Message] = [
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(subject=s, description=d)
                    for s, d in self.violations
                ]
            )
        ]
        if self.retry_after_s is not None:
            result.append(error_details_pb2.RetryInfo(retry_delay=_duration(self.retry_after_s)))
        return result

    @classmethod
    def _from_status(cls, message: str, metadata: dict[str, str], details: ErrorDetails) -> Self:
        failure = details.quota_failure
        violations = [(v.subject, v.description) for v in failure.violations] if failure else []
        return cls(
            message,
            retry_after_s=_retry_after(details),
            violations=violations,
            metadata=metadata,
        )


class UnavailableError(PrognosError):
    """A dependency is down; retrying later may work: ``UNAVAILABLE`` with ``RetryInfo``.

    Attributes:
        retry_after_s: Seconds after which a retry may succeed.
    """

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"

    def __init__(
        self,
        message: str = "service unavailable",
        *,
        retry_after_s: float = 1.0,
        reason: str | None = None,
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Create the error.

        Args:
            message: Message for the caller.
            retry_after_s: Seconds after which a retry may succeed (sent as ``RetryInfo``).
            reason: UPPER_SNAKE reason (default ``UNAVAILABLE``).
            domain: Name of the raising service.
            metadata: String facts about the error.
        """
        self.retry_after_s = retry_after_s
        super().__init__(message, reason=reason, domain=domain, metadata=metadata)

    def details(self) -> list[Message]:
        """A ``RetryInfo``."""
        return [error_details_pb2.RetryInfo(retry_delay=_duration(self.retry_after_s))]

    @classmethod
    def _from_status(cls, message: str, metadata: dict[str, str], details: ErrorDetails) -> Self:
        retry = _retry_after(details)
        return cls(message, retry_after_s=1.0 if retry is None else retry, metadata=metadata)


class InternalError(PrognosError):
    """Something unexpected failed: ``INTERNAL``; the message names only the trace id."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"

    def __init__(
        self,
        message: str = "internal error",
        *,
        reason: str | None = None,
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Create the error; see ``PrognosError``."""
        super().__init__(message, reason=reason, domain=domain, metadata=metadata)


# The client side of the table: which class a status code comes back as.
_CLASS_BY_CODE: dict[grpc.StatusCode, type[PrognosError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        FailedPreconditionError,
        ConcurrencyError,
        UnauthenticatedError,
        PermissionDeniedError,
        ResourceExhaustedError,
        UnavailableError,
        InternalError,
    )
}


def _internal_message(trace_id: str) -> str:
    return f"internal error (trace_id={trace_id})" if trace_id else "internal error"


def to_rpc_status(exc: BaseException, domain: str, trace_id: str = "") -> grpc.Status:
    """Turn an exception into the status a server aborts with.

    A ``PrognosError`` keeps its code, message, reason and details. Anything else becomes
    ``INTERNAL`` whose message and metadata hold only the trace id: nothing of the
    exception reaches the caller.

    Args:
        exc: The exception a handler raised.
        domain: The service name, used when the error names none.
        trace_id: Hex trace id of the call, or "" when not traced.

    Returns:
        A ``grpc.Status`` whose trailing metadata carries the serialized ``google.rpc.Status``
        under ``grpc-status-details-bin``; pass it to ``context.abort(...)``.
    """
    if not isinstance(exc, PrognosError):
        exc = InternalError(_internal_message(trace_id))
    metadata = exc._error_info_metadata()
    if trace_id:
        metadata[TRACE_ID_KEY] = trace_id
    info = error_details_pb2.ErrorInfo(
        reason=exc.reason, domain=exc.domain or domain, metadata=metadata
    )
    packed: list[any_pb2.Any] = []
    for message in [info, *exc.details()]:
        item = any_pb2.Any()
        item.Pack(message)
        packed.append(item)
    status = status_pb2.Status(code=exc.code.value[0], message=exc.message, details=packed)
    result: grpc.Status = rpc_status.to_status(status)
    return result


def _status_from_metadata(metadata: Any) -> status_pb2.Status | None:
    for key, value in metadata or ():
        if key == DETAILS_METADATA_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None


def from_grpc_error(error: grpc.RpcError) -> PrognosError:
    """Turn a failed call's error back into the typed exception, details unpacked.

    Works for ``grpc.aio.AioRpcError`` and for the errors of synchronous stubs (any
    ``grpc.RpcError`` that is also a ``grpc.Call``). A status without rich details still
    gives the class of its code, with reason and domain empty or defaulted.

    Args:
        error: The error raised by a stub call.

    Returns:
        The ``PrognosError`` subclass of the status code (see the module table), or a plain
        ``PrognosError`` whose ``code`` is the status code when no subclass maps it.
    """
    code_of = getattr(error, "code", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details_of = getattr(error, "details", None)
    message = (details_of() if callable(details_of) else None) or ""
    trailing_of = getattr(error, "trailing_metadata", None)
    status = _status_from_metadata(trailing_of() if callable(trailing_of) else None)
    details = ErrorDetails.unpack(status.details) if status is not None else ErrorDetails()
    info = details.error_info
    metadata = dict(info.metadata) if info is not None else {}
    trace_id = metadata.pop(TRACE_ID_KEY, "")

    cls = _CLASS_BY_CODE.get(code)
    result: PrognosError
    if cls is None:
        result = PrognosError(message)
        result.code = code
        result.reason = code.name
        result.metadata = metadata
    else:
        result = cls._from_status(message, metadata, details)
    if info is not None and info.reason:
        result.reason = info.reason
    result.domain = info.domain if info is not None else ""
    result.trace_id = trace_id
    return result


@contextlib.contextmanager
def typed_rpc_errors() -> Iterator[None]:
    """Re-raise any ``grpc.RpcError`` inside the block as its typed ``PrognosError``.

    Example::

        with typed_rpc_errors():
            await stub.GetInfo(request, timeout=5)

    Raises:
        PrognosError: The typed form of the call's error, chained to it.
    """
    try:
        yield
    except grpc.RpcError as error:
        raise from_grpc_error(error) from error


Translator: TypeAlias = Callable[[Any], PrognosError]
"""Turns a service's plain domain exception into the ``PrognosError`` it means."""


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """A grpc.aio server interceptor that applies the error table to every handler.

    All four handler kinds are covered, including response streams written by async
    generators or by ``context.write``. The status is set with ``context.set_code``,
    ``set_details`` and ``set_trailing_metadata`` (the same status on the wire as
    ``context.abort``). A handler's own ``context.abort`` passes through untouched.
    Place it inside the tracing interceptor so that the trace id and the span of the call
    are current when it runs.
    """

    def __init__(
        self, domain: str, translators: Mapping[type[Exception], Translator] | None = None
    ) -> None:
        """Create the interceptor.

        Args:
            domain: Service name put in ``ErrorInfo.domain`` when the error names none.
            translators: Plain domain exception types (matched along the exception's MRO)
                and how to turn each into a ``PrognosError``, so that domain code stays free
                of gRPC: ``{AssetTypeInvalidError: lambda e: InvalidArgumentError(...)}``.
        """
        self._domain = domain
        self._translators = dict(translators or {})

    def translate(self, exc: Exception) -> PrognosError | None:
        """The ``PrognosError`` that ``exc`` maps to, or ``None`` when it is unmapped."""
        if isinstance(exc, PrognosError):
            return exc
        for cls in type(exc).__mro__:
            translator = self._translators.get(cls)
            if translator is not None:
                return translator(exc)
        return None

    def _fail(self, exc: Exception, method: str, context: grpc.aio.ServicerContext) -> None:
        span = trace.get_current_span()
        span_context = span.get_span_context()
        trace_id = format(span_context.trace_id, "032x") if span_context.is_valid else ""
        try:
            mapped = self.translate(exc)
        except Exception:
            _log.exception("error translator failed for %s", type(exc).__name__)
            mapped = None
        if mapped is not None:
            span.set_attribute("rpc.error.reason", mapped.reason)
        else:
            _log.error("unhandled error in %s (trace_id=%s)", method, trace_id or "-", exc_info=exc)
            span.record_exception(exc)
        status = to_rpc_status(mapped or exc, self._domain, trace_id)
        # Equivalent on the wire to context.abort(...), but raises no AbortError, which the
        # tracing interceptor would record on the span as a second, misleading exception.
        context.set_trailing_metadata(status.trailing_metadata)
        context.set_code(status.code)
        context.set_details(status.details)
        if mapped is None:
            # After set_details, which the tracing context also turns into a span status.
            span.set_status(SpanStatusCode.ERROR, f"{type(exc).__name__}: {exc}")

    def _wrap_unary_response(
        self, behavior: Callable[..., Any], method: str
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                self._fail(exc, method, context)
                return None

        return handle

    def _wrap_stream_response(
        self, behavior: Callable[..., Any], method: str
    ) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async with contextlib.aclosing(responses(behavior(request, context))) as stream:
                    async for response in stream:
                        yield response
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                self._fail(exc, method, context)

        return handle

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap the handler found by ``continuation`` so that its errors become statuses."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        return rewrap(
            handler,
            unary=lambda behavior: self._wrap_unary_response(behavior, method),
            stream=lambda behavior: self._wrap_stream_response(behavior, method),
        )

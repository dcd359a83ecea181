"""Access control: signed role tokens, and the server interceptor that checks every RPC.

A caller presents ``authorization: Bearer <token>``, a JWT signed with Ed25519 (``EdDSA``)
that names a subject, its roles, an issuer and an expiry. Each RPC declares who may call it
with the ``prognos.api.common.v1.access`` method option in the contracts; "admin" may call
everything, and an RPC without the option (or one this process does not know) is admin-only.
Health checking and server reflection are open to every caller that passed TLS.

``AccessInterceptor`` verifies the token, checks the roles, makes the principal the acting
one for the call (``prognos.core.context``) and, on failure, writes an ``access.denied``
audit entry in the service's chain before the call fails with UNAUTHENTICATED or
PERMISSION_DENIED::

    interceptor = AccessInterceptor(load_public_key(path), store, service="ingest")
    server = GrpcServer(settings, version=v, extra_interceptors=[interceptor])
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf import descriptor_pool

from prognos.api.common.v1 import access_pb2
from prognos.core.context import set_actor
from prognos.core.errors import PermissionDeniedError, UnauthenticatedError

if TYPE_CHECKING:
    from prognos.core.store import EventStore

__all__ = [
    "ADMIN_ROLE",
    "ALGORITHM",
    "DEFAULT_ISSUER",
    "OPEN_SERVICES",
    "ROLES",
    "AccessInterceptor",
    "MethodAccess",
    "Principal",
    "current_principal",
    "generate_signing_key",
    "issue_token",
    "key_id",
    "load_private_key",
    "load_public_key",
    "method_access",
    "verify_token",
    "write_key_pair",
    "write_secret",
]

_log = logging.getLogger(__name__)

ALGORITHM = "EdDSA"
"""The JWT algorithm: Ed25519 signatures."""
DEFAULT_ISSUER = "prognos"
"""The issuer named in, and required of, every token unless configured otherwise."""
ADMIN_ROLE = "admin"
"""The role that may call every RPC."""
ROLES: tuple[str, ...] = ("gateway", "erp", "ml-engineer", "approver", "auditor", ADMIN_ROLE)
"""Every role the contracts speak of (see ``access.proto``)."""
OPEN_SERVICES: frozenset[str] = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
)
"""Services any caller may use without a token: probes and tooling."""

_LEEWAY = timedelta(seconds=30)  # clock skew between the issuer and this process
_VERIFIED_TOKENS = 1024
_principal: ContextVar[Principal | None] = ContextVar("prognos_principal", default=None)


# --- keys -------------------------------------------------------------------------------


def generate_signing_key() -> Ed25519PrivateKey:
    """A new Ed25519 private key (for tokens or audit checkpoints)."""
    return Ed25519PrivateKey.generate()


def write_key_pair(key: Ed25519PrivateKey, private_path: Path, public_path: Path) -> None:
    """Write ``key`` as PKCS#8 PEM (mode 0600) and its public half as SubjectPublicKeyInfo PEM.

    Args:
        key: The private key.
        private_path: Where the private key goes; its directory is created.
        public_path: Where the public key goes.
    """
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_secret(private_path, private_pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def write_secret(path: Path, data: bytes) -> None:
    """Write a secret atomically, readable by its owner only from the first byte."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    partial.replace(path)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key from a PEM file.

    Raises:
        ValueError: The file holds no Ed25519 private key.
    """
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} holds no Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read an Ed25519 public key from a PEM file.

    Raises:
        ValueError: The file holds no Ed25519 public key.
    """
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} holds no Ed25519 public key")
    return key


def key_id(key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw public key: names a key in tokens."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# --- tokens -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """Who is calling: the verified content of a token.

    Attributes:
        subject: The token's subject, e.g. ``user:alice``, ``gateway:plant-7`` or ``alice``.
        roles: The roles granted.
        issuer: Who signed the token.
        expires_at: When the token stops being valid (UTC).
        token_id: The token's unique id (``jti``).
    """

    subject: str
    roles: tuple[str, ...]
    issuer: str = DEFAULT_ISSUER
    expires_at: datetime | None = None
    token_id: str = ""

    @property
    def actor(self) -> str:
        """The principal as audit entries record it: the subject, ``user:`` if it names no kind."""
        return self.subject if ":" in self.subject else f"user:{self.subject}"

    def may_call(self, allowed: Iterable[str]) -> bool:
        """Whether one of the principal's roles is ``admin`` or among ``allowed``."""
        return bool({ADMIN_ROLE, *allowed} & set(self.roles))


def issue_token(
    private_key: Ed25519PrivateKey,
    subject: str,
    roles: Sequence[str],
    ttl: timedelta,
    *,
    issuer: str = DEFAULT_ISSUER,
    now: datetime | None = None,
) -> str:
    """Sign a token granting ``roles`` to ``subject`` for ``ttl``.

    Args:
        private_key: The issuer's Ed25519 signing key.
        subject: Who the token is for (``user:alice``, ``gateway:plant-7``).
        roles: The roles granted; may be empty (a token that can call nothing).
        ttl: How long the token is valid.
        issuer: The ``iss`` claim.
        now: The issue time (default: now).

    Returns:
        The compact JWT.

    Raises:
        ValueError: ``subject`` is empty or ``ttl`` is not positive.
    """
    if not subject:
        raise ValueError("a token needs a subject")
    if ttl <= timedelta(0):
        raise ValueError("a token's time to live must be positive")
    issued = now or datetime.now(UTC)
    claims = {
        "sub": subject,
        "roles": list(roles),
        "iss": issuer,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
        "jti": str(uuid.uuid4()),
    }
    headers = {"kid": key_id(private_key.public_key())}
    return jwt.encode(claims, private_key, algorithm=ALGORITHM, headers=headers)


def verify_token(
    public_key: Ed25519PublicKey, token: str, *, issuer: str = DEFAULT_ISSUER
) -> Principal:
    """Check a token's signature, expiry and issuer, and return whom it names.

    Args:
        public_key: The issuer's Ed25519 public key.
        token: The compact JWT.
        issuer: The issuer required.

    Returns:
        The principal.

    Raises:
        UnauthenticatedError: The token is malformed, forged, expired, not yet valid, from
            another issuer, or lacks a subject or roles (``reason`` says which).
    """
    try:
        claims = jwt.decode(
            token,
            public_key,
            algorithms=[ALGORITHM],
            issuer=issuer,
            leeway=_LEEWAY,
            options={"require": ["sub", "exp", "iss", "iat"]},
        )
    except jwt.ExpiredSignatureError:
        raise UnauthenticatedError("the token has expired", reason="TOKEN_EXPIRED") from None
    except jwt.InvalidTokenError as error:
        raise UnauthenticatedError(
            f"the token is not valid: {error}", reason="TOKEN_INVALID"
        ) from None
    roles = claims.get("roles")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise UnauthenticatedError("the token names no roles", reason="TOKEN_INVALID")
    return Principal(
        subject=str(claims["sub"]),
        roles=tuple(roles),
        issuer=str(claims["iss"]),
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        token_id=str(claims.get("jti", "")),
    )


def current_principal() -> Principal | None:
    """The verified principal of the RPC being handled, if access control is on."""
    return _principal.get()


# --- what each method allows ----------------------------------------------------------


@dataclass(frozen=True)
class MethodAccess:
    """Who may call one method, and its shape (for answering a denied call in kind).

    Attributes:
        method: The full method path, ``/package.Service/Method``.
        roles: Roles allowed besides ``admin``; empty means admin-only.
        open: Anyone may call it (health, reflection).
        known: The method is in this process's descriptor pool.
        client_streaming: The request is a stream.
        server_streaming: The response is a stream.
    """

    method: str
    roles: frozenset[str]
    open: bool = False
    known: bool = False
    client_streaming: bool = False
    server_streaming: bool = False


def method_access(method: str) -> MethodAccess:
    """Look up the ``access`` option of ``/package.Service/Method`` in the descriptor pool.

    Args:
        method: The path gRPC gives a server (``HandlerCallDetails.method``).

    Returns:
        The access rule; admin-only when the method is unknown to this process or carries
        no option.
    """
    service, _, name = method.lstrip("/").partition("/")
    if service in OPEN_SERVICES:
        return MethodAccess(method, frozenset(), open=True, known=True)
    try:
        descriptor = descriptor_pool.Default().FindMethodByName(f"{service}.{name}")
    except KeyError:
        return MethodAccess(method, frozenset())
    options = descriptor.GetOptions()
    roles: frozenset[str] = frozenset()
    if options.HasExtension(access_pb2.access):
        roles = frozenset(options.Extensions[access_pb2.access].roles)
    return MethodAccess(
        method,
        roles,
        known=True,
        client_streaming=descriptor.client_streaming,
        server_streaming=descriptor.server_streaming,
    )


# --- the interceptor --------------------------------------------------------------------

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Verifies the caller's token and roles on every RPC; audits every denial.

    Place it after the tracing and error interceptors (``GrpcServer(extra_interceptors=)``):
    a denied call is answered by a handler that writes the audit entry inside the call's
    span and raises ``UnauthenticatedError`` or ``PermissionDeniedError``, which the error
    interceptor turns into the status with its ``ErrorInfo``.

    An allowed call runs with the principal as the acting one: every audit entry and event
    it writes records ``Principal.actor``. Each RPC runs in a task of its own, so the
    context variables set here are the call's alone.
    """

    def __init__(
        self,
        public_key: Ed25519PublicKey,
        store: EventStore | None,
        *,
        service: str,
        issuer: str = DEFAULT_ISSUER,
    ) -> None:
        """Create the interceptor.

        Args:
            public_key: Verifies token signatures.
            store: Where denials are audited; ``None`` only logs them.
            service: The service's name, the ``domain`` of the errors.
            issuer: The token issuer required.
        """
        self._public_key = public_key
        self._store = store
        self._service = service
        self._issuer = issuer
        self._rules: dict[str, MethodAccess] = {}
        # Verified tokens, until they expire: a caller sends the same token on every call,
        # and checking its signature each time would cost more than many handlers.
        self._verified: OrderedDict[str, Principal] = OrderedDict()

    def _rule(self, method: str) -> MethodAccess:
        rule = self._rules.get(method)
        if rule is None:
            rule = self._rules[method] = method_access(method)
        return rule

    def check(self, rule: MethodAccess, metadata: Sequence[tuple[str, Any]] | None) -> Principal:
        """Authenticate and authorise one call.

        Returns:
            The caller.

        Raises:
            UnauthenticatedError: No bearer token, or one that does not verify.
            PermissionDeniedError: The token's roles do not allow the method.
        """
        principal = self._authenticate(rule, metadata)
        self._authorise(rule, principal)
        return principal

    def _authenticate(
        self, rule: MethodAccess, metadata: Sequence[tuple[str, Any]] | None
    ) -> Principal:
        token = _bearer(metadata)
        if token is None:
            raise UnauthenticatedError(
                "no bearer token in the authorization metadata",
                reason="TOKEN_MISSING",
                domain=self._service,
                metadata={"method": rule.method},
            )
        cached = self._verified.get(token)
        if cached is not None and cached.expires_at and cached.expires_at > datetime.now(UTC):
            return cached
        try:
            principal = verify_token(self._public_key, token, issuer=self._issuer)
        except UnauthenticatedError as error:
            raise UnauthenticatedError(
                str(error),
                reason=error.reason,
                domain=self._service,
                metadata={"method": rule.method},
            ) from None
        self._verified[token] = principal
        while len(self._verified) > _VERIFIED_TOKENS:
            self._verified.popitem(last=False)
        return principal

    def _authorise(self, rule: MethodAccess, principal: Principal) -> None:
        if principal.may_call(rule.roles):
            return
        allowed = sorted({ADMIN_ROLE, *rule.roles})
        raise PermissionDeniedError(
            f"{principal.actor} with roles [{', '.join(principal.roles)}] may not call "
            f"{rule.method} (allowed: {', '.join(allowed)})",
            reason="ROLE_NOT_ALLOWED",
            domain=self._service,
            metadata={"method": rule.method, "subject": principal.subject},
        )

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        """Let the call through with its principal set, or answer it with the denial."""
        rule = self._rule(handler_call_details.method)
        if rule.open:
            return await continuation(handler_call_details)
        metadata = handler_call_details.invocation_metadata
        principal: Principal | None = None
        try:
            principal = self._authenticate(rule, metadata)
            self._authorise(rule, principal)
        except (UnauthenticatedError, PermissionDeniedError) as error:
            denial = _Denial(rule, error, principal, _claimed_subject(metadata))
            handler = await continuation(handler_call_details)
            return self._denial_handler(denial, handler)
        _principal.set(principal)
        set_actor(principal.actor)
        return await continuation(handler_call_details)

    async def _audit_denial(self, denial: _Denial) -> None:
        rule, error = denial.rule, denial.error
        _log.warning(
            "%s: access denied (%s) to %s: %s", self._service, denial.outcome, rule.method, error
        )
        if self._store is None:
            return
        details = {
            "method": rule.method,
            "outcome": denial.outcome,
            "reason": error.reason,
            "subject": denial.principal.subject if denial.principal else denial.claimed,
            "roles": list(denial.principal.roles) if denial.principal else [],
            "allowed_roles": sorted({ADMIN_ROLE, *rule.roles}),
        }
        try:
            async with self._store.transaction(actor=denial.actor) as uow:
                await uow.audit(
                    "access.denied",
                    f"rpc{rule.method}",
                    reason=str(error),
                    details=details,
                    actor=denial.actor,
                )
        except Exception:
            # The caller is denied either way; a failed audit write must be seen.
            _log.exception("%s: could not audit an access denial on %s", self._service, rule.method)

    def _denial_handler(
        self, denial: _Denial, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler:
        async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._audit_denial(denial)
            raise denial.error

        options: dict[str, Any] = {}
        if handler is not None:
            options = {
                "request_deserializer": handler.request_deserializer,
                "response_serializer": handler.response_serializer,
            }
            client_streaming = handler.request_streaming
            server_streaming = handler.response_streaming
        else:
            client_streaming = denial.rule.client_streaming
            server_streaming = denial.rule.server_streaming
        if client_streaming and server_streaming:
            return grpc.stream_stream_rpc_method_handler(deny, **options)
        if client_streaming:
            return grpc.stream_unary_rpc_method_handler(deny, **options)
        if server_streaming:
            return grpc.unary_stream_rpc_method_handler(deny, **options)
        return grpc.unary_unary_rpc_method_handler(deny, **options)


@dataclass(frozen=True)
class _Denial:
    rule: MethodAccess
    error: UnauthenticatedError | PermissionDeniedError
    principal: Principal | None
    claimed: str

    @property
    def outcome(self) -> str:
        return "unauthenticated" if isinstance(self.error, UnauthenticatedError) else "forbidden"

    @property
    def actor(self) -> str:
        if self.principal is not None:
            return self.principal.actor
        return self.claimed or "anonymous"


def _bearer(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        text = value.decode() if isinstance(value, bytes) else str(value)
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def _claimed_subject(metadata: Sequence[tuple[str, Any]] | None) -> str:
    """The subject an unverified token claims, for the audit entry of its denial."""
    token = _bearer(metadata)
    if token is None:
        return ""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return ""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        return ""
    return f"unverified:{subject[:200]}"

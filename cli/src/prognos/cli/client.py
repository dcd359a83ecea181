"""Client channels to the services: the one place that knows how to reach and authenticate.

Every command, test and tool that calls a Prognos service opens its channel here, so that
transport security and credentials are added in one place. When the data directory holds
development secrets (``prognos up`` creates them), the channel is mutual TLS with the
client certificate, and every call carries a token for the requested role.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc

from prognos.cli.certs import DevSecrets
from prognos.cli.launcher import RunInfo, run_file
from prognos.cli.tokens import token_for
from prognos.core import telemetry
from prognos.core.tls import channel_credentials

__all__ = [
    "ServiceNotRunningError",
    "address_of",
    "credentials_for",
    "open_channel",
    "open_channel_with_token",
    "read_run_info",
    "secrets_of",
]


class ServiceNotRunningError(LookupError):
    """The run file names no such service (is `prognos up` running?)."""


def address_of(info: RunInfo, service: str) -> str:
    """The ``host:port`` of a running service."""
    for record in info.services:
        if record.name == service:
            return record.address
    raise ServiceNotRunningError(f"{service} is not among the running services")


def read_run_info(data_dir: Path) -> RunInfo:
    """The run file that `prognos up` wrote in ``data_dir``."""
    path = run_file(data_dir)
    if not path.exists():
        raise ServiceNotRunningError(f"nothing is running on {data_dir} (no {path.name})")
    return RunInfo.read(path)


def secrets_of(info: RunInfo) -> DevSecrets:
    """The development secrets of what `prognos up` started."""
    return DevSecrets(Path(info.data_dir) / "secrets")


class _BearerToken(grpc.AuthMetadataPlugin):
    """Adds ``authorization: Bearer <token>`` to every call, asking for the token each time."""

    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        try:
            token = self._token()
        except Exception as error:  # reported to the caller as the call's failure
            callback((), error)
            return
        callback((("authorization", f"Bearer {token}"),), None)


def credentials_for(
    secrets: DevSecrets, *, role: str | None = None, token: str | None = None
) -> grpc.ChannelCredentials | None:
    """Mutual TLS with the client certificate, plus a bearer token on every call.

    Args:
        secrets: The development secrets.
        role: Issue (and reuse) a token for this role with the development key.
        token: Send this token instead; with neither, calls carry no token.

    Returns:
        The credentials, or ``None`` when ``secrets`` holds no certificates (plaintext).
    """
    if not secrets.has_tls:
        return None
    tls = channel_credentials(secrets.ca_cert, secrets.client_cert, secrets.client_key)
    if token is not None:
        fixed = token
        plugin = _BearerToken(lambda: fixed)
    elif role is not None and secrets.token_signing_key.is_file():
        plugin = _BearerToken(lambda: token_for(secrets, role))
    else:
        return tls
    return grpc.composite_channel_credentials(tls, grpc.metadata_call_credentials(plugin))


def open_channel(info: RunInfo, service: str, *, role: str = "admin") -> grpc.aio.Channel:
    """An async channel to ``service`` acting with ``role``.

    Args:
        info: what `prognos up` started (``read_run_info``, or the launcher's ``info``).
        service: ``ingest``, ``registry``, ``inference`` or ``scheduler``.
        role: the role every call is made with (a development token for the local user).

    Returns:
        A traced ``grpc.aio.Channel``, mutual TLS when the run has secrets; close it
        (``async with``) when done.
    """
    credentials = credentials_for(secrets_of(info), role=role)
    return telemetry.channel(address_of(info, service), credentials)


def open_channel_with_token(info: RunInfo, service: str, token: str | None) -> grpc.aio.Channel:
    """Like ``open_channel``, but every call carries ``token`` (or, if ``None``, no token)."""
    credentials = credentials_for(secrets_of(info), token=token)
    return telemetry.channel(address_of(info, service), credentials)

"""Mutual TLS for gRPC: server credentials that demand a client certificate, and channel ones.

Production hands each process its certificate, key and the CA through settings
(``tls_cert_file``, ``tls_key_file``, ``tls_ca_file``); `prognos up` creates a development
CA and certificates (``prognos certs``) and sets the same settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from prognos.core.config import Settings

__all__ = ["TlsConfigError", "channel_credentials", "client_credentials", "server_credentials"]


class TlsConfigError(ValueError):
    """TLS is configured only in part, or a configured file cannot be read."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TlsConfigError(f"cannot read the {what} {path}: {error.strerror}") from None


def _configured(settings: Settings) -> bool:
    files = (settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
    if all(files):
        return True
    if any(files):
        raise TlsConfigError(
            f"{settings.service}: TLS needs tls_cert_file, tls_key_file and tls_ca_file "
            "together (PROGNOS_TLS_CERT_FILE, PROGNOS_TLS_KEY_FILE, PROGNOS_TLS_CA_FILE)"
        )
    return False


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """Server credentials that present this process's certificate and require a client's.

    Args:
        settings: Uses ``tls_cert_file``, ``tls_key_file`` and ``tls_ca_file``.

    Returns:
        The credentials, or ``None`` when TLS is not configured (plaintext).

    Raises:
        TlsConfigError: Only some of the three files are configured, or one is unreadable.
    """
    if not _configured(settings):
        return None
    assert settings.tls_cert_file and settings.tls_key_file and settings.tls_ca_file
    return grpc.ssl_server_credentials(
        [
            (
                _read(settings.tls_key_file, "TLS private key"),
                _read(settings.tls_cert_file, "TLS certificate"),
            )
        ],
        root_certificates=_read(settings.tls_ca_file, "TLS CA certificate"),
        require_client_auth=True,
    )


def channel_credentials(
    ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None
) -> grpc.ChannelCredentials:
    """Channel credentials that trust ``ca_file`` and present a client certificate if given.

    Args:
        ca_file: The CA that the server's certificate must chain to.
        cert_file: The client's certificate chain (PEM), for servers that require one.
        key_file: The client certificate's private key.

    Raises:
        TlsConfigError: A file is unreadable, or only one of cert and key is given.
    """
    if (cert_file is None) != (key_file is None):
        raise TlsConfigError("a client certificate needs both its certificate and its key")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file, "TLS CA certificate"),
        private_key=_read(key_file, "TLS private key") if key_file else None,
        certificate_chain=_read(cert_file, "TLS certificate") if cert_file else None,
    )


def client_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """Channel credentials for this process calling a peer with its own certificate.

    Returns:
        The credentials, or ``None`` when TLS is not configured.

    Raises:
        TlsConfigError: As for ``server_credentials``.
    """
    if not _configured(settings):
        return None
    assert settings.tls_ca_file
    return channel_credentials(settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file)

"""Which settings let a service serve: TLS files and a token key, or development on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from prognos.core.config import Settings
from prognos.core.service import require_security

SECURE = {
    "tls_cert_file": Path("svc.crt"),
    "tls_key_file": Path("svc.key"),
    "tls_ca_file": Path("ca.crt"),
    "auth_public_key_file": Path("token.pub"),
}


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_hosts_are_recognised(host: str) -> None:
    assert Settings(grpc_host=host).listens_on_loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "ingest", "localhost.example"])
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not Settings(grpc_host=host).listens_on_loopback


def test_the_missing_settings_are_named_by_their_variables() -> None:
    settings = Settings(tls_ca_file=Path("ca.crt"))
    assert settings.missing_security == [
        "PROGNOS_TLS_CERT_FILE",
        "PROGNOS_TLS_KEY_FILE",
        "PROGNOS_AUTH_PUBLIC_KEY_FILE",
    ]


def test_tls_files_and_a_token_key_are_enough_anywhere() -> None:
    require_security(Settings(service="ingest", grpc_host="0.0.0.0", **SECURE))


def test_a_token_key_alone_is_refused() -> None:
    settings = Settings(service="ingest", auth_public_key_file=Path("token.pub"))
    with pytest.raises(SystemExit, match=r"PROGNOS_TLS_CERT_FILE.*PROGNOS_TLS_CA_FILE"):
        require_security(settings)


def test_development_mode_on_loopback_warns(caplog: pytest.LogCaptureFixture) -> None:
    require_security(Settings(service="ingest", insecure_development=True))
    assert "INSECURE DEVELOPMENT MODE" in caplog.text
    assert "PROGNOS_AUTH_PUBLIC_KEY_FILE" in caplog.text


def test_development_mode_off_loopback_is_refused_even_with_secrets() -> None:
    settings = Settings(service="ingest", grpc_host="0.0.0.0", insecure_development=True, **SECURE)
    with pytest.raises(SystemExit, match="loopback only"):
        require_security(settings)

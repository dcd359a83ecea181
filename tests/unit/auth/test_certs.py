"""Development secrets: a CA that signs every certificate, keys kept private, nothing redone."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from prognos.cli.certs import DevSecrets, ensure_dev_secrets, write_certificates
from prognos.core.auth import load_private_key, load_public_key, verify_token


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_certificate_is_signed_by_the_ca_and_serves_local_addresses(tmp_path: Path) -> None:
    secrets = write_certificates(tmp_path / "s", ["ingest", "registry"], hosts=["10.1.2.3"])
    ca = _cert(secrets.ca_cert)

    for name in ("ingest", "registry"):
        leaf = _cert(secrets.service_cert(name))
        leaf.verify_directly_issued_by(ca)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert {"localhost", name} <= set(san.get_values_for_type(x509.DNSName))
        assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.1.2.3")} <= set(
            san.get_values_for_type(x509.IPAddress)
        )
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
    client = _cert(secrets.client_cert)
    client.verify_directly_issued_by(ca)
    usages = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_private_keys_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    secrets = ensure_dev_secrets(tmp_path / "s", ["ingest"])

    private = [
        secrets.ca_key,
        secrets.service_key("ingest"),
        secrets.client_key,
        secrets.token_signing_key,
        secrets.checkpoint_key("ingest"),
        secrets.admin_token,
    ]
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(secrets.root.stat().st_mode) == 0o700


def test_secrets_are_created_once_and_kept(tmp_path: Path) -> None:
    first = ensure_dev_secrets(tmp_path / "s", ["ingest"])
    before = {p.name: p.read_bytes() for p in first.root.iterdir() if p.is_file()}

    second = ensure_dev_secrets(tmp_path / "s", ["ingest"])

    assert {p.name: p.read_bytes() for p in second.root.iterdir() if p.is_file()} == before


def test_the_admin_token_verifies_with_the_token_public_key(tmp_path: Path) -> None:
    secrets = ensure_dev_secrets(tmp_path / "s", ["ingest"])

    principal = verify_token(
        load_public_key(secrets.token_public_key), secrets.admin_token.read_text().strip()
    )

    assert principal.roles == ("admin",)
    load_private_key(secrets.checkpoint_key("ingest"))


def test_services_are_pointed_at_their_own_files(tmp_path: Path) -> None:
    secrets = DevSecrets(tmp_path)

    env = secrets.service_environment(["ingest", "scheduler"])

    assert env["PROGNOS_TLS_CA_FILE"] == str(tmp_path / "ca.crt")
    assert env["PROGNOS_AUTH_PUBLIC_KEY_FILE"] == str(tmp_path / "token-signing.pub")
    assert env["PROGNOS_INGEST_TLS_CERT_FILE"] == str(tmp_path / "ingest.crt")
    assert env["PROGNOS_SCHEDULER_TLS_KEY_FILE"] == str(tmp_path / "scheduler.key")
    assert env["PROGNOS_SCHEDULER_AUDIT_SIGNING_KEY_FILE"] == str(
        tmp_path / "checkpoint-scheduler.key"
    )

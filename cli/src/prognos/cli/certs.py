"""Development secrets: a CA, service and client certificates, token and checkpoint keys.

``prognos up`` keeps them under ``<data_dir>/secrets/`` and creates what is missing on
start, so the demo runs with mutual TLS and role tokens by default; ``prognos certs``
writes the certificates alone to any directory. Production hands each process its own
files through settings instead (``PROGNOS_TLS_*``, ``PROGNOS_AUTH_PUBLIC_KEY_FILE``,
``PROGNOS_<SVC>_AUDIT_SIGNING_KEY_FILE``).

Layout of a secrets directory::

    ca.crt ca.key                   the development CA (ECDSA P-256)
    <service>.crt <service>.key     one per service, for serving and for calling peers
    client.crt client.key           the command line's and tests' client certificate
    token-signing.key .pub          Ed25519 pair that signs and verifies role tokens
    checkpoint-<service>.key .pub   Ed25519 pair that signs a service's audit checkpoints
    admin.token                     an admin token for the person who ran `prognos up`
    tokens/<role>.token             tokens the command line issued itself, reused until stale

A deployment that gives each process only its own files (compose's ``secrets`` job) keeps
the issuing side in one directory (the CA and its key, the client certificate, the token
key pair: ``prognos token keygen``, then ``prognos certs --services-dir``) and puts each
service's certificate and key in ``<services dir>/<service>/``, beside copies of ``ca.crt``
and ``token-signing.pub``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from rich.console import Console

from prognos.core.auth import generate_signing_key, write_key_pair, write_secret
from prognos.core.config import SERVICES

__all__ = [
    "CLIENT_NAME",
    "DevSecrets",
    "certs",
    "ensure_dev_secrets",
    "ensure_token_key",
    "issue_certificate",
    "make_ca",
    "write_certificates",
]

CLIENT_NAME = "prognos-cli"
_CA_DAYS = 3650
_LEAF_DAYS = 825
_RENEW_BEFORE = timedelta(days=7)
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class DevSecrets:
    """The paths of a development secrets directory (see the module docstring)."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        """The CA certificate every party trusts."""
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        """The CA's private key."""
        return self.root / "ca.key"

    @property
    def client_cert(self) -> Path:
        """The client certificate of the command line and the tests."""
        return self.root / "client.crt"

    @property
    def client_key(self) -> Path:
        """The client certificate's private key."""
        return self.root / "client.key"

    @property
    def token_signing_key(self) -> Path:
        """The Ed25519 key that signs role tokens."""
        return self.root / "token-signing.key"

    @property
    def token_public_key(self) -> Path:
        """The public key that services verify tokens with."""
        return self.root / "token-signing.pub"

    @property
    def admin_token(self) -> Path:
        """An admin token for the person running the demo."""
        return self.root / "admin.token"

    @property
    def tokens_dir(self) -> Path:
        """Tokens the command line issued for itself, one per role."""
        return self.root / "tokens"

    def service_cert(self, service: str) -> Path:
        """A service's certificate."""
        return self.root / f"{service}.crt"

    def service_key(self, service: str) -> Path:
        """A service's certificate key."""
        return self.root / f"{service}.key"

    def checkpoint_key(self, service: str) -> Path:
        """The Ed25519 key that signs a service's audit checkpoints."""
        return self.root / f"checkpoint-{service}.key"

    def checkpoint_public_key(self, service: str) -> Path:
        """The public key that verifies a service's checkpoints offline."""
        return self.root / f"checkpoint-{service}.pub"

    @property
    def has_tls(self) -> bool:
        """Whether the CA and the client certificate exist."""
        return all(p.is_file() for p in (self.ca_cert, self.client_cert, self.client_key))

    def service_environment(self, services: Iterable[str]) -> dict[str, str]:
        """The ``PROGNOS_*`` variables that point every service at its secrets."""
        env = {
            "PROGNOS_TLS_CA_FILE": str(self.ca_cert),
            "PROGNOS_AUTH_PUBLIC_KEY_FILE": str(self.token_public_key),
        }
        for name in services:
            prefix = f"PROGNOS_{name.upper()}_"
            env[prefix + "TLS_CERT_FILE"] = str(self.service_cert(name))
            env[prefix + "TLS_KEY_FILE"] = str(self.service_key(name))
            env[prefix + "AUDIT_SIGNING_KEY_FILE"] = str(self.checkpoint_key(name))
        return env


# --- certificates -----------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Prognos development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(
    common_name: str = "Prognos development CA", *, days: int = _CA_DAYS
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate and its ECDSA P-256 key.

    Args:
        common_name: The CA's name.
        days: Validity from now.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    name = _name(common_name)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in dict.fromkeys(h.strip("[]") for h in hosts if h):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def issue_certificate(
    ca_certificate: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    hosts: Sequence[str] = (),
    server: bool = True,
    days: int = _LEAF_DAYS,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate signed by the CA, for client authentication and, if ``server``, serving.

    Args:
        ca_certificate: The issuing CA.
        ca_key: The CA's key.
        common_name: The party's name (a service name, ``prognos-cli``).
        hosts: Host names and IP addresses the party serves on (subject alternative names);
            the local ones and ``common_name`` are always added for a server.
        server: Whether the certificate may serve (``serverAuth``) besides calling.
        days: Validity from now.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(_san([*_LOCAL_HOSTS, common_name, *hosts]), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write_pair(
    certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path
) -> None:
    write_secret(key_path, _key_pem(key))
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _fresh(cert_path: Path, key_path: Path, ca: x509.Certificate | None = None) -> bool:
    """Whether a certificate and its key exist, it is not about to expire, and ``ca`` issued it."""
    if not (cert_path.is_file() and key_path.is_file()):
        return False
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if ca is not None:
            certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return certificate.not_valid_after_utc - datetime.now(UTC) > _RENEW_BEFORE


def _copy_if_changed(source: Path, target: Path) -> None:
    data = source.read_bytes()
    if not target.is_file() or target.read_bytes() != data:
        target.write_bytes(data)


def write_certificates(
    out: Path,
    services: Sequence[str] = SERVICES,
    *,
    hosts: Sequence[str] = (),
    force: bool = False,
    services_dir: Path | None = None,
) -> DevSecrets:
    """Write a development CA, a certificate per service and a client certificate.

    Existing files are kept while they are valid (and the CA is the one that signed them),
    unless ``force``; a new CA reissues every certificate.

    Args:
        out: The secrets directory (created, mode 0700).
        services: One serving certificate each.
        hosts: Extra host names or addresses the services are reached at.
        force: Replace everything.
        services_dir: Put each service's certificate and key in ``services_dir/<service>/``
            instead of ``out``, beside copies of the CA certificate and, when ``out`` has
            one, the token public key: all a service is given, and nothing of another's.

    Returns:
        The layout of ``out``.
    """
    secrets = DevSecrets(out)
    _private_dir(out)
    new_ca = force or not _fresh(secrets.ca_cert, secrets.ca_key)
    if new_ca:
        ca_certificate, ca_key = make_ca()
        _write_pair(ca_certificate, ca_key, secrets.ca_cert, secrets.ca_key)
    else:
        ca_certificate = x509.load_pem_x509_certificate(secrets.ca_cert.read_bytes())
        loaded = serialization.load_pem_private_key(secrets.ca_key.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{secrets.ca_key} holds no ECDSA key")
        ca_key = loaded
    for name in services:
        own = DevSecrets(services_dir / name) if services_dir else secrets
        cert_path, key_path = own.service_cert(name), own.service_key(name)
        if services_dir:
            _private_dir(own.root)
        if new_ca or not _fresh(cert_path, key_path, ca_certificate):
            _write_pair(
                *issue_certificate(ca_certificate, ca_key, name, hosts=hosts), cert_path, key_path
            )
        if services_dir:
            _copy_if_changed(secrets.ca_cert, own.ca_cert)
            if secrets.token_public_key.is_file():
                _copy_if_changed(secrets.token_public_key, own.token_public_key)
    if new_ca or not _fresh(secrets.client_cert, secrets.client_key):
        _write_pair(
            *issue_certificate(ca_certificate, ca_key, CLIENT_NAME, server=False),
            secrets.client_cert,
            secrets.client_key,
        )
    return secrets


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def ensure_token_key(secrets: DevSecrets, *, force: bool = False) -> bool:
    """Make the token signing key pair of ``secrets`` unless it exists (or ``force``).

    A new pair invalidates every token the old key signed, so the admin token and the
    command line's own tokens are removed with it.

    Returns:
        Whether a new pair was made.
    """
    if not force and secrets.token_signing_key.is_file() and secrets.token_public_key.is_file():
        return False
    _private_dir(secrets.root)
    write_key_pair(generate_signing_key(), secrets.token_signing_key, secrets.token_public_key)
    secrets.admin_token.unlink(missing_ok=True)
    for stale in secrets.tokens_dir.glob("*.token"):
        stale.unlink()
    return True


def ensure_dev_secrets(
    out: Path, services: Sequence[str] = SERVICES, *, hosts: Sequence[str] = ()
) -> DevSecrets:
    """Create whatever development secret is missing: certificates, keys, an admin token.

    Args:
        out: The secrets directory, usually ``<data_dir>/secrets``.
        services: The services that need a certificate and a checkpoint key.
        hosts: Extra host names or addresses the services are reached at.

    Returns:
        The layout of ``out``.
    """
    from prognos.cli.tokens import write_admin_token

    secrets = write_certificates(out, services, hosts=hosts)
    ensure_token_key(secrets)
    for name in services:
        private, public = secrets.checkpoint_key(name), secrets.checkpoint_public_key(name)
        if not (private.is_file() and public.is_file()):
            write_key_pair(generate_signing_key(), private, public)
    write_admin_token(secrets)
    return secrets


_DATA_DIR_HELP = "Data directory (default: $PROGNOS_DATA_DIR, else .prognos)."

# --- command ----------------------------------------------------------------------------


def certs(
    out: Annotated[
        Path | None,
        typer.Option(help="Directory to write to (default: <data dir>/secrets)."),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
    service: Annotated[
        list[str] | None,
        typer.Option(help="A service to make a certificate for; repeat. Default: all four."),
    ] = None,
    host: Annotated[
        list[str] | None,
        typer.Option(help="Another host name or IP the services are reached at; repeat."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace existing CA and certificates.")] = False,
    services_dir: Annotated[
        Path | None,
        typer.Option(
            help="Put each service's certificate and key in DIR/<service>/ instead, beside "
            "copies of the CA certificate and the token public key (`prognos token keygen`), "
            "so that a deployment can give each service its own directory alone.",
            metavar="DIR",
        ),
    ] = None,
) -> None:
    """Make a development CA, a certificate per service and a client certificate."""
    from prognos.core.config import Settings

    target = out or Settings.load("cli", **({"data_dir": data_dir} if data_dir else {})).secrets_dir
    secrets = write_certificates(
        target,
        tuple(service or SERVICES),
        hosts=tuple(host or ()),
        force=force,
        services_dir=services_dir,
    )
    console = Console()
    console.print(f"CA          {secrets.ca_cert}", highlight=False)
    for name in service or SERVICES:
        own = DevSecrets(services_dir / name) if services_dir else secrets
        console.print(f"{name:<11} {own.service_cert(name)}", highlight=False)
    console.print(f"client      {secrets.client_cert}", highlight=False)

"""compose.yaml runs the services secure: each is given its own TLS files and the token key.

NATS runs with authorization: every node loads the block the secrets job writes, and each
service signs in with its own nkey seed, the only one it can read.

The file is parsed, not run (no container engine here), but the ``secrets`` job's own command
is: it runs against a temporary directory standing for the container's file system, and each
service then sees exactly what its mounts would show it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prognos.core import busauth
from prognos.core.config import SERVICES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
JOB = "secrets"
SECURITY_SETTINGS = ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE", "AUTH_PUBLIC_KEY_FILE")


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _serving() -> dict[str, dict[str, Any]]:
    """The compose services that run one of ours as a server (not its migration)."""
    return {
        name: spec
        for name, spec in _services().items()
        if spec.get("build", {}).get("args", {}).get("SERVICE") in SERVICES
        and spec.get("command") != ["migrate"]
    }


def _environment(spec: dict[str, Any]) -> dict[str, str]:
    environment = spec.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    return {str(k): str(v) for k, v in environment.items()}


def _setting(spec: dict[str, Any], field: str) -> str | None:
    """What the service reads for ``field``: ``PROGNOS_<SVC>_<FIELD>``, then ``PROGNOS_<FIELD>``."""
    environment = _environment(spec)
    service = spec["build"]["args"]["SERVICE"]
    return environment.get(f"PROGNOS_{service.upper()}_{field}") or environment.get(
        f"PROGNOS_{field}"
    )


def _mounts(spec: dict[str, Any]) -> list[tuple[str, PurePosixPath, bool]]:
    """``(source, target, read_only)`` of each of a service's mounts."""
    mounts = []
    for volume in spec.get("volumes", []):
        if isinstance(volume, dict):
            source, target = str(volume.get("source", "")), str(volume["target"])
            read_only = bool(volume.get("read_only"))
        else:
            source, target, *mode = str(volume).split(":")
            read_only = "ro" in ",".join(mode).split(",")
        mounts.append((source, PurePosixPath(target), read_only))
    return mounts


def _mount_of(spec: dict[str, Any], path: str) -> tuple[str, PurePosixPath, bool] | None:
    for source, target, read_only in _mounts(spec):
        if PurePosixPath(path).is_relative_to(target):
            return source, target, read_only
    return None


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each named volume the secrets job fills, as a directory, after the job ran twice."""
    job = _services()[JOB]
    fs = tmp_path_factory.mktemp("container")
    where = {source: fs / str(target).lstrip("/") for source, target, _ in _mounts(job)}
    for directory in where.values():
        directory.mkdir(parents=True, exist_ok=True)
    command = [*job.get("entrypoint", []), *job.get("command", [])]
    # Absolute paths in the job's command are in the container; here they are under fs.
    command = [re.sub(r"(^|(?<=[\s=]))/", f"{fs}/", part) for part in command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROGNOS_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PROGNOS_DATA_DIR"] = str(fs / "data")

    def run() -> dict[Path, bytes]:
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)
        return {p: p.read_bytes() for p in fs.rglob("*") if p.is_file()}

    first = run()
    assert run() == first, "a second run of the secrets job replaced secrets that existed"
    return where


def _visible(spec: dict[str, Any], volumes: dict[str, Path]) -> dict[PurePosixPath, Path]:
    """The files of the job's volumes that a service sees, by their path in its container."""
    seen = {}
    for source, target, _ in _mounts(spec):
        if source in volumes:
            for path in volumes[source].rglob("*"):
                if path.is_file():
                    seen[target / path.relative_to(volumes[source]).as_posix()] = path
    return seen


def _host_path(spec: dict[str, Any], container_path: str, volumes: dict[str, Path]) -> Path:
    mount = _mount_of(spec, container_path)
    assert mount is not None and mount[0] in volumes, f"{container_path} is in no secrets volume"
    source, target, _ = mount
    return volumes[source] / PurePosixPath(container_path).relative_to(target)


def _is_private_key(path: Path) -> bool:
    return b"PRIVATE KEY-----" in path.read_bytes()


def test_the_secrets_job_runs_once_from_the_services_dockerfile() -> None:
    services = _services()
    assert JOB in services, "compose has no secrets job"
    job = services[JOB]
    assert job.get("restart") == "no"
    assert "ports" not in job
    dockerfiles = {(s["build"]["context"], s["build"]["dockerfile"]) for s in _serving().values()}
    assert {(job["build"]["context"], job["build"]["dockerfile"])} == dockerfiles


def test_every_service_starts_after_the_secrets_job() -> None:
    serving = _serving()
    assert set(serving) >= set(SERVICES)
    for name, spec in serving.items():
        depends_on = spec.get("depends_on", {})
        assert isinstance(depends_on, dict) and JOB in depends_on, name
        assert depends_on[JOB]["condition"] == "service_completed_successfully", name


def test_every_service_names_its_tls_files_and_token_key_in_what_it_mounts_read_only() -> None:
    for name, spec in _serving().items():
        for field in SECURITY_SETTINGS:
            value = _setting(spec, field)
            assert value, f"{name} sets no PROGNOS_{field}"
            mount = _mount_of(spec, value)
            assert mount is not None, f"{name}: PROGNOS_{field}={value} is in nothing it mounts"
            assert mount[2], f"{name} mounts {mount[1]} writable"


def test_no_service_runs_in_development_mode() -> None:
    for name, spec in _services().items():
        for key in _environment(spec):
            assert not key.endswith("INSECURE_DEVELOPMENT"), f"{name} sets {key}"


def test_the_job_makes_every_file_a_service_is_told_to_read(volumes: dict[str, Path]) -> None:
    for name, spec in _serving().items():
        for field in SECURITY_SETTINGS:
            path = _host_path(spec, _setting(spec, field) or "", volumes)
            assert path.is_file(), f"{name}: the secrets job makes no PROGNOS_{field}"


def test_each_certificate_serves_its_compose_name_with_its_key_under_the_ca(
    volumes: dict[str, Path],
) -> None:
    for name, spec in _serving().items():
        files = {f: _host_path(spec, _setting(spec, f) or "", volumes) for f in SECURITY_SETTINGS}
        certificate = x509.load_pem_x509_certificate(files["TLS_CERT_FILE"].read_bytes())
        ca = x509.load_pem_x509_certificate(files["TLS_CA_FILE"].read_bytes())
        certificate.verify_directly_issued_by(ca)
        key = serialization.load_pem_private_key(files["TLS_KEY_FILE"].read_bytes(), None)
        assert key.public_key() == certificate.public_key(), f"{name}: key and certificate differ"
        names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
        assert {name, "localhost"} <= set(names), f"{name}'s certificate names {names}"
        # The peers dial it by the address compose gives them; that host must be in its SAN.
        service = spec["build"]["args"]["SERVICE"]
        for peer in _serving().values():
            host = _environment(peer).get(f"PROGNOS_{service.upper()}_ADDRESS", ":").split(":")[0]
            assert not host or host in names, f"{name} is dialled as {host}, not in {names}"


def test_the_token_signing_key_stays_with_the_job(volumes: dict[str, Path]) -> None:
    services = _services()
    for name, spec in _serving().items():
        public = _host_path(spec, _setting(spec, "AUTH_PUBLIC_KEY_FILE") or "", volumes)
        holders = [
            (source, path)
            for source, directory in volumes.items()
            for path in directory.rglob("*")
            if path.is_file()
            and _is_private_key(path)
            and isinstance(
                signing := serialization.load_pem_private_key(path.read_bytes(), None),
                Ed25519PrivateKey,
            )
            and signing.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            == public.read_bytes()
        ]
        assert holders, f"the secrets job keeps no key that signs what {name} verifies"
        for source, path in holders:
            mounted_by = {n for n, s in services.items() if source in {m[0] for m in _mounts(s)}}
            assert mounted_by == {JOB}, f"{path.name} is mounted in {sorted(mounted_by)}"


def test_no_service_sees_a_private_key_but_its_own(volumes: dict[str, Path]) -> None:
    """Not the CA's key, not the token signing key, not another service's key."""
    serving = _serving()
    for name, spec in _services().items():
        if name == JOB:
            continue
        own = (
            {_host_path(spec, _setting(spec, "TLS_KEY_FILE") or "", volumes).read_bytes()}
            if name in serving
            else set()
        )
        for container_path, path in _visible(spec, volumes).items():
            leaked = _is_private_key(path) and path.read_bytes() not in own
            assert not leaked, f"{name} can read the private key {container_path}"


# --- the bus -----------------------------------------------------------------------------

NATS_IMAGE = "nats:"
SEED_SETTING = "NATS_NKEY_SEED_FILE"


def _nats_nodes() -> dict[str, dict[str, Any]]:
    return {
        name: spec
        for name, spec in _services().items()
        if str(spec.get("image", "")).startswith(NATS_IMAGE)
    }


def _config_of(spec: dict[str, Any]) -> str:
    command = [str(part) for part in spec.get("command", [])]
    flags = [i for i, part in enumerate(command) if part in ("-c", "--config")]
    assert flags, f"nats-server runs without a configuration file: {command}"
    return command[flags[-1] + 1]


def _is_seed(path: Path) -> bool:
    return path.read_bytes().lstrip().startswith(b"SU")


def _public_keys_in(config: str) -> set[str]:
    return set(re.findall(r'"nkey":\s*"(U[A-Z2-7]{55})"', config))


def test_every_nats_node_loads_the_authorization_the_secrets_job_makes(
    volumes: dict[str, Path],
) -> None:
    nodes = _nats_nodes()
    assert len(nodes) >= 3, "compose runs no NATS cluster"
    for name, spec in nodes.items():
        assert spec["depends_on"][JOB]["condition"] == "service_completed_successfully", name
        where = _config_of(spec)
        mount = _mount_of(spec, where)
        assert mount is not None and mount[2], f"{name} reads {where} from no read-only mount"
        config = _host_path(spec, where, volumes).read_text()
        assert "authorization" in config, f"{name}'s {where} has no authorization block"
        assert "no_auth_user" not in config, f"{name} lets connections without credentials in"
        assert _public_keys_in(config), f"{name} knows no identity"


def test_each_service_signs_in_to_nats_with_its_own_seed_alone(
    volumes: dict[str, Path],
) -> None:
    node = next(iter(_nats_nodes().values()))
    config = _host_path(node, _config_of(node), volumes).read_text()
    known = _public_keys_in(config)
    seen_keys: dict[str, str] = {}
    for name, spec in _serving().items():
        value = _setting(spec, SEED_SETTING)
        assert value, f"{name} sets no PROGNOS_{SEED_SETTING}"
        mount = _mount_of(spec, value)
        assert mount is not None and mount[2], f"{name} reads {value} from no read-only mount"
        seed = _host_path(spec, value, volumes)
        assert _is_seed(seed), f"{name}'s {value} is no nkey seed"
        key = busauth.public_key(seed)
        assert key in known, f"the NATS servers do not know {name}'s identity"
        service = spec["build"]["args"]["SERVICE"]
        # Replicas of one service share its identity; two services never do.
        assert seen_keys.setdefault(service, key) == key
        others = [
            container_path
            for container_path, path in _visible(spec, volumes).items()
            if _is_seed(path) and path != seed
        ]
        assert not others, f"{name} can read other bus identities' seeds: {others}"
    assert len(set(seen_keys.values())) == len(seen_keys) == len(SERVICES)


def test_the_nats_nodes_see_public_keys_only(volumes: dict[str, Path]) -> None:
    for name, spec in _nats_nodes().items():
        for container_path, path in _visible(spec, volumes).items():
            assert not _is_seed(path), f"{name} can read the seed {container_path}"
            assert not _is_private_key(path), f"{name} can read the private key {container_path}"

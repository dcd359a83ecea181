"""The production files parse and point only at things that exist."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"ingest", "registry", "inference", "scheduler"}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_images_are_pinned_official_ones() -> None:
    images = {s["image"] for s in _compose()["services"].values() if "image" in s}
    assert images, "compose names no images"
    allowed = re.compile(
        r"^(nats|postgres|jaegertracing/all-in-one|otel/opentelemetry-collector-contrib)"
        r":\d[\w.\-]*$"
    )
    for image in images:
        assert allowed.match(image), f"{image} is not a pinned image of a known project"


def test_compose_builds_each_service_from_the_dockerfile() -> None:
    built = {}
    for name, service in _compose()["services"].items():
        build = service.get("build")
        if not build:
            continue
        assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name
        built[name] = build.get("args", {}).get("SERVICE")
    assert {built[s] for s in SERVICES} == SERVICES
    assert {built[f"migrate-{s}"] for s in SERVICES} == SERVICES
    for service in SERVICES:
        assert (ROOT / "services" / service / "src" / "prognos" / service / "__main__.py").is_file()


def test_compose_bind_mounts_name_files_in_the_repository() -> None:
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_the_migrations_run_before_their_service() -> None:
    services = _compose()["services"]
    for service in SERVICES:
        condition = services[service]["depends_on"][f"migrate-{service}"]["condition"]
        assert condition == "service_completed_successfully"
        assert services[f"migrate-{service}"]["command"] == ["migrate"]


def test_every_service_is_told_where_the_others_are() -> None:
    services = _compose()["services"]
    for service in SERVICES:
        environment = services[service]["environment"]
        for peer in SERVICES:
            host, _, port = environment[f"PROGNOS_{peer.upper()}_ADDRESS"].partition(":")
            assert host in services and services[host]["build"]["args"]["SERVICE"] == peer
            assert port == environment["PROGNOS_GRPC_PORT"]

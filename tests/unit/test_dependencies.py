"""Each service installs only what it needs: TensorFlow stays out of ingest and scheduler."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, requires

import pytest
from packaging.requirements import Requirement


def closure(distribution: str) -> set[str]:
    """Every distribution ``distribution`` pulls in, extras and markers aside."""
    seen: set[str] = set()
    todo = [distribution]
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = requires(name) or []
        except PackageNotFoundError:
            continue
        for line in requirements:
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            todo.append(requirement.name)
    return seen


@pytest.mark.parametrize("service", ["prognos-ingest", "prognos-scheduler", "prognos-cli"])
def test_service_pulls_in_no_tensorflow(service: str) -> None:
    heavy = {d for d in closure(service) if d.startswith(("tensorflow", "keras", "torch"))}
    assert heavy == set(), f"{service} pulls in {sorted(heavy)}"


def test_the_registry_does_train_with_tensorflow() -> None:
    assert any(d.startswith("tensorflow") for d in closure("prognos-registry"))


@pytest.mark.parametrize(
    "service", ["prognos-ingest", "prognos-registry", "prognos-inference", "prognos-scheduler"]
)
def test_services_depend_on_core_and_api_but_on_no_other_service(service: str) -> None:
    ours = {d for d in closure(service) if d.startswith("prognos-")}
    assert ours == {service, "prognos-core", "prognos-api"}

"""The simulated turbofan fleet helper, for the inference unit tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

HELPER = Path(__file__).resolve().parents[2] / "helpers" / "inference_fleet.py"


def load_fleet() -> ModuleType:
    """``tests/helpers/inference_fleet.py`` as a module (loaded once)."""
    name = "inference_fleet"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HELPER)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def sim() -> ModuleType:
    """The simulated fleet helper."""
    return load_fleet()

"""Alias references over the real registry: ``champion``, ``fan@challenger`` and plain ids.

The registry serves over mutual TLS with tokens; versions are registered through the
registry's own command handler (no training needed to hold an alias), then named by alias
in the RPCs that take a version.
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest

from prognos.api.registry.v1 import registry_pb2
from prognos.core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    from_grpc_error,
)
from prognos.registry import handlers
from prognos.registry.domain import Lineage


def _load(name: str) -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "helpers" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


harness = _load("registry_harness")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

R = registry_pb2


async def _register(registry: Any, asset_type: str) -> str:
    """A candidate of ``asset_type``; by the default policy it becomes the challenger."""
    async with registry.store.transaction() as uow:
        version = await handlers.register_model_version(
            uow,
            handlers.RegisterModelVersion(
                asset_type=asset_type,
                metrics={"rmse": 20.0},
                lineage=Lineage(code_version="test"),
                artifacts=(),
                trained_by="user:alice",
            ),
        )
    return version.id


async def _failure(call: Any) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value, from_grpc_error(caught.value)


async def test_every_version_field_takes_an_alias_reference(tmp_path: Path) -> None:
    fan, pump = f"fan{uuid.uuid4().hex[:6]}", f"pump{uuid.uuid4().hex[:6]}"
    async with harness.running_registry(tmp_path, retrain_period_s=0) as registry:
        alice = registry.stub("user:alice", "ml-engineer")
        bob = registry.stub("user:bob", "approver")

        def get(reference: str) -> Any:
            return alice.GetModelVersion(
                R.GetModelVersionRequest(model_version_id=reference), timeout=10
            )

        error, typed = await _failure(get("champion"))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert typed.reason == "ALIAS_NOT_HELD"

        first = await _register(registry, fan)
        assert (await get("challenger")).model_version.id == first
        assert (await get(f"{fan}@challenger")).model_version.id == first
        assert (await get(first)).model_version.id == first

        approved = await bob.ApproveModelVersion(
            R.ApproveModelVersionRequest(model_version_id=f"{fan}@challenger"), timeout=10
        )
        assert approved.model_version.id == first
        promoted = await bob.PromoteModelVersion(
            R.PromoteModelVersionRequest(
                model_version_id="challenger", alias=R.MODEL_ALIAS_CHAMPION, reason="it is good"
            ),
            timeout=10,
        )
        assert promoted.change.to_model_version_id == first
        assert (await get("champion")).model_version.id == first

        second = await _register(registry, pump)
        error, typed = await _failure(get("challenger"))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert isinstance(typed, FailedPreconditionError)
        assert typed.reason == "ALIAS_AMBIGUOUS"
        assert fan in typed.message and pump in typed.message
        assert typed.metadata["asset_types"] == ", ".join(sorted([fan, pump]))
        assert (await get(f"{pump}@challenger")).model_version.id == second
        assert (await get("champion")).model_version.id == first  # one type has a champion

        error, typed = await _failure(get(f"{pump}@champion"))
        assert isinstance(typed, NotFoundError)
        assert typed.reason == "ALIAS_NOT_HELD"

        error, typed = await _failure(get(f"{fan}@chief"))
        assert isinstance(typed, InvalidArgumentError)
        ((field, description),) = typed.violations
        assert field == "model_version_id"
        assert "'chief' is not an alias" in description

        long_id = "v" * 10_000
        error, typed = await _failure(get(long_id))
        assert isinstance(typed, InvalidArgumentError)
        ((field, description),) = typed.violations
        assert field == "model_version_id"
        assert "at most 200" in description and "(10000 characters)" in description
        trailer = dict(error.trailing_metadata())["grpc-status-details-bin"]
        assert long_id[:65].encode() not in trailer
        assert len(error.details()) < 400

        error, typed = await _failure(
            bob.RollbackAlias(
                R.RollbackAliasRequest(
                    asset_type=fan, alias=R.MODEL_ALIAS_CHAMPION, to_model_version_id="@x"
                ),
                timeout=10,
            )
        )
        assert isinstance(typed, InvalidArgumentError)
        assert typed.violations[0][0] == "to_model_version_id"

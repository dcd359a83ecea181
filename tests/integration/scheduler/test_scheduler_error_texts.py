"""Error texts over the scheduler's real gRPC channel: contract names, limits, short quotes."""

from __future__ import annotations

import math
import uuid
from typing import TYPE_CHECKING

import grpc
import pytest
from google.rpc import status_pb2

from prognos.api.scheduler.v1 import scheduler_pb2
from prognos.core.errors import (
    DETAILS_METADATA_KEY,
    InvalidArgumentError,
    NotFoundError,
    from_grpc_error,
)
from prognos.scheduler.testing import erp_asset

if TYPE_CHECKING:
    from conftest import Scheduler

S = scheduler_pb2
LONG_ID = "a" * 10_000
INTERNAL_NAMES = ("p_open", "p_close", "rul_open", "rul_close", "hours_per_rul_unit")


def _raw_status(error: grpc.aio.AioRpcError) -> bytes:
    (raw,) = [v for k, v in error.trailing_metadata() or () if k == DETAILS_METADATA_KEY]
    assert isinstance(raw, bytes)
    status_pb2.Status.FromString(raw)  # it parses as a google.rpc.Status
    return raw


async def test_nan_and_a_long_id_get_field_violations_that_quote_only_a_prefix(
    scheduler: Scheduler,
) -> None:
    asset = erp_asset(LONG_ID, "p1")
    asset.criticality = math.nan
    asset.downtime_cost_per_hour = -math.inf
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scheduler.stub.UpsertAssets(
            S.UpsertAssetsRequest(idempotency_key=str(uuid.uuid4()), assets=[asset])
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    typed = from_grpc_error(caught.value)
    assert isinstance(typed, InvalidArgumentError)
    violations = dict(typed.violations)
    assert violations["assets[0].criticality"] == "must be a finite number"
    assert violations["assets[0].downtime_cost_per_hour"] == "must be a finite number"
    described = violations["assets[0].asset_id"]
    assert "at most 200 characters" in described
    assert "(10000 characters)" in described
    assert len(described) < 250
    assert LONG_ID[:65] not in _raw_status(caught.value).decode("latin-1")
    assert LONG_ID[:65] not in (caught.value.details() or "")


async def test_an_unknown_long_id_is_not_echoed_whole(scheduler: Scheduler) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scheduler.stub.GetWorkOrder(S.GetWorkOrderRequest(work_order_id=LONG_ID))
    typed = from_grpc_error(caught.value)
    assert isinstance(typed, NotFoundError)
    assert typed.name.endswith("... (10000 characters)")
    assert len(_raw_status(caught.value)) < 1000


#: A policy, the field its error names and what the description says.
POLICIES = [
    (S.WorkOrderPolicy(open_probability=math.nan), "policy.open_probability", "finite"),
    (S.WorkOrderPolicy(hours_per_cycle=math.inf), "policy.hours_per_cycle", "finite"),
    (
        S.WorkOrderPolicy(open_probability=0.6, close_probability=0.7),
        "policy.close_probability",
        "must be in [0, open_probability]",
    ),
    (
        S.WorkOrderPolicy(open_remaining_useful_life=5.0),
        "policy.close_remaining_useful_life",
        "set both open_remaining_useful_life and close_remaining_useful_life",
    ),
    (
        S.WorkOrderPolicy(open_remaining_useful_life=math.nan, close_remaining_useful_life=9),
        "policy.open_remaining_useful_life",
        "finite",
    ),
]


async def test_a_policy_error_speaks_the_contract(scheduler: Scheduler) -> None:
    for policy, field, description in POLICIES:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await scheduler.stub.SetWorkOrderPolicy(
                S.SetWorkOrderPolicyRequest(
                    idempotency_key=str(uuid.uuid4()), asset_type="fan", policy=policy
                )
            )
        typed = from_grpc_error(caught.value)
        assert isinstance(typed, InvalidArgumentError)
        ((got_field, got_description),) = typed.violations
        assert got_field == field
        assert description in got_description
        assert not any(name in typed.message for name in INTERNAL_NAMES), typed.message

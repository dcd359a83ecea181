"""Bad values in error texts: a short prefix and the length, never the whole of a long one."""

from __future__ import annotations

import math

import pytest
from google.rpc import error_details_pb2, status_pb2

from prognos.core.errors import (
    DETAILS_METADATA_KEY,
    QUOTE_LIMIT,
    AlreadyExistsError,
    NotFoundError,
    quote,
    shorten,
    to_rpc_status,
)
from prognos.core.quoting import finite


def test_a_short_value_is_quoted_whole() -> None:
    assert quote("turbofan-v3") == "'turbofan-v3'"
    assert shorten("turbofan-v3") == "turbofan-v3"
    assert quote(1.5) == "1.5"


def test_a_long_value_shows_a_prefix_and_its_length() -> None:
    value = "x" * 10_000
    quoted = quote(value)
    assert quoted == f"{'x' * QUOTE_LIMIT!r}... (10000 characters)"
    assert shorten(value) == f"{'x' * QUOTE_LIMIT}... (10000 characters)"
    assert quote("y" * (QUOTE_LIMIT + 1)).startswith(repr("y" * QUOTE_LIMIT))
    assert quote("y" * QUOTE_LIMIT) == repr("y" * QUOTE_LIMIT)


def test_a_custom_limit_is_kept() -> None:
    assert shorten("abcdef", limit=3) == "abc... (6 characters)"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinities_are_not_finite(value: float) -> None:
    assert not finite(value)


def test_zero_and_negative_numbers_are_finite() -> None:
    assert finite(0.0)
    assert finite(-1e300)


@pytest.mark.parametrize("cls", [NotFoundError, AlreadyExistsError])
def test_a_resource_error_never_carries_a_long_name_whole(cls: type[NotFoundError]) -> None:
    name = "z" * 10_000
    status = to_rpc_status(cls("model_version", name), "registry")
    assert len(status.details) < 200
    assert "(10000 characters)" in status.details
    (raw,) = [v for k, v in status.trailing_metadata if k == DETAILS_METADATA_KEY]
    rich = status_pb2.Status.FromString(raw)
    assert len(raw) < 1000
    for packed in rich.details:
        if packed.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            info = error_details_pb2.ResourceInfo()
            packed.Unpack(info)
            assert info.resource_name == shorten(name)
            break
    else:
        pytest.fail("no ResourceInfo in the status")


def test_a_resource_error_keeps_a_short_name_as_it_is() -> None:
    error = NotFoundError("model_version", "turbofan-v3")
    assert error.name == "turbofan-v3"
    assert error.message == "model_version 'turbofan-v3' not found"

"""Wait for a condition with a deadline: the only way tests wait for something."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["assert_eventually", "wait_until"]


def _passed(result: object) -> bool:
    # None is an assertion-style check that raised nothing; anything else is a predicate.
    return result is None or bool(result)


def _timeout_error(
    message: str | None,
    timeout: float,
    last_result: object,
    last_error: BaseException | None,
) -> AssertionError:
    what = message or "condition"
    detail = f"last error: {last_error!r}" if last_error else f"last result: {last_result!r}"
    return AssertionError(f"{what} not met within {timeout:g}s ({detail})")


async def assert_eventually(
    condition: Callable[[], Any] | Callable[[], Awaitable[Any]],
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 - the deadline is what this helper is about
    interval: float = 0.05,
    message: str | None = None,
    retry_on: tuple[type[Exception], ...] = (AssertionError,),
) -> Any:
    """Call ``condition`` until it passes, or fail after ``timeout`` seconds.

    ``condition`` is a plain or async callable, in one of two styles:

    * a predicate: it passes when it returns a truthy value (``lambda: path.exists()``);
    * an assertion: it passes when it returns ``None`` without raising, and is retried
      while it raises one of ``retry_on`` (``async def check(): assert ...``).

    Args:
        condition: The check to repeat.
        timeout: Seconds before giving up.
        interval: Seconds between two calls.
        message: What was awaited, for the failure message.
        retry_on: Exceptions that mean "not yet"; others propagate at once.

    Returns:
        The last result of ``condition`` (the truthy value of a predicate).

    Raises:
        AssertionError: The condition did not pass in time; chained to its last error.
    """
    deadline = time.monotonic() + timeout
    while True:
        last_error: Exception | None = None
        result: Any = False
        try:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
        except retry_on as error:
            last_error = error
        else:
            if _passed(result):
                return result
        if time.monotonic() >= deadline:
            raise _timeout_error(message, timeout, result, last_error) from last_error
        await asyncio.sleep(interval)


def wait_until(
    condition: Callable[[], Any],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | None = None,
    retry_on: tuple[type[Exception], ...] = (AssertionError,),
) -> Any:
    """Blocking twin of :func:`assert_eventually` for sync code and sync tests.

    Args:
        condition: A plain callable, predicate or assertion style.
        timeout: Seconds before giving up.
        interval: Seconds between two calls.
        message: What was awaited, for the failure message.
        retry_on: Exceptions that mean "not yet"; others propagate at once.

    Returns:
        The last result of ``condition``.

    Raises:
        AssertionError: The condition did not pass in time; chained to its last error.
    """
    deadline = time.monotonic() + timeout
    while True:
        last_error: Exception | None = None
        result: Any = False
        try:
            result = condition()
        except retry_on as error:
            last_error = error
        else:
            if _passed(result):
                return result
        if time.monotonic() >= deadline:
            raise _timeout_error(message, timeout, result, last_error) from last_error
        time.sleep(interval)

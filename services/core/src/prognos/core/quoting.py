"""How an error shows a caller's bad value: a short prefix, never the whole of a long one.

An error that quotes what the caller sent helps them find it, but echoing a 10,000-character
id back (into a message, a log line, an audit entry) helps nobody and can carry whatever the
caller chose to put there. Every error text that names a bad value goes through ``quote`` (or
``shorten`` where the value stands unquoted, as a resource name or a field path does).

This module imports nothing of gRPC, so that domain code may use it too.
"""

from __future__ import annotations

import math

__all__ = ["NOT_FINITE", "QUOTE_LIMIT", "finite", "quote", "shorten"]

QUOTE_LIMIT = 64
"""The most characters of a bad value an error text shows."""

NOT_FINITE = "must be a finite number"
"""What a field violation says of NaN or an infinity, whatever range the field has."""


def shorten(value: str, limit: int = QUOTE_LIMIT) -> str:
    """``value`` itself when short, else its first ``limit`` characters, "..." and its length.

    Args:
        value: The text to show.
        limit: The most characters of ``value`` to keep.

    Returns:
        ``value`` when it has at most ``limit`` characters, otherwise for example
        ``"abc... (10000 characters)"``.
    """
    if len(value) <= limit:
        return value
    return f"{value[:limit]}... ({len(value)} characters)"


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """A bad value as an error text shows it: quoted, and cut after ``limit`` characters.

    Args:
        value: What the caller sent; a string is quoted, anything else shown by its ``repr``.
        limit: The most characters of the value to show.

    Returns:
        For example ``'turbofan-v3'``, or ``'xxxx...'... (10000 characters)`` for a long one.
    """
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(text) if isinstance(value, str) else text
    return f"{text[:limit]!r}... ({len(text)} characters)"


def finite(value: float) -> bool:
    """Whether ``value`` is a finite number (not NaN, not an infinity).

    Check this before any range: NaN fails every comparison, so ``not value >= 0`` would call
    it negative, and ``value < 0`` would let it through.
    """
    return math.isfinite(value)

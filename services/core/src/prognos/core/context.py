"""Request-scoped values: who is acting, set by the server's interceptors."""

from __future__ import annotations

from contextvars import ContextVar, Token

_actor: ContextVar[str | None] = ContextVar("prognos_actor", default=None)


def current_actor() -> str | None:
    """The principal acting in this request or message, if one is known."""
    return _actor.get()


def set_actor(actor: str | None) -> Token[str | None]:
    """Make ``actor`` the acting principal until the returned token is reset."""
    return _actor.set(actor)


def reset_actor(token: Token[str | None]) -> None:
    _actor.reset(token)

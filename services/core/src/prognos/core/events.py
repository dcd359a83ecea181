"""Domain events: frozen dataclasses, stored as JSON, upcast on read.

A domain event is private to its service and lives in that service's event store. It names
a fact in the past tense (``AssetTypeRegistered``). Its stored form is its type name, its
schema version and a JSON document; an older document is upcast, one version at a time,
by ``upcast_v<N>_v<N+1>`` static methods on the class, and never rewritten in the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar

from pydantic import TypeAdapter

_REGISTRY: dict[str, type[DomainEvent]] = {}


class UnknownEventTypeError(LookupError):
    """A stored event names a type that no loaded module declares."""


@dataclass(frozen=True)
class DomainEvent:
    """Base of every domain event.

    Subclasses are frozen dataclasses. ``schema_version`` is bumped when the stored shape
    changes, together with an ``upcast_v<old>_v<new>(data: dict) -> dict`` static method.
    """

    schema_version: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[event_type_name(cls)] = cls


def event_type_name(cls: type[DomainEvent]) -> str:
    """The stable name an event type is stored under: ``<service>.<ClassName>``."""
    parts = cls.__module__.split(".")
    owner = parts[1] if len(parts) > 1 and parts[0] == "prognos" else cls.__module__
    return f"{owner}.{cls.__qualname__}"


@cache
def _adapter(cls: type[DomainEvent]) -> TypeAdapter[Any]:
    return TypeAdapter(cls)


def encode(event: DomainEvent) -> tuple[str, int, dict[str, Any]]:
    """Turn an event into ``(type name, schema version, JSON-ready document)``."""
    cls = type(event)
    data = _adapter(cls).dump_python(event, mode="json")
    return event_type_name(cls), cls.schema_version, data


def decode(type_name: str, schema_version: int, data: dict[str, Any]) -> DomainEvent:
    """Rebuild an event from its stored form, upcasting old schema versions.

    Raises:
        UnknownEventTypeError: no loaded class is registered under ``type_name``.
    """
    cls = _REGISTRY.get(type_name)
    if cls is None:
        raise UnknownEventTypeError(type_name)
    version = schema_version
    while version < cls.schema_version:
        upcast = getattr(cls, f"upcast_v{version}_v{version + 1}")
        data = upcast(data)
        version += 1
    result: DomainEvent = _adapter(cls).validate_python(data)
    return result

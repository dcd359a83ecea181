"""Asset types and assets: what a fleet looks like, and the facts that change it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from prognos.core.events import DomainEvent


@dataclass(frozen=True)
class SensorChannel:
    """One sensor channel of an asset type, in its canonical unit."""

    name: str
    unit: str
    min_value: float
    max_value: float
    expected_interval_s: float


@dataclass(frozen=True)
class FailureHorizon:
    """How far ahead a failure is predicted: a duration or a number of operating cycles."""

    value: float
    unit: str  # "hours" or "cycles"


@dataclass(frozen=True)
class AssetTypeSpec:
    """Everything an asset type declares."""

    name: str
    display_name: str
    channels: tuple[SensorChannel, ...]
    horizon: FailureHorizon
    description: str = ""

    def channel(self, name: str) -> SensorChannel | None:
        return next((c for c in self.channels if c.name == name), None)


class AssetTypeInvalidError(ValueError):
    """An asset type declaration breaks a rule; ``field`` names the offending field."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


@dataclass(frozen=True)
class AssetTypeRegistered(DomainEvent):
    spec: AssetTypeSpec


@dataclass(frozen=True)
class AssetTypeUpdated(DomainEvent):
    spec: AssetTypeSpec


def validate_spec(spec: AssetTypeSpec) -> None:
    """Raise ``AssetTypeInvalidError`` naming the first field that breaks a rule."""
    if not spec.name or not spec.name.replace("-", "").replace("_", "").isalnum():
        raise AssetTypeInvalidError("asset_type.name", "use letters, digits, '-' and '_'")
    if not spec.channels:
        raise AssetTypeInvalidError("asset_type.channels", "declare at least one channel")
    seen: set[str] = set()
    for i, ch in enumerate(spec.channels):
        where = f"asset_type.channels[{i}]"
        if not ch.name:
            raise AssetTypeInvalidError(f"{where}.name", "must not be empty")
        if ch.name in seen:
            raise AssetTypeInvalidError(f"{where}.name", f"duplicate channel {ch.name!r}")
        seen.add(ch.name)
        if not ch.unit:
            raise AssetTypeInvalidError(f"{where}.unit", "must name a unit")
        if not ch.min_value < ch.max_value:
            raise AssetTypeInvalidError(f"{where}.max_value", "must be above min_value")
        if ch.expected_interval_s <= 0:
            raise AssetTypeInvalidError(f"{where}.expected_interval", "must be positive")
    if spec.horizon.unit not in ("hours", "cycles") or spec.horizon.value <= 0:
        raise AssetTypeInvalidError("asset_type.horizon", "a positive number of hours or cycles")


@dataclass
class AssetType:
    """The asset type aggregate: a fold of its events."""

    spec: AssetTypeSpec
    version: int = 0
    pending: list[DomainEvent] = field(default_factory=list)

    @classmethod
    def register(cls, spec: AssetTypeSpec) -> AssetType:
        validate_spec(spec)
        asset_type = cls(spec=spec)
        asset_type._record(AssetTypeRegistered(spec=spec))
        return asset_type

    def update(self, spec: AssetTypeSpec) -> None:
        if spec.name != self.spec.name:
            raise AssetTypeInvalidError("asset_type.name", "an asset type cannot be renamed")
        validate_spec(spec)
        self._record(AssetTypeUpdated(spec=spec))

    def _record(self, event: DomainEvent) -> None:
        self.apply(event)
        self.pending.append(event)

    def apply(self, event: DomainEvent) -> None:
        if isinstance(event, AssetTypeRegistered | AssetTypeUpdated):
            self.spec = replace(event.spec)
        self.version += 1

    @classmethod
    def replay(cls, events: list[DomainEvent]) -> AssetType:
        first = events[0]
        assert isinstance(first, AssetTypeRegistered)
        asset_type = cls(spec=first.spec)
        for event in events:
            asset_type.apply(event)
        return asset_type

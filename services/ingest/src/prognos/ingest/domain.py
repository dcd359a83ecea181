"""Asset types and assets: what a fleet looks like, and the facts that change it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from prognos.core.events import DomainEvent

MAX_FAILURE_MODES = 64
MAX_FAILURE_MODE_NAME = 63
MAX_FAILURE_MODE_DESCRIPTION = 1024
_SNAKE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


@dataclass(frozen=True)
class SensorChannel:
    """One sensor channel of an asset type, in its canonical unit.

    An operating setting (load, speed set point, altitude) defines the regime the asset
    runs in rather than measuring its condition.
    """

    name: str
    unit: str
    min_value: float
    max_value: float
    expected_interval_s: float
    operating_setting: bool = False


@dataclass(frozen=True)
class FailureMode:
    """One way an asset type is known to fail, named in lower_snake_case."""

    name: str
    description: str = ""


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
    failure_modes: tuple[FailureMode, ...] = ()

    def channel(self, name: str) -> SensorChannel | None:
        return next((c for c in self.channels if c.name == name), None)

    def accepts_failure_mode(self, name: str) -> bool:
        """Whether a label may name this mode: a type that declares none accepts any."""
        return not self.failure_modes or any(m.name == name for m in self.failure_modes)


class AssetTypeInvalidError(ValueError):
    """An asset type declaration breaks a rule; ``field`` names the offending field."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


def _upcast_spec_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 specs had no failure modes and no operating settings."""
    spec = dict(data["spec"])
    spec.setdefault("failure_modes", [])
    spec["channels"] = [{"operating_setting": False, **c} for c in spec.get("channels", [])]
    return {**data, "spec": spec}


@dataclass(frozen=True)
class AssetTypeRegistered(DomainEvent):
    spec: AssetTypeSpec

    schema_version: ClassVar[int] = 2
    upcast_v1_v2 = staticmethod(_upcast_spec_v1_v2)


@dataclass(frozen=True)
class AssetTypeUpdated(DomainEvent):
    spec: AssetTypeSpec

    schema_version: ClassVar[int] = 2
    upcast_v1_v2 = staticmethod(_upcast_spec_v1_v2)


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
    if all(ch.operating_setting for ch in spec.channels):
        raise AssetTypeInvalidError(
            "asset_type.channels", "at least one channel must measure condition, not a setting"
        )
    _validate_failure_modes(spec.failure_modes)
    if spec.horizon.unit not in ("hours", "cycles") or spec.horizon.value <= 0:
        raise AssetTypeInvalidError("asset_type.horizon", "a positive number of hours or cycles")


def _validate_failure_modes(modes: tuple[FailureMode, ...]) -> None:
    if len(modes) > MAX_FAILURE_MODES:
        raise AssetTypeInvalidError(
            "asset_type.failure_modes",
            f"{len(modes)} failure modes, at most {MAX_FAILURE_MODES}",
        )
    seen: set[str] = set()
    for i, mode in enumerate(modes):
        where = f"asset_type.failure_modes[{i}]"
        if not is_failure_mode_name(mode.name):
            raise AssetTypeInvalidError(
                f"{where}.name",
                f"lower_snake_case, 1 to {MAX_FAILURE_MODE_NAME} characters, e.g. 'tool_wear'",
            )
        if mode.name in seen:
            raise AssetTypeInvalidError(f"{where}.name", f"duplicate failure mode {mode.name!r}")
        seen.add(mode.name)
        if len(mode.description) > MAX_FAILURE_MODE_DESCRIPTION:
            raise AssetTypeInvalidError(
                f"{where}.description", f"at most {MAX_FAILURE_MODE_DESCRIPTION} characters"
            )


def is_failure_mode_name(name: str) -> bool:
    """Whether ``name`` is a lower_snake_case failure mode name of allowed length."""
    return len(name) <= MAX_FAILURE_MODE_NAME and _SNAKE.fullmatch(name) is not None


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


# --- assets --------------------------------------------------------------------------------

_MAX_ID_LENGTH = 200


class AssetInvalidError(ValueError):
    """An asset declaration breaks a rule; ``field`` names the offending field."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


@dataclass(frozen=True)
class AssetSpec:
    """One machine: its id, its plant and its type."""

    asset_id: str
    plant: str
    asset_type: str
    erp_id: str = ""


@dataclass(frozen=True)
class Outcome:
    """Whether an asset failed at a time: a label for training.

    ``repaired_at_us`` is when the asset was back in service after the failure, if known.
    """

    time_us: int
    failure_confirmed: bool
    source: str
    failure_mode: str = ""
    repaired_at_us: int | None = None

    @property
    def fact(self) -> tuple[int, bool, str, str]:
        """What the label says (time, verdict, failure mode) and who says it."""
        return (self.time_us, self.failure_confirmed, self.failure_mode, self.source)


@dataclass(frozen=True)
class AssetRegistered(DomainEvent):
    spec: AssetSpec
    registered_at_us: int


@dataclass(frozen=True)
class OutcomeRecorded(DomainEvent):
    asset_id: str
    asset_type: str
    outcome: Outcome

    schema_version: ClassVar[int] = 2

    @staticmethod
    def upcast_v1_v2(data: dict[str, Any]) -> dict[str, Any]:
        """Version 1 outcomes had no repair time."""
        return {**data, "outcome": {"repaired_at_us": None, **data["outcome"]}}


def validate_asset(spec: AssetSpec) -> None:
    """Raise ``AssetInvalidError`` naming the first field that breaks a rule."""
    for name in ("asset_id", "plant"):
        value = getattr(spec, name)
        if not value or not value.strip():
            raise AssetInvalidError(name, "must not be empty")
        if len(value) > _MAX_ID_LENGTH or not value.isprintable() or value != value.strip():
            raise AssetInvalidError(
                name, f"at most {_MAX_ID_LENGTH} printable characters, no surrounding spaces"
            )
    if ":" in spec.asset_id:
        raise AssetInvalidError("asset_id", "must not contain ':'")
    if not spec.asset_type:
        raise AssetInvalidError("asset_type", "must name a registered asset type")


@dataclass
class Asset:
    """The asset aggregate: its registration and the outcomes recorded for it."""

    spec: AssetSpec
    registered_at_us: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    version: int = 0
    pending: list[DomainEvent] = field(default_factory=list)
    _facts: set[tuple[int, bool, str, str]] = field(default_factory=set, repr=False)

    @classmethod
    def register(cls, spec: AssetSpec, now_us: int) -> Asset:
        validate_asset(spec)
        asset = cls(spec=spec)
        asset._record(AssetRegistered(spec=spec, registered_at_us=now_us))
        return asset

    def record_outcome(self, outcome: Outcome) -> bool:
        """Record a label; False when the same label (time, verdict, mode, source) is known."""
        if outcome.fact in self._facts:
            return False
        self._record(OutcomeRecorded(self.spec.asset_id, self.spec.asset_type, outcome))
        return True

    def _record(self, event: DomainEvent) -> None:
        self.apply(event)
        self.pending.append(event)

    def apply(self, event: DomainEvent) -> None:
        if isinstance(event, AssetRegistered):
            self.spec = event.spec
            self.registered_at_us = event.registered_at_us
        elif isinstance(event, OutcomeRecorded):
            self.outcomes.append(event.outcome)
            self._facts.add(event.outcome.fact)
        self.version += 1

    @classmethod
    def replay(cls, events: list[DomainEvent]) -> Asset:
        first = events[0]
        assert isinstance(first, AssetRegistered)
        asset = cls(spec=first.spec)
        for event in events:
            asset.apply(event)
        return asset


# --- dataset snapshots ----------------------------------------------------------------------


class SnapshotInvalidError(ValueError):
    """A snapshot request breaks a rule; ``field`` names the offending field."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


@dataclass(frozen=True)
class SnapshotFile:
    """One archive file frozen into a snapshot."""

    path: str
    content_hash: str
    row_count: int
    size_bytes: int
    kind: str  # "telemetry" or "labels"
    asset_id: str
    min_time_us: int
    max_time_us: int


@dataclass(frozen=True)
class DatasetSnapshotCreated(DomainEvent):
    snapshot_id: str
    name: str
    asset_type: str
    asset_ids: tuple[str, ...]
    start_us: int | None
    end_us: int | None
    files: tuple[SnapshotFile, ...]
    content_hash: str
    row_count: int
    root_uri: str
    created_at_us: int
    created_by: str


def snapshot_content_hash(files: tuple[SnapshotFile, ...]) -> str:
    """SHA-256 over the sorted ``"<path> <content_hash>"`` lines, as ``sha256:<hex>``."""
    import hashlib

    digest = hashlib.sha256()
    for item in sorted(files, key=lambda f: f.path):
        digest.update(f"{item.path} {item.content_hash}\n".encode())
    return f"sha256:{digest.hexdigest()}"


def validate_snapshot_name(name: str) -> None:
    if not name or len(name) > _MAX_ID_LENGTH or not name.isprintable() or name != name.strip():
        raise SnapshotInvalidError("name", f"1 to {_MAX_ID_LENGTH} printable characters")

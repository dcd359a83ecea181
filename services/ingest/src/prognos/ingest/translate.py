"""Translation between the ingest domain and its protobuf messages (the edge)."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from prognos.api.ingest.v1 import events_pb2, ingest_pb2
from prognos.ingest.domain import (
    AssetSpec,
    AssetTypeSpec,
    DatasetSnapshotCreated,
    FailureHorizon,
    FailureMode,
    Outcome,
    SensorChannel,
)

_KIND = {
    "telemetry": ingest_pb2.DATASET_FILE_KIND_TELEMETRY,
    "labels": ingest_pb2.DATASET_FILE_KIND_LABELS,
}


def spec_from_proto(message: ingest_pb2.AssetType) -> AssetTypeSpec:
    """The domain spec of an ``AssetType`` message (validation happens in the domain)."""
    which = message.horizon.WhichOneof("horizon")
    if which == "duration":
        horizon = FailureHorizon(
            message.horizon.duration.ToTimedelta().total_seconds() / 3600, "hours"
        )
    elif which == "cycles":
        horizon = FailureHorizon(float(message.horizon.cycles), "cycles")
    else:
        horizon = FailureHorizon(0.0, "unset")
    return AssetTypeSpec(
        name=message.name,
        display_name=message.display_name or message.name,
        description=message.description,
        channels=tuple(
            SensorChannel(
                name=c.name,
                unit=c.unit,
                min_value=c.min_value,
                max_value=c.max_value,
                expected_interval_s=c.expected_interval.ToTimedelta().total_seconds(),
                operating_setting=c.operating_setting,
            )
            for c in message.channels
        ),
        horizon=horizon,
        failure_modes=tuple(
            FailureMode(name=m.name, description=m.description) for m in message.failure_modes
        ),
    )


def spec_to_proto(spec: AssetTypeSpec) -> ingest_pb2.AssetType:
    """The ``AssetType`` message of a domain spec."""
    message = ingest_pb2.AssetType(
        name=spec.name, display_name=spec.display_name, description=spec.description
    )
    for c in spec.channels:
        interval = Duration()
        interval.FromNanoseconds(round(c.expected_interval_s * 1e9))
        message.channels.append(
            ingest_pb2.SensorChannel(
                name=c.name,
                unit=c.unit,
                min_value=c.min_value,
                max_value=c.max_value,
                expected_interval=interval,
                operating_setting=c.operating_setting,
            )
        )
    for mode in spec.failure_modes:
        message.failure_modes.add(name=mode.name, description=mode.description)
    if spec.horizon.unit == "cycles":
        message.horizon.cycles = round(spec.horizon.value)
    else:
        message.horizon.duration.FromNanoseconds(round(spec.horizon.value * 3600 * 1e9))
    return message


def timestamp_us(value_us: int) -> Timestamp:
    """A ``Timestamp`` of microseconds since the Unix epoch."""
    stamp = Timestamp()
    stamp.FromMicroseconds(int(value_us))
    return stamp


def asset_to_proto(spec: AssetSpec, registered_at_us: int) -> ingest_pb2.Asset:
    return ingest_pb2.Asset(
        asset_id=spec.asset_id,
        plant=spec.plant,
        asset_type=spec.asset_type,
        erp_id=spec.erp_id,
        registered_at=timestamp_us(registered_at_us),
    )


def outcome_to_proto(
    asset_id: str, asset_type: str, outcome: Outcome
) -> events_pb2.OutcomeLabelRecorded:
    message = events_pb2.OutcomeLabelRecorded(
        asset_id=asset_id,
        asset_type=asset_type,
        time=timestamp_us(outcome.time_us),
        failure_confirmed=outcome.failure_confirmed,
        source=outcome.source,
        failure_mode=outcome.failure_mode,
    )
    if outcome.repaired_at_us is not None:
        message.repaired_at.CopyFrom(timestamp_us(outcome.repaired_at_us))
    return message


def snapshot_to_proto(event: DatasetSnapshotCreated) -> ingest_pb2.DatasetSnapshot:
    """The ``DatasetSnapshot`` message of a frozen snapshot."""
    message = ingest_pb2.DatasetSnapshot(
        id=event.snapshot_id,
        name=event.name,
        asset_type=event.asset_type,
        content_hash=event.content_hash,
        row_count=event.row_count,
        created_at=timestamp_us(event.created_at_us),
        created_by=event.created_by,
        root_uri=event.root_uri,
    )
    if event.start_us is not None:
        message.start_time.CopyFrom(timestamp_us(event.start_us))
    if event.end_us is not None:
        message.end_time.CopyFrom(timestamp_us(event.end_us))
    for item in sorted(event.files, key=lambda f: f.path):
        message.files.add(
            path=item.path,
            content_hash=item.content_hash,
            row_count=item.row_count,
            size_bytes=item.size_bytes,
            kind=_KIND[item.kind],
            asset_id=item.asset_id,
            min_time=timestamp_us(item.min_time_us),
            max_time=timestamp_us(item.max_time_us),
        )
    return message

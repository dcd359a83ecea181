"""Translation between the ingest domain and its protobuf messages (the edge)."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration

from prognos.api.ingest.v1 import ingest_pb2
from prognos.ingest.domain import AssetTypeSpec, FailureHorizon, SensorChannel


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
            )
            for c in message.channels
        ),
        horizon=horizon,
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
            )
        )
    if spec.horizon.unit == "cycles":
        message.horizon.cycles = round(spec.horizon.value)
    else:
        message.horizon.duration.FromNanoseconds(round(spec.horizon.value * 3600 * 1e9))
    return message

"""Scoring: raw windows in, predictions out (runs on a worker thread, never on the event loop).

``score`` turns a batch of raw windows into model inputs, runs the model, digests every
input, and explains the windows whose failure probability reaches the attribution
threshold by occlusion: each feature in turn is set to its regime mean (0 in the model's
normalised space) and the drop in probability is that feature's contribution. It costs
one extra model call per feature, batched, for the windows explained only. ``explain``
does that last step alone, for windows already scored.

A health model is scored and explained alike on its anomaly: its windows are explained
from the anomaly score at the threshold on, and a feature's contribution is the drop of
the anomaly distance when it is occluded (the distance, unlike the calibrated score, does
not saturate, so two deviating sensors both show). Its predictions carry the anomaly score
and no RUL.

``predictions`` builds the ``Prediction`` messages from a template per model, which is
several times faster than building each message field by field.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from prognos.api.inference.v1 import inference_pb2
from prognos.api.ingest.v1 import ingest_pb2
from prognos.inference.models import ModelRunner, ServingModel

TOP_SENSORS = 5
_ID_NAMESPACE = uuid.UUID("6f1f4d0e-2b7a-4f5e-9b1c-7a9e3c6d2f10")
_US = 1_000_000
_SPLIT_IN_PYTHON = 16  # windows up to which timestamps are split without numpy


@dataclass(frozen=True)
class Contribution:
    """One channel's share of an explanation."""

    channel: str
    contribution: float
    value: float


@dataclass(frozen=True, eq=False)
class Scores:
    """One model's verdict on a batch of windows."""

    model: ServingModel
    inputs: np.ndarray = field(repr=False)
    rul: np.ndarray
    probability: np.ndarray
    digests: list[str]
    explanations: dict[int, list[Contribution]]
    #: ``(batch, modes)`` probability of each failure mode; ``None`` for a model without.
    modes: np.ndarray | None = None
    #: A health model's anomaly score and distance per window; ``None`` for other models.
    anomaly: np.ndarray | None = None
    distance: np.ndarray | None = None

    @property
    def explained(self) -> np.ndarray:
        """What the attribution threshold applies to: the anomaly score of a health model,
        the failure probability of any other."""
        return self.probability if self.anomaly is None else self.anomaly


def input_digest(window: np.ndarray) -> str:
    """``sha256:<hex>`` of a model input window (float32, C order, little-endian)."""
    return "sha256:" + hashlib.sha256(np.ascontiguousarray(window, "<f4").tobytes()).hexdigest()


def prediction_id(asset_id: str, model_version: str, digest: str, shadow: bool) -> str:
    """Deterministic id: the same window scored by the same model is the same prediction.

    It is the name-based (version 5) UUID of asset, model version, input digest and shadow
    flag in a namespace of our own, as ``uuid.uuid5`` computes it, formatted directly.
    """
    name = f"{asset_id}\0{model_version}\0{digest}\0{int(shadow)}".encode()
    raw = bytearray(hashlib.sha1(_ID_NAMESPACE.bytes + name, usedforsecurity=False).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def score(
    runner: ModelRunner,
    model: ServingModel,
    raw: np.ndarray,
    channels: Sequence[str],
    *,
    explain_at: float | None,
) -> Scores:
    """Score raw windows with ``model``.

    Args:
        runner: The calling thread's model runner.
        model: The model.
        raw: ``(batch, rows, channels)`` raw windows, at least ``model.window`` rows; the
            newest ``model.window`` rows are used.
        channels: Channel name of each raw column.
        explain_at: Explain windows whose probability (a health model's: anomaly score) is
            at least this; None: none.

    Raises:
        MissingChannelError: The readings lack a channel the model needs.
    """
    prep = model.preprocessing
    resolved = prep.resolve(channels)
    inputs = prep.inputs(raw[:, raw.shape[1] - model.window :], resolved)
    rul, probability = runner.run(model, inputs)
    digests = [input_digest(window) for window in inputs]
    modes = runner.run_modes(model, inputs) if prep.failure_modes else None
    anomaly = distance = None
    if model.health:
        anomaly, distance = runner.run_anomaly(model, inputs)
    scores = Scores(model, inputs, rul, probability, digests, {}, modes, anomaly, distance)
    if explain_at is not None:
        explain(runner, scores, raw, channels, explain_at)
    return scores


def explain(
    runner: ModelRunner,
    scores: Scores,
    raw: np.ndarray,
    channels: Sequence[str],
    explain_at: float,
) -> None:
    """Explain the scored windows whose probability (a health model's: anomaly score) is at
    least ``explain_at``, in place.

    Args:
        runner: The calling thread's model runner.
        scores: What ``score`` returned for ``raw``; its ``explanations`` are filled in.
        raw: The raw windows that were scored.
        channels: Channel name of each raw column.
        explain_at: The attribution threshold.
    """
    chosen = np.flatnonzero(scores.explained >= explain_at)
    if not len(chosen):
        return
    features = scores.model.preprocessing.resolve(channels)[1]
    feature_channels = [channels[i] for i in features]
    latest = _latest(raw[chosen][:, :, features])
    explained = scores.probability if scores.distance is None else scores.distance
    contributions = occlusion(runner, scores.model, scores.inputs[chosen], explained[chosen])
    for k, row in enumerate(chosen):
        scores.explanations[int(row)] = top_contributions(
            contributions[k], feature_channels, latest[k]
        )


def occlusion(
    runner: ModelRunner, model: ServingModel, inputs: np.ndarray, probability: np.ndarray
) -> np.ndarray:
    """Drop in probability (a health model's: anomaly distance) when each feature is
    replaced by its regime mean.

    Args:
        runner: The thread's model runner.
        model: The model.
        inputs: ``(n, window, features)`` model inputs.
        probability: The model's probability (distance) for each input.

    Returns:
        ``(n, features)`` contributions.
    """
    n, _, features = inputs.shape
    occluded = np.repeat(inputs[:, None], features, axis=1)  # (n, features, window, features)
    index = np.arange(features)
    occluded[:, index, :, index] = 0.0
    batch = occluded.reshape(n * features, *inputs.shape[1:])
    if model.health:
        _, p = runner.run_anomaly(model, batch)
    else:
        _, p = runner.run(model, batch)
    return probability[:, None] - p.reshape(n, features)


def top_contributions(
    contributions: np.ndarray, channels: Sequence[str], latest: np.ndarray
) -> list[Contribution]:
    """The largest contributions by magnitude, scaled so that all of them add up to 1."""
    total = float(np.abs(contributions).sum())
    shares = contributions / total if total > 0 else np.zeros_like(contributions)
    order = np.argsort(-np.abs(shares), kind="stable")[:TOP_SENSORS]
    return [Contribution(channels[i], float(shares[i]), float(latest[i])) for i in order]


def _latest(raw: np.ndarray) -> np.ndarray:
    """Newest non-missing value of each column of each window (NaN when none)."""
    valid = ~np.isnan(raw)
    rows = raw.shape[1]
    last = rows - 1 - np.argmax(valid[:, ::-1], axis=1)
    values = np.take_along_axis(raw, last[:, None, :], axis=1)[:, 0]
    return np.where(valid.any(axis=1), values, np.nan)


@dataclass(frozen=True)
class AssetInfo:
    """What a prediction says about its asset besides the scores."""

    asset_id: str
    asset_type: str
    plant: str
    horizon: ingest_pb2.FailureHorizon | None = None
    row_interval_s: float | None = None


def template(model: ServingModel, asset_type: str, shadow: bool) -> inference_pb2.Prediction:
    """The fields every prediction of ``model`` shares."""
    message = inference_pb2.Prediction(
        asset_type=asset_type, model_version=model.version, shadow=shadow
    )
    return message


def predictions(
    scores: Scores,
    assets: Sequence[AssetInfo],
    start_us: np.ndarray,
    end_us: np.ndarray,
    *,
    shadow: bool = False,
    made_at_us: int | None = None,
    into: RepeatedCompositeFieldContainer[inference_pb2.Prediction] | None = None,
) -> Sequence[inference_pb2.Prediction]:
    """One ``Prediction`` per scored window, in a repeated field built in place.

    Args:
        scores: The model's scores.
        assets: The asset of each window.
        start_us: Time of each window's first reading.
        end_us: Time of each window's last reading (the prediction's time).
        shadow: Whether these are the challenger's shadow predictions.
        made_at_us: When they were computed (now by default).
        into: The repeated ``Prediction`` field to add them to (and return); a new one
            by default.
    """
    made_at_us = made_at_us or time.time_ns() // 1000
    version = scores.model.version
    horizon_cycles = round(scores.model.preprocessing.horizon_cycles)
    templates: dict[tuple[str, str], tuple[inference_pb2.Prediction, bool]] = {}
    # Everything per window that numpy can do at once, as Python numbers.
    end_us = np.asarray(end_us, np.int64)
    end_s, end_ns = _split_all(end_us)
    start_s, start_ns = _split_all(np.asarray(start_us, np.int64))
    after_s, after_ns = _split_all(end_us + 1)
    probability = scores.probability.tolist()
    rul = scores.rul.tolist()
    digests = scores.digests
    explanations = scores.explanations
    mode_rows = scores.modes
    mode_names = () if mode_rows is None else scores.model.preprocessing.failure_modes
    anomaly = None if scores.anomaly is None else scores.anomaly.tolist()
    # Built in place in a repeated field: no copy per message.
    out = inference_pb2.PredictBatchResponse().predictions if into is None else into
    for i, asset in enumerate(assets):
        key = (asset.asset_type, asset.plant)
        entry = templates.get(key)
        if entry is None:
            base = template(scores.model, asset.asset_type, shadow)
            base.plant = asset.plant
            if asset.horizon is not None and asset.horizon.WhichOneof("horizon"):
                base.horizon.CopyFrom(asset.horizon)
            else:
                base.horizon.cycles = horizon_cycles
            base.made_at.seconds, base.made_at.nanos = _split(made_at_us)
            entry = templates[key] = (base, base.horizon.WhichOneof("horizon") == "duration")
        base, in_duration = entry
        p = out.add()
        p.MergeFrom(base)
        digest = digests[i]
        p.prediction_id = prediction_id(asset.asset_id, version, digest, shadow)
        p.asset_id = asset.asset_id
        p.failure_probability = probability[i]
        p.input_digest = digest
        if anomaly is not None:
            p.anomaly_score = anomaly[i]  # a health model estimates no RUL
        elif in_duration and asset.row_interval_s:
            seconds = rul[i] * asset.row_interval_s
            p.rul.duration.seconds = int(seconds)
            p.rul.duration.nanos = int((seconds - int(seconds)) * 1e9)
        else:
            p.rul.cycles = rul[i]
        stamp = p.time
        stamp.seconds, stamp.nanos = end_s[i], end_ns[i]
        window = p.window
        stamp = window.start_time
        stamp.seconds, stamp.nanos = start_s[i], start_ns[i]
        stamp = window.end_time
        stamp.seconds, stamp.nanos = after_s[i], after_ns[i]
        if mode_rows is not None:
            for k in np.argsort(-mode_rows[i], kind="stable").tolist():
                p.failure_modes.add(failure_mode=mode_names[k], probability=mode_rows[i][k])
        explanation = explanations.get(i)
        if explanation:
            for c in explanation:
                p.top_sensors.add(channel=c.channel, contribution=c.contribution, value=c.value)
    return out


def _split_all(us: np.ndarray) -> tuple[list[int], list[int]]:
    """Seconds and nanoseconds of microsecond times: by numpy for a batch, else by Python.

    Each numpy call has a fixed cost of microseconds that only a batch pays back (numpy is
    faster per window from a few dozen windows on); ``Predict`` splits a single one.
    """
    if len(us) <= _SPLIT_IN_PYTHON:
        pairs = [_split(u) for u in us.tolist()]
        return [s for s, _ in pairs], [n for _, n in pairs]
    seconds, rest = np.divmod(us, _US)
    return seconds.tolist(), (rest * 1000).tolist()


def _split(us: int) -> tuple[int, int]:
    seconds, rest = divmod(us, _US)
    return seconds, rest * 1000

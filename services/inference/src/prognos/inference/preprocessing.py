"""Serve-time preprocessing: raw channel windows to the model's input, from the exported JSON.

The registry exports a model's preprocessing as ``preprocessing.json``; this module reads
it without the training code and reproduces the recipe on whole batches of windows:

1. each row's operating regime is the nearest regime centroid, distances measured in
   rounding steps of each operating setting (``10 ** -decimals``);
2. the kept features are z-scored with that regime's mean and standard deviation;
3. a window is the newest ``window`` rows, oldest first; a shorter history is padded at
   the front with its oldest row (``WindowTable.windows`` does that).

Live readings have gaps (a quarantined reading is NaN): a missing value is carried
forward from the last reading of its channel (backward at the window's start), and a
feature with no reading in the whole window takes its regime's mean.

Training columns and telemetry channels may be named differently: the JSON may map them
(``"channels": {"s2": "sensor_2"}``); otherwise a column is found by its own name, and
the C-MAPSS training names (``setting_<n>``, ``s<n>``) also match the turbofan channels
(``op_setting_<n>``, ``sensor_<n>``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

FORMAT_VERSION = 1
_CMAPSS_ALIASES = (
    (re.compile(r"^setting_(\d+)$"), "op_setting_{}"),
    (re.compile(r"^s(\d+)$"), "sensor_{}"),
)


_RESOLVED_KEPT = 64  # channel lists remembered by ``resolve``


class PreprocessingFormatError(ValueError):
    """The preprocessing JSON is not in a format this service reads."""


class MissingChannelError(LookupError):
    """The model needs a channel the asset's readings do not have."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(f"readings lack the channels {', '.join(names)}")
        self.names = tuple(names)


@dataclass(frozen=True, eq=False)
class ServingPreprocessing:
    """A model's preprocessing, ready to apply to batches of raw windows."""

    window: int
    rul_clip: float
    horizon_cycles: float
    setting_columns: tuple[str, ...]
    setting_steps: np.ndarray = field(repr=False)
    regime_centroids: np.ndarray = field(repr=False)
    features: tuple[str, ...]
    means: np.ndarray = field(repr=False)
    stds: np.ndarray = field(repr=False)
    channel_names: Mapping[str, str] = field(default_factory=dict)
    #: The asset type's failure modes, in the order of the model's ``mode_probability``.
    failure_modes: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServingPreprocessing:
        """Read the registry's ``preprocessing.json`` document.

        Raises:
            PreprocessingFormatError: Unknown format version or missing keys.
        """
        if data.get("age_column"):
            raise PreprocessingFormatError(
                f"the model takes the unit's age ({data['age_column']!r}, cycles since its "
                "life began) as an input, which live telemetry does not carry"
            )
        if data.get("format_version") != FORMAT_VERSION:
            raise PreprocessingFormatError(
                f"unsupported preprocessing format {data.get('format_version')!r}"
            )
        if data.get("padding", "edge") != "edge":
            raise PreprocessingFormatError(f"unsupported padding {data.get('padding')!r}")
        try:
            decimals = np.asarray(data["setting_decimals"], np.float64)
            return cls(
                window=int(data["window"]),
                rul_clip=float(data["rul_clip"]),
                horizon_cycles=float(data["horizon_cycles"]),
                setting_columns=tuple(data["setting_columns"]),
                setting_steps=10.0**-decimals,
                regime_centroids=np.asarray(data["regime_centroids"], np.float64),
                features=tuple(data["features"]),
                means=np.asarray(data["means"], np.float64),
                stds=np.asarray(data["stds"], np.float64),
                channel_names=dict(data.get("channels", {})),
                failure_modes=tuple(str(m) for m in data.get("failure_modes", ())),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise PreprocessingFormatError(f"malformed preprocessing: {e!r}") from None

    def channel_for(self, column: str, available: Sequence[str]) -> str | None:
        """The telemetry channel holding training column ``column``, among ``available``."""
        named = self.channel_names.get(column)
        if named is not None:
            return named if named in available else None
        if column in available:
            return column
        for pattern, template in _CMAPSS_ALIASES:
            match = pattern.match(column)
            if match and template.format(match.group(1)) in available:
                return template.format(match.group(1))
        return None

    def resolve(self, channels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Indices into ``channels`` of the settings and of the features (read-only arrays).

        Remembered per channel list: live windows of one asset type always have the same.

        Raises:
            MissingChannelError: Some column has no channel.
        """
        key = tuple(channels)
        known = self._resolved.get(key)
        if known is None:
            known = self._resolve(key)
            if len(self._resolved) >= _RESOLVED_KEPT:
                self._resolved.clear()  # readings sent in requests may name any channels
            self._resolved[key] = known
        return known

    @cached_property
    def _resolved(self) -> dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]]:
        return {}

    def _resolve(self, channels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        settings, features, missing = [], [], []
        for target, columns in ((settings, self.setting_columns), (features, self.features)):
            for column in columns:
                channel = self.channel_for(column, channels)
                if channel is None:
                    missing.append(column)
                else:
                    target.append(channels.index(channel))
        if missing:
            raise MissingChannelError(missing)
        resolved = np.asarray(settings, np.int64), np.asarray(features, np.int64)
        for index in resolved:
            index.flags.writeable = False
        return resolved

    def inputs(self, raw: np.ndarray, resolved: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """The model input of a batch of raw windows.

        Computed in float32, as the model runs (raw readings are held in float32 too): it
        differs from the training code's float64 arithmetic by float32 rounding only.

        Args:
            raw: ``(batch, window, channels)`` raw values, NaN where a reading is missing.
            resolved: ``resolve(channels)``.

        Returns:
            ``(batch, window, features)`` float32.
        """
        setting_index, feature_index = resolved
        # One look for gaps in the whole window spares the per-step looks when there are
        # none, which is the common case (each numpy call costs microseconds on one window).
        complete = not np.isnan(raw).any() and self._finite_scales
        # np.take copies the columns several times faster than fancy indexing does.
        values = np.take(raw, feature_index, axis=2).astype(np.float32, copy=False)
        if not complete and np.isnan(values).any():
            values = fill_gaps(values)
        means, scales = self._means32, self._scales32
        if len(self.regime_centroids) == 1:
            values -= means[0]
            values *= scales[0]
        else:
            settings = np.take(raw, setting_index, axis=2).astype(np.float64)
            if not complete and np.isnan(settings).any():
                settings = fill_gaps(settings)
            regimes = self.regimes(settings)
            values -= np.take(means, regimes, axis=0)
            values *= np.take(scales, regimes, axis=0)
        if not complete:
            missing = np.isnan(values)
            if missing.any():
                values[missing] = 0.0  # no reading in the whole window: the regime's mean
        return values

    @cached_property
    def _finite_scales(self) -> bool:
        """Whether scaling a reading always gives a number (a zero std would not)."""
        return bool(np.isfinite(self._scales32).all() and np.isfinite(self._means32).all())

    @cached_property
    def _scaled_centroids(self) -> np.ndarray:
        return self.regime_centroids / self.setting_steps

    @cached_property
    def _centroid_terms(self) -> tuple[np.ndarray, np.ndarray]:
        centroids = self._scaled_centroids
        return -2.0 * centroids.T, (centroids * centroids).sum(axis=1)

    @cached_property
    def _means32(self) -> np.ndarray:
        return self.means.astype(np.float32)

    @cached_property
    def _scales32(self) -> np.ndarray:
        return (1.0 / self.stds).astype(np.float32)

    def regimes(self, settings: np.ndarray) -> np.ndarray:
        """Nearest regime of each row of ``(..., settings)``; NaN settings are ignored."""
        if len(self.regime_centroids) == 1:
            return np.zeros(settings.shape[:-1], np.int64)
        centroids = self._scaled_centroids
        scaled = settings / self.setting_steps
        if np.isnan(scaled).any():
            # Squared distances over the settings each row has (a NaN setting is ignored).
            gaps = scaled[..., None, :] - centroids
            distance = np.nansum(gaps * gaps, axis=-1)
        else:
            # |s - c|^2 = |s|^2 - 2 s.c + |c|^2, and |s|^2 is the same for every centroid.
            product, norms = self._centroid_terms
            distance = scaled @ product + norms
        # The first of equally near centroids wins, as in the training code.
        return np.argmin(distance, axis=-1)


def fill_gaps(values: np.ndarray) -> np.ndarray:
    """Carry each column's last reading forward along axis 1, then backward at the start.

    Args:
        values: ``(batch, rows, columns)`` with NaN gaps.

    Returns:
        The filled array (a column without any reading stays NaN).
    """
    missing = np.isnan(values)
    if not missing.any():
        return values
    rows = values.shape[1]
    index = np.where(missing, 0, np.arange(rows)[None, :, None])
    np.maximum.accumulate(index, axis=1, out=index)
    filled = np.take_along_axis(values, index, axis=1)
    still = np.isnan(filled)
    if still.any():
        back = np.where(np.isnan(filled), rows - 1, np.arange(rows)[None, :, None])
        back = np.minimum.accumulate(back[:, ::-1], axis=1)[:, ::-1]
        filled = np.take_along_axis(filled, back, axis=1)
    return filled

"""Gradient-boosted trees on window features, served by the same path as the networks.

For low-rate or per-operation data a sequence network has little to learn from; trees on a
few summaries of the window (the last row, mean, spread, trend, low and high of every input
column) usually do better. LightGBM fits one ensemble per target (the RUL, the failure
probability, each failure mode's probability), with the same censoring weights the networks
use. The fitted trees are then compiled into a Keras model of the networks' signature:
a window ``(batch, window, features)`` in, ``{"rul", "failure_probability"[,
"mode_probability"]}`` out. Two layers do it: ``WindowFeatures`` (the summaries) and
``TreeEnsemble`` (every tree walked to its leaf at once, one level per step, with gathers
and selects), so the model exports to a SavedModel and to LiteRT with builtin ops, and the
inference service scores and explains it like any other model.

Training features are computed by the same ``WindowFeatures`` layer that serves, so what the
trees learned on is exactly what they are given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from prognos.registry.training.models import (
    INPUT_NAME,
    MODE_OUTPUT,
    PROBABILITY_OUTPUT,
    RUL_OUTPUT,
)

ARCHITECTURE = "gbt"
SUMMARIES: tuple[str, ...] = ("last", "mean", "std", "slope", "min", "max")
#: Summaries are rounded to 1/1024 of a standard deviation of their column.
FEATURE_GRID = 1024.0
#: Rows per call when computing training features.
_FEATURE_BATCH = 4096


@keras.saving.register_keras_serializable(package="prognos")
class WindowFeatures(layers.Layer):
    """``(batch, window, f)`` to ``(batch, 6 f)``: last, mean, std, slope, min, max per column.

    A missing value (NaN, a gap beyond the carry-forward limit) reads as 0, the training
    mean after normalisation, as the networks' inputs do. The slope is per row of the
    window, by least squares. Every summary is rounded to ``1 / FEATURE_GRID``, so that
    TensorFlow and LiteRT, which sum in different orders, give the trees the same numbers.
    """

    def __init__(self, window: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.window = int(window)
        t = np.arange(self.window, dtype=np.float64)
        centred = t - t.mean()
        denominator = float(np.sum(centred**2)) or 1.0
        self._slope = (centred / denominator).astype(np.float32)

    def call(self, x: Any) -> Any:
        x = ops.where(ops.isnan(x), ops.zeros_like(x), x)
        last = x[:, -1, :]
        mean = ops.mean(x, axis=1)
        centred = x - mean[:, None, :]
        spread = ops.sqrt(ops.mean(centred * centred, axis=1))
        slope = ops.einsum("bwf,w->bf", x, ops.convert_to_tensor(self._slope))
        low = ops.min(x, axis=1)
        high = ops.max(x, axis=1)
        summaries = ops.concatenate([last, mean, spread, slope, low, high], axis=-1)
        # On a grid (a power of two: exact in float32) the runtimes' last-bit differences in
        # a mean or a sum vanish, and every split, which falls between two grid points, sees
        # the same value in TensorFlow and LiteRT.
        return ops.floor(summaries * FEATURE_GRID + 0.5) / FEATURE_GRID

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "window": self.window}


@keras.saving.register_keras_serializable(package="prognos")
class TreeEnsemble(layers.Layer):
    """The sum of a tree ensemble's leaves for each row, through a link, as ``(batch, 1)``.

    Trees are padded to one node count; a leaf points to itself and splits nothing (its
    threshold is +inf), so ``depth`` steps of "go left where ``x[feature] <= threshold``"
    bring every row of every tree to its leaf. ``link`` is ``identity`` (clamped to
    ``[0, 1]``, times ``scale``) or ``sigmoid``. The node arrays are the layer's
    (non-trainable) weights, so a saved model keeps them beside its config.
    """

    _ARRAYS = (
        ("feature", "int32"),
        ("threshold", "float32"),
        ("left", "int32"),
        ("right", "int32"),
        ("value", "float32"),
    )

    def __init__(
        self,
        trees: int,
        nodes: int,
        depth: int,
        link: str = "identity",
        scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.trees, self.nodes, self.depth = int(trees), int(nodes), int(depth)
        self.link = link
        self.scale = float(scale)
        self.node_arrays = {
            name: self.add_weight(
                shape=(self.trees * self.nodes,),
                dtype=dtype,
                initializer="zeros",
                trainable=False,
                name=name,
            )
            for name, dtype in self._ARRAYS
        }
        self._offsets = (np.arange(self.trees, dtype=np.int32) * self.nodes)[None, :]

    def set_trees(self, trees: Trees) -> None:
        """Load fitted node arrays (of this layer's shape)."""
        for name, dtype in self._ARRAYS:
            self.node_arrays[name].assign(np.asarray(getattr(trees, name), dtype).reshape(-1))

    def call(self, features: Any) -> Any:
        arrays = self.node_arrays
        offsets = ops.convert_to_tensor(self._offsets)
        batch = ops.shape(features)[0]
        node = ops.zeros((batch, self.trees), "int32")
        for _ in range(self.depth):
            index = node + offsets
            column = ops.take(arrays["feature"], index)
            x = ops.take_along_axis(features, column, axis=1)
            left = ops.take(arrays["left"], index)
            right = ops.take(arrays["right"], index)
            node = ops.where(x <= ops.take(arrays["threshold"], index), left, right)
        raw = ops.sum(ops.take(arrays["value"], node + offsets), axis=1, keepdims=True)
        if self.link == "sigmoid":
            return ops.sigmoid(raw)
        return ops.clip(raw, 0.0, 1.0) * self.scale

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "trees": self.trees,
            "nodes": self.nodes,
            "depth": self.depth,
            "link": self.link,
            "scale": self.scale,
        }


@dataclass(frozen=True)
class Trees:
    """The padded node arrays of one fitted ensemble (see ``TreeEnsemble``)."""

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    depth: int


def trees_of(dump: dict[str, Any]) -> Trees:
    """Node arrays of a LightGBM ``Booster.dump_model()``, every tree padded to one size.

    Only numerical ``<=`` splits are expected: features are never categorical and missing
    values are replaced before fitting, so the default direction never applies.
    """
    tree_nodes: list[list[tuple[int, float, int, int, float]]] = []
    depth = 0
    for info in dump["tree_info"]:
        nodes: list[tuple[int, float, int, int, float]] = []

        def visit(node: dict[str, Any], level: int, nodes: list = nodes) -> int:
            nonlocal depth
            index = len(nodes)
            nodes.append((0, np.inf, index, index, 0.0))
            if "leaf_value" in node:
                nodes[index] = (0, np.inf, index, index, float(node["leaf_value"]))
                depth = max(depth, level)
                return index
            if node.get("decision_type", "<=") != "<=":
                raise ValueError(f"unsupported split {node.get('decision_type')!r}")
            left = visit(node["left_child"], level + 1)
            right = visit(node["right_child"], level + 1)
            nodes[index] = (int(node["split_feature"]), float(node["threshold"]), left, right, 0.0)
            return index

        visit(info["tree_structure"], 0)
        tree_nodes.append(nodes)
    width = max(len(nodes) for nodes in tree_nodes)
    shape = (len(tree_nodes), width)
    feature = np.zeros(shape, np.int32)
    threshold = np.full(shape, np.inf, np.float64)
    left = np.tile(np.arange(width, dtype=np.int32), (len(tree_nodes), 1))
    right = left.copy()
    value = np.zeros(shape, np.float64)
    for t, nodes in enumerate(tree_nodes):
        for n, (f, thr, lo, hi, v) in enumerate(nodes):
            feature[t, n], threshold[t, n], left[t, n], right[t, n], value[t, n] = f, thr, lo, hi, v
    # A float32 threshold that rounds below a float64 one would send values equal to the
    # float32 feature the wrong way; round up instead.
    rounded = threshold.astype(np.float32)
    low = np.isfinite(threshold) & (rounded.astype(np.float64) < threshold)
    rounded[low] = np.nextafter(rounded[low], np.float32(np.inf))
    return Trees(feature, rounded, left, right, value.astype(np.float32), max(depth, 1))


def _layer(trees: Trees, name: str, link: str, scale: float = 1.0) -> TreeEnsemble:
    count, nodes = trees.feature.shape
    layer = TreeEnsemble(count, nodes, trees.depth, link=link, scale=scale, name=name)
    layer.set_trees(trees)
    return layer


def window_features(window: int, windows: np.ndarray) -> np.ndarray:
    """The summaries ``WindowFeatures`` serves, for training: ``(n, 6 f)`` float32."""
    layer = WindowFeatures(window)
    parts = [
        np.asarray(layer(np.asarray(windows[i : i + _FEATURE_BATCH], np.float32)))
        for i in range(0, len(windows), _FEATURE_BATCH)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


@dataclass(frozen=True)
class TreeOptions:
    """LightGBM's settings for every ensemble."""

    trees: int = 300
    leaves: int = 15
    depth: int = 6
    learning_rate: float = 0.05
    min_leaf: int = 20
    seed: int = 0


def _fit(
    features: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None,
    objective: str,
    options: TreeOptions,
) -> Trees:
    import lightgbm

    keep = np.ones(len(target), bool) if weight is None else weight > 0
    params = {
        "objective": objective,
        "num_leaves": options.leaves,
        "max_depth": options.depth,
        "learning_rate": options.learning_rate,
        "min_data_in_leaf": options.min_leaf,
        "seed": options.seed,
        "deterministic": True,
        "num_threads": 1,
        "verbosity": -1,
        "use_missing": False,
    }
    positives = float(np.sum(target[keep])) if objective == "binary" else 1.0
    if objective == "binary" and positives in (0.0, float(np.sum(keep))):
        # One class only: a constant ensemble at that class's log-odds (clipped).
        rate = np.clip(positives / max(float(np.sum(keep)), 1.0), 1e-4, 1 - 1e-4)
        return _constant(float(np.log(rate / (1 - rate))))
    data = lightgbm.Dataset(
        features[keep],
        label=target[keep],
        weight=None if weight is None else weight[keep],
        params={"verbosity": -1},
    )
    booster = lightgbm.train(params, data, num_boost_round=options.trees)
    return trees_of(booster.dump_model())


def _constant(value: float) -> Trees:
    one = np.zeros((1, 1))
    return Trees(
        one.astype(np.int32),
        np.full((1, 1), np.inf, np.float32),
        one.astype(np.int32),
        one.astype(np.int32),
        np.full((1, 1), value, np.float32),
        1,
    )


def fit_serving_model(
    windows: np.ndarray,
    rul: np.ndarray,
    failing: np.ndarray,
    modes: np.ndarray,
    *,
    rul_clip: float,
    options: TreeOptions,
    rul_weight: np.ndarray | None = None,
    probability_weight: np.ndarray | None = None,
    progress: Callable[[float], None] | None = None,
) -> keras.Model:
    """Fit the ensembles and compile them into a serving model of the networks' signature.

    Args:
        windows: ``(n, window, features)`` normalised training windows.
        rul: RUL target per window, in steps (clipped at ``rul_clip``).
        failing: 1 where the window's life fails within the horizon.
        modes: ``(n, modes)`` 0/1 per failure mode (0 wide for none).
        rul_clip: The RUL ceiling; the ``rul`` output is in ``[0, rul_clip]``.
        options: LightGBM's settings.
        rul_weight: Weight of each window in the RUL fit (0 drops it), e.g. censoring's.
        probability_weight: The same for the probability and mode fits.
        progress: Called with the fraction of ensembles fitted.
    """
    window = windows.shape[1]
    features = window_features(window, windows)
    fits = 2 + modes.shape[1]
    rul_trees = _fit(features, rul / rul_clip, rul_weight, "regression", options)
    if progress is not None:
        progress(1 / fits)
    probability_trees = _fit(features, failing, probability_weight, "binary", options)
    if progress is not None:
        progress(2 / fits)
    mode_trees = []
    for m in range(modes.shape[1]):
        mode_trees.append(_fit(features, modes[:, m], probability_weight, "binary", options))
        if progress is not None:
            progress((3 + m) / fits)

    inputs = keras.Input((window, windows.shape[2]), name=INPUT_NAME)
    summary = WindowFeatures(window, name="window_features")(inputs)
    outputs = {
        RUL_OUTPUT: _layer(rul_trees, "rul_trees", "identity", rul_clip)(summary),
        PROBABILITY_OUTPUT: _layer(probability_trees, "probability_trees", "sigmoid")(summary),
    }
    if mode_trees:
        heads = [
            _layer(trees, f"mode_{m}_trees", "sigmoid")(summary)
            for m, trees in enumerate(mode_trees)
        ]
        outputs[MODE_OUTPUT] = heads[0] if len(heads) == 1 else layers.Concatenate()(heads)
    return keras.Model(inputs, outputs, name="trees")

"""Candidate network architectures: a window of sensor history in, RUL and failure risk out.

Every builder returns ``Networks``: a *training* model whose outputs are the raw heads of
each ensemble member (RUL scaled to 0..1 and the failure probability), and a *serving*
model over the same layers that averages the members and gives
``{"rul": cycles clamped to [0, rul_clip], "failure_probability": 0..1}``, each of shape
``(batch, 1)``. Only built-in Keras layers are used, so saved models load without custom
objects and convert to LiteRT with builtin ops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

ARCHITECTURES: tuple[str, ...] = ("cnn", "dcnn", "tcn", "gru", "cnn_gru")
POOLINGS: tuple[str, ...] = ("last", "average", "attention")
INPUT_NAME = "window"
RUL_OUTPUT = "rul"
PROBABILITY_OUTPUT = "failure_probability"
MODE_OUTPUT = "mode_probability"


@dataclass(frozen=True)
class Networks:
    """A training model (one output pair per member) and the serving model over its layers."""

    training: keras.Model
    serving: keras.Model
    members: int


@dataclass(frozen=True)
class RecurrentOptions:
    """Shape of the recurrent trunks (``gru``, ``cnn_gru``); the others ignore it.

    ``pooling`` reads the GRU's sequence: ``last`` takes the final state, ``average`` the
    mean over all steps, ``attention`` a softmax-weighted sum with weights scored from each
    step. ``dropout`` applies before the dense layer, during training only.
    """

    units: int = 48
    layers: int = 1
    pooling: str = "last"
    dropout: float = 0.0


def build_networks(
    architecture: str,
    window: int,
    features: int,
    rul_clip: float,
    *,
    members: int = 1,
    recurrent: RecurrentOptions = RecurrentOptions(),
    smoothing: float = 0.0,
    modes: int = 0,
) -> Networks:
    """Build the named architecture for ``(window, features)`` inputs.

    Args:
        architecture: One of ``ARCHITECTURES``.
        window: Rows per input window.
        features: Features per row.
        rul_clip: The RUL target's ceiling; the serving output is scaled back to cycles.
        members: Independently initialised copies whose outputs the serving model averages
            (an ensemble when above one).
        recurrent: Width, depth, pooling and dropout of the recurrent trunks.
        smoothing: When above zero, every feature is exponentially smoothed along the window
            with this weight on the newest row (``smoothing_matrix``) before the trunks, as a
            fixed layer of the network, so servers feed raw windows as before.
        modes: Failure modes of the asset type: above zero, each member gets a head of that
            many sigmoids (each mode's probability within the horizon) and the serving model
            a ``mode_probability`` output of shape ``(batch, modes)``.
    """
    trunks: dict[str, Callable[[keras.KerasTensor, str, RecurrentOptions], keras.KerasTensor]] = {
        "cnn": _cnn_trunk,
        "dcnn": _dcnn_trunk,
        "tcn": _tcn_trunk,
        "gru": _gru_trunk,
        "cnn_gru": _cnn_gru_trunk,
    }
    if architecture not in trunks:
        raise ValueError(f"unknown architecture {architecture!r}; choose from {ARCHITECTURES}")
    if members < 1:
        raise ValueError(f"an ensemble needs at least one member, got {members}")
    if recurrent.pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {recurrent.pooling!r}; choose from {POOLINGS}")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing is a weight in [0, 1], got {smoothing}")
    count = members
    inputs = keras.Input(shape=(window, features), name=INPUT_NAME)
    source = inputs
    if 0.0 < smoothing < 1.0:
        source = _smoothed(inputs, window, smoothing)
    rul_heads: list[keras.KerasTensor] = []
    probability_heads: list[keras.KerasTensor] = []
    mode_heads: list[keras.KerasTensor] = []
    training_outputs: dict[str, keras.KerasTensor] = {}
    for m in range(count):
        prefix = f"m{m}_"
        hidden = trunks[architecture](source, prefix, recurrent)
        rul = layers.Dense(1, name=f"{prefix}rul_scaled")(hidden)
        probability = layers.Dense(1, activation="sigmoid", name=f"{prefix}probability")(hidden)
        rul_heads.append(rul)
        probability_heads.append(probability)
        training_outputs[f"{prefix}rul_scaled"] = rul
        training_outputs[f"{prefix}probability"] = probability
        if modes > 0:
            mode = layers.Dense(modes, activation="sigmoid", name=f"{prefix}modes")(hidden)
            mode_heads.append(mode)
            training_outputs[f"{prefix}modes"] = mode
    if count > 1:
        rul_mean = layers.Average(name="rul_mean")(rul_heads)
        probability_mean = layers.Average(name="probability_mean")(probability_heads)
    else:
        rul_mean, probability_mean = rul_heads[0], probability_heads[0]
    cycles = layers.Rescaling(scale=rul_clip, name="rul_cycles")(rul_mean)
    cycles = layers.ReLU(max_value=rul_clip, name=RUL_OUTPUT)(cycles)
    probability_out = layers.Identity(name=PROBABILITY_OUTPUT)(probability_mean)
    serving_outputs = {RUL_OUTPUT: cycles, PROBABILITY_OUTPUT: probability_out}
    if mode_heads:
        mode_mean = layers.Average(name="mode_mean")(mode_heads) if count > 1 else mode_heads[0]
        serving_outputs[MODE_OUTPUT] = layers.Identity(name=MODE_OUTPUT)(mode_mean)
    training = keras.Model(inputs, training_outputs, name=f"{architecture}_training")
    serving = keras.Model(inputs, serving_outputs, name=architecture)
    return Networks(training=training, serving=serving, members=count)


def _cnn_trunk(inputs: keras.KerasTensor, prefix: str, _: RecurrentOptions) -> keras.KerasTensor:
    """Plain 1D CNN: stacked 'same' convolutions over time, then the flattened sequence.

    After Li, Ding and Sun (2018), "Remaining useful life estimation in prognostics using
    deep convolution neural networks", with fewer, wider filters.
    """
    x = inputs
    for i, (filters, kernel) in enumerate(((32, 7), (32, 5), (32, 3))):
        x = layers.Conv1D(
            filters, kernel, padding="same", activation="relu", name=f"{prefix}conv{i}"
        )(x)
    x = layers.Conv1D(8, 1, activation="relu", name=f"{prefix}squeeze")(x)
    x = layers.Flatten(name=f"{prefix}flatten")(x)
    x = layers.Dropout(0.2, name=f"{prefix}dropout")(x)
    return layers.Dense(64, activation="relu", name=f"{prefix}dense")(x)


def _dcnn_trunk(inputs: keras.KerasTensor, prefix: str, _: RecurrentOptions) -> keras.KerasTensor:
    """The deep CNN of Li, Ding and Sun (2018) as published: four 10x10 tanh convolutions,
    a one-filter convolution, dropout 0.5 and a 100-unit tanh layer."""
    x = inputs
    for i in range(4):
        x = layers.Conv1D(10, 10, padding="same", activation="tanh", name=f"{prefix}conv{i}")(x)
    x = layers.Conv1D(1, 3, padding="same", activation="tanh", name=f"{prefix}conv4")(x)
    x = layers.Flatten(name=f"{prefix}flatten")(x)
    x = layers.Dropout(0.5, name=f"{prefix}dropout")(x)
    return layers.Dense(100, activation="tanh", name=f"{prefix}dense")(x)


def _tcn_trunk(inputs: keras.KerasTensor, prefix: str, _: RecurrentOptions) -> keras.KerasTensor:
    """Dilated causal CNN with residual blocks (a small TCN); reads the last time step."""
    x = layers.Conv1D(32, 1, name=f"{prefix}project")(inputs)
    for i, dilation in enumerate((1, 2, 4, 8)):
        y = layers.Conv1D(
            32,
            3,
            padding="causal",
            dilation_rate=dilation,
            activation="relu",
            name=f"{prefix}dconv{i}",
        )(x)
        x = layers.Add(name=f"{prefix}residual{i}")([x, y])
    window = inputs.shape[1]
    # The receptive field of the last step covers 1 + 2 * (1 + 2 + 4 + 8) = 31 rows.
    x = layers.Cropping1D((window - 1, 0), name=f"{prefix}last_step")(x)
    x = layers.Flatten(name=f"{prefix}flatten")(x)
    return layers.Dense(64, activation="relu", name=f"{prefix}dense")(x)


def smoothing_matrix(window: int, alpha: float) -> np.ndarray:
    """``(window, window)`` matrix ``M`` such that ``M @ rows`` is the exponential smoothing
    of ``rows`` along the window: ``s[0] = x[0]``, ``s[t] = alpha x[t] + (1 - alpha) s[t-1]``."""
    steps = np.arange(window)
    lag = steps[:, None] - steps[None, :]
    matrix = np.where(lag >= 0, alpha * (1.0 - alpha) ** np.maximum(lag, 0), 0.0)
    matrix[:, 0] = (1.0 - alpha) ** steps
    return matrix


def _smoothed(inputs: keras.KerasTensor, window: int, alpha: float) -> keras.KerasTensor:
    """Exponential smoothing along the window, as a fixed (non-trainable) linear layer."""
    kernel = smoothing_matrix(window, alpha).T.astype(np.float32)
    x = layers.Permute((2, 1), name="features_first")(inputs)
    x = layers.Dense(
        window,
        use_bias=False,
        trainable=False,
        kernel_initializer=keras.initializers.Constant(kernel),
        name="smoothing",
    )(x)
    return layers.Permute((2, 1), name="smoothed")(x)


def _recurrent(x: keras.KerasTensor, prefix: str, options: RecurrentOptions) -> keras.KerasTensor:
    """Stacked GRUs, the sequence read by ``options.pooling``, then dropout and dense."""
    for i in range(options.layers):
        last = i == options.layers - 1
        name = f"{prefix}gru" if i == 0 else f"{prefix}gru{i}"
        x = layers.GRU(
            options.units,
            unroll=True,
            return_sequences=not last or options.pooling != "last",
            name=name,
        )(x)
    if options.pooling == "average":
        x = layers.GlobalAveragePooling1D(name=f"{prefix}average")(x)
    elif options.pooling == "attention":
        scores = layers.Dense(1, name=f"{prefix}attention_score")(x)
        weights = layers.Softmax(axis=1, name=f"{prefix}attention")(scores)
        x = layers.Dot(axes=1, name=f"{prefix}attended")([weights, x])
        x = layers.Flatten(name=f"{prefix}pooled")(x)
    if options.dropout > 0.0:
        x = layers.Dropout(options.dropout, name=f"{prefix}dropout")(x)
    return layers.Dense(64, activation="relu", name=f"{prefix}dense")(x)


def _gru_trunk(
    inputs: keras.KerasTensor, prefix: str, options: RecurrentOptions
) -> keras.KerasTensor:
    """A small GRU reading the window oldest first.

    Unrolled: the windows are short, and the loop-free graph converts to LiteRT builtin ops
    (a ``while`` over tensor lists with a dynamic batch does not).
    """
    return _recurrent(inputs, prefix, options)


def _cnn_gru_trunk(
    inputs: keras.KerasTensor, prefix: str, options: RecurrentOptions
) -> keras.KerasTensor:
    """A strided convolution halves the steps (and filters the noise), then a small GRU."""
    x = layers.Conv1D(32, 4, strides=2, activation="relu", name=f"{prefix}conv")(inputs)
    return _recurrent(x, prefix, options)

"""Served models: artifacts checked by digest, immutable handles, per-thread LiteRT runners.

A ``ServingModel`` is everything one model version needs to score windows (the LiteRT
flatbuffer, its preprocessing and its training reference), read once and never changed.
A health model (``anomaly_score`` and ``anomaly_distance`` among its outputs) is served
alike; ``ServingModel.health`` says which kind a model is.
``ServingModels`` maps each asset type to its current ``ModelPair`` (champion and
challenger); a promotion replaces the pair in one assignment, so a scoring call that
already took the old pair finishes with it, and the next one takes the new one: no lock,
no failed request.

LiteRT interpreters are not thread-safe, so each worker thread keeps its own interpreter
per model (``ModelRunner``), built on first use from the model's bytes.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from prognos.inference.drift import Reference
from prognos.inference.preprocessing import ServingPreprocessing

SIGNATURE = "serving_default"
RUL_OUTPUT = "rul"
PROBABILITY_OUTPUT = "failure_probability"
MODE_OUTPUT = "mode_probability"
#: A health model's outputs: the calibrated anomaly score (0..1) and the distance it
#: calibrates, which keeps growing where the score saturates (explanations use it).
ANOMALY_OUTPUT = "anomaly_score"
DISTANCE_OUTPUT = "anomaly_distance"
#: Windows per interpreter call: small batches keep LiteRT's tensors in cache.
CHUNK = 64
_INTERPRETERS_PER_THREAD = 8
_TIMED_CALLS = 7


class ArtifactError(RuntimeError):
    """A model's artifacts are missing, unreadable, or differ from their digests."""


@dataclass(frozen=True)
class Artifact:
    """One file of a model version, as the registry announces it."""

    name: str
    uri: str
    content_hash: str


@dataclass(frozen=True, eq=False)
class ServingModel:
    """One model version, loaded and verified; immutable."""

    asset_type: str
    version: str
    tflite: bytes = field(repr=False)
    digest: str
    preprocessing: ServingPreprocessing
    reference: Reference | None
    loaded_at: float = field(default_factory=time.time)
    #: Seconds one window (batch of one) takes, measured when the model was loaded.
    window_call_s: float = 0.0
    #: A health model (anomaly score, no failure risk), known from its outputs at load.
    health: bool = False

    @property
    def window(self) -> int:
        """Rows per input window."""
        return self.preprocessing.window


@dataclass(frozen=True)
class ModelPair:
    """The champion and challenger of one asset type; replaced whole, never mutated."""

    champion: ServingModel | None = None
    challenger: ServingModel | None = None


def _read(artifact: Artifact) -> bytes:
    parsed = urlparse(artifact.uri)
    if parsed.scheme not in ("file", ""):
        raise ArtifactError(f"{artifact.name}: unsupported artifact location {artifact.uri!r}")
    path = Path(unquote(parsed.path))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"{artifact.name}: cannot read {path}: {e.strerror}") from None
    algorithm, _, expected = artifact.content_hash.partition(":")
    if algorithm != "sha256" or not expected:
        raise ArtifactError(f"{artifact.name}: digest {artifact.content_hash!r} is not sha256")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ArtifactError(
            f"{artifact.name}: content sha256:{actual} differs from the registered "
            f"{artifact.content_hash}"
        )
    return data


def _pick(artifacts: Sequence[Artifact], suffix: str) -> Artifact | None:
    for artifact in artifacts:
        if artifact.name.endswith(suffix) or urlparse(artifact.uri).path.endswith(suffix):
            return artifact
    return None


def load_model(asset_type: str, version: str, artifacts: Sequence[Artifact]) -> ServingModel:
    """Read and verify a model version's artifacts (blocking: run it in a thread).

    Needs a ``*.tflite`` and a ``*preprocessing.json`` artifact; a ``*reference.json`` one
    enables drift checks.

    Raises:
        ArtifactError: A file is missing, unreadable, differs from its digest, or does
            not load.
    """
    model = _pick(artifacts, ".tflite")
    prep = _pick(artifacts, "preprocessing.json")
    if model is None or prep is None:
        names = ", ".join(a.name for a in artifacts) or "none"
        raise ArtifactError(
            f"{asset_type} {version}: needs a .tflite and a preprocessing.json (has {names})"
        )
    tflite = _read(model)
    try:
        preprocessing = ServingPreprocessing.from_json(json.loads(_read(prep)))
    except ValueError as e:
        raise ArtifactError(f"{prep.name}: {e}") from None
    reference_artifact = _pick(artifacts, "reference.json")
    reference = (
        Reference.from_json(json.loads(_read(reference_artifact)))
        if reference_artifact is not None
        else None
    )
    loaded = ServingModel(
        asset_type=asset_type,
        version=version,
        tflite=tflite,
        digest=model.content_hash,
        preprocessing=preprocessing,
        reference=reference,
    )
    # Build an interpreter once here, so a broken flatbuffer fails the load, not a request;
    # and time a window, so that requests know whether a thread hop is worth it.
    window = np.zeros((1, loaded.window, len(preprocessing.features)), np.float32)
    try:
        runner = ModelRunner()
        runner.run(loaded, window)
        loaded = replace(loaded, health=runner.is_health(loaded))
        calls = []
        for _ in range(_TIMED_CALLS):
            started = time.perf_counter()
            runner.run(loaded, window)
            calls.append(time.perf_counter() - started)
    except (ValueError, RuntimeError) as e:
        raise ArtifactError(f"{model.name}: does not run: {e}") from None
    return replace(loaded, window_call_s=float(np.median(calls)))


class _Interpreter:
    """One LiteRT interpreter over a model's ``serving_default`` signature."""

    def __init__(self, model: ServingModel) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_content=model.tflite, num_threads=1)
        runner = self.interpreter.get_signature_runner(SIGNATURE)
        inputs = runner.get_input_details()
        outputs = runner.get_output_details()
        # The signature runner holds tensor references that forbid resizing: let it go.
        del runner
        if len(inputs) != 1 or {RUL_OUTPUT, PROBABILITY_OUTPUT} - set(outputs):
            raise ValueError(
                f"signature {SIGNATURE!r} must take one window and give "
                f"{RUL_OUTPUT!r} and {PROBABILITY_OUTPUT!r}"
            )
        self.input = next(iter(inputs.values()))["index"]
        self.rul = outputs[RUL_OUTPUT]["index"]
        self.probability = outputs[PROBABILITY_OUTPUT]["index"]
        modes = outputs.get(MODE_OUTPUT)
        self.mode_index: int | None = None if modes is None else modes["index"]
        self.anomaly_index: tuple[int, int] | None = None
        if ANOMALY_OUTPUT in outputs and DISTANCE_OUTPUT in outputs:
            self.anomaly_index = (
                outputs[ANOMALY_OUTPUT]["index"],
                outputs[DISTANCE_OUTPUT]["index"],
            )
        self.batch = 0

    def __call__(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._invoke(windows)
        return (
            self.interpreter.get_tensor(self.rul).reshape(-1),
            self.interpreter.get_tensor(self.probability).reshape(-1),
        )

    def _invoke(self, windows: np.ndarray) -> None:
        if len(windows) != self.batch:
            self.interpreter.resize_tensor_input(self.input, windows.shape, strict=False)
            self.interpreter.allocate_tensors()
            self.batch = len(windows)
        self.interpreter.set_tensor(self.input, windows)
        self.interpreter.invoke()

    def modes(self, windows: np.ndarray) -> np.ndarray:
        """``(batch, modes)`` probability of each failure mode; 0 wide without the output."""
        if self.mode_index is None:
            return np.zeros((len(windows), 0))
        self._invoke(windows)
        return np.array(self.interpreter.get_tensor(self.mode_index), np.float64)

    def anomaly(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A health model's anomaly score and distance per window (float64)."""
        if self.anomaly_index is None:
            raise ValueError("the model has no anomaly output: it is not a health model")
        self._invoke(windows)
        score, distance = self.anomaly_index
        return (
            np.array(self.interpreter.get_tensor(score), np.float64).reshape(-1),
            np.array(self.interpreter.get_tensor(distance), np.float64).reshape(-1),
        )


class ModelRunner:
    """Runs models on the calling thread with that thread's own interpreters."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _interpreter(self, model: ServingModel) -> _Interpreter:
        cache: OrderedDict[int, tuple[ServingModel, _Interpreter]] | None = getattr(
            self._local, "cache", None
        )
        if cache is None:
            cache = self._local.cache = OrderedDict()
        entry = cache.get(id(model))
        if entry is None or entry[0] is not model:
            entry = (model, _Interpreter(model))
            cache[id(model)] = entry
            while len(cache) > _INTERPRETERS_PER_THREAD:
                cache.popitem(last=False)
        else:
            cache.move_to_end(id(model))
        return entry[1]

    def run(self, model: ServingModel, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RUL and failure probability (float64, one each per window).

        Args:
            model: The model.
            windows: ``(batch, window, features)`` float32 model inputs.
        """
        interpreter = self._interpreter(model)
        windows = np.ascontiguousarray(windows, np.float32)
        if len(windows) <= CHUNK:
            r, p = interpreter(windows)
            return r.astype(np.float64), p.astype(np.float64)
        rul = np.empty(len(windows), np.float64)
        probability = np.empty(len(windows), np.float64)
        for start in range(0, len(windows), CHUNK):
            part = windows[start : start + CHUNK]
            r, p = interpreter(part)
            rul[start : start + len(part)] = r
            probability[start : start + len(part)] = p
        return rul, probability

    def is_health(self, model: ServingModel) -> bool:
        """Whether the model gives an anomaly score (a health model)."""
        return self._interpreter(model).anomaly_index is not None

    def run_anomaly(
        self, model: ServingModel, windows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """A health model's anomaly score and distance, one each per window (float64).

        Raises:
            ValueError: The model is not a health model.
        """
        interpreter = self._interpreter(model)
        windows = np.ascontiguousarray(windows, np.float32)
        score = np.empty(len(windows), np.float64)
        distance = np.empty(len(windows), np.float64)
        for start in range(0, len(windows), CHUNK):
            part = windows[start : start + CHUNK]
            s, d = interpreter.anomaly(part)
            score[start : start + len(part)] = s
            distance[start : start + len(part)] = d
        return score, distance

    def run_modes(self, model: ServingModel, windows: np.ndarray) -> np.ndarray:
        """``(batch, modes)`` probability of each of the model's failure modes.

        Only models of an asset type with failure modes have this output; it takes a call
        of its own so that the hot path of every other model stays as it is.
        """
        interpreter = self._interpreter(model)
        windows = np.ascontiguousarray(windows, np.float32)
        parts = [
            interpreter.modes(windows[start : start + CHUNK])
            for start in range(0, len(windows), CHUNK)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, 0))


class ServingModels:
    """The current ``ModelPair`` of each asset type; swapped whole on every change."""

    def __init__(self) -> None:
        self._pairs: dict[str, ModelPair] = {}

    def pair(self, asset_type: str) -> ModelPair:
        """The models of ``asset_type`` now (an empty pair when none)."""
        return self._pairs.get(asset_type, _EMPTY)

    def asset_types(self) -> list[str]:
        """Asset types with a model, sorted."""
        return sorted(self._pairs)

    def set_champion(self, model: ServingModel | None, asset_type: str) -> ModelPair:
        """Make ``model`` the champion (``None``: none); returns the new pair."""
        new = replace(self.pair(asset_type), champion=model)
        self._pairs[asset_type] = new
        return new

    def set_challenger(self, model: ServingModel | None, asset_type: str) -> ModelPair:
        """Make ``model`` the challenger (``None``: none); returns the new pair."""
        new = replace(self.pair(asset_type), challenger=model)
        self._pairs[asset_type] = new
        return new


_EMPTY = ModelPair()


def describe(model: ServingModel | None) -> dict[str, Any]:
    """Version and window of a model, for logs."""
    if model is None:
        return {}
    return {"version": model.version, "window": model.window, "digest": model.digest}

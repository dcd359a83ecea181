"""Export for serving: a TF SavedModel, a LiteRT flatbuffer, and a check that they agree.

The export directory holds::

    saved_model/          TF SavedModel (``serving_default``: window -> rul, failure_probability)
    model.tflite          the same network as a LiteRT flatbuffer (float32, builtin ops)
    preprocessing.json    everything needed to turn raw readings into a window
    reference.json        training distribution of every feature, for drift detection
    export.json           this manifest: paths, sha256 digests, tolerances, measured differences

Tolerances. Both runtimes compute the same float32 network with different kernels (oneDNN
against XNNPACK), so they differ by float32 rounding only: about 1e-7 relative per
operation, a few 1e-5 cycles on a RUL of 125. The defaults, 1e-3 cycles on RUL and 1e-4
on the probability, sit well above that rounding and far below anything that matters (the
data count whole cycles and the model's own error is about ten cycles), so a failure means
a wrong conversion, not noise.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prognos.registry.training.models import INPUT_NAME, PROBABILITY_OUTPUT, RUL_OUTPUT
from prognos.registry.training.trainer import TrainedModel

SAVED_MODEL_DIR = "saved_model"
TFLITE_FILE = "model.tflite"
PREPROCESSING_FILE = "preprocessing.json"
REFERENCE_FILE = "reference.json"
MANIFEST_FILE = "export.json"
SIGNATURE = "serving_default"
DEFAULT_RUL_TOLERANCE = 1e-3
DEFAULT_PROBABILITY_TOLERANCE = 1e-4


class ExportMismatchError(RuntimeError):
    """The LiteRT model's outputs differ from the SavedModel's beyond the tolerance."""


@dataclass(frozen=True)
class ExportCheck:
    """Largest differences between the LiteRT and SavedModel outputs over the sample."""

    windows: int
    max_rul_diff: float
    max_probability_diff: float
    rul_tolerance: float
    probability_tolerance: float


@dataclass(frozen=True)
class ExportInfo:
    """Where an export lies, its digests and how closely LiteRT matched the SavedModel."""

    directory: str
    saved_model: str
    tflite: str
    preprocessing: str
    reference: str
    manifest: str
    saved_model_sha256: str
    tflite_sha256: str
    preprocessing_sha256: str
    reference_sha256: str
    input_name: str
    input_shape: tuple[int | None, int, int]
    outputs: tuple[str, str]
    check: ExportCheck

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def export_serving(
    trained: TrainedModel,
    directory: str | Path,
    *,
    windows: np.ndarray | None = None,
    rul_tolerance: float = DEFAULT_RUL_TOLERANCE,
    probability_tolerance: float = DEFAULT_PROBABILITY_TOLERANCE,
) -> ExportInfo:
    """Export a trained model for serving and verify the LiteRT copy.

    Args:
        trained: The model to export.
        directory: Created if missing; the files listed in the module docstring go there.
        windows: Windows to compare the runtimes on; by default the sample of training
            windows kept with the model.
        rul_tolerance: Largest allowed absolute RUL difference, in cycles.
        probability_tolerance: Largest allowed absolute probability difference.

    Returns:
        The paths, digests and measured differences (also written to ``export.json``).

    Raises:
        ExportMismatchError: When LiteRT and SavedModel disagree beyond the tolerances.
    """
    import tensorflow as tf

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    saved_model = out / SAVED_MODEL_DIR
    trained.model.export(str(saved_model), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    tflite = out / TFLITE_FILE
    tflite.write_bytes(converter.convert())
    preprocessing = out / PREPROCESSING_FILE
    trained.preprocessing.save(preprocessing)
    reference = out / REFERENCE_FILE
    reference.write_text(json.dumps(trained.reference) + "\n")

    sample = trained.verification_windows if windows is None else windows
    check = verify_export(
        saved_model,
        tflite,
        sample,
        rul_tolerance=rul_tolerance,
        probability_tolerance=probability_tolerance,
    )
    info = ExportInfo(
        directory=str(out),
        saved_model=str(saved_model),
        tflite=str(tflite),
        preprocessing=str(preprocessing),
        reference=str(reference),
        manifest=str(out / MANIFEST_FILE),
        saved_model_sha256=tree_sha256(saved_model),
        tflite_sha256=file_sha256(tflite),
        preprocessing_sha256=file_sha256(preprocessing),
        reference_sha256=file_sha256(reference),
        input_name=INPUT_NAME,
        input_shape=(None, trained.preprocessing.window, len(trained.preprocessing.input_columns)),
        outputs=(RUL_OUTPUT, PROBABILITY_OUTPUT),
        check=check,
    )
    (out / MANIFEST_FILE).write_text(json.dumps(info.to_dict(), indent=2) + "\n")
    return info


def verify_export(
    saved_model: str | Path,
    tflite: str | Path,
    windows: np.ndarray,
    *,
    rul_tolerance: float = DEFAULT_RUL_TOLERANCE,
    probability_tolerance: float = DEFAULT_PROBABILITY_TOLERANCE,
) -> ExportCheck:
    """Run both exported runtimes on the same windows and compare their outputs.

    Args:
        saved_model: The SavedModel directory (called through its ``serving_default``).
        tflite: The LiteRT flatbuffer (called window by window, batch of one, as served).
        windows: ``(n, window, features)`` float32 inputs.
        rul_tolerance: Largest allowed absolute RUL difference, in cycles.
        probability_tolerance: Largest allowed absolute probability difference.

    Returns:
        The largest differences seen.

    Raises:
        ExportMismatchError: When a difference exceeds its tolerance.
    """
    windows = np.asarray(windows, np.float32)
    if windows.ndim != 3 or len(windows) == 0:
        raise ValueError("verification needs a non-empty (n, window, features) array")
    reference = SavedModelRunner(saved_model)
    expected = reference(windows)
    runner = LiteRtRunner(tflite)
    got_rul = np.empty(len(windows))
    got_probability = np.empty(len(windows))
    for i, window in enumerate(windows):
        rul, probability = runner(window[None])
        got_rul[i], got_probability[i] = rul[0], probability[0]
    check = ExportCheck(
        windows=len(windows),
        max_rul_diff=float(np.max(np.abs(got_rul - expected[0]))),
        max_probability_diff=float(np.max(np.abs(got_probability - expected[1]))),
        rul_tolerance=rul_tolerance,
        probability_tolerance=probability_tolerance,
    )
    if check.max_rul_diff > rul_tolerance or check.max_probability_diff > probability_tolerance:
        raise ExportMismatchError(
            f"LiteRT differs from the SavedModel: RUL by {check.max_rul_diff:.3g} cycles "
            f"(tolerance {rul_tolerance:g}), probability by {check.max_probability_diff:.3g} "
            f"(tolerance {probability_tolerance:g})"
        )
    return check


class SavedModelRunner:
    """Calls an exported SavedModel through its ``serving_default`` signature."""

    def __init__(self, path: str | Path) -> None:
        import tensorflow as tf

        self._tf = tf
        self._loaded = tf.saved_model.load(str(path))
        self.signature = self._loaded.signatures[SIGNATURE]
        _, kwargs = self.signature.structured_input_signature
        (self.input_name,) = kwargs

    def __call__(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RUL and failure probability for a batch of windows, as 1-D float64 arrays."""
        outputs = self.signature(**{self.input_name: self._tf.constant(windows, self._tf.float32)})
        return (
            outputs[RUL_OUTPUT].numpy().reshape(-1).astype(np.float64),
            outputs[PROBABILITY_OUTPUT].numpy().reshape(-1).astype(np.float64),
        )


class LiteRtRunner:
    """Calls a LiteRT flatbuffer through ``ai_edge_litert``, its input resized once per shape."""

    def __init__(self, path: str | Path, *, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=str(path), num_threads=threads)
        runner = self._interpreter.get_signature_runner(SIGNATURE)
        details = runner.get_output_details()
        self._input = runner.get_input_details()[next(iter(runner.get_input_details()))]["index"]
        self._rul = details[RUL_OUTPUT]["index"]
        self._probability = details[PROBABILITY_OUTPUT]["index"]
        self._shape: tuple[int, ...] | None = None

    def __call__(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RUL and failure probability for a batch of windows, as 1-D float64 arrays."""
        windows = np.ascontiguousarray(windows, np.float32)
        if windows.shape != self._shape:
            self._interpreter.resize_tensor_input(self._input, windows.shape, strict=False)
            self._interpreter.allocate_tensors()
            self._shape = windows.shape
        self._interpreter.set_tensor(self._input, windows)
        self._interpreter.invoke()
        return (
            self._interpreter.get_tensor(self._rul).reshape(-1).astype(np.float64),
            self._interpreter.get_tensor(self._probability).reshape(-1).astype(np.float64),
        )


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_sha256(directory: Path) -> str:
    """Hex sha256 over a directory: each file's relative path and sha256, in path order."""
    digest = hashlib.sha256()
    root = Path(directory)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()

"""Remaining-useful-life model per asset type: data, training, evaluation and export.

Names are imported on first use, so reading files or computing metrics does not load
TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_MODULES = ("data", "metrics", "preprocessing", "models", "trainer", "evaluation", "export")

__all__ = [
    "ARCHITECTURES",
    "COLUMNS",
    "SENSORS",
    "SETTINGS",
    "ExportCheck",
    "ExportInfo",
    "ExportMismatchError",
    "LiteRtRunner",
    "NasaFormatError",
    "Preprocessing",
    "SavedModelRunner",
    "TrainConfig",
    "TrainedModel",
    "TrainingCancelledError",
    "add_rul",
    "assign_regimes",
    "binary_metrics",
    "brier_score",
    "build_networks",
    "detect_regimes",
    "evaluate_cmapss",
    "evaluate_predictions",
    "expected_calibration_error",
    "export_serving",
    "load_cmapss",
    "load_truth",
    "make_nasa_test",
    "pad_window",
    "phm08_score",
    "predict_last_cycle",
    "reference_distributions",
    "reliability_bins",
    "render_report",
    "rmse",
    "split_units",
    "train",
    "verify_export",
    "write_nasa_files",
]

if TYPE_CHECKING:
    from prognos.registry.training.data import (
        COLUMNS,
        SENSORS,
        SETTINGS,
        NasaFormatError,
        add_rul,
        load_cmapss,
        load_truth,
        make_nasa_test,
        split_units,
        write_nasa_files,
    )
    from prognos.registry.training.evaluation import (
        evaluate_cmapss,
        evaluate_predictions,
        render_report,
    )
    from prognos.registry.training.export import (
        ExportCheck,
        ExportInfo,
        ExportMismatchError,
        LiteRtRunner,
        SavedModelRunner,
        export_serving,
        verify_export,
    )
    from prognos.registry.training.metrics import (
        binary_metrics,
        brier_score,
        expected_calibration_error,
        phm08_score,
        reliability_bins,
        rmse,
    )
    from prognos.registry.training.models import ARCHITECTURES, build_networks
    from prognos.registry.training.preprocessing import (
        Preprocessing,
        assign_regimes,
        detect_regimes,
        pad_window,
        reference_distributions,
    )
    from prognos.registry.training.trainer import (
        TrainConfig,
        TrainedModel,
        TrainingCancelledError,
        predict_last_cycle,
        train,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        for module in _MODULES:
            value = getattr(importlib.import_module(f"{__name__}.{module}"), name, None)
            if value is not None:
                globals()[name] = value
                return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

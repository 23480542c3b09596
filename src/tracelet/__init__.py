"""tracelet: log once, land in MLflow, Weights & Biases and ClearML, without losing a number.

Importing tracelet imports no backend package, no torch and no lightning.
"""

from typing import TYPE_CHECKING, Any

from tracelet.api import get_active_experiment, start_logging, stop_logging
from tracelet.errors import BackendNotInstalledError, DeliveryError, ExperimentActiveError, TraceletError
from tracelet.experiment import Experiment
from tracelet.report import BackendHealth, BackendReport, DeliveryHealth, DeliveryReport

if TYPE_CHECKING:
    from tracelet.copying import copy_project, copy_run

__version__ = "0.1.0"

__all__ = [
    "BackendHealth",
    "BackendNotInstalledError",
    "BackendReport",
    "DeliveryError",
    "DeliveryHealth",
    "DeliveryReport",
    "Experiment",
    "ExperimentActiveError",
    "TraceletError",
    "__version__",
    "copy_project",
    "copy_run",
    "get_active_experiment",
    "start_logging",
    "stop_logging",
]


def __getattr__(name: str) -> Any:
    """``copy_run`` and ``copy_project`` are imported on first use: a training script never pays for them."""
    if name in ("copy_run", "copy_project"):
        from tracelet import copying

        return getattr(copying, name)
    raise AttributeError(f"module 'tracelet' has no attribute {name!r}")

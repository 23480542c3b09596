"""tracelet: log once, land in MLflow, Weights & Biases and ClearML, without losing a number.

Importing tracelet imports no backend package, no torch and no lightning.
"""

from tracelet.api import get_active_experiment, start_logging, stop_logging
from tracelet.errors import BackendNotInstalledError, DeliveryError, ExperimentActiveError, TraceletError
from tracelet.experiment import Experiment
from tracelet.report import BackendHealth, BackendReport, DeliveryHealth, DeliveryReport

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
    "get_active_experiment",
    "start_logging",
    "stop_logging",
]

"""A Lightning ``Logger`` that sends ``self.log`` and hyperparameters through tracelet.

    trainer = Trainer(logger=TraceletLogger(project="demo", backend="mlflow"))

If a tracelet experiment is already active, the logger uses it and leaves it
open; otherwise it starts one on first use and stops it in ``finalize``. Only
rank 0 logs (Lightning's ``rank_zero_only``).
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment  # type: ignore[attr-defined]
from lightning.pytorch.utilities import rank_zero_only

import tracelet
from tracelet.experiment import Experiment

_STATUS = {"success": "finished", "failed": "failed", "finished": "finished"}


class TraceletLogger(Logger):
    """Lightning logger backed by :func:`tracelet.start_logging` (same keyword arguments)."""

    def __init__(self, **start_kwargs: Any) -> None:
        super().__init__()
        self._start_kwargs = start_kwargs
        self._experiment: Experiment | None = None
        self._owns_experiment = False

    @property
    def name(self) -> str:
        if self._experiment is not None:
            return self._experiment.project
        return str(self._start_kwargs.get("project") or "default")

    @property
    def version(self) -> str:
        return str(self.experiment.name)

    @property
    @rank_zero_experiment
    def experiment(self) -> Experiment:
        if self._experiment is None:
            active = tracelet.get_active_experiment()
            if active is not None:
                self._experiment = active
            else:
                self._experiment = tracelet.start_logging(**self._start_kwargs)
                self._owns_experiment = True
        return self._experiment

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        values = vars(params) if isinstance(params, Namespace) else dict(params)
        self.experiment.log_params(values)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.experiment.log_metrics(dict(metrics), iteration=step)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._experiment is None:
            return
        if self._owns_experiment:
            self._experiment.stop(status=_STATUS.get(status, "failed"))
        else:
            self._experiment.flush()

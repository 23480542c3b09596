"""A Lightning ``Logger`` that sends ``self.log`` values and hyperparameters through tracelet.

    trainer = Trainer(logger=TraceletLogger(project="demo", backend="mlflow"))

It works with both packages: ``lightning`` (``import lightning.pytorch``) and the
standalone ``pytorch-lightning`` (``import pytorch_lightning``). The logger subclasses
the ``Logger`` of whichever is imported (``lightning`` when both are and neither is
imported yet); both Trainers accept either.

It behaves as Lightning's own ``MLFlowLogger`` and ``WandbLogger`` do:

* **one run for the logger's life.** ``finalize`` flushes and, where the logger opened
  the run, shows its outcome in the store at once (as ``MLFlowLogger.finalize`` does:
  MLflow says FINISHED or FAILED after ``trainer.fit()``; the local store and ClearML's
  offline session too; a W&B run shows "running" until it is closed), but leaves the run
  open: ``trainer.fit()`` then ``trainer.test()``, or ``Tuner.lr_find()`` then ``fit``,
  log into the same run. The run ends with ``tracelet.stop_logging()``,
  :meth:`TraceletLogger.close`, or at exit, with the status of the last ``finalize``;
* **its own run.** If a tracelet run is already active (``tracelet.start_logging``)
  and no other TraceletLogger uses it, the logger logs into it and leaves it open.
  Otherwise it opens a run of its own: two TraceletLoggers in one Trainer make two runs,
  as two ``MLFlowLogger`` do. A run it opened after a finalized logger's is a new run;
* **pickling** keeps the arguments, not the live run. An unpickled copy in the same
  process logs into the same run; in another process (``ddp_spawn``) rank 0 opens a run
  of its own with the same arguments, and other ranks log nothing;
* ``prefix="train"`` puts ``train-`` in front of every metric name (Lightning's
  ``LOGGER_JOIN_CHAR``), checked when the logger is made;
* a metric or hyperparameter name outside tracelet's character set is mapped as
  TensorBoard names are (:func:`tracelet.validation.safe_name`), never rejected mid-training;
* with TensorBoard capture on, the values a ``TensorBoardLogger`` in the same Trainer
  writes are not captured a second time: this logger already sends them.
"""

from __future__ import annotations

import importlib
import logging
import sys
import uuid
import weakref
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from tracelet.api import get_active_experiment, open_run, start_logging
from tracelet.experiment import Experiment
from tracelet.integrations.tensorboard import mark_fed_by_lightning
from tracelet.validation import check_name, safe_name

log = logging.getLogger(__name__)

#: Lightning joins ``prefix`` and a metric name with this (its ``Logger.LOGGER_JOIN_CHAR``).
LOGGER_JOIN_CHAR = "-"
#: Lightning's finalize statuses -> tracelet's run statuses.
_STATUS = {"success": "finished", "finished": "finished", "failed": "failed"}


def _lightning_package() -> str:
    """``pytorch_lightning`` when only it is in use (imported, or alone installed), else ``lightning``."""
    if "pytorch_lightning" in sys.modules and "lightning.pytorch" not in sys.modules:
        return "pytorch_lightning"
    if "lightning.pytorch" in sys.modules:
        return "lightning.pytorch"
    try:
        importlib.import_module("lightning.pytorch")
    except ImportError:
        return "pytorch_lightning"
    return "lightning.pytorch"


_PACKAGE = _lightning_package()
_logger_module: Any = importlib.import_module(f"{_PACKAGE}.loggers.logger")
_utilities: Any = importlib.import_module(f"{_PACKAGE}.utilities")
_Logger: Any = _logger_module.Logger
rank_zero_experiment: Any = _logger_module.rank_zero_experiment
rank_zero_only: Any = _utilities.rank_zero_only

#: Which logger uses which run in this process, so that no run is fed by two loggers, and an
#: unpickled copy finds its original's run again.
_runs: weakref.WeakValueDictionary[str, Experiment] = weakref.WeakValueDictionary()
_users: weakref.WeakKeyDictionary[Experiment, str] = weakref.WeakKeyDictionary()  # run -> its logger
_finalized: set[str] = set()  # tokens of loggers whose trainer has finished with them


class TraceletLogger(_Logger):  # type: ignore[misc]
    """Lightning logger backed by tracelet. Takes :func:`tracelet.start_logging`'s keyword arguments.

    ``prefix`` is Lightning's usual logger option; every other keyword goes to
    ``start_logging`` when the logger opens its run.
    """

    def __init__(self, prefix: str = "", **start_kwargs: Any) -> None:
        super().__init__()
        if prefix:
            check_name(f"{prefix}{LOGGER_JOIN_CHAR}metric", "prefix")  # fails here, not at the first log
        self._prefix = prefix
        self._start_kwargs = start_kwargs
        self._token = uuid.uuid4().hex
        self._experiment: Experiment | None = None
        self._owns_experiment = False

    # -- Lightning's properties ------------------------------------------------------------
    @property
    def name(self) -> str:
        """The project (MLflow experiment, W&B or ClearML project)."""
        if self._experiment is not None:
            return self._experiment.project
        return str(self._start_kwargs.get("project") or "default")

    @property
    def version(self) -> str:
        """The run name."""
        return str(self.experiment.name)

    @property
    def save_dir(self) -> str | None:
        """``None``, as for a remote MLflow: tracelet writes to its backends, not to a directory."""
        return None

    @property
    @rank_zero_experiment  # type: ignore[untyped-decorator]
    def experiment(self) -> Experiment:
        """The tracelet run, opened on first use (rank 0 only; other ranks get Lightning's dummy)."""
        if self._experiment is not None and not self._experiment.closed:
            return self._experiment
        if self._experiment is not None:
            log.warning("tracelet: the run of this TraceletLogger was stopped; opening a new one")
        self._experiment = self._acquire()
        mark_fed_by_lightning(self._experiment)
        return self._experiment

    def _acquire(self) -> Experiment:
        mine = _runs.get(self._token)
        if mine is not None and not mine.closed:  # an unpickled copy of a logger in this process
            self._owns_experiment = _users.get(mine) == self._token
            return mine
        active = get_active_experiment()
        if active is not None and not active.closed:
            user = _users.get(active)
            if user is None:  # the user's own run: use it, leave it open
                self._claim(active, owns=False)
                return active
            if user in _finalized:  # a finished trainer's logger: its run ends, this one starts
                active.stop()
            else:  # another live logger's run: a run of our own beside it
                experiment = open_run(**self._start_kwargs)
                self._claim(experiment, owns=True)
                return experiment
        experiment = start_logging(**self._start_kwargs)
        self._claim(experiment, owns=True)
        return experiment

    def _claim(self, experiment: Experiment, owns: bool) -> None:
        self._owns_experiment = owns
        _runs[self._token] = experiment
        _users[experiment] = self._token
        _finalized.discard(self._token)

    # -- what Lightning calls ----------------------------------------------------------------
    @rank_zero_only  # type: ignore[untyped-decorator]
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Hyperparameters as params, nested dicts flattened with ``/`` (values as strings)."""
        values = vars(params) if isinstance(params, Namespace) else dict(params or {})
        self.experiment.log_params(_safe_keys(values))

    @rank_zero_only  # type: ignore[untyped-decorator]
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """One call, one step: every value at ``step`` (``None``: each key's next step)."""
        named = {self._metric_name(k): v for k, v in metrics.items() if not isinstance(v, str)}
        self.experiment.log_metrics(named, iteration=step)

    def _metric_name(self, name: str) -> str:
        full = f"{self._prefix}{LOGGER_JOIN_CHAR}{name}" if self._prefix else name
        return safe_name(full)

    @rank_zero_only  # type: ignore[untyped-decorator]
    def finalize(self, status: str) -> None:
        """Flush, and remember how the run should end; the run stays open (see the module doc)."""
        if self._experiment is None or self._experiment.closed:
            return
        _finalized.add(self._token)
        if self._owns_experiment:  # as MLFlowLogger.finalize: the store says how fit ended, now
            outcome = _STATUS.get(status, "failed")
            self._experiment.set_end_status(outcome)
            self._experiment.show_status(outcome)
        self._experiment.flush()

    def close(self) -> None:
        """End this logger's own run now (a run it did not open is left to its owner)."""
        if self._experiment is not None and self._owns_experiment and not self._experiment.closed:
            self._experiment.stop()

    # -- pickling --------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_experiment"] = None  # a live run (threads, pipes) cannot cross a pickle
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def _safe_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameter names as tracelet accepts them, at every nesting level."""
    safe: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            if value:  # an empty group holds nothing to log
                safe[safe_name(str(key))] = _safe_keys(value)
        else:
            safe[safe_name(str(key))] = value
    return safe


__all__ = ["TraceletLogger"]

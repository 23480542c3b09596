"""The module-level API: one active experiment per process, exit and signal handling, fork safety."""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Any

from tracelet.backends.registry import get_backend_class
from tracelet.config import resolve
from tracelet.errors import ExperimentActiveError
from tracelet.experiment import Experiment
from tracelet.integrations.tensorboard import TensorBoardCapture, start_capture
from tracelet.report import DeliveryReport

log = logging.getLogger(__name__)

_lock = threading.RLock()
_active: Experiment | None = None
_capture: TensorBoardCapture | None = None
#: runs opened by :func:`open_run` beside the active one, until they stop
_beside: set[Experiment] = set()
#: the do-nothing experiment of a process that must not log, until stop_logging() closes it
_idle: Experiment | None = None
_previous_handlers: dict[int, Any] = {}
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _rank() -> int | None:
    """This process's distributed rank: torch.distributed if initialized, else ``RANK``; None if unknown."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    try:
        return int(os.environ["RANK"])
    except (KeyError, ValueError):
        return None


def _why_not_logging() -> str | None:
    """Why this process must not log, if it must not: a non-zero rank, or a ``multiprocessing`` child.

    A known rank decides (rank 0 of ``torch.multiprocessing.spawn`` is a multiprocessing child
    and logs); without one, a process started by ``multiprocessing`` (a spawned DataLoader
    worker) does not, since its parent does.
    """
    rank = _rank()
    if rank is not None:
        return None if rank == 0 else f"rank {rank} does not log (only rank 0 does)"
    if multiprocessing.parent_process() is not None:
        return "a process started by multiprocessing does not log (its parent does)"
    return None


def start_logging(
    exp_name: str | None = None,
    project: str | None = None,
    backend: str | Sequence[str] | None = None,
    config: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    backend_options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    wait: bool | None = None,
) -> Experiment:
    """Start a run on one or several backends and make it the active experiment.

    ``backend`` is a name or a list of names; when omitted, ``TRACELET_BACKEND``
    (comma separated) is used, and failing that the ``local`` backend. ``config``
    is logged as params, ``tags`` as user tags. ``backend_options`` holds
    per-backend options, e.g. ``{"mlflow": {"tracking_uri": "sqlite:///m.db"}}``.

    It returns as soon as the arguments are checked and the runs are asked to open
    (in a warm delivery agent, or a new one): it never waits for an import, a client
    or a store. What is logged before the runs are open waits, in order. What only
    the store can refuse (a wrong tracking URI, refused credentials) is logged once
    at ERROR, kept in the spool for ``tracelet sync``, and reported by
    ``stop_logging()``. ``wait=True`` (or ``TRACELET_START=wait``) returns only once
    every run is open and raises what opening raised.

    Raises at once, on the caller's thread: a bad argument (``ValueError`` or
    ``TypeError`` naming it), an unknown backend, an absent backend package
    (:class:`~tracelet.errors.BackendNotInstalledError`, naming the ``pip install``
    extra, found without importing it), a ``config`` value over a store's length
    limit, and :class:`~tracelet.errors.ExperimentActiveError` if a run is already active.
    """
    global _active, _capture, _idle
    with _lock:
        if _active is not None:
            raise ExperimentActiveError(
                f"experiment {_active.name!r} is still active; call tracelet.stop_logging() first"
            )
        experiment = _open(exp_name, project, backend, config, tags, backend_options, _forget, wait)
        if experiment.closed:  # a non-zero rank or a multiprocessing child: it logs nothing
            _idle = experiment  # so the same script's stop_logging() works on every rank
            return experiment
        _active = experiment
        if experiment.settings.track_tensorboard:
            _capture = start_capture(experiment)
        # Registered after the backends started, so it runs before their own exit hooks (LIFO).
        atexit.register(_flush_at_exit)
        if experiment.settings.handle_signals and threading.current_thread() is threading.main_thread():
            _install_signal_handlers()
        return experiment


def open_run(
    exp_name: str | None = None,
    project: str | None = None,
    backend: str | Sequence[str] | None = None,
    config: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    backend_options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    wait: bool | None = None,
) -> Experiment:
    """Start a run *beside* the active experiment, for integrations (a second Lightning logger).

    Same arguments and checks as :func:`start_logging`, but the run does not become
    the active experiment and captures no TensorBoard calls. It is flushed at exit
    (and marked ``killed`` by a handled signal) like the active one.
    """
    with _lock:
        experiment = _open(exp_name, project, backend, config, tags, backend_options, _forget, wait)
        if not experiment.closed:
            _beside.add(experiment)
            atexit.register(_flush_at_exit)
        return experiment


def _open(
    exp_name: str | None,
    project: str | None,
    backend: str | Sequence[str] | None,
    config: Mapping[str, Any] | None,
    tags: Mapping[str, Any] | None,
    backend_options: Mapping[str, Mapping[str, Any]] | None,
    on_close: Callable[[Experiment], None],
    wait: bool | None,
) -> Experiment:
    settings = resolve(
        exp_name=exp_name, project=project, backend=backend, backend_options=backend_options, wait=wait
    )
    reason = _why_not_logging()
    if reason is not None:
        log.info("tracelet: %s", reason)
        return Experiment(settings, enabled=False)
    classes = [get_backend_class(name) for name in settings.backends]
    limits: list[tuple[int, str]] = []
    for name, cls in zip(settings.backends, classes, strict=True):
        cls.ensure_installed()
        # Built here only to check the option keys and read the store's static param limit.
        limit = cls(settings.backend_options.get(name)).param_value_limit()
        if limit is not None:
            limits.append((limit, name))
    experiment = Experiment(settings, on_close=on_close, param_limit=min(limits) if limits else None)
    try:
        if config:
            experiment.log_params(config)
        if tags:
            experiment.set_tags(tags)
    except Exception:
        experiment.stop(status="failed")
        raise
    return experiment


def stop_logging(status: str | None = None, flush_timeout: float | None = None) -> DeliveryReport:
    """Flush and close the active experiment; returns its :class:`DeliveryReport`.

    In a process that must not log (a non-zero rank, a ``multiprocessing`` child), it closes the
    do-nothing experiment ``start_logging`` returned there and reports no backends, so one training
    script runs unchanged on every rank.
    """
    global _idle
    experiment = _active
    if experiment is None:
        idle, _idle = _idle, None
        if idle is not None:
            return idle.stop(status=status, flush_timeout=flush_timeout)
        raise RuntimeError("no active tracelet experiment; call tracelet.start_logging() first")
    return experiment.stop(status=status, flush_timeout=flush_timeout)


def get_active_experiment() -> Experiment | None:
    """The experiment started by :func:`start_logging` and not yet stopped, if any."""
    return _active


def _forget(experiment: Experiment) -> None:
    """Called by ``Experiment.stop``: drop the hooks that belonged to this run."""
    with _lock:
        _beside.discard(experiment)
        if _active is experiment:
            _stop_capture()
            _clear_active()
            _restore_signal_handlers()
        if _active is None and not _beside:
            atexit.unregister(_flush_at_exit)


def _stop_capture() -> None:
    """Undo the ``SummaryWriter`` patch: a writer used after the run is not captured."""
    global _capture
    if _capture is not None:
        _capture.uninstall()
        _capture = None


def _clear_active() -> None:
    global _active
    _active = None


def _open_runs() -> list[Experiment]:
    """The active run (first) and the runs opened beside it."""
    return [*([_active] if _active is not None else []), *_beside]


def _flush_at_exit() -> None:
    for experiment in _open_runs():
        if experiment.closed:
            continue
        status = experiment.exit_status()
        log.info("tracelet: stop_logging() was not called; flushing %r at exit (%s)", experiment.name, status)
        try:
            experiment.stop(status=status)
        except Exception as exc:  # at exit, an error can only be reported
            log.error("tracelet: flush at exit failed: %s", exc)


def _handle_signal(signum: int, frame: FrameType | None) -> None:
    """Mark the run killed, wake the writers, and pass the signal on. Never flushes here."""
    for experiment in _open_runs():
        experiment.mark_killed()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        return
    else:
        # The default action would end the process without running exit hooks, losing what
        # is queued; exiting with the conventional status lets the atexit flush run.
        raise SystemExit(128 + signum)


def _install_signal_handlers() -> None:
    for signum in HANDLED_SIGNALS:
        previous = signal.getsignal(signum)
        if previous is _handle_signal:
            continue
        _previous_handlers[signum] = previous
        signal.signal(signum, _handle_signal)


def _restore_signal_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, previous in list(_previous_handlers.items()):
        if signal.getsignal(signum) is _handle_signal:
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        del _previous_handlers[signum]


def _after_fork_in_child() -> None:
    """A forked child (e.g. a DataLoader worker) must not log through its parent's dead threads."""
    for experiment in _open_runs():
        experiment.detach()
    _beside.clear()
    _stop_capture()
    _clear_active()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

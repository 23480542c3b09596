"""The one seam between an :class:`~tracelet.experiment.Experiment` and delivery.

``Experiment`` validates on the caller's thread and hands plain tuples to a
:class:`Delivery`; it never knows which implementation it holds:

* :class:`~tracelet.delivery.trainer_side.AgentDelivery` (the default): the backends
  and their writers run in a separate *delivery agent* process
  (:mod:`tracelet.delivery.agent_side`), so the stores' own Python code (SQLAlchemy,
  protobuf) never competes with training for its GIL. One agent stays warm between
  runs, and the runs open in the background;
* :class:`~tracelet.delivery.thread.ThreadDelivery` (``TRACELET_DELIVERY=thread``):
  the same writers, on threads of this process.

Both run the same :class:`~tracelet.delivery.writer.BackendWriter` code, through
:class:`~tracelet.delivery.fanout.Fanout`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from tracelet.backends.base import RunInfo
from tracelet.report import BackendReport, DeliveryHealth


@dataclass(frozen=True)
class OpenRequest:
    """Everything needed to open the runs: plain data, so it can cross the agent's pipe."""

    #: (backend name, its options), in the order the user gave them
    backends: list[tuple[str, dict[str, Any]]]
    #: project and run name; the system tags (versions, git) are collected where the runs open,
    #: off the caller's thread
    info: RunInfo
    #: absolute path of this run's spool directory
    spool_dir: str
    #: the caller's working directory when it started the run (git state, relative paths)
    cwd: str
    writer_options: dict[str, int] = field(default_factory=dict)
    track_git: bool = True
    #: seconds between samples of the ``system/`` metrics (``None``: none); see
    #: :mod:`tracelet.collectors.system_metrics`
    system_interval: float | None = None
    #: when ``start_logging()`` was called (``time.time()``): system metrics step from it
    started_at: float = 0.0


@dataclass(frozen=True)
class Opened:
    """What opening the runs gave: run ids, ``None`` where a backend failed (its reason in ``errors``)."""

    runs: dict[str, str | None]
    errors: dict[str, str] = field(default_factory=dict)


def discard(item: tuple[Any, ...]) -> None:
    """Where events go when this process may not deliver them (a forked child, a non-zero rank)."""


class Delivery(ABC):
    """Where validated events go. ``put`` is the hot path; the rest is the run's lifecycle."""

    #: why the runs could not be opened at all, once that is known (``wait=True`` raises it)
    open_error: BaseException | None = None

    @abstractmethod
    def opened(self, timeout: float) -> Opened | None:
        """The opened runs, waiting at most ``timeout`` seconds; ``None`` if they are not open yet."""

    @abstractmethod
    def put(self, item: tuple[Any, ...]) -> None:
        """Take one event (a plain tuple, see :func:`tracelet.events.from_raw`). Never blocks."""

    @abstractmethod
    def flush(self, timeout: float) -> bool:
        """Wait until everything put so far is delivered or failed; False on timeout."""

    @abstractmethod
    def stop(self, status: str, timeout: float) -> dict[str, BackendReport]:
        """Deliver what is left within ``timeout`` (the rest is spooled), close the runs, report."""

    @abstractmethod
    def wake(self) -> None:
        """Deliver now rather than at the next tick (signal handlers use it)."""

    @abstractmethod
    def health(self) -> DeliveryHealth:
        """Per backend: what is queued, delivered, failed, pending, the retries, the lag, the last error."""

    def delivering(self) -> bool:
        """False once nothing will deliver what is put (the agent was lost: it waits for sync)."""
        return True

    @abstractmethod
    def detach(self) -> None:
        """In a forked child: let go of the parent's threads and pipes without touching them."""


def open_delivery(
    request: OpenRequest,
    mode: str,
    *,
    agent_timeout: float,
    agent_drain: float,
    agent_idle: float,
    lag_warn: float = 0.0,
) -> Delivery:
    """Ask the delivery ``mode`` (``agent`` or ``thread``) to open the runs; returns without waiting."""
    if mode == "thread":
        from tracelet.delivery.thread import ThreadDelivery

        return ThreadDelivery(request, open_timeout=agent_timeout, lag_warn=lag_warn)
    from tracelet.delivery.trainer_side import AgentDelivery

    return AgentDelivery(
        request, open_timeout=agent_timeout, drain_timeout=agent_drain, idle=agent_idle, lag_warn=lag_warn
    )

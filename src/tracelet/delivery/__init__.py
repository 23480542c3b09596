"""The one seam between an :class:`~tracelet.experiment.Experiment` and delivery.

``Experiment`` validates on the caller's thread and hands plain tuples to a
:class:`Delivery`; it never knows which implementation it holds:

* :class:`~tracelet.delivery.agent.AgentDelivery` (the default): the backends and
  their writers run in a separate *delivery agent* process, so the stores' own
  Python code (SQLAlchemy, protobuf) never competes with training for its GIL;
* :class:`~tracelet.delivery.thread.ThreadDelivery` (``TRACELET_DELIVERY=thread``):
  the same writers, on threads of this process.

Both run the same :class:`~tracelet.delivery.writer.BackendWriter` code, through
:class:`~tracelet.delivery.thread.Fanout`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from tracelet.backends.base import RunInfo
from tracelet.report import BackendReport


@dataclass(frozen=True)
class OpenRequest:
    """Everything needed to open the runs: plain data, so it can cross the agent's pipe."""

    #: (backend name, its options), in the order the user gave them
    backends: list[tuple[str, dict[str, Any]]]
    info: RunInfo
    #: absolute path of this run's spool directory
    spool_dir: str
    writer_options: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Opened:
    """What opening the runs gave: run ids (``None`` where a backend failed) and limits."""

    runs: dict[str, str | None]
    #: the smallest param value limit over the backends, and the backend that sets it
    param_limit: tuple[int, str] | None


class Delivery(ABC):
    """Where validated events go. ``put`` is the hot path; the rest is the run's lifecycle."""

    opened: Opened

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
    def detach(self) -> None:
        """In a forked child: let go of the parent's threads and pipes without touching them."""


def open_delivery(request: OpenRequest, mode: str, *, agent_timeout: float, agent_drain: float) -> Delivery:
    """Open the runs with the delivery ``mode`` asks for (``agent`` or ``thread``)."""
    if mode == "thread":
        from tracelet.delivery.thread import ThreadDelivery

        return ThreadDelivery(request)
    from tracelet.delivery.agent import AgentDelivery

    return AgentDelivery(request, handshake_timeout=agent_timeout, drain_timeout=agent_drain)

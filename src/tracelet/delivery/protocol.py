"""The agent's wire format, in one place.

Messages travel over a :class:`multiprocessing.connection.Connection` (a Unix socket,
or a named pipe on Windows), never over stdout, which the stores print to. Each is
one ``send_bytes``: a kind byte, then the body. Event batches are ``marshal``-ed
lists of plain tuples (the cheapest serializer there is: the trainer holds its GIL
for well under a microsecond a point); control messages are the small dataclasses
below, pickled.

One agent serves one run at a time and then waits for the next: every message that
belongs to a run carries the run's serial number (``run``), so a late message of a
finished run is never taken for one of the next.

trainer → agent: :class:`Open`, batches, :class:`Flush`, :class:`Stop`, :class:`Quit`.
agent → trainer: :class:`OpenedRuns`, :class:`OpenFailed`, :class:`Ack`,
:class:`LogRecord`, :class:`SystemSamples`, :class:`Reply`, :class:`Final`.
"""

from __future__ import annotations

import marshal
import pickle
from dataclasses import dataclass
from typing import Any

from tracelet.delivery import Opened, OpenRequest
from tracelet.delivery.health import Progress as WriterProgress
from tracelet.report import BackendReport

BATCH = b"B"
CONTROL = b"C"

#: The module the trainer starts with ``python -m``.
AGENT_MODULE = "tracelet.delivery"

#: Per backend, its writer's counts; see ``BackendWriter.progress``.
Progress = dict[str, WriterProgress]


@dataclass(frozen=True)
class RunMessage:
    """A message that belongs to one run: ``run`` is the run's serial number in this trainer."""

    run: int


@dataclass(frozen=True)
class Question(RunMessage):
    """A message the other side answers, under the same ``token``."""

    token: int


# -- trainer → agent ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Open(RunMessage):
    """Open the runs of ``request`` in the caller's environment, as it was at ``start_logging()``.

    The environment replaces the agent's for the whole run: the stores read far more than
    their own variables (``HOME``, proxies, CA bundles, cloud credentials), and nothing of
    one run may leak into the next run a warm agent serves.
    """

    request: OpenRequest
    environ: dict[str, str]
    sys_path: list[str]
    log_level: int
    #: seconds the agent keeps delivering after the trainer died
    drain: float
    #: seconds the agent waits for the next run once this one is closed, then exits
    idle: float


@dataclass(frozen=True)
class Flush(Question):
    timeout: float


@dataclass(frozen=True)
class Stop(Question):
    status: str
    #: seconds left of the caller's timeout when the stop left the trainer
    timeout: float


@dataclass(frozen=True)
class Quit:
    """An idle agent is not needed any more (the trainer exits, or retires it): exit now."""


# -- agent → trainer ---------------------------------------------------------------------------
@dataclass(frozen=True)
class OpenedRuns(RunMessage):
    opened: Opened


@dataclass(frozen=True)
class OpenFailed(RunMessage):
    """Opening the runs raised in the agent (a backend that cannot even be built)."""

    why: str
    #: the agent's traceback of the failure
    traceback: str


@dataclass(frozen=True)
class Ack(RunMessage):
    progress: Progress


@dataclass(frozen=True)
class SystemSamples(RunMessage):
    """One sample of the system metrics, as metric tuples: the trainer logs them into the run.

    They go round through the trainer rather than straight to the agent's writers, so that
    the trainer's stream stays the one count of events every acknowledgement refers to.
    """

    items: list[tuple[Any, ...]]


@dataclass(frozen=True)
class LogRecord:
    """A log record of the agent's, re-emitted on the trainer's logger of the same name."""

    fields: dict[str, Any]


@dataclass(frozen=True)
class Reply(Question):
    """The answer to :class:`Flush`."""

    ok: bool


@dataclass(frozen=True)
class Final(Question):
    """The answer to :class:`Stop`: the run is closed; ``reusable``: the agent waits for another."""

    reports: dict[str, BackendReport]
    progress: Progress
    reusable: bool


def encode_batch(items: list[tuple[Any, ...]]) -> bytes:
    return BATCH + marshal.dumps(items)


def encode(message: object) -> bytes:
    return CONTROL + pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def decode(data: bytes) -> tuple[bool, Any]:
    """``(True, events)`` for a batch, ``(False, message)`` for a control message."""
    if data[:1] == BATCH:
        return True, marshal.loads(data[1:])
    return False, pickle.loads(data[1:])

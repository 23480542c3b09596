"""The one small interface every backend implements.

A backend object lives for one run. ``start`` runs where delivery runs (the delivery
agent, or a thread of the training process), never on the caller's thread; ``write``
and ``finish`` run only on that backend's own writer thread, so a backend never
needs locks of its own. The trainer builds one instance too, only to check its
options and read :meth:`Backend.param_value_limit`.
"""

from __future__ import annotations

import importlib.util
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tracelet.errors import BackendNotInstalledError
from tracelet.events import Event

#: Run statuses, as tracelet names them. Each backend maps them to its own.
FINISHED = "finished"
FAILED = "failed"
KILLED = "killed"
RUNNING = "running"
STATUSES = (FINISHED, FAILED, KILLED)


#: Error text that marks a store error as transient: worth retrying with backoff.
TRANSIENT_PATTERN = re.compile(
    r"connection (refused|reset|aborted)|max retries exceeded|timed? ?out|temporarily unavailable"
    r"|database is locked|service unavailable|bad gateway|gateway time-?out|too many requests"
    r"|status code (429|5\d\d)|\b(429|50[0234])\b (server )?error|remote end closed|broken pipe",
    re.IGNORECASE,
)


class PartialWriteError(Exception):
    """Raised by ``Backend.write`` when the first ``landed`` events of the batch did land.

    The writer then counts those as delivered and retries (or splits) only the rest,
    so a retry never sends a point twice.
    """

    def __init__(self, landed: int, cause: BaseException) -> None:
        super().__init__(f"{landed} event(s) landed before: {cause!r}")
        self.landed = landed
        self.cause = cause


@dataclass(frozen=True)
class RunInfo:
    """What a backend needs to open a run."""

    project: str
    run_name: str
    #: tracelet's own tags (``tracelet.*``), kept apart from user tags.
    system_tags: dict[str, str] = field(default_factory=dict)
    #: tracelet's own tags still being read (the git state), for a backend whose
    #: ``late_system_tags`` is True: it calls this as late as its store allows
    pending_tags: Callable[[], dict[str, str]] | None = field(default=None, compare=False, repr=False)

    def all_system_tags(self) -> dict[str, str]:
        """``system_tags`` and the pending ones, waiting for those if they are still being read."""
        if self.pending_tags is None:
            return dict(self.system_tags)
        return {**self.system_tags, **self.pending_tags()}

    def resolved(self) -> RunInfo:
        """This info with every tag read (for a backend that reads ``system_tags`` only)."""
        if self.pending_tags is None:
            return self
        return RunInfo(self.project, self.run_name, self.all_system_tags())


class Backend(ABC):
    """One experiment-tracking store.

    Subclasses set ``name``, ``package`` (the module that must be importable),
    ``extra`` (the ``pip install "tracelet[extra]"`` name) and ``option_keys``
    (the keys ``backend_options[name]`` may hold; anything else is a ``TypeError``).
    """

    name: ClassVar[str]
    package: ClassVar[str | None] = None
    extra: ClassVar[str | None] = None
    option_keys: ClassVar[frozenset[str]] = frozenset()
    #: True when the backend reads the git state's tags (``info.pending_tags``) as late as its store
    #: allows (ClearML after ``Task.init``; MLflow with the run's first batch): the git state is
    #: then read while the store's client opens the run. False: ``info.system_tags`` holds them all.
    late_system_tags: ClassVar[bool] = False

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        options = dict(options or {})
        unknown = sorted(set(options) - self.option_keys)
        if unknown:
            raise TypeError(
                f"backend_options[{self.name!r}] got unknown key(s) {unknown}; "
                f"accepted: {sorted(self.option_keys)}"
            )
        self.options: dict[str, Any] = options
        self.run_id: str | None = None

    @classmethod
    def is_installed(cls) -> bool:
        """True when the backend's package can be imported (checked without importing it)."""
        if cls.package is None:
            return True
        try:
            return importlib.util.find_spec(cls.package) is not None
        except (ImportError, ValueError):  # a blocking import hook, or sys.modules[name] = None
            return False

    @classmethod
    def ensure_installed(cls) -> None:
        """Raise :class:`BackendNotInstalledError` naming the extra when the package is absent."""
        if not cls.is_installed():
            assert cls.package is not None
            raise BackendNotInstalledError(cls.name, cls.package, cls.extra or cls.name)

    def param_value_limit(self) -> int | None:
        """Longest param value the store accepts, or None.

        Called on the caller's thread, before any run is open: a static figure, never an
        import of the store's package (the E2E suite checks it against the installed one).
        """
        return None

    def shares_process(self) -> bool:
        """Whether the process that served this run may serve the store's next run (asked after ``start``).

        A warm delivery agent is reused only when every backend of its last run says yes; a
        store whose client keeps state per process that a new run would trip over says no, and
        its next run gets a fresh agent.
        """
        return True

    def is_transient(self, error: BaseException) -> bool:
        """True when ``error`` may pass if the same write is tried again later (retried with backoff).

        Anything else is a refusal: the writer splits the batch to isolate the refused
        events. Backends refine this with their store's error codes.
        """
        if isinstance(error, (ConnectionError, TimeoutError)):
            return True
        return bool(TRANSIENT_PATTERN.search(str(error)))

    @abstractmethod
    def start(self, info: RunInfo) -> str:
        """Open a run and return its id. Runs off the caller's thread, in the run's environment."""

    @abstractmethod
    def write(self, events: Sequence[Event]) -> None:
        """Deliver a batch, in order, with the store's bulk API. Raise on failure.

        Raise :class:`PartialWriteError` when a known prefix of the batch landed. An
        :class:`~tracelet.events.Artifact` with ``tree=True`` is a whole folder: store it with
        the store's folder call, or file by file (:func:`tracelet.backends.files.tree_files`).
        """

    @abstractmethod
    def finish(self, status: str) -> None:
        """Close the run with one of :data:`STATUSES`."""

    def notes(self) -> list[str]:
        """What this run's store did otherwise than asked, though nothing was lost (for the report)."""
        return []

    def spool_options(self) -> dict[str, Any]:
        """JSON-able options that let ``tracelet sync`` reopen this run later."""
        return dict(self.options)

    def attach(self, run_id: str) -> None:
        """Reopen an existing run for ``tracelet sync``. Backends that cannot, raise."""
        raise NotImplementedError(f"backend {self.name!r} cannot reopen a run for `tracelet sync`")

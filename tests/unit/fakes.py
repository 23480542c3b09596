"""In-memory backends for the unit tests: recording, blocking and failing."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, ClassVar

from tracelet.backends.base import Backend, RunInfo
from tracelet.backends.local import LocalBackend
from tracelet.events import Event, Metric


class MemoryBackend(Backend):
    """Keeps every delivered batch; ``instances`` lets a test find the run it created."""

    name = "memory"
    option_keys = frozenset({"limit"})
    instances: ClassVar[list[MemoryBackend]] = []

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.batches: list[list[Event]] = []
        self.status: str | None = None
        self.info: RunInfo | None = None
        MemoryBackend.instances.append(self)

    @property
    def events(self) -> list[Event]:
        return [e for batch in self.batches for e in batch]

    def param_value_limit(self) -> int | None:
        limit = self.options.get("limit")
        return int(limit) if limit is not None else None

    def start(self, info: RunInfo) -> str:
        self.info = info
        self.run_id = f"mem-{len(MemoryBackend.instances)}"
        return self.run_id

    def write(self, events: Sequence[Event]) -> None:
        self.batches.append(list(events))

    def finish(self, status: str) -> None:
        self.status = status


class BlockingBackend(MemoryBackend):
    """Blocks in ``write`` until ``release`` is set: a stalled server."""

    name = "blocking"
    release = threading.Event()

    def write(self, events: Sequence[Event]) -> None:
        BlockingBackend.release.wait()
        super().write(events)


class FailingBackend(MemoryBackend):
    """Every write raises: a broken store."""

    name = "failing"

    def write(self, events: Sequence[Event]) -> None:
        raise ConnectionError("store unreachable")


class StallingLocalBackend(LocalBackend):
    """The local backend behind a gate, so a stop can time out and leave a spool to sync."""

    name = "stalling-local"
    release = threading.Event()

    def write(self, events: Sequence[Event]) -> None:
        if any(isinstance(e, Metric) for e in events):  # not the system tags written at start
            StallingLocalBackend.release.wait()
        super().write(events)


FAKES = {
    "memory": "tests.unit.fakes:MemoryBackend",
    "blocking": "tests.unit.fakes:BlockingBackend",
    "failing": "tests.unit.fakes:FailingBackend",
    "stalling-local": "tests.unit.fakes:StallingLocalBackend",
}

"""The one spill queue of both delivery modes: a bounded deque in front of a spool, in order.

The caller's threads put events; one reader thread takes them. While the deque has room and
nothing waits on disk, a put is a lock-free ``deque.append`` (atomic under the GIL), which keeps
``log_metric`` under a microsecond. When the deque is full, the event goes to the spool, and so
does every later one until the reader has drained the spool: memory first, then disk, is then
still the order of the calls, so each key arrives in order. A disk that refuses the event (full)
costs an event, never an exception in the training loop: it is counted by the owner.

The trainer's side of the agent mode (one stream for every backend, ``queue/`` in the run's
spool) and each backend's writer (its own spool) hold one each.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from tracelet.spool import Spool


class Tally:
    """A count many threads bump without a lock, read exactly.

    ``next()`` on an ``itertools.count`` is atomic under the GIL, so a bump costs one C call and
    no lock on the hot path. A read takes a number from the same count, under a lock only
    readers share, and subtracts the reads before it: what is left is the bumps.
    """

    __slots__ = ("_numbers", "_read_lock", "_reads", "bump")

    def __init__(self) -> None:
        self._numbers = itertools.count()
        #: the bump itself: a bound C method, the cheapest call there is
        self.bump: Callable[[], int] = self._numbers.__next__
        self._reads = 0
        self._read_lock = threading.Lock()

    @property
    def value(self) -> int:
        with self._read_lock:
            value = next(self._numbers) - self._reads
            self._reads += 1
            return value


def _nothing() -> None:
    """The default ``before_spill``: nothing to move first."""


class SpillQueue:
    """Events in call order: in memory while there is room, then on disk until drained.

    ``lock`` is the owner's lock (it guards the owner's state beside this queue); ``spool``
    returns the spool to spill into (created on first use if the owner likes); ``on_spill`` is
    called once each time spilling begins (the owner says so in its log); ``on_refused`` gets
    what the disk refused; ``before_spill`` runs under the lock before each spilled event.
    """

    def __init__(
        self,
        *,
        maxsize: int,
        wake_at: int,
        wake: threading.Event,
        lock: AbstractContextManager[Any],
        spool: Callable[[], Spool],
        on_spill: Callable[[Spool], None],
        on_refused: Callable[[int, OSError], None],
        before_spill: Callable[[], None] = _nothing,
    ) -> None:
        self.items: deque[tuple[Any, ...]] = deque()
        #: set while events wait on disk: every put goes there too until the reader drains it
        self.spooling = False
        self.maxsize = maxsize
        self.sent = Tally()
        self._bump = self.sent.bump
        self._wake_at = wake_at
        self._wake = wake
        self._lock = lock
        self._spool = spool
        self._on_spill = on_spill
        self._on_refused = on_refused
        self._before_spill = before_spill

    # -- the caller's threads ------------------------------------------------------------------
    def put(self, item: tuple[Any, ...]) -> None:
        """Enqueue one event: a deque append unless the deque is full or the spool is draining."""
        items = self.items
        if self.spooling or len(items) >= self.maxsize:
            self._put_slow(item)
        else:
            items.append(item)
        self._bump()
        if len(items) >= self._wake_at and not self._wake.is_set():
            self._wake.set()

    def _put_slow(self, item: tuple[Any, ...]) -> None:
        with self._lock:
            if self._put_locked(item):
                return
        self._wake.set()

    def _put_locked(self, item: tuple[Any, ...]) -> bool:
        """Enqueue under the owner's lock; True when it went to memory, False when to the spool."""
        if not self.spooling and len(self.items) < self.maxsize:
            self.items.append(item)
            return True
        self._before_spill()
        spool = self._spool()
        if not self.spooling:
            self._on_spill(spool)
        self.spooling = True
        try:
            spool.append([item])
        except OSError as exc:  # the disk is full too: counted by the owner, never raised
            self._on_refused(1, exc)
        return False

    def put_many_locked(self, items: list[tuple[Any, ...]]) -> None:
        """Enqueue ``items`` while the caller holds the owner's lock (its state cannot change meanwhile)."""
        for item in items:
            self._put_locked(item)
            self._bump()
        self._wake.set()

    # -- the reader (under the owner's lock) ---------------------------------------------------
    def holds_any(self) -> bool:
        """Events wait here: in memory, or on disk until the reader has drained the spool."""
        return bool(self.items) or self.spooling

    def take(self, limit: int) -> list[tuple[Any, ...]]:
        """Up to ``limit`` events from memory, oldest first."""
        popleft = self.items.popleft
        return [popleft() for _ in range(min(limit, len(self.items)))]

    def drain(self) -> list[tuple[Any, ...]]:
        """Everything in memory, item by item: an append racing with it is either taken or stays."""
        taken: list[tuple[Any, ...]] = []
        popleft = self.items.popleft
        while True:
            try:
                taken.append(popleft())
            except IndexError:
                return taken

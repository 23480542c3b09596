"""One ordered writer per backend: a bounded in-memory queue, a spool for overflow, batched delivery.

The caller's thread only appends to a deque (``put``); the writer thread takes
batches and hands them to the backend's bulk API. Nothing is ever dropped:

* when the queue holds ``maxsize`` items, new items go to the durable spool, and
  from then on *every* new item goes there until the writer has drained it, so
  the order of each key is kept;
* a batch the backend rejects is counted as ``failed`` and logged, never retried
  blindly (a half-applied batch retried would duplicate points);
* a stop that times out moves what is left in memory to the spool, so ``pending``
  events can be replayed with ``tracelet sync``.

Invariant, checked by the unit tests: ``sent == delivered + failed + pending``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from typing import Any

from tracelet.backends.base import Backend
from tracelet.events import Event, from_raw
from tracelet.report import BackendReport
from tracelet.spool import Spool

log = logging.getLogger(__name__)

DEFAULT_MAXSIZE = 100_000
DEFAULT_BATCH_SIZE = 5_000
DEFAULT_INTERVAL = 0.2
MAX_KEPT_ERRORS = 5


def _count_value(counter: itertools.count[int]) -> int:
    """Read an ``itertools.count`` without advancing it.

    ``next(counter)`` is atomic under the GIL, so several caller threads can count
    without a lock on the hot path; its repr is ``count(N)``.
    """
    return int(repr(counter)[6:-1])


class BackendWriter:
    """The queue, spool and thread that deliver one backend's events in order."""

    def __init__(
        self,
        backend: Backend,
        spool: Spool,
        *,
        maxsize: int = DEFAULT_MAXSIZE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        interval: float = DEFAULT_INTERVAL,
        start_error: BaseException | None = None,
    ) -> None:
        self.backend = backend
        self.spool = spool
        self.maxsize = maxsize
        self.batch_size = batch_size
        self.interval = interval
        self._queue: deque[tuple[Any, ...]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._spooling = False
        self._sent = itertools.count()
        self.delivered = 0
        self.failed = 0
        self._in_flight: list[Event] = []
        self._in_flight_spooled = 0
        self.errors: list[str] = []
        self._stopping = False
        self._abandoned = False
        self._final_status: str | None = None
        self._dead = start_error is not None
        if start_error is not None:
            self._record_error(f"start failed: {start_error!r}")
        self._thread = threading.Thread(target=self._run, name=f"tracelet-writer-{backend.name}", daemon=True)

    # -- caller's thread -------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def put(self, item: tuple[Any, ...]) -> None:
        """Enqueue one event. Cheap unless the queue is full, when it goes to the spool."""
        if self._spooling or len(self._queue) >= self.maxsize:
            self._put_slow(item)
        else:
            self._queue.append(item)
        next(self._sent)
        if len(self._queue) >= self.batch_size and not self._wake.is_set():
            self._wake.set()

    def _put_slow(self, item: tuple[Any, ...]) -> None:
        with self._lock:
            if not self._spooling and len(self._queue) < self.maxsize:
                self._queue.append(item)
                return
            if not self._spooling:
                log.warning(
                    "tracelet: %s queue is full (%d events); spooling to %s",
                    self.backend.name,
                    self.maxsize,
                    self.spool.events_path,
                )
            self._spooling = True
            self.spool.append([item])
        self._wake.set()

    def wake(self) -> None:
        """Ask the writer to deliver now (used by flush and by signal handlers)."""
        self._wake.set()

    @property
    def sent(self) -> int:
        return _count_value(self._sent)

    def pending(self) -> int:
        """Events neither delivered nor failed: in memory, in flight, or in the spool."""
        with self._lock:
            return len(self._queue) + len(self._in_flight) + self.spool.unread

    def idle(self) -> bool:
        return self.pending() == 0

    def flush(self, timeout: float) -> bool:
        """Wait until everything sent so far is delivered or failed; False on timeout."""
        deadline = time.monotonic() + timeout
        while not self.idle():
            if time.monotonic() >= deadline or not self._thread.is_alive():
                return False
            self._wake.set()
            time.sleep(0.005)
        return True

    def begin_stop(self, status: str) -> None:
        """Tell the writer to drain and close, without waiting (so several backends drain at once)."""
        self._final_status = status
        self._stopping = True
        self._wake.set()

    def stop(self, status: str, timeout: float) -> BackendReport:
        """Drain, close the run with ``status`` and report. Leftovers are spooled on timeout."""
        self.begin_stop(status)
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._lock:
                # The batch stuck in the backend goes to the spool too, so a crash cannot lose it;
                # if that write completes later after all, _deliver skips it in the spool.
                self._abandoned = True
                leftovers = self._in_flight + [from_raw(raw) for raw in self._queue]
                self._queue.clear()
                self._in_flight_spooled = len(self._in_flight)
                self._in_flight = []
                if leftovers:
                    self.spool.prepend(leftovers)
                self.spool.meta["finish_status"] = status
                self.spool.commit()
            log.warning(
                "tracelet: %s did not finish within %.1fs; %d event(s) kept in %s (replay: tracelet sync)",
                self.backend.name,
                timeout,
                self.pending(),
                self.spool.directory,
            )
        return self.report()

    def report(self) -> BackendReport:
        pending = self.pending()
        sent = self.sent
        if sent != self.delivered + self.failed + pending:
            log.error(
                "tracelet: delivery counts do not add up for %s: sent=%d delivered=%d failed=%d pending=%d",
                self.backend.name,
                sent,
                self.delivered,
                self.failed,
                pending,
            )
        return BackendReport(
            backend=self.backend.name,
            run_id=self.backend.run_id,
            sent=sent,
            delivered=self.delivered,
            failed=self.failed,
            pending=pending,
            spool_path=str(self.spool.directory) if pending else None,
            errors=tuple(self.errors),
        )

    # -- writer thread ---------------------------------------------------------------------
    def _take(self) -> tuple[list[Event], bool]:
        """The next batch in order: memory first, then the spool. Returns (events, from_spool)."""
        with self._lock:
            if self._abandoned:
                return [], False
            if self._queue:
                n = min(self.batch_size, len(self._queue))
                self._in_flight = [from_raw(self._queue.popleft()) for _ in range(n)]
                return self._in_flight, False
            if self._spooling:
                events = self.spool.read(self.batch_size)
                if events:
                    self._in_flight = events
                    return events, True
                self.spool.reset()
                self._spooling = False
                log.info("tracelet: %s spool drained; back to memory", self.backend.name)
            return [], False

    def _deliver(self, events: list[Event], from_spool: bool) -> None:
        error: Exception | None = None
        try:
            if self._dead:
                raise RuntimeError("backend run was never started")
            self.backend.write(events)
        except Exception as exc:
            error = exc
        with self._lock:
            if self._abandoned:
                # stop() timed out during this write and already moved the batch to the spool.
                if error is None and self._in_flight_spooled:
                    self.spool.skip(self._in_flight_spooled)
                    self.delivered += self._in_flight_spooled
                self._in_flight_spooled = 0
                return
            if error is None:
                self.delivered += len(events)
            else:
                self.failed += len(events)
            self._in_flight = []
            if from_spool:
                self.spool.commit()
        if error is not None:
            self._record_error(f"write of {len(events)} event(s) failed: {error!r}")
            log.warning(
                "tracelet: %s failed to deliver %d event(s): %r", self.backend.name, len(events), error
            )

    def _record_error(self, message: str) -> None:
        if len(self.errors) < MAX_KEPT_ERRORS:
            self.errors.append(message)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            while True:
                events, from_spool = self._take()
                if not events:
                    break
                self._deliver(events, from_spool)
            if self._abandoned:
                return
            if self._stopping and self.pending() == 0:
                break
        self._finish()

    def _finish(self) -> None:
        status = self._final_status or "finished"
        if not self._dead:
            try:
                self.backend.finish(status)
            except Exception as exc:
                self._record_error(f"finish failed: {exc!r}")
                log.warning("tracelet: %s failed to close its run: %r", self.backend.name, exc)
        with self._lock:
            self.spool.close(remove_if_empty=True)

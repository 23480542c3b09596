"""One ordered writer per backend: a bounded in-memory queue, a spool for overflow, batched delivery.

This is the only code that calls a backend's ``write``. The thread mode runs it in
the training process; the agent mode runs the very same class inside the delivery
agent. Nothing is ever dropped:

* when the queue holds ``maxsize`` items, new items go to the durable spool, and
  from then on *every* new item goes there until the writer has drained it, so
  the order of each key is kept;
* a transient store error (connection refused, 5xx, timeouts, a locked sqlite
  database) is retried with capped exponential backoff, for as long as the run
  lasts and, at stop, until ``flush_timeout``; what is still undelivered then is
  spooled for ``tracelet sync``;
* a batch the store refuses for good is split in halves until the refused events
  are isolated: every other event lands, and only the refused ones go to the
  spool's dead-letter file with the store's reason (counted as ``failed``);
* a stop that times out moves what is left in memory to the spool, so ``pending``
  events can be replayed with ``tracelet sync``.

Invariant, checked by the unit tests: ``sent == delivered + failed + pending + dropped``,
where ``dropped`` counts what fit neither in memory nor on a full spool disk.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence

from tracelet.backends.base import Backend, PartialWriteError
from tracelet.delivery.health import Progress
from tracelet.delivery.spill import SpillQueue
from tracelet.events import Event, from_raw
from tracelet.redaction import strip_url_userinfo
from tracelet.report import BackendReport
from tracelet.spool import DiskAlarm, Spool

log = logging.getLogger(__name__)

DEFAULT_MAXSIZE = 100_000
DEFAULT_BATCH_SIZE = 5_000
DEFAULT_INTERVAL = 0.2
MAX_KEPT_ERRORS = 5
#: Backoff between retries of a transient error: doubles from the first to the cap (seconds).
FIRST_BACKOFF = 0.05
#: Seconds a writer keeps retrying a transient error while closing its run.
FINISH_RETRY_WINDOW = 10.0
MAX_BACKOFF = 2.0
#: A batch whose split isolates this many single events refused for the *same* reason is
#: refused store-wide (bad credentials, a deleted run): the rest is dead-lettered without
#: spending two calls per event on it.
SAME_REASON_LIMIT = 8

#: Injectable clock, so backoff is unit-tested without sleeping.
_monotonic = time.monotonic
_sleep = time.sleep


def _ignore(events: Sequence[Event], stored: bool) -> None:
    """The default ``on_settled``: a writer outside a :class:`~tracelet.delivery.fanout.Fanout`."""


def backoff_delay(attempt: int) -> float:
    """Seconds before retry ``attempt + 1``: doubling from FIRST_BACKOFF, capped at MAX_BACKOFF."""
    return float(min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** min(attempt, 30)))


class _Abandoned(Exception):
    """Raised inside the writer thread when ``stop`` gave up waiting for it."""


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
        on_progress: Callable[[], None] | None = None,
        disk_alarm: DiskAlarm | None = None,
        on_settled: Callable[[Sequence[Event], bool], None] | None = None,
    ) -> None:
        self.backend = backend
        #: called on the writer thread with the events just stored (True) or refused (False):
        #: the run's snapshot ledger deletes a snapshot every store has
        self.on_settled: Callable[[Sequence[Event], bool], None] = on_settled or _ignore
        #: one ERROR per run for a full spool disk, shared with the run's other queues
        self._disk_alarm = disk_alarm or DiskAlarm()
        #: called on the writer thread right after events are delivered or dead-lettered: the agent
        #: acknowledges them at once, so a SIGKILL a moment later leaves nothing delivered unacknowledged
        self.on_progress = on_progress
        self.spool = spool
        self.batch_size = batch_size
        self.interval = interval
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._queue = SpillQueue(
            maxsize=maxsize,
            wake_at=batch_size,
            wake=self._wake,
            lock=self._lock,
            spool=lambda: self.spool,
            on_spill=self._spilling,
            on_refused=self._drop,
        )
        #: enqueue one event (the caller's threads): cheap unless the queue is full, then the spool
        self.put = self._queue.put
        self.delivered = 0
        self.failed = 0
        #: events lost to a full spool disk (see :meth:`_drop`)
        self.dropped = 0
        self._disk_error_logged = False
        self.retries = 0
        #: single events the store refused, per reason: once a reason has refused
        #: SAME_REASON_LIMIT of them, a piece refused for it is dead-lettered whole
        self._refusals: dict[str, int] = {}
        self._refusal_logs = 0
        self._in_flight: list[Event] = []
        self._in_flight_spooled = 0
        self.errors: list[str] = []
        #: the latest error, transient ones included (``Experiment.health`` shows it)
        self.last_error: str | None = None
        self._stopping = False
        self._abandoned = False
        self._final_status: str | None = None
        self._start_error = start_error
        if start_error is not None:
            self._record_error(f"start failed: {start_error!r}")
        self._thread = threading.Thread(target=self._run, name=f"tracelet-writer-{backend.name}", daemon=True)

    # -- caller's thread -------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def _spilling(self, spool: Spool) -> None:
        log.warning(
            "tracelet: %s queue is full (%d events); spooling to %s",
            self.backend.name,
            self._queue.maxsize,
            spool.events_path,
        )

    def _disk_trouble(self, what: str, error: OSError) -> None:
        """A spool's bookkeeping failed: an ERROR, unless the full disk was already named."""
        level = logging.DEBUG if self._disk_error_logged else logging.ERROR
        log.log(level, "tracelet: %s: %s: %r", self.backend.name, what, error)

    def _drop(self, count: int, error: OSError) -> None:
        """``count`` events fit neither in memory nor on the spool's disk: counted, and said once."""
        self.dropped += count
        if not self._disk_error_logged:
            self._disk_error_logged = True
            self._record_error(self._disk_alarm.refused(log, self.spool.directory, error, self.backend.name))

    def wake(self) -> None:
        """Ask the writer to deliver now (used by flush and by signal handlers)."""
        self._wake.set()

    @property
    def sent(self) -> int:
        return self._queue.sent.value

    def pending(self) -> int:
        """Events neither delivered nor failed: in memory, in flight, or in the spool."""
        with self._lock:
            return len(self._queue.items) + len(self._in_flight) + self.spool.unread

    def progress(self) -> Progress:
        """The counts the agent acknowledges to the trainer, and :meth:`Experiment.health` shows.

        ``durable``: how many of the events sent so far are delivered, dead-lettered or on disk
        in the spool. The trainer may forget those: nothing acknowledged as durable can be lost
        by the agent dying.
        """
        with self._lock:
            durable = self.sent - len(self._queue.items) - len(self._in_flight)
            spooled = self.spool.unread
        return Progress(
            received=self.sent,
            delivered=self.delivered,
            failed=self.failed,
            durable=durable,
            retries=self.retries,
            spooled=spooled,
            dropped=self.dropped,
            last_error=self.last_error,
        )

    def idle(self) -> bool:
        return self.pending() == 0

    def hung(self) -> bool:
        """True when ``stop`` gave up on this writer and its thread is still inside a store call."""
        return self._abandoned and self._thread.is_alive()

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
                # if that write completes later after all, _account skips it in the spool.
                self._abandoned = True
                leftovers = self._in_flight + [from_raw(raw) for raw in self._queue.drain()]
                self._in_flight_spooled = len(self._in_flight)
                self._in_flight = []
                try:
                    if leftovers:
                        self.spool.prepend(leftovers)
                    self.spool.meta["finish_status"] = status
                    self.spool.commit()
                except OSError as exc:
                    self._in_flight_spooled = 0
                    self._drop(len(leftovers), exc)
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
        if sent != self.delivered + self.failed + pending + self.dropped:
            log.error(
                "tracelet: delivery counts do not add up for %s: sent=%d delivered=%d failed=%d pending=%d "
                "dropped=%d",
                self.backend.name,
                sent,
                self.delivered,
                self.failed,
                pending,
                self.dropped,
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
            retries=self.retries,
            dead_letter_path=str(self.spool.dead_letter_path) if self.spool.dead_lettered else None,
            dropped=self.dropped,
            notes=tuple(self.backend.notes()),
        )

    # -- writer thread ---------------------------------------------------------------------
    def _take(self) -> tuple[list[Event], bool]:
        """The next batch in order: memory first, then the spool. Returns (events, from_spool)."""
        with self._lock:
            if self._abandoned:
                return [], False
            if self._queue.items:
                self._in_flight = [from_raw(raw) for raw in self._queue.take(self.batch_size)]
                return list(self._in_flight), False
            if self._queue.spooling:
                events = self.spool.read(self.batch_size)
                if events:
                    self._in_flight = list(events)
                    return events, True
                self.spool.reset()
                self._queue.spooling = False
                log.info("tracelet: %s spool drained; back to memory", self.backend.name)
            return [], False

    def _deliver(self, events: list[Event], from_spool: bool) -> None:
        """Deliver one batch: retry transient errors, isolate refused events, dead-letter those."""
        if self._start_error is not None:
            self._dead_letter(events, f"the run was never opened: {self._start_error!r}")
            return
        try:
            self._deliver_piece(events, self._refusals)
        except _Abandoned:
            return
        with self._lock:
            if from_spool and not self._abandoned:
                try:
                    self.spool.commit()
                except OSError as exc:  # the offset stays where it was: a sync would replay, not lose
                    self._disk_trouble("could not record the spool's offset", exc)

    def _deliver_piece(self, piece: list[Event], refusals: dict[str, int]) -> None:
        """Deliver ``piece`` in order, or dead-letter what the store refuses (never raises but _Abandoned)."""
        attempt = 0
        while piece:
            error: BaseException | None = None
            try:
                self.backend.write(piece)
                landed = len(piece)
            except PartialWriteError as exc:
                landed, error = exc.landed, exc.cause
            except Exception as exc:
                landed, error = 0, exc
            if landed:
                self._account(landed, delivered=True)
                piece = piece[landed:]
            if error is None:
                refusals.clear()  # the store takes events again
                return
            if self.backend.is_transient(error):
                self.retries += 1
                self._backoff(attempt, error)
                attempt += 1
                continue
            reason = f"{type(error).__name__}: {error}"
            if refusals.get(reason, 0) >= SAME_REASON_LIMIT:
                self._dead_letter(piece, f"refused store-wide: {reason}")
                return
            if len(piece) == 1:
                refusals[reason] = refusals.get(reason, 0) + 1
                self._dead_letter(piece, reason)
                return
            mid = len(piece) // 2
            self._deliver_piece(piece[:mid], refusals)
            piece = piece[mid:]
            attempt = 0

    def _backoff(self, attempt: int, error: BaseException) -> None:
        delay = backoff_delay(attempt)
        self.last_error = strip_url_userinfo(f"{type(error).__name__}: {error}")
        if attempt == 0:
            log.warning("tracelet: %s: transient error, retrying: %r", self.backend.name, error)
        else:
            log.debug("tracelet: %s: retry %d in %.2fs: %r", self.backend.name, attempt + 1, delay, error)
        deadline = _monotonic() + delay
        while True:
            if self._abandoned:
                raise _Abandoned
            left = deadline - _monotonic()
            if left <= 0:
                return
            _sleep(min(left, 0.05))

    def _account(self, count: int, *, delivered: bool) -> None:
        """The first ``count`` in-flight events are done: delivered, or failed and dead-lettered."""
        with self._lock:
            if self._abandoned:
                # stop() timed out during this write and already moved the in-flight events to
                # the spool: events that did land after all are skipped there, not replayed.
                if delivered and self._in_flight_spooled:
                    done = min(count, self._in_flight_spooled)
                    self.spool.skip(done)
                    self.delivered += done
                    self._in_flight_spooled -= done
                raise _Abandoned
            settled = self._in_flight[:count]
            del self._in_flight[:count]
            if delivered:
                self.delivered += count
            else:
                self.failed += count
        self.on_settled(settled, delivered)
        if self.on_progress is not None:
            self.on_progress()

    def _dead_letter(self, events: list[Event], reason: str) -> None:
        reason = strip_url_userinfo(reason)  # a store's message may quote a URL with credentials
        with self._lock:
            if not self._abandoned:
                try:
                    self.spool.dead_letter(events, reason)
                except OSError as exc:  # the refused events could not be kept: dropped, not failed
                    del self._in_flight[: len(events)]
                    self._drop(len(events), exc)
                    return
        self._account(len(events), delivered=False)
        self._record_error(
            f"{len(events)} event(s) refused: {reason} (kept in {self.spool.dead_letter_path})"
        )
        self._refusal_logs += 1
        log.log(
            logging.WARNING if self._refusal_logs <= MAX_KEPT_ERRORS else logging.DEBUG,
            "tracelet: %s refused %d event(s): %s; kept in %s (replay: tracelet sync)",
            self.backend.name,
            len(events),
            reason,
            self.spool.dead_letter_path,
        )

    def _record_error(self, message: str) -> None:
        self.last_error = strip_url_userinfo(message)
        if len(self.errors) < MAX_KEPT_ERRORS:
            self.errors.append(self.last_error)

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
        """Close the run; a transient error (sqlite busy while a reader looks) is retried for a while.

        Left unretried, one ``database is locked`` at the very end would leave a fully
        delivered run ``running`` for good.
        """
        status = self._final_status or "finished"
        if self._start_error is None:
            deadline = time.monotonic() + FINISH_RETRY_WINDOW
            attempt = 0
            while True:
                try:
                    self.backend.finish(status)
                    break
                except Exception as exc:
                    if self.backend.is_transient(exc) and time.monotonic() < deadline:
                        with contextlib.suppress(_Abandoned):  # stop() gave up waiting: report it
                            self._backoff(attempt, exc)
                            attempt += 1
                            continue
                    self._record_error(f"finish failed: {exc!r}")
                    log.warning("tracelet: %s failed to close its run: %r", self.backend.name, exc)
                    break
        with self._lock:
            if self._start_error is not None and (self.spool.dead_lettered or self.spool.unread):
                self.spool.meta["finish_status"] = status  # `tracelet sync` opens the run, closes it so
                with contextlib.suppress(OSError):
                    self.spool.commit()
            try:
                self.spool.close(remove_if_empty=True)
            except OSError as exc:
                self._disk_trouble(f"could not close the spool {self.spool.directory}", exc)

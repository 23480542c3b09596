"""The thread mode (``TRACELET_DELIVERY=thread``): the writers run on threads of this process.

The runs open on a thread of their own, so ``start_logging()`` does not wait for the
store's import, client or first round trip here either. What is logged meanwhile
waits, in order, in the same bounded spill queue as everywhere else (memory, then the
run's ``queue/`` spool), and is handed to the writers once they exist. If opening fails
outright, everything logged is kept in that spool for ``tracelet sync``, and the report
says why.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tracelet.backends.base import FAILED
from tracelet.collectors.system_metrics import SystemSampler, start_sampler
from tracelet.delivery import Delivery, Opened, OpenRequest, discard
from tracelet.delivery.fanout import Fanout
from tracelet.delivery.health import LAG_CHECK_EVERY, MARK_EVERY, Arrivals, LagWatch, Progress, backend_health
from tracelet.delivery.spill import SpillQueue
from tracelet.delivery.writer import DEFAULT_MAXSIZE
from tracelet.events import MetricClock, from_raw, to_raw
from tracelet.report import BackendReport, DeliveryHealth
from tracelet.spool import DiskAlarm, Spool

log = logging.getLogger(__name__)

#: events read back per step from the spool when the runs open (bounded memory)
HANDOVER_CHUNK = 10_000
#: seconds to close runs that opened after the stop gave up on them (they hold nothing)
LATE_RUN_TIMEOUT = 10.0


class ThreadDelivery(Delivery):
    """A :class:`Fanout` in this process, opened on a background thread."""

    def __init__(self, request: OpenRequest, open_timeout: float, lag_warn: float = 0.0) -> None:
        self._request = request
        self._open_timeout = open_timeout
        self._fanout: Fanout | None = None
        #: why the runs will not open; once set, every event goes to the ``queue/`` spool
        self._failure: str | None = None
        #: the run's ``queue/`` spool: what spilled while the runs opened, or all of it if they cannot
        self._kept: Spool | None = None
        # Re-entrant: the waiting queue spills under it, from inside _put_before_open.
        self._lock = threading.RLock()
        self._waiting = SpillQueue(
            maxsize=request.writer_options.get("maxsize", DEFAULT_MAXSIZE),
            wake_at=sys.maxsize,  # nobody reads it before the runs are open
            wake=threading.Event(),
            lock=self._lock,
            spool=self._queue_spool,
            on_spill=self._spilling,
            on_refused=self._refused,
        )
        self._ready = threading.Event()
        self._sent = 0
        #: events that fit neither in memory nor on the spool's full disk before the runs opened
        self._dropped = 0
        self._disk_error: str | None = None
        #: one ERROR per run for a full spool disk: this queue and every writer share it
        self._disk_alarm = DiskAlarm()
        #: final per-key timestamps (see MetricClock): this mode has no feeder thread, so put() stamps
        self._stamp = MetricClock().stamp
        self._put = self._put_before_open
        self._opener = threading.Thread(target=self._open, name="tracelet-open", daemon=True)
        self._opener.start()
        #: when events were accepted (``health()``'s lag) and the lag's WARNING, on a monitor thread
        self._arrivals = Arrivals()
        self._lag_watch = LagWatch(lag_warn)
        #: the health the monitor published at its last tick (what ``health()`` hands out while running)
        self._published: DeliveryHealth | None = None
        self._closing = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="tracelet-monitor", daemon=True)
        self._monitor.start()
        self._sampler = self._start_sampler()

    def _start_sampler(self) -> SystemSampler | None:
        """No agent to sample from outside: a daemon thread of this process samples it."""

        def emit(items: list[tuple[Any, ...]]) -> None:
            for item in items:
                self.put(item)

        request = self._request
        return start_sampler(os.getpid(), request.system_interval, request.started_at, emit)

    def _watch(self) -> None:
        checked = 0.0
        while not self._closing.wait(MARK_EVERY):
            now = time.monotonic()
            health = self._health_now(now)
            self._published = health
            self._arrivals.mark(max((h.accepted for h in health.values()), default=0), now)
            self._arrivals.forget(
                min((h.delivered + h.failed + h.dropped for h in health.values()), default=0)
            )
            if now - checked >= LAG_CHECK_EVERY:
                checked = now
                self._lag_watch.check(health)

    def health(self) -> DeliveryHealth:
        """As of the monitor's last tick (at most ``MARK_EVERY`` old) while the run goes on; else now."""
        published = self._published
        if published is not None and not self._closing.is_set():
            return DeliveryHealth(published)
        return self._health_now(time.monotonic())

    def _health_now(self, now: float) -> DeliveryHealth:
        fanout = self._fanout
        if fanout is None:
            kept = self._kept.unread if self._kept is not None else 0
            empty = Progress()
            return DeliveryHealth(
                {
                    name: backend_health(
                        name,
                        self._sent,
                        empty,
                        kept,
                        self._dropped,
                        self._arrivals,
                        now,
                    )
                    for name, _ in self._request.backends
                }
            )
        return DeliveryHealth(
            {
                name: backend_health(
                    name,
                    progress.received + self._dropped,
                    progress,
                    0,
                    self._dropped,
                    self._arrivals,
                    now,
                )
                for name, progress in fanout.progress().items()
            }
        )

    def _open(self) -> None:
        try:
            fanout = Fanout(self._request, disk_alarm=self._disk_alarm)
        except BaseException as exc:
            why = f"{type(exc).__name__}: {exc}"
            log.error(
                "tracelet: could not open the runs: %s; everything logged is kept in %s",
                why,
                self._request.spool_dir,
            )
            log.debug("opening the runs failed", exc_info=True)
            self.open_error = exc
            with self._lock:
                self._keep_in_spool(why)
            self._ready.set()
            return
        with self._lock:
            late = self._failure is not None  # the stop gave up on this open: the spool has it all
            if not late:
                self._hand_over(fanout)
        if late:
            log.warning(
                "tracelet: the runs opened after the stop gave up on them; they are closed empty "
                "(failed): everything logged is in %s, and tracelet sync opens runs for it",
                self._request.spool_dir,
            )
            fanout.stop(FAILED, LATE_RUN_TIMEOUT)
        self._ready.set()

    def _hand_over(self, fanout: Fanout) -> None:
        """What waited goes to the writers, in order; from now on every put goes there. Under the lock."""
        fanout.put_many(self._waiting.drain())
        kept, self._kept = self._kept, None
        if kept is not None:  # spilled while the runs opened: newer than what was in memory
            while events := kept.read(HANDOVER_CHUNK):
                fanout.put_many([to_raw(event) for event in events])
            kept.reset()
            kept.close(remove_if_empty=True)
        self._fanout = fanout
        self._put = fanout.put

    def _keep_in_spool(self, why: str) -> None:
        """The runs will not open: what waits, and what is logged from now on, goes to ``queue/``.

        Called under the lock.
        """
        self._failure = why
        waiting = self._waiting.drain()
        if waiting:  # older than anything that spilled: in front of it
            try:
                self._queue_spool().prepend([from_raw(item) for item in waiting])
            except OSError as exc:
                self._refused(len(waiting), exc)

    def _queue_spool(self) -> Spool:
        """The run's ``queue/`` spool, with no run ids: ``tracelet sync`` opens the runs."""
        if self._kept is not None:
            return self._kept
        targets = [
            {"backend": name, "run_id": None, "options": options} for name, options in self._request.backends
        ]
        self._kept = Spool(
            Path(self._request.spool_dir) / "queue",
            {
                "targets": targets,
                "order": 2,
                "project": self._request.info.project,
                "run_name": self._request.info.run_name,
            },
        )
        return self._kept

    def _spilling(self, spool: Spool) -> None:
        log.warning(
            "tracelet: the runs are still opening and %d events wait; spooling to %s",
            self._waiting.maxsize,
            spool.directory,
        )

    def _refused(self, count: int, error: OSError) -> None:
        """The spool's disk refused ``count`` events before the runs opened: counted, said once."""
        self._dropped += count
        message = self._disk_alarm.refused(log, self._request.spool_dir, error)
        self._disk_error = self._disk_error or message

    def _put_before_open(self, item: tuple[Any, ...]) -> None:
        with self._lock:
            fanout = self._fanout
            if fanout is None:
                self._sent += 1
                if self._failure is None:
                    self._waiting.put(item)
                    return
                try:
                    self._queue_spool().append([item])
                except OSError as exc:  # the disk is full too: never an exception into training
                    self._refused(1, exc)
                return
        fanout.put(item)

    def opened(self, timeout: float) -> Opened | None:
        if not self._ready.wait(timeout):
            return None
        if self._fanout is not None:
            return self._fanout.opened
        return Opened(
            runs={name: None for name, _ in self._request.backends},
            errors={name: self._failure or "" for name, _ in self._request.backends},
        )

    def put(self, item: tuple[Any, ...]) -> None:
        self._put(self._stamp(item))

    def flush(self, timeout: float) -> bool:
        if not self._ready.wait(timeout):
            return False
        return self._fanout.flush(timeout) if self._fanout else self._failure is None

    def stop(self, status: str, timeout: float) -> dict[str, BackendReport]:
        """Deliver within ``timeout``, counted from when the runs are open (at most ``open_timeout`` away)."""
        if self._sampler is not None:
            self._sampler.stop()
        self._closing.set()
        self._ready.wait(self._open_timeout)
        with self._lock:
            fanout = self._fanout
            if fanout is None and self._failure is None:  # still opening: keep what waits
                self._keep_in_spool(
                    f"the runs did not open within {self._open_timeout:g}s (TRACELET_AGENT_TIMEOUT)"
                )
        if fanout is not None:
            return self._with_what_was_dropped_before_open(fanout.stop(status, timeout))
        return self._unopened_reports(status)

    def _with_what_was_dropped_before_open(
        self, reports: dict[str, BackendReport]
    ) -> dict[str, BackendReport]:
        """Events the full disk refused before the runs opened never reached a writer: counted here."""
        if not self._dropped:
            return reports
        return {
            name: dataclasses.replace(
                r,
                sent=r.sent + self._dropped,
                dropped=r.dropped + self._dropped,
                errors=(*r.errors, self._disk_error or ""),
            )
            for name, r in reports.items()
        }

    def _unopened_reports(self, status: str) -> dict[str, BackendReport]:
        kept = self._queue_spool()
        kept.meta["finish_status"] = status
        kept.commit()
        kept.close(remove_if_empty=True)
        return {
            name: BackendReport(
                backend=name,
                run_id=None,
                sent=self._sent,
                delivered=0,
                failed=0,
                pending=self._sent - self._dropped,
                spool_path=self._request.spool_dir if self._sent > self._dropped else None,
                errors=tuple(
                    e for e in (f"the runs could not be opened: {self._failure}", self._disk_error) if e
                ),
                retries=0,
                dropped=self._dropped,
            )
            for name, _ in self._request.backends
        }

    def wake(self) -> None:
        if self._fanout is not None:
            self._fanout.wake()

    def detach(self) -> None:
        self._closing.set()
        self._fanout = None
        self._put = discard

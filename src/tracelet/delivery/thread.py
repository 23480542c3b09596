"""The thread mode (``TRACELET_DELIVERY=thread``): the writers run on threads of this process.

The runs open on a thread of their own, so ``start_logging()`` does not wait for the
store's import, client or first round trip here either. What is logged meanwhile
waits, in order, and is handed to the writers once they exist. If opening fails
outright, everything logged is kept in the run's spool (``queue/``) for
``tracelet sync``, and the report says why.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from pathlib import Path
from typing import Any

from tracelet.delivery import Delivery, Opened, OpenRequest
from tracelet.delivery.fanout import Fanout
from tracelet.events import MetricClock
from tracelet.report import BackendReport
from tracelet.spool import Spool

log = logging.getLogger(__name__)


class ThreadDelivery(Delivery):
    """A :class:`Fanout` in this process, opened on a background thread."""

    def __init__(self, request: OpenRequest, open_timeout: float) -> None:
        self._request = request
        self._open_timeout = open_timeout
        self._fanout: Fanout | None = None
        self._failure: str | None = None
        self._fallback: Spool | None = None
        self._waiting: deque[tuple[Any, ...]] = deque()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._sent = 0
        #: final per-key timestamps (see MetricClock): this mode has no feeder thread, so put() stamps
        self._stamp = MetricClock().stamp
        self._put = self._put_before_open
        self._opener = threading.Thread(target=self._open, name="tracelet-open", daemon=True)
        self._opener.start()

    def _open(self) -> None:
        try:
            fanout = Fanout(self._request)
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
            fanout.put_many(list(self._waiting))
            self._waiting.clear()
            self._fanout = fanout
            self._put = fanout.put
        self._ready.set()

    def _keep_in_spool(self, why: str) -> None:
        """The runs will not open: what waits, and what is logged from now on, goes to ``queue/``.

        Called under the lock.
        """
        self._failure = why
        self._fallback = self._spool()
        if self._waiting:
            self._fallback.append(list(self._waiting))
            self._waiting.clear()

    def _spool(self) -> Spool:
        targets = [
            {"backend": name, "run_id": None, "options": options} for name, options in self._request.backends
        ]
        return Spool(
            Path(self._request.spool_dir) / "queue",
            {
                "targets": targets,
                "order": 2,
                "project": self._request.info.project,
                "run_name": self._request.info.run_name,
            },
        )

    def _put_before_open(self, item: tuple[Any, ...]) -> None:
        with self._lock:
            self._sent += 1
            if self._fanout is None:
                if self._fallback is not None:
                    self._fallback.append([item])
                else:
                    self._waiting.append(item)
                return
        self._fanout.put(item)

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
        self._ready.wait(self._open_timeout)
        with self._lock:
            fanout = self._fanout
            if fanout is None and self._fallback is None:  # still opening: keep what waits
                self._keep_in_spool(
                    f"the runs did not open within {self._open_timeout:g}s (TRACELET_AGENT_TIMEOUT)"
                )
        if fanout is not None:
            return fanout.stop(status, timeout)
        return self._unopened_reports(status)

    def _unopened_reports(self, status: str) -> dict[str, BackendReport]:
        assert self._fallback is not None
        self._fallback.meta["finish_status"] = status
        self._fallback.commit()
        self._fallback.close(remove_if_empty=True)
        return {
            name: BackendReport(
                backend=name,
                run_id=None,
                sent=self._sent,
                delivered=0,
                failed=0,
                pending=self._sent,
                spool_path=self._request.spool_dir if self._sent else None,
                errors=(f"the runs could not be opened: {self._failure}",),
                retries=0,
            )
            for name, _ in self._request.backends
        }

    def wake(self) -> None:
        if self._fanout is not None:
            self._fanout.wake()

    def detach(self) -> None:
        self._fanout = None
        self._put = _drop


def _drop(item: tuple[Any, ...]) -> None:
    """A detached delivery (a forked child) takes nothing."""

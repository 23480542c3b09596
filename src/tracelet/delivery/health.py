"""Delivery health while the run goes on: what each store has, what waits, and how far behind it is.

``stop_logging()`` reports what was delivered, at the end. A long run needs to know
sooner that a store has fallen behind (a server down, a quota hit), and W&B's users ask
for a program that can listen for it (wandb/wandb#9449). :meth:`Experiment.health`
answers from what the delivery side already acknowledged, without a round trip to the
agent: it reads a few counters and takes no lock a writer holds for long.

*How far behind* is the age of the oldest event a store has neither taken nor refused.
The events have no arrival time each (stamping every ``log_metric`` would cost the
training thread); instead :class:`Arrivals` records, a few times a second, how many
events had been accepted by then. The oldest event a store still waits for was accepted
no later than the first such mark past it, so its age is known to within a mark.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass

from tracelet.report import BackendHealth, DeliveryHealth

log = logging.getLogger("tracelet.delivery")

#: seconds between two arrival marks (the resolution of ``lag``)
MARK_EVERY = 0.1
#: seconds between two checks of the lag against ``TRACELET_LAG_WARN``
LAG_CHECK_EVERY = 0.5


@dataclass(slots=True)
class Progress:
    """One writer's counts, as the agent acknowledges them to the trainer (or read in-process).

    ``settled + spooled + (in memory)`` is what the writer was given; ``durable`` is what
    can no longer be lost by the agent dying (delivered, refused and kept, or spooled).
    """

    #: events the writer was given
    received: int = 0
    delivered: int = 0
    #: refused by the store, kept in the dead-letter file for ``tracelet sync``
    failed: int = 0
    #: delivered, dead-lettered, dropped or on disk in the writer's spool
    durable: int = 0
    retries: int = 0
    #: waiting on disk in the writer's spool
    spooled: int = 0
    #: lost to a full spool disk
    dropped: int = 0
    last_error: str | None = None

    @property
    def settled(self) -> int:
        """Events the writer is done with: delivered, refused, or lost to a full disk."""
        return self.delivered + self.failed + self.dropped


class Arrivals:
    """Coarse arrival times: marks ``(accepted so far, when)``, at most one per ``MARK_EVERY`` seconds.

    Event number ``i`` (from 0) was accepted no later than the first mark whose count is
    above ``i``. Marks no store needs any more are forgotten, so a store that keeps up
    keeps this list a few marks long.

    One thread marks and forgets (the feeder, or thread mode's monitor); any thread may
    ask :meth:`oldest` without a lock. So the writer appends a time before its count, and
    replaces (never shortens) the lists a reader may hold: ``_marks`` is swapped whole.
    """

    __slots__ = ("_marks",)

    def __init__(self) -> None:
        #: (counts, times, index of the first mark still needed)
        self._marks: tuple[list[int], list[float], int] = ([], [], 0)

    def mark(self, accepted: int, now: float) -> None:
        """``accepted`` events had been accepted by ``now`` (monotonic). The marking thread only."""
        counts, times, _ = self._marks
        if counts and (accepted == counts[-1] or now - times[-1] < MARK_EVERY):
            return  # the events since the last mark are dated by the next one
        times.append(now)
        counts.append(accepted)

    def oldest(self, settled: int) -> float | None:
        """When the oldest event after the first ``settled`` was accepted, at the latest; None: none waits."""
        counts, times, first = self._marks
        index = bisect.bisect_right(counts, settled, first)
        return times[index] if index < len(counts) else None

    def forget(self, settled: int) -> None:
        """Every store has settled the first ``settled`` events: their marks go (the marking thread only)."""
        counts, times, first = self._marks
        first = bisect.bisect_right(counts, settled, first)
        if first > 64 and first * 2 > len(counts):
            self._marks = (counts[first:], times[first:], 0)
        else:
            self._marks = (counts, times, first)

    def __len__(self) -> int:
        """Marks still kept (forgotten ones may wait to be sliced off in bulk)."""
        return len(self._marks[0])


class LagWatch:
    """One WARNING when a store falls more than ``limit`` seconds behind, one when it catches up.

    Caught up means less than half the limit behind again (a store hovering at the limit
    would otherwise warn on every check).
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._behind: set[str] = set()

    def check(self, health: DeliveryHealth) -> None:
        if self.limit <= 0:
            return
        for name, h in health.items():
            if name not in self._behind and h.lag > self.limit:
                self._behind.add(name)
                log.warning(
                    "tracelet: %s is %.0fs behind (more than TRACELET_LAG_WARN=%gs): %d event(s) not "
                    "delivered yet, %d retries%s",
                    name,
                    h.lag,
                    self.limit,
                    h.queued + h.pending,
                    h.retries,
                    f"; last error: {h.last_error}" if h.last_error else "",
                )
            elif name in self._behind and h.lag < self.limit / 2:
                self._behind.discard(name)
                log.warning("tracelet: %s caught up (%.1fs behind, %d delivered)", name, h.lag, h.delivered)


def backend_health(
    name: str,
    accepted: int,
    progress: Progress,
    pending_here: int,
    dropped_here: int,
    arrivals: Arrivals,
    now: float,
) -> BackendHealth:
    """One store's health from its writer's ``progress`` and what waits on this side of the pipe.

    ``pending_here``: events spooled before they reached the writer (the trainer's overflow
    spool); ``dropped_here``: events this side lost to a full disk. Built positionally: a
    training loop may call ``health()`` every step.
    """
    dropped = progress.dropped + dropped_here
    pending = progress.spooled + pending_here
    settled = progress.delivered + progress.failed + dropped
    oldest = arrivals.oldest(settled) if settled < accepted else None
    return BackendHealth(
        name,
        accepted,
        progress.delivered,
        progress.failed,
        pending,
        max(0, accepted - settled - pending),
        progress.retries,
        now - oldest if oldest is not None and now > oldest else 0.0,
        progress.last_error,
        dropped,
    )

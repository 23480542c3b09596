"""What ``stop_logging`` returns (per backend, how many events were sent, delivered, failed or pending),
and what ``Experiment.health()`` returns while the run goes on."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BackendReport:
    """Delivery counts for one backend; ``sent == delivered + failed + pending + dropped`` always holds.

    ``pending`` events are not lost: they wait in ``spool_path``, and
    ``tracelet sync <spool_path>`` replays them. ``dropped`` events fit neither in
    the bounded memory nor on the spool's disk (it was full): they are counted, and
    an ERROR named the disk.
    """

    backend: str
    run_id: str | None
    sent: int
    delivered: int
    failed: int
    pending: int
    spool_path: str | None = None
    errors: tuple[str, ...] = field(default_factory=tuple)
    #: write attempts retried after a transient store error (connection refused, 5xx, ...)
    retries: int = 0
    #: where the events the store refused are kept, with its reasons (``tracelet sync`` replays them)
    dead_letter_path: str | None = None
    #: events lost because the spool's disk was full (ENOSPC) when they had to go there
    dropped: int = 0
    #: what the store did otherwise than asked, though nothing was lost (an artifact copied, not linked)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.pending == 0 and self.dropped == 0


@dataclass(frozen=True)
class DeliveryReport:
    """One :class:`BackendReport` per backend, plus the status the run ended with."""

    status: str
    backends: dict[str, BackendReport]

    @property
    def ok(self) -> bool:
        """True when every backend delivered everything."""
        return all(r.ok for r in self.backends.values())

    def __getitem__(self, backend: str) -> BackendReport:
        return self.backends[backend]

    def format(self) -> str:
        """A small table, one line per backend, for logs and error messages."""
        lines = [f"run status: {self.status}"]
        for r in self.backends.values():
            line = (
                f"  {r.backend:<10} sent={r.sent} delivered={r.delivered} failed={r.failed} "
                f"pending={r.pending}"
            )
            if r.dropped:
                line += f" dropped={r.dropped}"
            if r.retries:
                line += f" retries={r.retries}"
            if r.spool_path:
                line += f" spool={r.spool_path}"
            if r.dead_letter_path:
                line += f" dead-letter={r.dead_letter_path}"
            lines.append(line)
            lines.extend(f"    error: {e}" for e in r.errors)
            lines.extend(f"    note: {n}" for n in r.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


@dataclass(frozen=True, slots=True)
class BackendHealth:
    """One store, as of the delivery side's last tick (a few hundredths of a second ago).

    ``accepted == delivered + failed + pending + queued + dropped``.
    """

    backend: str
    #: events logged for this store so far
    accepted: int
    delivered: int
    #: refused by the store and kept (dead-letter) for ``tracelet sync``; see the report's errors
    failed: int
    #: waiting on disk (a spool) for the store
    pending: int
    #: waiting in memory, on their way
    queued: int
    #: write attempts retried after a transient store error
    retries: int
    #: seconds since the oldest event the store has not taken yet was logged (0: caught up)
    lag: float
    last_error: str | None = None
    #: lost to a full spool disk
    dropped: int = 0


class DeliveryHealth(dict[str, BackendHealth]):
    """Per backend, its :class:`BackendHealth` (``health["mlflow"].lag``); ``health.lag``: the worst.

    Published by the delivery side at each of its ticks (every 40 ms; thread mode: 100 ms) and
    handed out as a copy, so a training loop may ask every step for about a microsecond.
    """

    __slots__ = ()

    @property
    def lag(self) -> float:
        """The largest lag of any store."""
        return max((h.lag for h in self.values()), default=0.0)

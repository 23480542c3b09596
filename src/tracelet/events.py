"""The events that flow from an :class:`~tracelet.experiment.Experiment` to the backends.

The caller's thread builds plain tuples (cheapest to create); the writer thread
turns them into these typed events right before handing a batch to a backend.
The same events are the lines of the JSONL spool and of the ``local`` backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    """One point of one metric series."""

    name: str
    value: float
    step: int
    timestamp: float


@dataclass(frozen=True)
class Params:
    """Hyperparameters, already flattened (``a/b``) and stringified."""

    values: dict[str, str]


@dataclass(frozen=True)
class Tags:
    """User tags (``system=False``) or tracelet's own tags (``system=True``)."""

    values: dict[str, str]
    system: bool = False


@dataclass(frozen=True)
class Artifact:
    """A file to store, as it was when ``log_artifact`` was called.

    ``local_path`` is tracelet's private snapshot of the bytes (``owned``), which a store
    on the local filesystem links into place rather than copying (:mod:`tracelet.backends.files`);
    ``artifact_path`` is the relative path it lands at. ``sha256`` is empty when logged:
    hashing a checkpoint would cost the training thread seconds, so a store that records
    the hash (the local store) computes it from its copy.

    ``owned=False`` (``log_artifact(..., copy=False)``): ``local_path`` is the caller's own
    file, read when it is delivered; ``size`` and ``mtime_ns`` are what it was when logged,
    so a file changed or deleted before delivery is refused with the reason.

    ``tree=True``: a logged folder, as one event: ``local_path`` is the snapshot of the whole
    folder, whose files land under ``artifact_path`` (``""``: the run's artifact root) with
    their relative paths, in one store operation where the store has one; ``size`` is the total.
    """

    local_path: str
    artifact_path: str
    sha256: str
    size: int
    owned: bool = True
    mtime_ns: int = 0
    tree: bool = False


@dataclass(frozen=True)
class Image:
    """An image snapshot, encoded as PNG at call time (``local_path``)."""

    name: str
    local_path: str
    step: int
    width: int
    height: int


@dataclass(frozen=True)
class Status:
    """The run's status to show in the stores *now*, while it stays open for more logging.

    Lightning's ``finalize`` sends it: after ``trainer.fit()`` the store says how fit
    ended, and a later ``trainer.test()`` still logs into the same run. The status the
    run is closed with (``stop_logging``) is the last word.
    """

    status: str


Event = Metric | Params | Tags | Artifact | Image | Status

_KINDS: dict[str, type[Any]] = {
    "metric": Metric,
    "params": Params,
    "tags": Tags,
    "artifact": Artifact,
    "image": Image,
    "status": Status,
}
_KIND_OF: dict[type[Any], str] = {cls: kind for kind, cls in _KINDS.items()}


def from_raw(raw: tuple[Any, ...]) -> Event:
    """Build a typed event from the tuple the caller's thread enqueued.

    Metric values may still be tensors here: ``.item()`` runs on the writer thread.
    """
    kind = raw[0]
    if kind == "metric":
        value = raw[2]
        if not isinstance(value, (int, float)):
            value = value.item()
        return Metric(raw[1], float(value), raw[3], raw[4])
    cls = _KINDS[kind]
    return cls(*raw[1:])  # type: ignore[no-any-return]


class MetricClock:
    """Gives each metric key of one run strictly increasing millisecond stamps, before anything keeps a point.

    MLflow orders a key's history by timestamp and keeps one row per (key, timestamp,
    step, value). A point's timestamp is therefore part of its identity, and it must be
    final before the point is sent, spooled or retried: an agent killed between the
    store's commit and its acknowledgement leaves the trainer a batch the store already
    holds, and ``tracelet sync`` replays it with the very same timestamps, which MLflow
    keeps once. A replay also sorts after what was stored, since the clock only moves on.
    Every delivery mode stamps at the first place a point leaves the caller's thread
    (the agent mode's feeder; the thread mode's ``put``).
    """

    __slots__ = ("_last",)

    def __init__(self, after: Mapping[str, int] | None = None) -> None:
        #: per key, the last millisecond given (``after``: a clock that goes on from another's state)
        self._last: dict[str, int] = dict(after or {})

    def state(self) -> dict[str, int]:
        """Per key, the last millisecond given: a later clock built ``after`` it stamps past every point."""
        return dict(self._last)

    def stamp(self, raw: tuple[Any, ...]) -> tuple[Any, ...]:
        """``raw`` with its final timestamp (a ``metric`` tuple; anything else is returned as it is)."""
        if raw[0] != "metric":
            return raw
        name = raw[1]
        ms = int(raw[4] * 1000 + 0.5)  # nearest: a stamp read back is the same millisecond
        last = self._last.get(name)
        if last is not None and ms <= last:
            ms = last + 1
        self._last[name] = ms
        return ("metric", name, raw[2], raw[3], ms / 1000)

    def stamp_all(self, items: list[tuple[Any, ...]]) -> None:
        """Stamp a batch in place, in its order (before the batch is kept or sent)."""
        items[:] = map(self.stamp, items)


def timestamp_ms(event: Metric) -> int:
    """A stamped point's timestamp in whole milliseconds (exact: ``round`` undoes the ``/ 1000``)."""
    return round(event.timestamp * 1000)


def resolve_value(value: Any) -> float:
    """A metric value as a float: accelerator tensors (copied at call time) are read here, off the caller."""
    if type(value) is float:
        return value
    if not isinstance(value, (int, float)):
        value = value.item()
    return float(value)


def to_raw(event: Event) -> tuple[Any, ...]:
    """Inverse of :func:`from_raw`: the plain tuple the pipes and queues carry."""
    if isinstance(event, Metric):
        return ("metric", event.name, event.value, event.step, event.timestamp)
    return (_KIND_OF[type(event)], *event.__dict__.values())


def to_json(event: Event) -> dict[str, Any]:
    """Serialize an event to one JSON object (a spool or ``local`` line)."""
    data = dict(event.__dict__)
    data["kind"] = _KIND_OF[type(event)]
    return data


def from_json(data: dict[str, Any]) -> Event:
    """Inverse of :func:`to_json`."""
    data = dict(data)
    cls = _KINDS[data.pop("kind")]
    return cls(**data)  # type: ignore[no-any-return]

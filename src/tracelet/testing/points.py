"""A run's metric points, read in pieces: kept on disk per key, read back a chunk at a time.

Why: :func:`tracelet.testing.read_run` returns a run whole, every point a Python tuple (some 100
bytes each), which is what a test wants. ``tracelet copy`` reads runs of any size, twice (the
source, then the target to verify it), and must not need the run's size in memory: a run of ten
million points would take gigabytes. So a reader can hand each point to a :class:`PointSink`
instead of a list, and :class:`RunPoints` is the sink that writes them to a folder, one file per
key, in the order the store keeps them; :meth:`RunPoints.series` reads one key back in chunks.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

from tracelet.testing.record import RunRecord
from tracelet.validation import SYSTEM_PREFIX

#: one point on disk: step (int64), value and timestamp (float64), little-endian
_POINT = struct.Struct("<qdd")
#: points held in memory before every key's are written out (about 10 MB of tuples at most)
BUFFERED = 50_000
#: points per chunk :meth:`RunPoints.series` yields
CHUNK = 10_000


class PointSink(Protocol):
    """Where a reader puts each metric point it reads, in the order the store keeps them."""

    def add_point(self, key: str, step: int, value: float, timestamp: float) -> None:
        """One point of ``key`` (``timestamp``: seconds since the epoch, 0 where the store kept none)."""

    def add_points(self, key: str, points: Sequence[tuple[int, float, float]]) -> None:
        """Points of ``key``, ``(step, value, timestamp)`` each, in order (a store that returns a key's
        points together: one call, not one per point)."""


def points_or_whole(points: PointSink | None) -> PointSink:
    """The sink a reader fills: the caller's, or a :class:`MemoryPoints` for a whole record."""
    return MemoryPoints() if points is None else points


def with_points(record: RunRecord, sink: PointSink) -> RunRecord:
    """``record`` with the points ``sink`` kept, when it kept them in memory (a whole read)."""
    if isinstance(sink, MemoryPoints):
        record.metrics, record.timestamps = sink.metrics, sink.timestamps
    return record


@dataclass
class MemoryPoints:
    """The sink behind :func:`tracelet.testing.read_run`: each key's points in lists (the whole run)."""

    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    timestamps: dict[str, list[float]] = field(default_factory=dict)

    def add_point(self, key: str, step: int, value: float, timestamp: float) -> None:
        self.metrics.setdefault(key, []).append((step, value))
        self.timestamps.setdefault(key, []).append(timestamp)

    def add_points(self, key: str, points: Sequence[tuple[int, float, float]]) -> None:
        self.metrics.setdefault(key, []).extend((step, value) for step, value, _ in points)
        self.timestamps.setdefault(key, []).extend(when for _, _, when in points)


class Point(NamedTuple):
    """One point of a key as :meth:`RunPoints.series` reads it back (a named tuple: made by the million)."""

    step: int
    value: float
    timestamp: float


class RunPoints:
    """The sink that keeps a run's points on disk, one file per key, each key's in its order.

    Memory stays bounded whatever the run holds: at most :data:`BUFFERED` points wait in memory,
    and reading a key back holds one chunk. What stays in memory per key is its count and its last
    timestamp. Use it as a context manager (or call :meth:`close`): the folder is removed.
    """

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=False)  # its own folder: close() removes it whole
        self.folder = folder
        self._files: dict[str, Path] = {}
        self._written: dict[str, int] = {}  # points on disk, per key
        self._last_time: dict[str, float] = {}  # of the points on disk, per key
        self._buffer: dict[str, list[tuple[int, float, float]]] = {}
        self._buffered = 0

    def _new_key(self, key: str) -> list[tuple[int, float, float]]:
        self._files[key] = self.folder / f"{len(self._files)}.points"
        self._written[key] = 0
        buffer: list[tuple[int, float, float]] = []
        self._buffer[key] = buffer
        return buffer

    def add_point(self, key: str, step: int, value: float, timestamp: float) -> None:
        buffer = self._buffer.get(key)
        if buffer is None:
            buffer = self._new_key(key)
        buffer.append((step, value, timestamp))
        self._buffered += 1
        if self._buffered >= BUFFERED:
            self._flush()

    def add_points(self, key: str, points: Sequence[tuple[int, float, float]]) -> None:
        for start in range(0, len(points), BUFFERED):  # a key of millions: still BUFFERED at a time
            piece = points[start : start + BUFFERED]
            buffer = self._buffer.get(key)
            if buffer is None:
                buffer = self._new_key(key)
            buffer.extend(piece)
            self._buffered += len(piece)
            if self._buffered >= BUFFERED:
                self._flush()

    def _flush(self) -> None:
        pack = _POINT.pack
        for key, points in self._buffer.items():
            if not points:
                continue
            with open(self._files[key], "ab") as f:
                f.write(b"".join([pack(*point) for point in points]))
            self._written[key] += len(points)
            self._last_time[key] = points[-1][2]
            points.clear()
        self._buffered = 0

    def all_keys(self) -> list[str]:
        """Every key, in the order its first point came (``system/`` keys among them)."""
        return list(self._files)

    def workflow_keys(self) -> list[str]:
        """The keys the workflow logged: every key but the ``system/`` series tracelet sampled."""
        return [key for key in self._files if not key.startswith(SYSTEM_PREFIX)]

    def count(self, key: str) -> int:
        """How many points ``key`` has (0 for a key the run does not hold)."""
        return self._written.get(key, 0) + len(self._buffer.get(key, ()))

    @property
    def total(self) -> int:
        """How many points the run holds, every key's."""
        return sum(self._written.values()) + self._buffered

    def last_timestamp(self, key: str) -> float | None:
        """When ``key``'s last point was logged (``None``: the key has none)."""
        buffer = self._buffer.get(key)
        return buffer[-1][2] if buffer else self._last_time.get(key)

    def series(self, key: str, chunk: int | None = None) -> Iterator[list[Point]]:
        """``key``'s points in their order, ``chunk`` (default :data:`CHUNK`) at a time.

        The file is opened for each chunk, so any number of keys can be read side by side (a merge
        by step) without holding one file handle per key.
        """
        self._flush()
        file = self._files.get(key)
        if file is None or not file.exists():
            return
        offset = 0
        while True:
            with open(file, "rb") as f:
                f.seek(offset)
                data = f.read((chunk or CHUNK) * _POINT.size)
            if not data:
                return
            offset += len(data)
            yield list(map(Point._make, _POINT.iter_unpack(data)))

    def points(self, key: str, chunk: int | None = None) -> Iterator[Point]:
        """``key``'s points one by one (read ``chunk`` at a time)."""
        for piece in self.series(key, chunk):
            yield from piece

    def close(self) -> None:
        """Remove the folder and what it holds."""
        self._buffer.clear()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> RunPoints:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""A durable JSONL spool per backend: the overflow of a full queue, and what a stop left undelivered.

Layout of one spool directory::

    spool.json       backend name, options, run id, how many lines were delivered, replay order
    events.jsonl     one event per line (the ``local`` backend's format)
    deadletter.jsonl events the store refused, one per line with its ``reason``

A run's spool directory (``<spool root>/<run key>/``) holds one such directory per
backend for the writer (``<backend>/``), and, in agent mode, the trainer's own:
``trainer/<backend>/`` (events the agent never acknowledged) and ``queue/`` (the
trainer's overflow, for every backend; its ``spool.json`` lists them as ``targets``).
``order`` in ``spool.json`` says which to replay first, so each key stays in order;
``stamped`` in ``queue/``'s is the trainer's metric clock when it gave up on the agent, from
which ``tracelet sync`` stamps the points there (they never left, so were never stamped).

The writer thread reads the spool from the committed offset on; ``tracelet sync``
replays what is left into the same run, exactly once (a replayed spool is marked
``synced`` and refuses a second replay).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tracelet import config
from tracelet.atomic import write_json_atomic
from tracelet.events import Event, MetricClock, from_json, from_raw, to_json, to_raw

log = logging.getLogger(__name__)

EVENTS = "events.jsonl"
META = "spool.json"
DEAD_LETTER = "deadletter.jsonl"


def spool_root() -> Path:
    """``TRACELET_SPOOL_DIR``, else the user cache (``$XDG_CACHE_HOME/tracelet/spool``)."""
    configured = config.spool_dir()
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "tracelet" / "spool"


class DiskAlarm:
    """Says once per run, at ERROR, that the spool's disk refused a write; later refusals go to DEBUG.

    A run has several queues that may spill (what waits for the runs to open, each backend's
    writer): a user needs to hear of the full disk once, with its path, not once per queue.
    """

    def __init__(self) -> None:
        #: the first refusal's message (the report's error), once there was one
        self.message: str | None = None
        self._lock = threading.Lock()

    def refused(self, logger: logging.Logger, directory: Path | str, error: OSError, who: str = "") -> str:
        """Say it (ERROR the first time, DEBUG after) and return the message for the report."""
        message = (
            f"the spool's disk refused a write ({error.strerror or error!r}) at {directory}; "
            "events that fit neither in memory nor on disk are dropped and counted (report: dropped)"
        )
        with self._lock:
            first = self.message is None
            if first:
                self.message = message
        logger.log(
            logging.ERROR if first else logging.DEBUG, "tracelet: %s%s", f"{who}: " if who else "", message
        )
        return message


class Spool:
    """One backend's spool. Not thread-safe: the pipeline serializes access with its lock."""

    def __init__(self, directory: Path, meta: dict[str, Any]) -> None:
        self.directory = directory
        self.meta = meta
        self._file: Any = None
        self._read_offset = 0  # bytes of events.jsonl already handed to the writer
        self.unread = 0  # lines written but not yet handed to the writer
        self.dead_lettered = 0  # events written to the dead-letter file

    @property
    def events_path(self) -> Path:
        return self.directory / EVENTS

    @property
    def dead_letter_path(self) -> Path:
        return self.directory / DEAD_LETTER

    def dead_letter(self, events: list[Event], reason: str) -> None:
        """Keep events the store refused, with its reason, for a look and a ``tracelet sync``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not (self.directory / META).exists():
            write_json_atomic(self.directory / META, self.meta)
        with open(self.dead_letter_path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps({**to_json(e), "reason": reason}) + "\n" for e in events))
        self.dead_lettered += len(events)

    def _open(self) -> Any:
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.directory / META, self.meta)
            self._file = open(self.events_path, "a+", encoding="utf-8")  # noqa: SIM115
        return self._file

    def append(self, raws: list[tuple[Any, ...]]) -> None:
        """Write events (the caller's raw tuples) at the end, flushed to the OS at once.

        All or nothing: a write the disk refuses (``ENOSPC``) is cut back to the last whole
        line and raised, so the spool never holds half an event and ``unread`` counts only
        what is really there.
        """
        f = self._open()
        f.seek(0, os.SEEK_END)
        end = f.tell()
        try:
            f.write("".join(json.dumps(to_json(from_raw(raw))) + "\n" for raw in raws))
            f.flush()
        except OSError:
            self._cut_back(end)
            raise
        self.unread += len(raws)

    def _cut_back(self, size: int) -> None:
        """Drop a refused write: close the file (its buffer is lost with it) and truncate to ``size``."""
        file, self._file = self._file, None
        with contextlib.suppress(OSError, ValueError):
            file.close()
        with contextlib.suppress(OSError):
            os.truncate(self.events_path, size)

    def prepend(self, events: list[Event]) -> None:
        """Put events *before* everything unread (used when a stop times out with items in memory).

        All or nothing: the new file is written beside the old one and renamed over it, so a
        disk that refuses the write (``ENOSPC``) leaves the spool as it was, and raises.
        """
        f = self._open()
        f.seek(self._read_offset)
        rest = f.read()
        head = "".join(json.dumps(to_json(event)) + "\n" for event in events)
        staged = self.events_path.with_suffix(".prepend")
        try:
            with open(staged, "w", encoding="utf-8") as out:
                out.write(head + rest)
        except OSError:
            with contextlib.suppress(OSError):
                staged.unlink()
            raise
        f.close()
        self._file = None
        os.replace(staged, self.events_path)
        self._open()
        self._read_offset = 0
        self.unread += len(events)
        self.commit()

    def skip(self, count: int) -> None:
        """Mark the first ``count`` unread events delivered (a late write that did land after all)."""
        self.read(count)
        self.commit()

    def read(self, limit: int) -> list[Event]:
        """Up to ``limit`` unread events, in order."""
        if self._file is None or self.unread == 0:
            return []
        f = self._file
        f.seek(self._read_offset)
        events: list[Event] = []
        while len(events) < limit:
            line = f.readline()
            if not line:
                break
            events.append(from_json(json.loads(line)))
        self._read_offset = f.tell()
        self.unread -= len(events)
        return events

    def commit(self, delivered_lines: int | None = None) -> None:
        """Record the read offset, so a later ``tracelet sync`` starts after what was delivered."""
        self.meta["offset"] = self._read_offset if delivered_lines is None else delivered_lines
        self.directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.directory / META, self.meta)

    def reset(self) -> None:
        """Everything was delivered: empty the file so the spool can be reused or removed."""
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            self._file.flush()
        self._read_offset = 0
        self.unread = 0
        self.commit()

    def close(self, remove_if_empty: bool) -> None:
        """Close the file; remove the directory when nothing is left in it to replay."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        if remove_if_empty and self.unread == 0 and not self.dead_lettered and self.directory.exists():
            shutil.rmtree(self.directory, ignore_errors=True)


def find_spools(path: Path) -> list[Path]:
    """The spool directories at or below ``path``, in replay order (``order``, then path)."""
    if (path / META).is_file():
        return [path]
    found = [p.parent for p in path.rglob(META)]

    def order(directory: Path) -> tuple[int, str]:
        try:
            return int(json.loads((directory / META).read_text()).get("order", 0)), str(directory)
        except (OSError, ValueError):
            return 0, str(directory)

    return sorted(found, key=order)


def _run_dir(directory: Path) -> Path:
    """The run's spool directory: parent of ``<backend>/`` and ``queue/``, or of ``trainer/<backend>/``."""
    return directory.parent.parent if directory.parent.name == "trainer" else directory.parent


class _Runs:
    """The backends ``sync`` writes to: each run attached (or opened) once, whichever spools name it."""

    def __init__(self, overrides: Mapping[str, Mapping[str, str]]) -> None:
        self.overrides = overrides
        #: (run's spool dir, backend) -> the run id ``sync`` opened for a run that never was
        self.opened: dict[tuple[Path, str], str] = {}

    def attach(self, directory: Path, meta: dict[str, Any], target: dict[str, Any]) -> Any:
        from tracelet.backends.base import RunInfo
        from tracelet.backends.registry import get_backend_class

        name = target["backend"]
        cls = get_backend_class(name)
        cls.ensure_installed()
        options = {**(target.get("options") or {}), **self.overrides.get(name, {})}
        backend = cls(options)
        key = (_run_dir(directory), name)
        run_id = target.get("run_id") or self.opened.get(key)
        if run_id:
            backend.attach(run_id)
        else:
            # Its run was never opened (a wrong URI at start, a store that was down): open it now
            # and write the id into the spool before replaying, so a second sync never opens another.
            info = RunInfo(
                str(meta.get("project") or "default"),
                str(meta.get("run_name") or _run_dir(directory).name),
                dict(meta.get("system_tags") or {}),
            )
            run_id = backend.start(info)
            self.opened[key] = run_id
            log.info("tracelet sync: opened %s run %s for %s", name, run_id, directory)
        target["run_id"] = run_id
        if "targets" not in meta:
            meta["run_id"] = run_id
        write_json_atomic(directory / META, meta)
        return backend


def sync(
    path: Path, batch_size: int = 1000, overrides: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, int]:
    """Replay every spool under ``path`` into its backend's run, exactly once.

    Returns the number of events replayed per spool directory. A spool already
    synced is skipped with a warning; progress is committed after every batch.
    Dead letters are replayed one by one first (they are the oldest); one the
    store refuses again is logged and left in the dead-letter file. A run that was
    never opened is opened here (once per backend and run). ``overrides`` replace
    stored backend options, per backend (``{"mlflow": {"tracking_uri": ...}}``).
    """
    replayed: dict[str, int] = {}
    spools = find_spools(path)
    if not spools:
        raise FileNotFoundError(f"no tracelet spool under {path}")
    runs = _Runs(overrides or {})
    finish: dict[tuple[str, str], tuple[Any, str]] = {}
    for directory in spools:
        meta = json.loads((directory / META).read_text())
        if meta.get("synced"):
            log.warning("spool %s was already synced; skipping it", directory)
            replayed[str(directory)] = 0
            continue
        count = 0
        targets = meta.get("targets", [meta])
        for target in targets:
            backend = runs.attach(directory, meta, target)
            count += _replay_dead_letters(backend, directory, meta)
            events_file = directory / EVENTS
            # The trainer's queue/ holds points that never left for a store and were never
            # stamped; they go on from the trainer's clock (see MetricClock), in order.
            clock = MetricClock(meta["stamped"]) if "stamped" in meta else None
            if events_file.is_file():
                with open(events_file, encoding="utf-8") as f:
                    f.seek(int(meta.get("offset", 0)))
                    while True:
                        batch = [from_json(json.loads(line)) for line in _take_lines(f, batch_size)]
                        if not batch:
                            break
                        if clock is not None:
                            batch = [from_raw(clock.stamp(to_raw(event))) for event in batch]
                        backend.write(batch)
                        count += len(batch)
                        if "targets" not in meta:
                            meta["offset"] = f.tell()
                            write_json_atomic(directory / META, meta)
            if meta.get("finish_status"):
                finish[(target["backend"], target["run_id"])] = (backend, meta["finish_status"])
        meta["synced"] = True
        write_json_atomic(directory / META, meta)
        replayed[str(directory)] = count
    for backend, status in finish.values():  # close each run once, after all its spools
        backend.finish(status)
    return replayed


def _replay_dead_letters(backend: Any, directory: Path, meta: dict[str, Any]) -> int:
    path = directory / DEAD_LETTER
    if not path.is_file() or meta.get("dead_letters_synced"):
        return 0
    count = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            data = json.loads(line)
            reason = data.pop("reason", None)
            event = from_json(data)
            try:
                backend.write([event])
                count += 1
            except Exception as exc:
                log.error(
                    "tracelet sync: %s refused %r again: %r (first: %s)", backend.name, event, exc, reason
                )
    meta["dead_letters_synced"] = True
    write_json_atomic(directory / META, meta)
    return count


def _take_lines(f: Any, limit: int) -> list[str]:
    lines = []
    for _ in range(limit):
        line = f.readline()
        if not line:
            break
        lines.append(line)
    return lines

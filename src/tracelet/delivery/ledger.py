"""When a snapshot may go: as soon as every backend of the run has stored it.

``log_artifact`` stages a snapshot under the run's spool (``staging/<n>/<file>``), and
every backend's writer stores it on its own schedule. The :class:`SnapshotLedger` counts
the stores still to take each snapshot: the last one to store it deletes tracelet's name
for it (a store that linked it keeps its own), so a run that logs a checkpoint every
epoch holds at most the snapshots still on their way, never one per epoch.

A snapshot that a store refused is kept, with the refused event, for ``tracelet sync``;
its folder gets a ``.kept`` marker, so the caller's bound on staged bytes
(:class:`tracelet.snapshots.Staging`) stops waiting for it. The ledger runs where the
writers run (the delivery agent, or the training process in thread mode); the caller
sees its work only through the files, which is all the two processes share.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path

from tracelet.events import Artifact, Event
from tracelet.snapshots import KEPT_MARKER

log = logging.getLogger(__name__)


class SnapshotLedger:
    """Per snapshot, the stores still to take it (shared by one run's writers)."""

    def __init__(self, stores: int) -> None:
        self._stores = stores
        self._left: dict[str, int] = {}
        self._kept: set[str] = set()
        self._lock = threading.Lock()

    def hold(self, item: tuple[object, ...]) -> None:
        """Count a raw ``artifact`` item before any writer sees it (anything else is ignored)."""
        if item[0] != "artifact" or not _owned(item):
            return
        path = str(item[1])
        with self._lock:
            self._left[path] = self._left.get(path, 0) + self._stores

    def settled(self, events: Iterable[Event], stored: bool) -> None:
        """One writer is done with ``events``: stored them, or refused them (kept for sync)."""
        for event in events:
            if not isinstance(event, Artifact) or not event.owned:
                continue
            path = event.local_path
            with self._lock:
                left = self._left.get(path)
                if left is None:  # replayed from a spool: not this ledger's to delete
                    continue
                if not stored:
                    self._kept.add(path)
                left -= 1
                if left > 0:
                    self._left[path] = left
                    if path in self._kept:
                        _mark_kept(path)
                    continue
                del self._left[path]
                kept = path in self._kept
                self._kept.discard(path)
            if kept:
                _mark_kept(path)
            else:
                _remove(path)


def _owned(item: tuple[object, ...]) -> bool:
    # ("artifact", local_path, artifact_path, sha256, size[, owned, mtime_ns])
    return len(item) < 6 or bool(item[5])


def _mark_kept(path: str) -> None:
    with contextlib.suppress(OSError):
        (Path(path).parent / KEPT_MARKER).touch()


def _remove(path: str) -> None:
    """Delete the snapshot (a file, or a folder's tree) and ``staging/<n>``, made for it alone."""
    try:
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # it stays until the run's spool is removed
        log.debug("tracelet: could not delete the snapshot %s: %s", path, exc)
        return
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(path))

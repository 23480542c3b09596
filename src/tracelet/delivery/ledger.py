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

import threading
from collections.abc import Iterable

from tracelet.events import Artifact, Event
from tracelet.snapshots import mark_kept, remove_snapshot


class SnapshotLedger:
    """Per snapshot, the stores still to take it (shared by one run's writers)."""

    def __init__(self, stores: int) -> None:
        self._stores = stores
        self._left: dict[str, int] = {}
        self._kept: set[str] = set()
        self._lock = threading.Lock()

    def hold(self, item: tuple[object, ...]) -> None:
        """Count a raw ``artifact`` item before any writer sees it (anything else is ignored)."""
        # ("artifact", local_path, artifact_path, sha256, size, owned, mtime_ns, tree): see Artifact
        if item[0] != "artifact" or not item[5]:
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
                left = self._left.pop(path, None)
                if left is None:  # replayed from a spool: not this ledger's to delete
                    continue
                if not stored:
                    self._kept.add(path)
                if left > 1:
                    self._left[path] = left - 1
                last_and_stored = left == 1 and path not in self._kept
                if left == 1:
                    self._kept.discard(path)
            if not stored:
                mark_kept(path)  # its folder says so, for the caller's bound on staged bytes
            elif last_and_stored:
                remove_snapshot(path)

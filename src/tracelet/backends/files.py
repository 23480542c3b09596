"""How a store puts a logged file in place: the snapshot itself where it can, a copy where not.

``log_artifact`` snapshots a file before it returns (:mod:`tracelet.snapshots`), so the
snapshot already holds the bytes that must land. A store that keeps files on the local
filesystem (the local store, MLflow's file artifact repository, W&B's offline run
folder) therefore does not copy them a second time: the snapshot is hard-linked into
place, which costs no time and no disk, and tracelet deletes its own name for the file
once every store has stored it (:class:`tracelet.delivery.ledger.SnapshotLedger`). A link
needs both names on one filesystem; where the snapshot sits on another one (``EXDEV``),
the file is copied and the backend says so in its report (:attr:`Placement.copied`).

A file logged with ``copy=False`` is the caller's own: it is never linked (the caller may
rewrite it later, and a link would rewrite the stored copy too), and it is checked before
delivery (:func:`check_source`): a file deleted or changed since ``log_artifact`` is
refused with the reason, never stored with other bytes than the caller logged.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tracelet.events import Artifact


class SourceChangedError(ValueError):
    """A ``copy=False`` file was deleted or changed before delivery: refused, never retried."""


def check_source(event: Artifact) -> None:
    """Refuse a ``copy=False`` file that is gone or no longer what was logged (size, mtime)."""
    if event.owned:
        return
    try:
        st = os.stat(event.local_path)
    except FileNotFoundError:
        raise SourceChangedError(
            f"{event.local_path} was deleted before it was delivered (logged with copy=False)"
        ) from None
    if st.st_size != event.size or st.st_mtime_ns != event.mtime_ns:
        raise SourceChangedError(
            f"{event.local_path} changed before it was delivered (logged with copy=False: "
            f"{event.size} bytes then, {st.st_size} now); it was not stored"
        )


def tree_files(event: Artifact) -> list[Artifact]:
    """A folder event's files, each as the event of one file (its relative path under ``artifact_path``).

    For the stores whose folder operation is a loop over files anyway (a link each), and for
    the records they keep per file. A file event is returned as it is.
    """
    if not event.tree:
        return [event]
    root = Path(event.local_path)
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            found.append(
                Artifact(
                    local_path=str(path),
                    artifact_path=f"{event.artifact_path}/{relative}" if event.artifact_path else relative,
                    sha256="",
                    size=path.stat().st_size,
                    owned=event.owned,
                )
            )
    return sorted(found, key=lambda a: a.artifact_path)


@dataclass
class Placement:
    """One backend's record of how its files were placed: the report's note when any was copied."""

    copied: list[str] = field(default_factory=list)

    def place(self, event: Artifact, target: Path) -> None:
        """Put ``event``'s file at ``target`` (a new name; parents are made): linked, or copied."""
        check_source(event)
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            target.unlink()  # a file logged twice under one path: the last one wins, as in the stores
        if event.owned:
            try:
                os.link(event.local_path, target)
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                    raise
                self.copied.append(event.artifact_path)
        shutil.copyfile(event.local_path, target)

    def notes(self) -> list[str]:
        if not self.copied:
            return []
        return [
            f"{len(self.copied)} artifact(s) copied into the store, not linked (first: "
            f"{self.copied[0]!r}): the spool is on another filesystem, or this one refused the link; "
            "set TRACELET_SPOOL_DIR on the store's filesystem to store them without a second copy"
        ]

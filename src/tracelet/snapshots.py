"""The caller's copy of a logged file: one kernel copy at most, and the hash left to the writer.

``log_artifact`` must keep what the file held when it was called (a checkpoint is often
overwritten at the next epoch), so it copies the file before returning. That copy is the
only cost the training thread pays: a reflink where the filesystem can share blocks
(``FICLONE`` on btrfs and XFS, ``clonefile`` on APFS: no bytes move), else the kernel's
own copy (``shutil.copyfile``: ``sendfile`` on Linux, ``fcopyfile`` on macOS). Never a
Python read loop, and no hashing here: the writer that stores the snapshot hashes it.

:class:`Staging` keeps a run's snapshots (``<spool>/staging/<n>/<file>``) within a bound
(``TRACELET_ARTIFACT_STAGE_MB``): each is deleted by the delivery side as soon as every
store has it (:mod:`tracelet.delivery.ledger`), and a caller that would go past the bound
waits for the stores to catch up. A full disk raises ``OSError`` naming the file, with
nothing of that call left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

#: Linux's ``FICLONE`` ioctl (``_IOW(0x94, 9, int)``): the target shares the source's blocks
FICLONE = 0x40049409
#: bytes read at a time when hashing: memory stays bounded whatever the file's size
HASH_CHUNK = 1 << 20

#: how often a caller waiting for room in the staging area looks again (seconds)
ROOM_POLL = 0.05
#: beside a snapshot a store refused (kept for ``tracelet sync``): no longer counted as staged
KEPT_MARKER = ".kept"

#: a logged folder's snapshot: ``staging/<n>/tree/<its files>`` (beside it, room for the marker)
TREE = "tree"

REFLINK = "reflink"
COPY = "copy"


#: (source's device, target folder's device) pairs where a reflink failed: not tried again, so a
#: folder of a thousand files on ext4 pays one failed attempt, not a thousand
_NO_REFLINK: set[tuple[int, int]] = set()


def snapshot_file(source: Path, target: Path) -> str:
    """Copy ``source`` to a new ``target`` the fastest way the filesystem offers; returns how."""
    devices = (os.stat(source).st_dev, os.stat(target.parent).st_dev)
    if devices not in _NO_REFLINK:
        if _reflink(source, target):
            return REFLINK
        _NO_REFLINK.add(devices)
    shutil.copyfile(source, target)
    return COPY


def _reflink(source: Path, target: Path) -> bool:
    """Share ``source``'s blocks with a new ``target``; False (and no ``target``) where that fails."""
    if sys.platform.startswith("linux"):
        import fcntl

        try:
            with open(source, "rb") as src, open(target, "wb") as dst:
                fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
            return True
        except OSError as exc:  # ext4, tmpfs, another filesystem: EOPNOTSUPP, EXDEV, EINVAL...
            log.debug("tracelet: no reflink for %s (%s); copying", source, exc)
            with contextlib.suppress(OSError):
                os.unlink(target)
            return False
    if sys.platform == "darwin":
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        clonefile = getattr(libc, "clonefile", None)
        if clonefile is not None and clonefile(os.fsencode(source), os.fsencode(target), 0) == 0:
            return True
    return False


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The file's sha256, read in chunks (a checkpoint of gigabytes is never read whole)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Staging:
    """A run's snapshots on their way to the stores, within ``limit`` bytes (0: no bound).

    The caller's side only: it counts what it staged and sees a snapshot leave when the
    delivery side deletes it (every store has it) or marks it kept (a store refused it;
    it waits for ``tracelet sync``). ``delivering`` says whether anything still delivers:
    once the delivery agent is lost nothing will free room, so the caller stops waiting.
    """

    def __init__(self, directory: Path, limit: int, delivering: Callable[[], bool]) -> None:
        self.directory = directory
        self.limit = limit
        self._delivering = delivering
        self._seq = 0
        self._staged: dict[Path, int] = {}
        self._peak = 0
        self._lock = threading.Lock()
        self._warned = False

    def new_dir(self) -> Path:
        """A fresh folder for one snapshot (an artifact's, or an image's PNG)."""
        with self._lock:
            self._seq += 1
            directory = self.directory / str(self._seq)
        directory.mkdir(parents=True)
        return directory

    def snapshot(self, source: Path, filename: str) -> tuple[Path, int]:
        """Snapshot ``source`` as ``filename``, once there is room; returns it and its size."""
        return self._stage([(source, filename)], tree=False)

    def snapshot_tree(self, files: list[tuple[Path, str]]) -> tuple[Path, int]:
        """Snapshot a folder's ``(file, relative path)`` pairs into one new folder; returns it, its size."""
        return self._stage(files, tree=True)

    def _stage(self, files: list[tuple[Path, str]], tree: bool) -> tuple[Path, int]:
        """Copy ``files`` into a new ``staging/<n>/`` (under :data:`TREE` for a folder).

        All or nothing: a file that cannot be copied (a full disk) removes what was taken and
        raises ``OSError`` naming that file.
        """
        size = sum(os.stat(source).st_size for source, _ in files)
        self._make_room(size)
        folder = self.new_dir()
        snapshot = folder / TREE if tree else folder / files[0][1]
        root = snapshot if tree else folder
        made: set[Path] = set()
        try:
            for source, relative in files:
                target = root / relative
                if target.parent not in made:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    made.add(target.parent)
                try:
                    snapshot_file(source, target)
                except OSError as exc:
                    raise OSError(
                        exc.errno,
                        f"log_artifact: could not snapshot {source}: {exc.strerror or exc}",
                        str(source),
                    ) from exc
        except BaseException:
            remove_snapshot(snapshot)
            raise
        self._count(snapshot, size)
        return snapshot, size

    def _count(self, snapshot: Path, size: int) -> None:
        self.staged_bytes()  # what the stores took is no longer counted, nor in the peak
        with self._lock:
            self._staged[snapshot] = size
            self._peak = max(self._peak, sum(self._staged.values()))

    def peak_bytes(self, reset: bool = False) -> int:
        """The most bytes of snapshots that waited for the stores at once (since the last reset)."""
        now = self.staged_bytes() if reset else 0  # what the stores took no longer counts
        with self._lock:
            peak = self._peak
            if reset:
                self._peak = now
            return peak

    def staged_bytes(self) -> int:
        """Bytes of snapshots still waiting for a store (what the bound counts)."""
        with self._lock:
            gone = [p for p in self._staged if not p.exists() or (p.parent / KEPT_MARKER).exists()]
            for path in gone:
                del self._staged[path]
            return sum(self._staged.values())

    def _make_room(self, size: int) -> None:
        """Wait until ``size`` more bytes fit under the bound (a larger file waits to be staged alone)."""
        if self.limit <= 0:
            return
        while True:
            staged = self.staged_bytes()
            if staged == 0 or staged + size <= self.limit or not self._delivering():
                return
            if not self._warned:
                self._warned = True
                log.warning(
                    "tracelet: %d MiB of artifact snapshots are still on their way to the stores; "
                    "log_artifact waits for room under TRACELET_ARTIFACT_STAGE_MB=%d",
                    staged >> 20,
                    self.limit >> 20,
                )
            time.sleep(ROOM_POLL)


def remove_snapshot(snapshot: str | os.PathLike[str]) -> None:
    """Delete a snapshot (a file, or a folder's :data:`TREE`) and ``staging/<n>``, made for it alone.

    What cannot be deleted stays until the run's spool is removed.
    """
    path = Path(snapshot)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()


def mark_kept(snapshot: str | os.PathLike[str]) -> None:
    """Mark a snapshot a store refused: kept for ``tracelet sync``, no longer counted as staged."""
    with contextlib.suppress(OSError):
        (Path(snapshot).parent / KEPT_MARKER).touch()

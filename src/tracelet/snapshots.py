"""The caller's copy of a logged file: one kernel copy at most, and the hash left to the writer.

``log_artifact`` must keep what the file held when it was called (a checkpoint is often
overwritten at the next epoch), so it copies the file before returning. That copy is the
only cost the training thread pays: a reflink where the filesystem can share blocks
(``FICLONE`` on btrfs and XFS, ``clonefile`` on APFS: no bytes move), else the kernel's
own copy (``shutil.copyfile``: ``sendfile`` on Linux, ``fcopyfile`` on macOS). Never a
Python read loop, and no hashing here: the writer that stores the snapshot hashes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path

log = logging.getLogger(__name__)

#: Linux's ``FICLONE`` ioctl (``_IOW(0x94, 9, int)``): the target shares the source's blocks
FICLONE = 0x40049409
#: bytes read at a time when hashing: memory stays bounded whatever the file's size
HASH_CHUNK = 1 << 20

REFLINK = "reflink"
COPY = "copy"


def snapshot_file(source: Path, target: Path) -> str:
    """Copy ``source`` to a new ``target`` the fastest way the filesystem offers; returns how."""
    if _reflink(source, target):
        return REFLINK
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

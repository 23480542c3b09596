"""W&B's transaction log (``run-<id>.wandb``), read without wandb's internal reader classes.

Both sides read it: the W&B backend (to see that wandb-core wrote a run's exit record
before it reports the run closed) and the reader in :mod:`tracelet.testing` (to read back
what a run holds, offline). One parser, here, for both; wandb's own reader classes move
between releases, the framing does not.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator

#: The run's transaction log, ``run-<id>.wandb``, uses LevelDB's log framing: a file
#: header (``:W&B``, a magic number, a version), then 32 KiB blocks of fragments, each
#: with a 7-byte header (CRC-32 of type byte and data, length, type).
LOG_HEADER = struct.Struct("<4sHB")
LOG_IDENT = b":W&B"
LOG_MAGIC = 0xBEE1
LOG_BLOCK_SIZE = 32 * 1024
LOG_FRAGMENT_HEADER = struct.Struct("<IHB")
ZERO, FULL, FIRST, MIDDLE, LAST = 0, 1, 2, 3, 4


def iter_log_records(data: bytes, offset: int = 0, source: str = "W&B transaction log") -> Iterator[bytes]:
    """The record payloads (``wandb_internal_pb2.Record`` bytes) in ``data``, in order.

    ``data`` is the log from file position ``offset``: 0 (the file header is checked)
    or a block boundary (fragments of a record begun before it are skipped). A record
    cut short at the end of ``data`` (the file is still being written) ends the
    iteration; damage anywhere else raises ``ValueError``. Written here rather than
    borrowed from wandb, whose internal reader classes move between releases.
    """
    if offset % LOG_BLOCK_SIZE:
        raise ValueError(f"{source}: reading must start at a block boundary, not at byte {offset}")
    start = _check_header(data, source) if offset == 0 else 0
    if start is None:
        return
    yield from _Fragments(source, resync=offset != 0).feed(data, offset, start, last=True)


def iter_log_file(path: str | os.PathLike[str], window_blocks: int = 64) -> Iterator[bytes]:
    """The record payloads of the log at ``path``, read ``window_blocks`` blocks at a time.

    What :func:`iter_log_records` yields for the whole file, without holding the file in memory: a
    run's log grows with every point it holds (a gigabyte for some ten million points), and a reader
    of such a run keeps a window of 2 MiB. Fragments never cross a block boundary, so a window of
    whole blocks holds whole fragments; a record spanning windows is carried over.
    """
    source = os.fspath(path)
    window = window_blocks * LOG_BLOCK_SIZE
    with open(path, "rb") as f:
        data = f.read(window)
        start = _check_header(data, source)
        if start is None:
            return
        fragments = _Fragments(source, resync=False)
        offset = 0
        while data:
            following = f.read(window)  # read ahead: only the last window may end mid-fragment
            yield from fragments.feed(data, offset, start, last=not following)
            offset += len(data)
            data, start = following, 0


def _check_header(data: bytes, source: str) -> int | None:
    """Where the first fragment starts (after the file header), or ``None`` for a log too short for one."""
    if len(data) < LOG_HEADER.size:
        return None
    ident, magic, version = LOG_HEADER.unpack_from(data)
    if ident != LOG_IDENT or magic != LOG_MAGIC or version != 0:
        raise ValueError(f"{source}: not a W&B transaction log (header {data[: LOG_HEADER.size]!r})")
    return LOG_HEADER.size


class _Fragments:
    """Fragments into records, fed one piece of the log at a time (a record may span pieces)."""

    def __init__(self, source: str, *, resync: bool) -> None:
        self.source = source
        self.pending: bytearray | None = None
        self.resync = resync  # skip the tail of a record that began before the first piece

    def feed(self, data: bytes, offset: int, pos: int, *, last: bool) -> Iterator[bytes]:
        """The records completed in ``data`` (file position ``offset``), from ``data[pos:]``.

        ``last``: nothing follows ``data`` yet, so a fragment cut short there is one still being
        written (the iteration ends) rather than damage.
        """
        source = self.source
        while pos < len(data):
            room = LOG_BLOCK_SIZE - (offset + pos) % LOG_BLOCK_SIZE
            if room < LOG_FRAGMENT_HEADER.size:  # a block trailer too short for a header: padding
                pos += room
                continue
            if pos + LOG_FRAGMENT_HEADER.size > len(data):
                return
            crc, length, kind = LOG_FRAGMENT_HEADER.unpack_from(data, pos)
            where = offset + pos
            if kind == ZERO and length == 0:  # zero fill: the rest of the block is empty
                pos += room
                continue
            if length > room - LOG_FRAGMENT_HEADER.size:
                raise ValueError(f"{source}: fragment at byte {where} overruns its block")
            end = pos + LOG_FRAGMENT_HEADER.size + length
            if end > len(data):
                return
            chunk = data[pos + LOG_FRAGMENT_HEADER.size : end]
            if zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF != crc:
                if end == len(data) and last:  # the last fragment, still being written
                    return
                raise ValueError(f"{source}: bad checksum at byte {where}")
            pos = end
            if self.resync:
                if kind in (MIDDLE, LAST):
                    continue
                self.resync = False
            if kind == FULL and self.pending is None:
                yield chunk
            elif kind == FIRST and self.pending is None:
                self.pending = bytearray(chunk)
            elif kind in (MIDDLE, LAST) and self.pending is not None:
                self.pending += chunk
                if kind == LAST:
                    yield bytes(self.pending)
                    self.pending = None
            else:
                raise ValueError(f"{source}: fragment of type {kind} out of place at byte {where}")

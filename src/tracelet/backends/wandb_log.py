"""W&B's transaction log (``run-<id>.wandb``), read without wandb's internal reader classes.

Both sides read it: the W&B backend (to see that wandb-core wrote a run's exit record
before it reports the run closed) and the reader in :mod:`tracelet.testing` (to read back
what a run holds, offline). One parser, here, for both; wandb's own reader classes move
between releases, the framing does not.
"""

from __future__ import annotations

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
    pos = 0
    if offset == 0:
        if len(data) < LOG_HEADER.size:
            return
        ident, magic, version = LOG_HEADER.unpack_from(data)
        if ident != LOG_IDENT or magic != LOG_MAGIC or version != 0:
            raise ValueError(f"{source}: not a W&B transaction log (header {data[: LOG_HEADER.size]!r})")
        pos = LOG_HEADER.size
    elif offset % LOG_BLOCK_SIZE:
        raise ValueError(f"{source}: reading must start at a block boundary, not at byte {offset}")
    pending: bytearray | None = None
    resync = offset != 0  # skip the tail of a record that began before ``offset``
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
            if end == len(data):  # the last fragment, still being written
                return
            raise ValueError(f"{source}: bad checksum at byte {where}")
        pos = end
        if resync:
            if kind in (MIDDLE, LAST):
                continue
            resync = False
        if kind == FULL and pending is None:
            yield chunk
        elif kind == FIRST and pending is None:
            pending = bytearray(chunk)
        elif kind in (MIDDLE, LAST) and pending is not None:
            pending += chunk
            if kind == LAST:
                yield bytes(pending)
                pending = None
        else:
            raise ValueError(f"{source}: fragment of type {kind} out of place at byte {where}")

"""The agent's wire format, in one place.

Messages travel over a :class:`multiprocessing.connection.Connection` (a Unix socket,
or a named pipe on Windows), never over stdout, which the stores print to. Each is
one ``send_bytes``: a kind byte, then the body. Event batches are ``marshal``-ed
lists of plain tuples (the cheapest serializer there is: the trainer holds its GIL
for well under a microsecond a point); everything else is pickled.

trainer → agent: ``OPEN`` (request, sys.path, cwd, log level, trainer pid),
``BATCH`` (events), ``FLUSH`` (token, timeout), ``STOP`` (token, status, timeout).
agent → trainer: ``OPENED`` (an :class:`~tracelet.delivery.Opened`), ``ACK``
(per backend: delivered, failed, durable, retries), ``LOG`` (a log record's
fields), ``REPLY`` (token, result), ``ERROR`` (why opening failed).
"""

from __future__ import annotations

import marshal
import pickle
from typing import Any

BATCH = b"B"
CONTROL = b"C"

OPEN = "open"
FLUSH = "flush"
STOP = "stop"
OPENED = "opened"
ACK = "ack"
LOG = "log"
REPLY = "reply"
ERROR = "error"

#: The module the trainer starts with ``python -m``.
AGENT_MODULE = "tracelet.delivery"


def encode_batch(items: list[tuple[Any, ...]]) -> bytes:
    return BATCH + marshal.dumps(items)


def encode(message: tuple[Any, ...]) -> bytes:
    return CONTROL + pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def decode(data: bytes) -> tuple[bool, Any]:
    """``(True, events)`` for a batch, ``(False, message)`` for anything else."""
    if data[:1] == BATCH:
        return True, marshal.loads(data[1:])
    return False, pickle.loads(data[1:])

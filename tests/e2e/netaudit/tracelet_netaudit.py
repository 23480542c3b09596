"""Records every network connection a process attempts outside loopback (an audit hook).

Imported by the E2E suite itself and, through ``sitecustomize.py`` beside this file
(on ``PYTHONPATH``), by every Python child process the suite starts: the delivery
agent, DDP workers, trainers under test. ``socket.connect`` and ``socket.getaddrinfo``
audit events to anything but ``127.0.0.0/8``, ``::1``, ``localhost`` or a Unix socket
are appended, one JSON line each, to the file named by ``TRACELET_NET_AUDIT_FILE``.
The hook only records: a connection made on a background thread that swallows its
error is still on file, and the E2E conftest fails the test it happened in.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import threading
import time
import traceback
from typing import Any

ENV_FILE = "TRACELET_NET_AUDIT_FILE"
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_installed = False
_local = threading.local()


def is_outside(host: Any) -> bool:
    """True for a host that is not this machine's loopback."""
    if host is None:
        return False
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    name = str(host).strip().rstrip(".").lower()
    if not name or name in LOCAL_NAMES or name.endswith(".localhost"):
        return False
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return True  # a name that DNS would resolve: off the machine
    return not (address.is_loopback or address.is_unspecified)


def _target(event: str, args: tuple[Any, ...]) -> str | None:
    """The outside host:port an event reaches for, or None when it stays on the machine."""
    if event == "socket.connect":
        address = args[1]
        if not isinstance(address, tuple) or not address:  # AF_UNIX path, or something exotic
            return None
        host, port = address[0], address[1] if len(address) > 1 else None
    elif event == "socket.getaddrinfo":
        host, port = args[0], args[1]
    else:
        return None
    return f"{host}:{port}" if is_outside(host) else None


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event not in ("socket.connect", "socket.getaddrinfo") or getattr(_local, "busy", False):
        return
    target = _target(event, args)
    if target is None:
        return
    path = os.environ.get(ENV_FILE)
    if not path:
        return
    _local.busy = True  # writing the record must not audit itself
    try:
        stack = "".join(traceback.format_stack(limit=8)[:-1])
        record = {
            "time": time.time(),
            "pid": os.getpid(),
            "event": event,
            "target": target,
            "thread": threading.current_thread().name,
            "argv": " ".join(sys.argv)[:200],
            "stack": stack[-1500:],
        }
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    except Exception:  # an audit hook must never break the process it watches
        pass
    finally:
        _local.busy = False


def install() -> None:
    """Add the hook to this process (once; audit hooks cannot be removed)."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True


def records_since(path: str, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The records appended to ``path`` after byte ``offset``, and the new offset."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return [], offset
    complete = data[: data.rfind(b"\n") + 1]
    lines = [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]
    return lines, offset + len(complete)

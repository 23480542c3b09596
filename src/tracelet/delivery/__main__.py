"""The delivery agent process: ``python -m tracelet.delivery``, started by the trainer.

It reads where to connect (and the key) from its stdin, then everything else over
that connection: the open request, the trainer's ``sys.path`` and working
directory. It runs the same :class:`~tracelet.delivery.thread.Fanout` as the
thread mode, acknowledges what is durable, forwards its log records to the
trainer, and exits:

* on ``STOP``: drain within the trainer's timeout, close the runs, answer, exit;
* when the trainer is gone (end-of-file on the pipe, or its pid no longer its
  parent): deliver what it received within ``TRACELET_AGENT_DRAIN`` seconds,
  spool the rest, close every run as ``killed``, exit.

It ignores SIGINT (a terminal's Ctrl-C reaches the whole foreground group; the
trainer decides) and treats SIGTERM as "the trainer is going": it keeps
delivering until the trainer is gone.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import threading
import time
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any, NoReturn

from tracelet.backends.base import KILLED
from tracelet.delivery import OpenRequest, protocol
from tracelet.delivery.thread import Fanout

log = logging.getLogger("tracelet.delivery.agent")

ACK_INTERVAL = 0.05
WATCH_INTERVAL = 0.2


def _pid_alive(pid: int) -> bool:
    """Is the trainer still there? A POSIX child is re-parented when its parent dies."""
    if sys.platform != "win32":
        return os.getppid() == pid
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x00100000, False, pid)  # SYNCHRONIZE
    if not handle:
        return False
    try:
        return bool(kernel32.WaitForSingleObject(handle, 0) == 0x00000102)  # WAIT_TIMEOUT: still running
    finally:
        kernel32.CloseHandle(handle)


class _Forward(logging.Handler):
    """Sends the agent's ``tracelet.*`` records to the trainer, which re-emits them on its loggers."""

    def __init__(self, agent: Agent) -> None:
        super().__init__()
        self.agent = agent

    def emit(self, record: logging.LogRecord) -> None:
        fields = {
            "name": record.name,
            "levelno": record.levelno,
            "levelname": record.levelname,
            "msg": record.getMessage(),
            "args": None,
            "pathname": record.pathname,
            "filename": record.filename,
            "module": record.module,
            "lineno": record.lineno,
            "funcName": record.funcName,
            "created": record.created,
            "msecs": record.msecs,
            "threadName": f"agent:{record.threadName}",
            "processName": "tracelet-agent",
            "process": record.process,
            "exc_text": self.format(record).partition("\n")[2] or None if record.exc_info else None,
        }
        if not self.agent.send(protocol.encode((protocol.LOG, fields))):
            sys.stderr.write(f"{record.levelname} {record.name}: {record.getMessage()}\n")


class Agent:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.fanout: Fanout | None = None
        self.send_lock = threading.Lock()
        self.done = threading.Lock()
        self.trainer_pid = 0
        self.drain = 30.0
        self.spool_dir: Path | None = None
        self.connected = True

    def send(self, payload: bytes) -> bool:
        if not self.connected:
            return False
        try:
            with self.send_lock:
                self.conn.send_bytes(payload)
            return True
        except (OSError, EOFError, ValueError):
            self.connected = False
            return False

    def open(self, message: tuple[Any, ...]) -> None:
        _, request, sys_path, cwd, level, trainer_pid, drain = message
        assert isinstance(request, OpenRequest)
        self.trainer_pid = trainer_pid
        self.drain = drain
        self.spool_dir = Path(request.spool_dir)
        os.chdir(cwd)
        sys.path[:] = list(dict.fromkeys([*sys_path, *sys.path]))
        root = logging.getLogger("tracelet")
        root.setLevel(level)
        root.addHandler(_Forward(self))
        root.propagate = False
        try:
            self.fanout = Fanout(request)
        except BaseException as exc:
            log.debug("opening the runs failed", exc_info=True)
            self.send(protocol.encode((protocol.ERROR, f"{type(exc).__name__}: {exc}")))
            raise
        self.send(protocol.encode((protocol.OPENED, self.fanout.opened)))

    def run(self) -> int:
        kind, message = protocol.decode(self.conn.recv_bytes())
        if kind or message[0] != protocol.OPEN:
            raise RuntimeError(f"the first message must be {protocol.OPEN!r}")
        self.open(message)
        threading.Thread(target=self._ack_loop, name="tracelet-agent-ack", daemon=True).start()
        threading.Thread(target=self._watch_trainer, name="tracelet-agent-watch", daemon=True).start()
        fanout = self.fanout
        assert fanout is not None
        while True:
            try:
                data = self.conn.recv_bytes()
            except (EOFError, OSError):
                self.trainer_gone("its pipe closed")
                return 0
            is_batch, message = protocol.decode(data)
            if is_batch:
                fanout.put_many(message)
            elif message[0] == protocol.FLUSH:
                threading.Thread(target=self._flush, args=message[1:], daemon=True).start()
            elif message[0] == protocol.STOP:
                self.stop(*message[1:])
                return 0

    def _flush(self, token: int, timeout: float) -> None:
        assert self.fanout is not None
        ok = self.fanout.flush(timeout)
        self.send(protocol.encode((protocol.ACK, self.fanout.progress())))
        self.send(protocol.encode((protocol.REPLY, token, ok)))

    def _ack_loop(self) -> None:
        assert self.fanout is not None
        last: dict[str, tuple[int, int, int, int]] = {}
        while self.connected:
            time.sleep(ACK_INTERVAL)
            progress = self.fanout.progress()
            if progress != last:
                self.send(protocol.encode((protocol.ACK, progress)))
                last = progress

    def _watch_trainer(self) -> None:
        """End-of-file alone is not enough: a forked child may still hold the pipe open."""
        while True:
            time.sleep(WATCH_INTERVAL)
            if not _pid_alive(self.trainer_pid):
                if self.trainer_gone(f"pid {self.trainer_pid} is gone"):
                    _exit(0)
                return

    def stop(self, token: int, status: str, timeout: float) -> None:
        if not self.done.acquire(blocking=False):
            return
        assert self.fanout is not None
        reports = self.fanout.stop(status, timeout)
        self.send(
            protocol.encode(
                (
                    protocol.REPLY,
                    token,
                    {"final": True, "reports": reports, "progress": self.fanout.progress()},
                )
            )
        )

    def trainer_gone(self, why: str) -> bool:
        """Deliver what was received (bounded), spool the rest, close the runs as killed.

        False when another thread is already finishing (a stop, or the other death signal).
        """
        if not self.done.acquire(blocking=False):
            return False
        self.connected = False
        self._quiet_outputs()
        assert self.fanout is not None
        log.warning(
            "tracelet: the trainer is gone (%s); delivering what it sent, then closing as killed", why
        )
        reports = self.fanout.stop(KILLED, self.drain)
        for report in reports.values():
            log.warning("tracelet: %s after the trainer's death: %s", report.backend, report)
        return True

    def _quiet_outputs(self) -> None:
        """The trainer's stderr tee died with it: write to a file in the run's spool instead."""
        if self.spool_dir is None:
            return
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.spool_dir / "agent.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(fd, 2)
            os.dup2(fd, 1)
            os.close(fd)
        except OSError:
            pass


def _lower_priority() -> None:
    """Delivery is background work: when training keeps every core busy, training comes first.

    ``TRACELET_AGENT_NICE`` (default 10; 0 keeps the trainer's priority) is added to
    the agent's niceness; the stores' own helper processes it starts (wandb-core)
    inherit it. A backlog this causes waits in the agent's bounded queue and spool,
    and drains when a core is free, at the latest at ``stop_logging()``.
    """
    raw = os.environ.get("TRACELET_AGENT_NICE", "10")
    try:
        increment = int(raw)
    except ValueError:
        log.warning("tracelet: TRACELET_AGENT_NICE=%r is not an integer; using 10", raw)
        increment = 10
    if increment <= 0:
        return
    try:
        if hasattr(os, "nice"):
            os.nice(increment)
        elif sys.platform == "win32":  # BELOW_NORMAL_PRIORITY_CLASS
            import ctypes

            kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
            kernel32.SetPriorityClass(kernel32.GetCurrentProcess(), 0x00004000)
    except OSError as exc:
        log.debug("tracelet: could not lower the agent's priority: %r", exc)


def main() -> int:
    _lower_priority()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _on_sigterm)
    logging.raiseExceptions = False
    address, authkey = pickle.load(sys.stdin.buffer)
    sys.stdin.close()
    agent = Agent(Client(address, authkey=authkey))
    code = agent.run()
    _exit(code)


def _exit(code: int) -> NoReturn:
    """Exit now: a hung store may leave threads behind, and the reports are out.

    ``os._exit`` skips interpreter shutdown, so coverage (when the test suite measures
    the agent through coverage's subprocess patch) is saved here first.
    """
    coverage = sys.modules.get("coverage")
    current = coverage.Coverage.current() if coverage is not None else None
    if current is not None:
        try:
            current.stop()
            current.save()
        except Exception:
            pass
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)


def _on_sigterm(signum: int, frame: Any) -> None:
    """A scheduler's SIGTERM to the whole job: keep delivering until the trainer is gone."""
    log.info("tracelet: the delivery agent got SIGTERM; it exits once the trainer is gone")


if __name__ == "__main__":
    sys.exit(main())

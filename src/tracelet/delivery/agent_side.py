"""The delivery agent's side: the process ``python -m tracelet.delivery`` that the trainer starts.

It reads where to connect (and the key) from its stdin, then everything else over
that connection. For each run, an :class:`~tracelet.delivery.protocol.Open` brings
the caller's environment (``os.environ``, working directory, ``sys.path``), which
replaces the agent's for that run, so nothing of one run (an MLflow password, a
``WANDB_DIR``) reaches the next. It runs the same
:class:`~tracelet.delivery.fanout.Fanout` as the thread mode, acknowledges what is
durable, forwards its log records to the trainer, and:

* on :class:`~tracelet.delivery.protocol.Stop`: drains within the trainer's timeout,
  closes the runs and answers; then waits for the next run when it may serve one
  (every backend shares a process, no writer hung), at most ``TRACELET_AGENT_IDLE``
  seconds, and exits otherwise;
* when the trainer is gone (end-of-file on the pipe, or its pid no longer its
  parent): delivers what it received within ``TRACELET_AGENT_DRAIN`` seconds,
  spools the rest, closes the run as ``killed``, and exits (at once when idle).

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
import traceback
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any, NoReturn

from tracelet import config
from tracelet.backends.base import KILLED
from tracelet.collectors.system_metrics import SystemSampler, start_sampler
from tracelet.delivery import OpenRequest, protocol
from tracelet.delivery.fanout import Fanout

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
        if not self.agent.send(protocol.encode(protocol.LogRecord(fields))):
            sys.stderr.write(f"{record.levelname} {record.name}: {record.getMessage()}\n")


class Agent:
    """Serves runs one after another over one connection, each in the environment its trainer sent."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.send_lock = threading.Lock()
        self.trainer_pid = os.getppid()
        self.base_sys_path = list(sys.path)
        self.connected = True
        #: the run being served: its serial, fanout and settings (None between runs)
        self.run = 0
        self.fanout: Fanout | None = None
        #: samples the trainer's system metrics during the run (None when they are off)
        self.sampler: SystemSampler | None = None
        self.drain = 30.0
        self.idle = 60.0
        self.spool_dir: Path | None = None
        #: taken by whichever ends the current run first: its stop, or the trainer's death
        self.done = threading.Lock()
        #: set once the current run is closed (by its stop, or after the trainer's death)
        self.ended = threading.Event()
        self.state_lock = threading.Lock()
        root = logging.getLogger("tracelet")
        root.addHandler(_Forward(self))
        root.propagate = False

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

    def open(self, message: protocol.Open) -> bool:
        """Take on the run's environment, open its runs, answer. False when the agent cannot go on."""
        request = message.request
        os.environ.clear()
        os.environ.update(message.environ)
        try:
            os.chdir(request.cwd)
        except OSError as exc:
            log.warning("tracelet: the run's working directory %s is gone (%r)", request.cwd, exc)
        sys.path[:] = list(dict.fromkeys([*message.sys_path, *self.base_sys_path]))
        logging.getLogger("tracelet").setLevel(message.log_level)
        self.drain = message.drain
        self.idle = message.idle
        self.spool_dir = Path(request.spool_dir)
        try:
            fanout = Fanout(request, on_progress=self._ack_now)
        except BaseException as exc:
            why = f"{type(exc).__name__}: {exc}"
            self.send(protocol.encode(protocol.OpenFailed(message.run, why, traceback.format_exc())))
            return False
        with self.state_lock:
            self.run = message.run
            self.fanout = fanout
            self.done = threading.Lock()
            self.ended = threading.Event()
        self.send(protocol.encode(protocol.OpenedRuns(message.run, fanout.opened)))
        self.sampler = self._start_sampler(message.run, request)
        return True

    def _start_sampler(self, run: int, request: OpenRequest) -> SystemSampler | None:
        """The trainer's system metrics, sampled here, from outside it; sent to the trainer to log."""

        def emit(items: list[tuple[Any, ...]]) -> None:
            self.send(protocol.encode(protocol.SystemSamples(run, items)))

        return start_sampler(
            self.trainer_pid, request.system_interval, request.started_at, emit, exclude_pid=os.getpid()
        )

    def _stop_sampler(self) -> None:
        sampler, self.sampler = self.sampler, None
        if sampler is not None:
            sampler.stop()

    def run_forever(self) -> int:
        """Wait for a run (at most ``idle`` seconds between runs), serve it, and again while reusable."""
        threading.Thread(target=self._ack_loop, name="tracelet-agent-ack", daemon=True).start()
        threading.Thread(target=self._watch_trainer, name="tracelet-agent-watch", daemon=True).start()
        first = True
        while True:
            try:
                if not first and not self.conn.poll(self.idle):
                    log.debug("tracelet: no run for %.0fs; the delivery agent exits", self.idle)
                    return 0
                data = self.conn.recv_bytes()
            except (EOFError, OSError):
                return 0  # the trainer is gone, or let this idle agent go
            first = False
            kind, message = protocol.decode(data)
            if isinstance(message, protocol.Quit):
                return 0
            if kind or not isinstance(message, protocol.Open):
                raise RuntimeError(f"expected an Open message between runs, got {type(message).__name__}")
            if not self.open(message):
                return 1
            outcome = self.serve()
            if outcome is not True:
                return 0

    def serve(self) -> bool:
        """Deliver one run until its stop. True when the agent may serve another run."""
        fanout = self.fanout
        assert fanout is not None
        while True:
            try:
                data = self.conn.recv_bytes()
            except (EOFError, OSError):
                if not self.trainer_gone("its pipe closed"):
                    # The pid watch saw the death first and is delivering what the pipe held:
                    # the process must not exit under it.
                    self.ended.wait()
                return False
            is_batch, message = protocol.decode(data)
            if is_batch:
                fanout.put_many(message)
            elif isinstance(message, protocol.Flush):
                threading.Thread(target=self._flush, args=(message,), daemon=True).start()
            elif isinstance(message, protocol.Stop):
                return self.stop(message)

    def _flush(self, message: protocol.Flush) -> None:
        fanout = self.fanout
        if fanout is None:
            return
        ok = fanout.flush(message.timeout)
        self.send(protocol.encode(protocol.Ack(message.run, fanout.progress())))
        self.send(protocol.encode(protocol.Reply(message.run, message.token, ok)))

    def _ack_now(self) -> None:
        """A writer delivered: acknowledge at once, from its own thread (the trainer then lets go)."""
        with self.state_lock:
            run, fanout = self.run, self.fanout
        if fanout is not None:
            self.send(protocol.encode(protocol.Ack(run, fanout.progress())))

    def _ack_loop(self) -> None:
        last: tuple[int, protocol.Progress] | None = None
        while self.connected:
            time.sleep(ACK_INTERVAL)
            with self.state_lock:
                run, fanout = self.run, self.fanout
            if fanout is None:
                continue
            progress = (run, fanout.progress())
            if progress != last:
                self.send(protocol.encode(protocol.Ack(run, progress[1])))
                last = progress

    def _watch_trainer(self) -> None:
        """End-of-file alone is not enough: a forked child may still hold the pipe open."""
        while True:
            time.sleep(WATCH_INTERVAL)
            if not _pid_alive(self.trainer_pid):
                if self.trainer_gone(f"pid {self.trainer_pid} is gone"):
                    _exit(0)
                return

    def stop(self, message: protocol.Stop) -> bool:
        """Close the run, answer with the reports; True when this agent may serve another run."""
        if not self.done.acquire(blocking=False):
            return False
        self._stop_sampler()
        fanout = self.fanout
        assert fanout is not None
        try:
            reports = fanout.stop(message.status, message.timeout)
        finally:
            self.ended.set()
        reusable = fanout.reusable and not fanout.hung()
        progress = fanout.progress()
        with self.state_lock:
            self.fanout = None
        self.send(protocol.encode(protocol.Final(message.run, message.token, reports, progress, reusable)))
        return reusable and self.connected

    def trainer_gone(self, why: str) -> bool:
        """Deliver what the run received (bounded), spool the rest, close it as killed.

        True when the agent may exit now: this call ended the run, or there was none.
        False when another thread is already ending the run (a stop, or the other death signal).
        """
        self.connected = False
        fanout = self.fanout
        if fanout is None:
            return True
        if not self.done.acquire(blocking=False):
            return False
        self._stop_sampler()
        self._quiet_outputs()
        log.warning(
            "tracelet: the trainer is gone (%s); delivering what it sent, then closing as killed", why
        )
        try:
            reports = fanout.stop(KILLED, self.drain)
            for report in reports.values():
                log.warning("tracelet: %s after the trainer's death: %s", report.backend, report)
        finally:
            self.ended.set()
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
    increment = config.agent_nice()
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
    code = agent.run_forever()
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

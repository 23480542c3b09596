"""The trainer's side of the delivery agent: start it, feed it, and never lose what it has not confirmed.

The training process keeps only what must happen on the caller's thread
(validation, timestamps, ``put`` into a bounded deque) and one *feeder* thread
that ships batches over a pipe to the agent, a child process started with
``python -m tracelet.delivery`` (never ``multiprocessing``, which would re-import
the user's ``__main__``). The backends, their writers and the stores' Python code
live in the agent, so they never compete with training for this process's GIL.

What the agent has not acknowledged (delivered, dead-lettered, or written to its
spool) stays in the trainer. If the agent dies, the trainer warns once and moves
all of it, and everything logged later, to its own spool; ``stop_logging()``
reports those events as pending, and ``tracelet sync`` replays them.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import os
import pickle
import site
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

import tracelet
from tracelet.delivery import Delivery, Opened, OpenRequest, protocol
from tracelet.delivery.writer import DEFAULT_MAXSIZE, _count_value
from tracelet.errors import AgentStartError
from tracelet.events import from_raw, resolve_value, to_raw
from tracelet.report import BackendReport
from tracelet.spool import Spool

log = logging.getLogger(__name__)

#: How often the feeder ships what accumulated. Few, large messages keep the trainer's cost low; this
#: interval is also what a SIGKILLed trainer can lose (what it logged since the last shipment).
SHIP_INTERVAL = 0.04
#: Ship at once when this many events wait, whatever the interval.
SHIP_EARLY = 20_000
#: Largest batch per message.
SHIP_MAX = 50_000
#: Events shipped but not yet acknowledged; past this, the feeder waits (and the deque spills to disk).
MAX_UNACKED = 200_000
#: How long stop waits for the agent to exit after it answered, and then after SIGKILL.
EXIT_GRACE = 10.0
STDERR_TAIL_LINES = 40

_live: weakref.WeakSet[AgentDelivery] = weakref.WeakSet()


class State(enum.Enum):
    """One state for the trainer's side (in place of a handful of booleans)."""

    CONNECTING = "connecting"
    RUNNING = "running"
    STOPPING = "stopping"
    LOST = "lost"
    CLOSED = "closed"
    DETACHED = "detached"


def _agent_env() -> dict[str, str]:
    """The trainer's environment, plus the directory this tracelet was imported from on PYTHONPATH.

    That makes ``python -m tracelet.delivery`` import *this* tracelet, even from a
    source tree; the user's own ``sys.path`` is sent over the pipe.
    """
    env = dict(os.environ)
    here = str(Path(tracelet.__file__).resolve().parents[1])
    site_dirs = {str(Path(d).resolve()) for d in [*site.getsitepackages(), site.getusersitepackages()]}
    if here not in site_dirs:  # never put site-packages ahead of the standard library
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


class AgentDelivery(Delivery):
    """Starts the agent, feeds it batches, and keeps every event until the agent confirms it."""

    def __init__(
        self,
        request: OpenRequest,
        *,
        handshake_timeout: float,
        drain_timeout: float,
        maxsize: int = DEFAULT_MAXSIZE,
    ) -> None:
        self._request = request
        self._names = [name for name, _ in request.backends]
        self._maxsize = request.writer_options.get("maxsize", maxsize)
        self._queue: deque[tuple[Any, ...]] = deque()
        self._sent = itertools.count()
        self._spooling = False
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._wake_event = threading.Event()
        self._state = State.CONNECTING
        self._spool_dir = Path(request.spool_dir)
        self._overflow: Spool | None = None
        #: shipped but unacknowledged batches; ``_base`` is the index of the first event in them
        self._unacked: deque[list[tuple[Any, ...]]] = deque()
        self._base = 0
        self._shipped = 0
        self._progress: dict[str, tuple[int, int, int, int]] = {n: (0, 0, 0, 0) for n in self._names}
        self._controls: deque[tuple[Any, ...]] = deque()
        self._replies: dict[int, Any] = {}
        self._reply_ready = threading.Condition(self._lock)
        self._tokens = itertools.count(1)
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._lost_reason: str | None = None
        self._held: dict[str, int] = {}
        self._drain_timeout = drain_timeout
        self._proc = self._spawn()
        try:
            self._conn = self._connect(handshake_timeout)
            self.opened = self._handshake(handshake_timeout)
        except BaseException:
            self._kill()
            raise
        self._state = State.RUNNING
        _live.add(self)
        self._receiver = threading.Thread(target=self._receive, name="tracelet-agent-receiver", daemon=True)
        self._feeder = threading.Thread(target=self._feed, name="tracelet-feeder", daemon=True)
        self._receiver.start()
        self._feeder.start()

    # -- start-up ---------------------------------------------------------------------------
    def _spawn(self) -> subprocess.Popen[bytes]:
        kwargs: dict[str, Any] = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            # Its own session: a terminal's Ctrl-C and a killpg of the trainer's group never
            # reach it; it watches the trainer instead and drains when the trainer is gone.
            kwargs["start_new_session"] = True
        proc = subprocess.Popen(
            [sys.executable, "-m", protocol.AGENT_MODULE],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
            env=_agent_env(),
            **kwargs,
        )
        threading.Thread(
            target=self._tee_stderr, args=(proc,), name="tracelet-agent-stderr", daemon=True
        ).start()
        return proc

    def _tee_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        """The agent's stderr is the trainer's; the last lines are kept for start-up errors."""
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            self._stderr_tail.append(raw.decode(errors="replace"))
            try:
                target = sys.stderr
                buffer = getattr(target, "buffer", None)
                if buffer is not None:
                    buffer.write(raw)
                    buffer.flush()
                else:
                    target.write(raw.decode(errors="replace"))
            except (OSError, ValueError):
                pass

    def _fail(self, why: str) -> AgentStartError:
        time.sleep(0.1)  # let the stderr tee catch the agent's last words
        tail = "".join(self._stderr_tail).rstrip()
        return AgentStartError(why, self._proc.poll(), tail)

    def _connect(self, timeout: float) -> Connection:
        """The agent connects back with the key it read on its stdin; nothing is on a command line."""
        authkey = os.urandom(32)
        listener = Listener(authkey=authkey)
        try:
            assert self._proc.stdin is not None
            try:
                self._proc.stdin.write(pickle.dumps((listener.address, authkey)))
                self._proc.stdin.close()
            except OSError as exc:
                raise self._fail(f"could not reach the delivery agent ({exc!r})") from None
            accepted: list[Connection] = []
            errors: list[BaseException] = []

            def accept() -> None:
                try:
                    accepted.append(listener.accept())
                except BaseException as exc:
                    errors.append(exc)

            thread = threading.Thread(target=accept, name="tracelet-agent-accept", daemon=True)
            thread.start()
            deadline = time.monotonic() + timeout
            while thread.is_alive() and time.monotonic() < deadline and self._proc.poll() is None:
                thread.join(0.02)
            if not accepted:
                if thread.is_alive():  # unblock accept() with a connection of our own
                    with contextlib.suppress(Exception):
                        Client(listener.address, authkey=authkey).close()
                if self._proc.poll() is not None:
                    raise self._fail(
                        f"the delivery agent exited with code {self._proc.poll()} before connecting"
                    )
                raise self._fail(
                    f"the delivery agent did not connect within {timeout:.0f}s (TRACELET_AGENT_TIMEOUT)"
                )
            conn = accepted[0]
        finally:
            listener.close()
        return conn

    def _handshake(self, timeout: float) -> Opened:
        level = logging.getLogger("tracelet").getEffectiveLevel()
        self._send(
            protocol.encode(
                (
                    protocol.OPEN,
                    self._request,
                    [os.path.abspath(entry) for entry in sys.path],  # '' and '.' mean the cwd here
                    os.getcwd(),
                    level,
                    os.getpid(),
                    self._drain_timeout,
                )
            )
        )
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._fail(
                    f"the delivery agent did not open the runs within {timeout:.0f}s (TRACELET_AGENT_TIMEOUT)"
                )
            try:
                ready = self._conn.poll(min(left, 0.1))
                data = self._conn.recv_bytes() if ready else None
            except (EOFError, OSError):
                raise self._fail(
                    f"the delivery agent exited with code {self._proc.wait(5)} while opening the runs"
                ) from None
            if data is None:
                if self._proc.poll() is not None and not self._conn.poll(0):
                    raise self._fail(
                        f"the delivery agent exited with code {self._proc.poll()} while opening the runs"
                    )
                continue
            _, message = protocol.decode(data)
            if message[0] == protocol.LOG:
                _emit(message[1])
            elif message[0] == protocol.OPENED:
                opened: Opened = message[1]
                return opened
            elif message[0] == protocol.ERROR:
                raise self._fail(f"the delivery agent could not start: {message[1]}")

    # -- caller's thread --------------------------------------------------------------------
    def put(self, item: tuple[Any, ...]) -> None:
        if self._spooling or len(self._queue) >= self._maxsize:
            self._put_slow(item)
        else:
            self._queue.append(item)
        next(self._sent)
        if len(self._queue) >= SHIP_EARLY and not self._wake_event.is_set():
            self._wake_event.set()

    def _put_slow(self, item: tuple[Any, ...]) -> None:
        with self._lock:
            if not self._spooling and len(self._queue) < self._maxsize:
                self._queue.append(item)
                return
            overflow = self._overflow_spool()
            if not self._spooling and self._state is not State.LOST:
                log.warning(
                    "tracelet: delivery queue is full (%d events); spooling to %s",
                    self._maxsize,
                    overflow.directory,
                )
            self._spooling = True
            overflow.append([item])

    def _overflow_spool(self) -> Spool:
        """The trainer's own overflow: one stream for every backend (``queue/`` in the run's spool)."""
        if self._overflow is None:
            targets = [
                {"backend": name, "run_id": self.opened.runs.get(name), "options": options}
                for name, options in self._request.backends
            ]
            self._overflow = Spool(self._spool_dir / "queue", {"targets": targets, "order": 2})
        return self._overflow

    def wake(self) -> None:
        self._wake_event.set()

    # -- feeder thread ----------------------------------------------------------------------
    def _feed(self) -> None:
        while True:
            self._wake_event.wait(SHIP_INTERVAL)
            self._wake_event.clear()
            if self._state in (State.LOST, State.DETACHED, State.CLOSED):
                return
            self._ship()
            while self._controls and not self._lost():
                if self._queue or self._spooling:
                    self._ship()
                    if self._queue or self._spooling:  # held back by MAX_UNACKED: wait for acks
                        time.sleep(0.01)
                        continue
                message = self._controls.popleft()
                if message[0] == protocol.STOP:  # a deadline becomes the seconds left, for the agent's clock
                    message = (*message[:3], max(0.0, message[3] - time.monotonic()))
                self._send_or_lose(protocol.encode(message))
                if message[0] == protocol.STOP:
                    return

    def _lost(self) -> bool:
        return self._state is State.LOST

    def _ship(self) -> None:
        while self._state is not State.LOST:
            with self._lock:
                if self._shipped - self._base_acked() >= MAX_UNACKED:
                    return
                from_spool = False
                if self._queue:
                    n = min(len(self._queue), SHIP_MAX)
                    popleft = self._queue.popleft
                    items = [popleft() for _ in range(n)]
                elif self._spooling and self._overflow is not None:
                    events = self._overflow.read(SHIP_MAX)
                    if not events:
                        self._overflow.reset()
                        self._spooling = False
                        return
                    items = [to_raw(e) for e in events]
                    from_spool = True
                else:
                    return
                self._unacked.append(items)
                self._shipped += len(items)
            payload = protocol.encode_batch(_resolved(items))
            if not self._send_or_lose(payload):
                return
            if from_spool and self._overflow is not None:
                with self._lock:
                    self._overflow.commit()

    def _send(self, payload: bytes) -> None:
        with self._send_lock:
            self._conn.send_bytes(payload)

    def _send_or_lose(self, payload: bytes) -> bool:
        try:
            self._send(payload)
            return True
        except (OSError, EOFError, ValueError) as exc:
            self._lose(f"the pipe to the delivery agent broke ({exc!r})")
            return False

    # -- receiver thread --------------------------------------------------------------------
    def _receive(self) -> None:
        while True:
            try:
                data = self._conn.recv_bytes()
            except (EOFError, OSError, ValueError):
                if self._state in (State.CLOSED, State.DETACHED):
                    return
                code = self._proc.poll()
                self._lose("the delivery agent exited" + (f" with code {code}" if code is not None else ""))
                return
            _, message = protocol.decode(data)
            kind = message[0]
            if kind == protocol.ACK:
                self._acknowledge(message[1])
            elif kind == protocol.LOG:
                _emit(message[1])
            elif kind == protocol.REPLY:
                with self._reply_ready:
                    self._replies[message[1]] = message[2]
                    self._reply_ready.notify_all()
                if isinstance(message[2], dict) and message[2].get("final"):
                    return

    def _base_acked(self) -> int:
        return min((p[2] for p in self._progress.values()), default=self._shipped)

    def _acknowledge(self, progress: dict[str, tuple[int, int, int, int]]) -> None:
        with self._lock:
            self._progress.update(progress)
            low = self._base_acked()
            while self._unacked and self._base + len(self._unacked[0]) <= low:
                self._base += len(self._unacked.popleft())

    # -- losing the agent -------------------------------------------------------------------
    def _lose(self, reason: str) -> None:
        """The agent is gone: from now on everything is kept in the trainer's spool. Never raises."""
        with self._reply_ready:
            if self._state in (State.LOST, State.CLOSED, State.DETACHED):
                return
            was_stopping = self._state is State.STOPPING
            self._state = State.LOST
            self._lost_reason = reason
            self._keep_what_is_unacknowledged()
            self._reply_ready.notify_all()
        if not was_stopping:
            log.warning(
                "tracelet: %s; %d unacknowledged and all later events are kept in %s (replay: tracelet sync)",
                reason,
                sum(self._held.values()),
                self._spool_dir,
            )

    def _keep_what_is_unacknowledged(self) -> None:
        """Per backend, the shipped events it has not confirmed go to ``trainer/<backend>/``;
        what was never shipped goes in front of the overflow spool (they are older)."""
        shipped = [item for batch in self._unacked for item in batch]
        for name, options in self._request.backends:
            durable = self._progress[name][2]
            tail = shipped[max(0, durable - self._base) :]
            self._held[name] = len(tail)
            if tail:
                meta = {
                    "backend": name,
                    "run_id": self.opened.runs.get(name),
                    "options": options,
                    "order": 1,
                }
                spool = Spool(self._spool_dir / "trainer" / name, meta)
                spool.append(tail)
                spool.close(remove_if_empty=False)
        self._unacked.clear()
        self._base = self._shipped
        unshipped = list(self._queue)
        self._queue.clear()
        overflow = self._overflow_spool()
        if unshipped:
            overflow.prepend([from_raw(item) for item in unshipped])
        self._spooling = True

    # -- flush and stop ---------------------------------------------------------------------
    def _ask(self, message: tuple[Any, ...], timeout: float) -> Any:
        """Queue a control message behind everything put so far; wait for the agent's reply."""
        deadline = time.monotonic() + timeout
        self._controls.append(message)
        self._wake_event.set()
        token = message[1]
        with self._reply_ready:
            while token not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self._state is State.LOST:
                    return None
                self._reply_ready.wait(min(left, 0.1))
            return self._replies.pop(token)

    def flush(self, timeout: float) -> bool:
        if self._state is not State.RUNNING:
            return self._state is State.CLOSED
        return bool(self._ask((protocol.FLUSH, next(self._tokens), timeout), timeout + 1.0))

    def stop(self, status: str, timeout: float) -> dict[str, BackendReport]:
        deadline = time.monotonic() + timeout
        reports: dict[str, BackendReport] = {}
        if self._state is State.RUNNING:
            self._state = State.STOPPING
            token = next(self._tokens)
            # The agent gets what is left of the timeout once everything before the stop is shipped.
            reply = self._ask((protocol.STOP, token, status, deadline), timeout + EXIT_GRACE)
            if reply is not None:
                reports = reply["reports"]
                self._acknowledge(reply["progress"])
            else:
                self._lose(f"the delivery agent did not answer the stop within {timeout:.1f}s")
        self._wake_event.set()
        with self._lock:
            if self._state is not State.LOST and (self._unacked or self._queue or self._spooling):
                self._keep_what_is_unacknowledged()
            self._state = State.CLOSED
        self._close_agent()
        return self._reports(reports, status)

    def _reports(self, agent_reports: dict[str, BackendReport], status: str) -> dict[str, BackendReport]:
        sent = _count_value(self._sent)
        if self._overflow is not None:
            self._overflow.meta["finish_status"] = status
            self._overflow.commit()
            self._overflow.close(remove_if_empty=True)
        out: dict[str, BackendReport] = {}
        for name in self._names:
            delivered, failed, _, retries = self._progress[name]
            base = agent_reports.get(name)
            if base is not None:
                delivered, failed, retries = base.delivered, base.failed, base.retries
            pending = sent - delivered - failed
            errors = base.errors if base is not None else ()
            if self._lost_reason:
                errors = (*errors, self._lost_reason)
            out[name] = BackendReport(
                backend=name,
                run_id=self.opened.runs.get(name),
                sent=sent,
                delivered=delivered,
                failed=failed,
                pending=pending,
                spool_path=str(self._spool_dir) if pending else None,
                errors=errors,
                retries=retries,
                dead_letter_path=base.dead_letter_path if base is not None else None,
            )
            if pending and base is None and not self._lost_reason:
                log.error("tracelet: no report from the delivery agent for %s", name)
        return out

    def _close_agent(self) -> None:
        try:
            self._proc.wait(EXIT_GRACE)
        except subprocess.TimeoutExpired:
            log.warning("tracelet: the delivery agent did not exit; killing it")
            self._kill()
        with contextlib.suppress(OSError):
            self._conn.close()
        _live.discard(self)

    def _kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(EXIT_GRACE)

    def detach(self) -> None:
        """In a forked child: close the child's copy of the pipe; the parent's agent is not ours."""
        self._state = State.DETACHED
        self.put = _drop  # type: ignore[method-assign]
        with contextlib.suppress(OSError, ValueError):
            os.close(self._conn.fileno())


def _drop(item: tuple[Any, ...]) -> None:
    """A detached delivery (a forked child) takes nothing."""


def _resolved(items: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Accelerator tensors (copied asynchronously at call time) are read here, on the feeder thread."""
    for i, item in enumerate(items):
        if item[0] == "metric":
            value = item[2]
            kind = type(value)
            if kind is not float and kind is not int:
                items[i] = ("metric", item[1], resolve_value(value), item[3], item[4])
    return items


def _emit(fields: dict[str, Any]) -> None:
    """Re-emit an agent's log record on the trainer's logger of the same name."""
    logger = logging.getLogger(fields.get("name", "tracelet"))
    if logger.isEnabledFor(fields.get("levelno", logging.INFO)):
        logger.handle(logging.makeLogRecord(fields))


def _after_fork_in_child() -> None:
    """A forked child (a DataLoader worker) must never hold the pipe: the agent would not see EOF."""
    for delivery in list(_live):
        delivery.detach()
    _live.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

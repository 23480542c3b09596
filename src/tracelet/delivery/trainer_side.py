"""The trainer's side of the delivery agent: find or start one, feed it, lose nothing it has not confirmed.

The training process keeps only what must happen on the caller's thread
(validation, timestamps, ``put`` into a bounded deque) and one *feeder* thread per
run that ships batches over a pipe to the agent, a child process started with
``python -m tracelet.delivery`` (never ``multiprocessing``, which would re-import
the user's ``__main__``). The backends, their writers and the stores' Python code
live in the agent (:mod:`tracelet.delivery.agent_side`), so they never compete with
training for this process's GIL.

**Background start.** ``start_logging()`` only builds the run's :class:`~tracelet.delivery.protocol.Open`
message (with the caller's environment, working directory and ``sys.path``) and
starts the feeder; the feeder finds a warm agent or starts one, and opens the runs
there while training already logs into the deque. Whatever goes wrong on the way (an
agent that cannot start, a run that cannot open) is one ERROR record, a report, and
a spool that ``tracelet sync`` replays, never an exception into training.

**One warm agent.** After a run is closed the agent stays, with its stores' clients
imported, and waits for the next run (:data:`IDLE_POOL`). It is reused only when
every backend of its last run may share a process (``Backend.shares_process()``) and
its stop did not leave a writer hung in a store call; it exits after
``TRACELET_AGENT_IDLE`` seconds without a run, and when the trainer exits. Runs
open at the same time each get their own agent.

What the agent has not acknowledged (delivered, dead-lettered, or written to its
spool) stays in the trainer. If the agent dies, the trainer warns once and moves
all of it, and everything logged later, to its own spool; ``stop_logging()``
reports those events as pending, and ``tracelet sync`` replays them.
"""

from __future__ import annotations

import atexit
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
from collections.abc import Callable
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

import tracelet
from tracelet.delivery import Delivery, Opened, OpenRequest, discard, protocol
from tracelet.delivery.health import (
    LAG_CHECK_EVERY,
    Arrivals,
    LagWatch,
    Progress,
    backend_health,
)
from tracelet.delivery.spill import SpillQueue
from tracelet.delivery.writer import DEFAULT_MAXSIZE
from tracelet.errors import AgentStartError
from tracelet.events import MetricClock, from_raw, resolve_value, to_raw
from tracelet.report import BackendReport, DeliveryHealth
from tracelet.spool import DiskAlarm, Spool

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
#: An idle agent is handed out only this long before its own idle timer would end it.
IDLE_MARGIN = 2.0

_live: weakref.WeakSet[AgentDelivery] = weakref.WeakSet()
_serials = itertools.count(1)


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
    source tree; each run's own environment and ``sys.path`` are sent over the pipe.
    """
    env = dict(os.environ)
    here = str(Path(tracelet.__file__).resolve().parents[1])
    site_dirs = {str(Path(d).resolve()) for d in [*site.getsitepackages(), site.getusersitepackages()]}
    if here not in site_dirs:  # never put site-packages ahead of the standard library
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


class AgentProcess:
    """One agent interpreter and its connection: serves one run at a time, and may serve the next."""

    def __init__(self, proc: subprocess.Popen[bytes], conn: Connection, stderr_tail: deque[str]) -> None:
        self.proc = proc
        self.conn = conn
        self.stderr_tail = stderr_tail
        self.idle_since = time.monotonic()
        self.idle_limit = 0.0
        self.runs_served = 0
        self._send_lock = threading.Lock()

    @classmethod
    def start(cls, timeout: float, budget: float) -> AgentProcess:
        """Start an interpreter; wait (at most ``timeout``) for it to connect back. Raises AgentStartError."""
        kwargs: dict[str, Any] = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            # Its own session: a terminal's Ctrl-C and a killpg of the trainer's group never
            # reach it; it watches the trainer instead and drains when the trainer is gone.
            kwargs["start_new_session"] = True
        tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        proc = subprocess.Popen(
            [sys.executable, "-m", protocol.AGENT_MODULE],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
            env=_agent_env(),
            **kwargs,
        )
        threading.Thread(
            target=_tee_stderr, args=(proc, tail), name="tracelet-agent-stderr", daemon=True
        ).start()
        try:
            conn = _connect(proc, tail, timeout, budget)
        except BaseException:
            _kill(proc)
            raise
        return cls(proc, conn, tail)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, payload: bytes) -> None:
        with self._send_lock:
            self.conn.send_bytes(payload)

    def failure(self, why: str) -> AgentStartError:
        return _failure(self.proc, self.stderr_tail, why)

    def close(self, wait: float = EXIT_GRACE) -> None:
        """Ask an agent that serves no run to exit; kill it if it does not within ``wait``."""
        with contextlib.suppress(OSError, EOFError, ValueError):
            self.send(protocol.encode(protocol.Quit()))
        self.wait_exit(wait)

    def wait_exit(self, wait: float = EXIT_GRACE) -> None:
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            log.warning("tracelet: the delivery agent did not exit; killing it")
            _kill(self.proc)
        with contextlib.suppress(OSError):
            self.conn.close()

    def kill(self) -> None:
        _kill(self.proc)
        with contextlib.suppress(OSError):
            self.conn.close()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(EXIT_GRACE)


def _tee_stderr(proc: subprocess.Popen[bytes], tail: deque[str]) -> None:
    """The agent's stderr is the trainer's; the last lines are kept for start-up errors."""
    assert proc.stderr is not None
    for raw in iter(proc.stderr.readline, b""):
        tail.append(raw.decode(errors="replace"))
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


def _failure(proc: subprocess.Popen[bytes], tail: deque[str], why: str) -> AgentStartError:
    time.sleep(0.1)  # let the stderr tee catch the agent's last words
    return AgentStartError(why, proc.poll(), "".join(tail).rstrip())


def _connect(proc: subprocess.Popen[bytes], tail: deque[str], timeout: float, budget: float) -> Connection:
    """The agent connects back with the key it read on its stdin; nothing is on a command line."""
    authkey = os.urandom(32)
    listener = Listener(authkey=authkey)
    try:
        assert proc.stdin is not None
        try:
            proc.stdin.write(pickle.dumps((listener.address, authkey)))
            proc.stdin.close()
        except OSError as exc:
            raise _failure(proc, tail, f"could not reach the delivery agent ({exc!r})") from None
        accepted: list[Connection] = []

        def accept() -> None:
            with contextlib.suppress(BaseException):
                accepted.append(listener.accept())

        thread = threading.Thread(target=accept, name="tracelet-agent-accept", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while thread.is_alive() and time.monotonic() < deadline and proc.poll() is None:
            thread.join(0.02)
        if not accepted:
            if thread.is_alive():  # unblock accept() with a connection of our own
                with contextlib.suppress(Exception):
                    Client(listener.address, authkey=authkey).close()
            if proc.poll() is not None:
                raise _failure(
                    proc, tail, f"the delivery agent exited with code {proc.poll()} before connecting"
                )
            raise _failure(
                proc,
                tail,
                f"the delivery agent did not connect within {budget:g}s (TRACELET_AGENT_TIMEOUT)",
            )
        return accepted[0]
    finally:
        listener.close()


class _Pool:
    """The idle agents of this process, each waiting for its next run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[AgentProcess] = []

    def take(self) -> AgentProcess | None:
        """A live idle agent that is not about to end itself; the others are let go."""
        with self._lock:
            while self._idle:
                agent = self._idle.pop()
                left = agent.idle_limit - (time.monotonic() - agent.idle_since)
                if agent.alive() and left > min(IDLE_MARGIN, agent.idle_limit / 2):
                    return agent
                threading.Thread(target=agent.close, args=(1.0,), daemon=True).start()
            return None

    def give_back(self, agent: AgentProcess, idle_limit: float) -> None:
        agent.idle_since = time.monotonic()
        agent.idle_limit = idle_limit
        with self._lock:
            self._idle.append(agent)

    def close_all(self) -> None:
        """At exit: every idle agent is told to go (each exits at once; nothing is left to deliver)."""
        with self._lock:
            agents, self._idle = self._idle, []
        for agent in agents:
            agent.close(2.0)

    def forget(self) -> None:
        """In a forked child: the parent's agents are not ours; close only our copies of their pipes.

        Lock-free: a parent's thread may have held the lock at the fork (the feeder taking a warm
        agent), and in the child it would stay held for good. The child has one thread here.
        """
        self._lock = threading.Lock()
        agents, self._idle = self._idle, []
        for agent in agents:
            with contextlib.suppress(OSError, ValueError):
                os.close(agent.conn.fileno())

    def pids(self) -> list[int]:
        with self._lock:
            return [agent.proc.pid for agent in self._idle]


IDLE_POOL = _Pool()
atexit.register(IDLE_POOL.close_all)


class _OpenRefused(AgentStartError):
    """The agent answered that it cannot open the runs: a new agent would not either."""


class AgentDelivery(Delivery):
    """Opens a run in a (warm) agent in the background, feeds it, keeps every event until confirmed."""

    def __init__(
        self,
        request: OpenRequest,
        *,
        open_timeout: float,
        drain_timeout: float,
        idle: float,
        lag_warn: float = 0.0,
        maxsize: int = DEFAULT_MAXSIZE,
    ) -> None:
        self._request = request
        self._run = next(_serials)
        self._names = [name for name, _ in request.backends]
        self._lock = threading.Lock()
        self._wake_event = threading.Event()
        #: one stream for every backend; it spills into ``queue/`` in the run's spool
        self._queue = SpillQueue(
            maxsize=request.writer_options.get("maxsize", maxsize),
            wake_at=SHIP_EARLY,
            wake=self._wake_event,
            lock=self._lock,
            spool=self._overflow_spool,
            on_spill=self._spilling,
            on_refused=lambda count, error: self._drop(self._names, count, error),
            before_spill=self._rescue_stragglers,
        )
        #: the caller's threads: a deque append unless the queue is full (then the spool)
        self.put = self._queue.put  # type: ignore[method-assign]
        self._state = State.CONNECTING
        self._spool_dir = Path(request.spool_dir)
        self._overflow: Spool | None = None
        #: shipped but unacknowledged batches; ``_base`` is the index of the first event in them
        self._unacked: deque[list[tuple[Any, ...]]] = deque()
        #: final per-key timestamps, given on the feeder thread before a batch is kept or sent
        self._clock = MetricClock()
        self._base = 0
        self._shipped = 0
        self._progress: dict[str, Progress] = {n: Progress() for n in self._names}
        #: when events were accepted, coarsely (``health()``'s lag); marked by the feeder
        self._arrivals = Arrivals()
        self._lag_watch = LagWatch(lag_warn)
        #: the health the feeder published at its last tick (what ``health()`` hands out while running)
        self._published: DeliveryHealth | None = None
        self._published_at = 0.0
        self._controls: deque[protocol.Flush | protocol.Stop] = deque()
        self._replies: dict[int, Any] = {}
        self._reply_ready = threading.Condition(self._lock)
        self._tokens = itertools.count(1)
        self._lost_reason: str | None = None
        self._held: dict[str, int] = {}
        #: per backend: events that fit neither in memory nor on the spool's full disk
        self._dropped: dict[str, int] = dict.fromkeys(self._names, 0)
        #: one ERROR for a full spool disk in this process (the agent says its own)
        self._disk_alarm = DiskAlarm()
        self._open_timeout = open_timeout
        self._idle = idle
        self._opened: Opened | None = None
        self._opened_event = threading.Event()
        #: why the agent could not open the runs at all (``wait=True`` raises it)
        self.open_error: AgentStartError | None = None
        self._agent: AgentProcess | None = None
        self._reusable = False
        # Built here, on the caller's thread: the environment as it is at start_logging().
        self._open_message = protocol.Open(
            run=self._run,
            request=request,
            environ=dict(os.environ),
            sys_path=[os.path.abspath(entry) for entry in sys.path],  # '' and '.' mean the cwd here
            log_level=logging.getLogger("tracelet").getEffectiveLevel(),
            drain=drain_timeout,
            idle=idle,
        )
        _live.add(self)
        self._feeder = threading.Thread(target=self._feed, name="tracelet-feeder", daemon=True)
        self._feeder.start()

    # -- opening (feeder thread) ------------------------------------------------------------
    def opened(self, timeout: float) -> Opened | None:
        self._opened_event.wait(timeout)
        return self._opened

    def _begin(self) -> AgentProcess:
        """A warm agent if there is one, else a new one; the runs opened there. Raises AgentStartError."""
        deadline = time.monotonic() + self._open_timeout
        warm = IDLE_POOL.take()
        while True:
            agent = warm or AgentProcess.start(max(0.1, deadline - time.monotonic()), self._open_timeout)
            try:
                self._opened = self._handshake(agent, deadline)
                return agent
            except _OpenRefused:
                agent.kill()
                raise
            except AgentStartError:
                agent.kill()
                if warm is None or self._state is not State.CONNECTING or time.monotonic() >= deadline:
                    raise
                # A warm agent that died while idle (the OOM killer, a stray signal): nothing was
                # shipped to it yet, so the run opens in a new one instead.
                log.info("tracelet: the idle delivery agent is gone; starting a new one")
                warm = None

    def _handshake(self, agent: AgentProcess, deadline: float) -> Opened:
        try:
            agent.send(protocol.encode(self._open_message))
        except (OSError, EOFError, ValueError) as exc:
            raise agent.failure(f"could not reach the delivery agent ({exc!r})") from None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise agent.failure(
                    f"the delivery agent did not open the runs within {self._open_timeout:g}s "
                    "(TRACELET_AGENT_TIMEOUT)"
                )
            try:
                data = agent.conn.recv_bytes() if agent.conn.poll(min(left, 0.1)) else None
            except (EOFError, OSError):
                code = agent.proc.poll()
                raise agent.failure(
                    "the delivery agent exited"
                    + (f" with code {code}" if code is not None else "")
                    + " while opening the runs"
                ) from None
            if data is None:
                if not agent.alive() and not agent.conn.poll(0):
                    raise agent.failure(
                        f"the delivery agent exited with code {agent.proc.poll()} while opening the runs"
                    )
                if self._state is not State.CONNECTING:  # stopped (or lost) before the runs opened
                    raise agent.failure("the run was stopped before the delivery agent opened it")
                continue
            _, message = protocol.decode(data)
            if isinstance(message, protocol.LogRecord):
                _emit(message.fields)
            elif isinstance(message, protocol.OpenedRuns) and message.run == self._run:
                return message.opened
            elif isinstance(message, protocol.OpenFailed) and message.run == self._run:
                why = f"the delivery agent could not open the runs: {message.why}"
                raise _OpenRefused(why, agent.proc.poll(), message.traceback.rstrip())

    # -- caller's thread --------------------------------------------------------------------
    def put(self, item: tuple[Any, ...]) -> None:
        """The interface's put; ``__init__`` shadows it with the queue's own (one call less per event)."""
        self._queue.put(item)

    def _spilling(self, overflow: Spool) -> None:
        if self._state is not State.LOST:  # a lost agent's spooling was said when it was lost
            log.warning(
                "tracelet: delivery queue is full (%d events); spooling to %s",
                self._queue.maxsize,
                overflow.directory,
            )

    def _drop(self, names: list[str], count: int, error: OSError) -> None:
        """``count`` events for ``names`` fit neither in memory nor on the full spool disk: counted."""
        for name in names:
            self._dropped[name] += count
        self._disk_refused(error)

    def _disk_refused(self, error: OSError) -> None:
        """The spool's disk refused a write: one ERROR naming it (later refusals are counted, not logged)."""
        self._disk_alarm.refused(log, self._spool_dir, error)

    def _bookkeeping(self, step: Callable[[], None]) -> None:
        """A spool's offset or reset: on a full disk the old offset stays (a sync may replay, never lose)."""
        try:
            step()
        except OSError as exc:
            self._disk_refused(exc)

    def _run_ids(self) -> dict[str, str | None]:
        return dict(self._opened.runs) if self._opened is not None else {name: None for name in self._names}

    def _overflow_spool(self) -> Spool:
        """The trainer's own overflow: one stream for every backend (``queue/`` in the run's spool)."""
        if self._overflow is None:
            self._overflow = Spool(self._spool_dir / "queue", {"order": 2})
            self._name_targets(self._overflow)
        return self._overflow

    def _name_targets(self, spool: Spool) -> None:
        """The run ids as far as they are known (``None``: ``tracelet sync`` opens the run)."""
        runs = self._run_ids()
        spool.meta["targets"] = [
            {"backend": name, "run_id": runs.get(name), "options": options}
            for name, options in self._request.backends
        ]
        spool.meta["project"] = self._request.info.project
        spool.meta["run_name"] = self._request.info.run_name

    def wake(self) -> None:
        self._wake_event.set()

    # -- feeder thread ----------------------------------------------------------------------
    def _feed(self) -> None:
        try:
            agent = self._begin()
        except AgentStartError as exc:
            self.open_error = exc
            self._opened_event.set()
            self._lose(str(exc).partition("\n(set TRACELET")[0].removeprefix("tracelet: "), at_start=True)
            return
        with self._lock:
            if self._state is not State.CONNECTING:  # stopped while opening: nothing is shipped to it
                agent.kill()
                self._opened_event.set()
                return
            self._agent = agent
            self._state = State.RUNNING
            if self._overflow is not None:  # spilled while opening: the runs have ids now
                self._name_targets(self._overflow)
        self._opened_event.set()
        receiver = threading.Thread(target=self._receive, name="tracelet-agent-receiver", daemon=True)
        receiver.start()
        checked = 0.0
        while True:
            self._wake_event.wait(SHIP_INTERVAL)
            self._wake_event.clear()
            if self._state in (State.LOST, State.DETACHED, State.CLOSED):
                return
            now = time.monotonic()
            self._arrivals.mark(self._queue.sent.value, now)
            self._arrivals.forget(min(p.settled for p in self._progress.values()))
            self._published, self._published_at = self._health_now(now), now
            if now - checked >= LAG_CHECK_EVERY:
                checked = now
                self._lag_watch.check(self._published)
            self._ship()
            while self._controls and not self._lost():
                if self._queue.holds_any():
                    self._ship()
                    if self._queue.holds_any():  # held back by MAX_UNACKED: wait for acks
                        time.sleep(0.01)
                        continue
                message = self._controls.popleft()
                if isinstance(message, protocol.Stop):  # a deadline becomes the seconds left
                    message = protocol.Stop(
                        message.run,
                        message.token,
                        message.status,
                        max(0.0, message.timeout - time.monotonic()),
                    )
                self._send_or_lose(protocol.encode(message))
                if isinstance(message, protocol.Stop):
                    return

    def _lost(self) -> bool:
        return self._state is State.LOST

    def _ship(self) -> None:
        while self._state is not State.LOST:
            with self._lock:
                if self._shipped - self._base_acked() >= MAX_UNACKED:
                    return
                from_spool = False
                if self._queue.items:
                    items = self._queue.take(SHIP_MAX)
                elif self._queue.spooling and self._overflow is not None:
                    events = self._overflow.read(SHIP_MAX)
                    if not events:
                        self._bookkeeping(self._overflow.reset)
                        self._queue.spooling = False
                        return
                    items = [to_raw(e) for e in events]
                    from_spool = True
                else:
                    return
                self._clock.stamp_all(items)
                self._unacked.append(items)
                self._shipped += len(items)
            payload = protocol.encode_batch(_resolved(items))
            if not self._send_or_lose(payload):
                return
            if from_spool and self._overflow is not None:
                with self._lock:
                    self._bookkeeping(self._overflow.commit)

    def _send_or_lose(self, payload: bytes) -> bool:
        assert self._agent is not None
        try:
            self._agent.send(payload)
            return True
        except (OSError, EOFError, ValueError) as exc:
            self._lose(f"the pipe to the delivery agent broke ({exc!r})")
            return False

    # -- receiver thread --------------------------------------------------------------------
    def _receive(self) -> None:
        """This run's answers; it ends with the run's :class:`~tracelet.delivery.protocol.Final`."""
        agent = self._agent
        assert agent is not None
        while True:
            try:
                data = agent.conn.recv_bytes()
            except (EOFError, OSError, ValueError):
                if self._state in (State.CLOSED, State.DETACHED):
                    return
                code = agent.proc.poll()
                self._lose("the delivery agent exited" + (f" with code {code}" if code is not None else ""))
                return
            _, message = protocol.decode(data)
            if isinstance(message, protocol.LogRecord):
                _emit(message.fields)
            elif not isinstance(message, protocol.RunMessage) or message.run != self._run:
                continue  # a late message of an earlier run this agent served
            elif isinstance(message, protocol.Ack):
                self._acknowledge(message.progress)
            elif isinstance(message, protocol.SystemSamples):
                with self._lock:  # a stop sets STOPPING under it: nothing is put behind its Stop
                    if self._state is State.RUNNING:
                        self._queue.put_many_locked(message.items)
            elif isinstance(message, (protocol.Reply, protocol.Final)):
                with self._reply_ready:
                    self._replies[message.token] = message
                    self._reply_ready.notify_all()
                if isinstance(message, protocol.Final):
                    return

    def _base_acked(self) -> int:
        return min((p.durable for p in self._progress.values()), default=self._shipped)

    def _acknowledge(self, progress: protocol.Progress) -> None:
        with self._lock:
            self._progress.update(progress)
            low = self._base_acked()
            while self._unacked and self._base + len(self._unacked[0]) <= low:
                self._base += len(self._unacked.popleft())

    # -- losing the agent -------------------------------------------------------------------
    def _lose(self, reason: str, *, at_start: bool = False) -> None:
        """The agent is gone: from now on everything is kept in the trainer's spool. Never raises."""
        with self._reply_ready:
            if self._state in (State.LOST, State.CLOSED, State.DETACHED):
                return
            was_stopping = self._state is State.STOPPING
            self._state = State.LOST
            self._lost_reason = reason
            self._keep_what_is_unacknowledged()
            self._reply_ready.notify_all()
        if self._agent is not None:
            self._agent.kill()  # never reused: whatever it was doing, it is not ours any more
        if at_start:
            log.error(
                "tracelet: %s; everything logged to %s is kept in %s (replay: tracelet sync)",
                reason,
                ", ".join(self._names),
                self._spool_dir,
            )
        elif not was_stopping:
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
        runs = self._run_ids()
        for name, options in self._request.backends:
            durable = self._progress[name].durable
            tail = shipped[max(0, durable - self._base) :]
            self._held[name] = len(tail)
            if tail:
                meta = {
                    "backend": name,
                    "run_id": runs.get(name),
                    "options": options,
                    "project": self._request.info.project,
                    "run_name": self._request.info.run_name,
                    "order": 1,
                }
                spool = Spool(self._spool_dir / "trainer" / name, meta)
                try:
                    spool.append(tail)
                    spool.close(remove_if_empty=False)
                except OSError as exc:
                    self._held[name] = 0
                    self._drop([name], len(tail), exc)
        self._unacked.clear()
        self._base = self._shipped
        # Spooling first: from now on put() takes the slow path, under this lock. A put that
        # checked the flag just before still appends to the deque: _rescue_stragglers moves it.
        self._queue.spooling = True
        unshipped = self._queue.drain()
        overflow = self._overflow_spool()
        # Nothing in queue/ ever left for a store, and what spilled there was never stamped:
        # `tracelet sync` stamps it on from this clock, past every point stamped so far (a
        # trainer logging faster than a point a millisecond runs the clock seconds ahead of
        # the wall, and MLflow orders a key's history by timestamp).
        overflow.meta["stamped"] = self._clock.state()
        if unshipped:
            try:
                overflow.prepend([from_raw(item) for item in unshipped])
            except OSError as exc:
                self._drop(self._names, len(unshipped), exc)
        elif overflow.events_path.is_file():
            # What the feeder read from it is in trainer/ now: replayed from there, never twice.
            self._bookkeeping(overflow.commit)

    def _rescue_stragglers(self) -> None:
        """Lost or closed: what a racing fast-path put left in the deque goes to the spool, in order.

        Called under the lock, before each later spooled event and at stop, so a straggler
        lands after what was spooled before it and before what is logged after it.
        """
        if self._queue.items and self._state in (State.LOST, State.CLOSED):
            stragglers = self._queue.drain()
            self._clock.stamp_all(stragglers)
            try:
                self._overflow_spool().append(stragglers)
            except OSError as exc:
                self._drop(self._names, len(stragglers), exc)

    # -- flush and stop ---------------------------------------------------------------------
    def _ask(self, message: protocol.Flush | protocol.Stop, timeout: float) -> Any:
        """Queue a control message behind everything put so far; wait for the agent's reply."""
        deadline = time.monotonic() + timeout
        self._controls.append(message)
        self._wake_event.set()
        with self._reply_ready:
            while message.token not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self._state is State.LOST:
                    return None
                self._reply_ready.wait(min(left, 0.1))
            return self._replies.pop(message.token)

    def flush(self, timeout: float) -> bool:
        if self._state not in (State.RUNNING, State.CONNECTING):
            return self._state is State.CLOSED
        reply = self._ask(protocol.Flush(self._run, next(self._tokens), timeout), timeout + 1.0)
        return bool(reply is not None and reply.ok)

    def stop(self, status: str, timeout: float) -> dict[str, BackendReport]:
        """Deliver within ``timeout``, counted from when the runs are open.

        A run stopped while its agent still starts waits for it (bounded by
        ``TRACELET_AGENT_TIMEOUT``, which the feeder enforces): the caller's timeout is
        the time to deliver, as it was when ``start_logging()`` waited for the agent.
        """
        reports: dict[str, BackendReport] = {}
        with self._lock:
            connecting = self._state is State.CONNECTING
            if self._state is State.RUNNING:
                self._state = State.STOPPING
        if connecting:
            self._opened_event.wait(self._open_timeout + EXIT_GRACE)
            with self._lock:
                if self._state is State.RUNNING:
                    self._state = State.STOPPING
        deadline = time.monotonic() + timeout
        if self._state is State.STOPPING:
            # The agent gets what is left of the timeout once everything before the stop is shipped.
            final = self._ask(
                protocol.Stop(self._run, next(self._tokens), status, deadline),
                max(0.0, deadline - time.monotonic()) + EXIT_GRACE,
            )
            if isinstance(final, protocol.Final):
                reports = final.reports
                self._acknowledge(final.progress)
                self._reusable = final.reusable
            else:
                self._lose(f"the delivery agent did not answer the stop within {timeout:.1f}s")
        elif self._state is State.CONNECTING:
            self._lose(f"the delivery agent did not open the runs within {self._open_timeout:g}s")
        self._wake_event.set()
        with self._lock:
            if self._state is not State.LOST and (self._unacked or self._queue.holds_any()):
                self._keep_what_is_unacknowledged()
            lost = self._state is State.LOST
            self._state = State.CLOSED
            self._rescue_stragglers()
        self._release_agent(reuse=not lost and self._reusable)
        return self._reports(reports, status)

    def _release_agent(self, *, reuse: bool) -> None:
        agent, self._agent = self._agent, None
        _live.discard(self)
        if agent is None:
            return
        if reuse and agent.alive():
            agent.runs_served += 1
            IDLE_POOL.give_back(agent, self._idle)
        else:
            agent.wait_exit()

    def _reports(self, agent_reports: dict[str, BackendReport], status: str) -> dict[str, BackendReport]:
        sent = self._queue.sent.value
        if self._overflow is not None:
            self._overflow.meta["finish_status"] = status
            overflow = self._overflow
            self._bookkeeping(overflow.commit)
            self._bookkeeping(lambda: overflow.close(remove_if_empty=True))
        runs = self._run_ids()
        out: dict[str, BackendReport] = {}
        for name in self._names:
            progress = self._progress[name]
            delivered, failed, retries = progress.delivered, progress.failed, progress.retries
            base = agent_reports.get(name)
            if base is not None:
                delivered, failed, retries = base.delivered, base.failed, base.retries
            dropped = self._dropped[name] + (base.dropped if base is not None else 0)
            pending = sent - delivered - failed - dropped
            errors = base.errors if base is not None else ()
            if self._lost_reason:
                errors = (*errors, self._lost_reason)
            if self._dropped[name] and self._disk_alarm.message:
                errors = (*errors, self._disk_alarm.message)
            out[name] = BackendReport(
                backend=name,
                run_id=runs.get(name),
                sent=sent,
                delivered=delivered,
                failed=failed,
                pending=pending,
                spool_path=str(self._spool_dir) if pending else None,
                errors=errors,
                retries=retries,
                dead_letter_path=base.dead_letter_path if base is not None else None,
                dropped=dropped,
                notes=base.notes if base is not None else (),
            )
            if pending and base is None and not self._lost_reason:
                log.error("tracelet: no report from the delivery agent for %s", name)
        return out

    def health(self) -> DeliveryHealth:
        """As of the feeder's last tick (at most ``SHIP_INTERVAL`` old) while the run goes on: a copy of
        what it published, so a training loop may ask every step; otherwise counted now.

        While the agent starts (seconds, when it must import a store's client) the feeder waits
        for it and publishes nothing: the caller publishes instead, at most once a ``SHIP_INTERVAL``,
        so asking every step costs the same then (counting on every call cost 4-6 us).
        """
        state, published = self._state, self._published
        if state is State.RUNNING and published is not None:
            return DeliveryHealth(published)
        if state is State.CONNECTING:
            now = time.monotonic()
            if published is None or now - self._published_at >= SHIP_INTERVAL:
                published = self._health_now(now)
                self._published, self._published_at = published, now
            return DeliveryHealth(published)
        return self._health_now(time.monotonic())

    def _health_now(self, now: float) -> DeliveryHealth:
        """From the last acknowledgement and this side's counts; no round trip to the agent."""
        accepted = self._queue.sent.value
        overflow = self._overflow.unread if self._overflow is not None else 0
        return DeliveryHealth(
            {
                name: backend_health(
                    name,
                    accepted,
                    self._progress[name],
                    overflow + self._held.get(name, 0),
                    self._dropped[name],
                    self._arrivals,
                    now,
                )
                for name in self._names
            }
        )

    def delivering(self) -> bool:
        """False once the agent is lost (what is put goes to the spool for ``tracelet sync``) or closed."""
        return self._state not in (State.LOST, State.CLOSED, State.DETACHED)

    def detach(self) -> None:
        """In a forked child: close the child's copy of the pipe; the parent's agent is not ours."""
        self._state = State.DETACHED
        self.put = discard  # type: ignore[method-assign]
        agent = self._agent
        if agent is not None:
            with contextlib.suppress(OSError, ValueError):
                os.close(agent.conn.fileno())


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
    IDLE_POOL.forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

"""The delivery agent's lifecycle: start-up errors, the agent's death, the trainer's death, orphans.

These test the agent itself, so they run in agent mode only; the delivery behaviour both
modes share (retries, splitting, dead letters) is tested in both, in ``test_delivery.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import tracelet
from tests.children import INTERACTIVE_SIGINT
from tests.unit.fakes import ENV_SECRET, release, run_view, wait_for
from tracelet.api import open_run
from tracelet.delivery.trainer_side import IDLE_POOL
from tracelet.errors import AgentStartError, DeliveryError, RunOpenError
from tracelet.spool import sync
from tracelet.testing import RunRecord, read_run

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and process groups")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def agent_pids(parent: int | None = None) -> list[int]:
    """Live delivery agents (optionally: children of ``parent``), read from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if b"tracelet.delivery" not in cmdline or "State:\tZ" in status:
            continue
        ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if parent is None or ppid == parent:
            pids.append(int(entry.name))
    return pids


@pytest.fixture(autouse=True)
def agent_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACELET_DELIVERY", "agent")


@pytest.fixture(autouse=True)
def no_warm_agent() -> Iterator[None]:
    """Each test starts with no idle agent of an earlier test, and leaves none behind."""
    IDLE_POOL.close_all()
    yield
    release()
    active = tracelet.get_active_experiment()
    if active is not None:
        active.stop(flush_timeout=5)
    IDLE_POOL.close_all()


def memory_run(**kwargs: object) -> tracelet.Experiment:
    return tracelet.start_logging(backend="memory", **kwargs)  # type: ignore[arg-type]


def test_the_warm_agent_serves_the_next_run_and_exits_when_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACELET_AGENT_IDLE", "3")
    pids = []
    for n in range(3):
        exp = memory_run(exp_name=f"sweep-{n}")
        exp.log_metric("x", float(n))
        assert tracelet.stop_logging().ok
        run = run_view(exp.runs["memory"])
        assert [m.value for m in run.metrics] == [float(n)]
        pids.append(run.pid)
    assert pids[0] != os.getpid()
    assert pids == [pids[0]] * 3  # one agent, three runs
    if sys.platform.startswith("linux"):
        assert agent_pids(os.getpid()) == [pids[0]]  # idle, waiting for the next run
        wait_for(lambda: agent_pids(os.getpid()) == [], 20, "the idle agent to exit")


def test_each_run_carries_its_own_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A credential of run 1 never reaches run 2, though the same agent opens both."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    monkeypatch.setenv(ENV_SECRET, "run-1-password")
    one = memory_run(exp_name="one")
    assert tracelet.stop_logging().ok
    monkeypatch.delenv(ENV_SECRET)
    monkeypatch.chdir(second)
    two = memory_run(exp_name="two")
    assert tracelet.stop_logging().ok
    run_one, run_two = run_view(one.runs["memory"]), run_view(two.runs["memory"])
    assert run_one.pid == run_two.pid
    assert (run_one.secret, run_one.cwd) == ("run-1-password", str(first))
    assert (run_two.secret, run_two.cwd) == (None, str(second))


def test_runs_open_at_the_same_time_each_get_an_agent() -> None:
    exp = memory_run(exp_name="active")
    beside = open_run(exp_name="beside", backend="memory")
    for i in range(50):
        exp.log_metric("a", float(i), i)
        beside.log_metric("b", float(i), i)
    assert beside.stop().ok
    assert tracelet.stop_logging().ok
    active, other = run_view(exp.runs["memory"]), run_view(beside.runs["memory"])
    assert active.pid != other.pid
    assert [m.value for m in active.metrics] == [float(i) for i in range(50)]
    assert [m.name for m in other.metrics] == ["b"] * 50


def test_an_agent_whose_stop_timed_out_is_retired() -> None:
    exp = tracelet.start_logging(exp_name="hung", backend="hanging")
    exp.log_metric("x", 1.0)
    report = tracelet.stop_logging(flush_timeout=0.5)  # the writer hangs in the store's call
    assert report["hanging"].pending == 1
    hung_pid = run_view(exp.runs["hanging"]).pid
    if sys.platform.startswith("linux"):
        wait_for(lambda: hung_pid not in agent_pids(), 15, "the hung agent to exit")
    after = memory_run(exp_name="after")
    assert tracelet.stop_logging().ok
    assert run_view(after.runs["memory"]).pid != hung_pid


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_while_the_feeder_holds_the_idle_pool_lock_does_not_hang_the_child() -> None:
    """A DataLoader worker forked while the feeder takes a warm agent (the background start).

    The child forgets the parent's agents at the fork; a lock another thread held at that
    instant stays held in the child for good, so forgetting must not wait for it.
    """
    import threading

    memory_run(exp_name="warm")
    assert tracelet.stop_logging().ok  # one idle agent in the pool: the child has one to forget
    held, done = threading.Event(), threading.Event()

    def feeder_taking_an_agent() -> None:
        with IDLE_POOL._lock:  # the pool's own lock, as _Pool.take holds it
            held.set()
            done.wait(10)

    thread = threading.Thread(target=feeder_taking_an_agent)
    thread.start()
    held.wait(5)
    try:
        pid = os.fork()
        if pid == 0:  # the child: the after-fork handlers have run by now
            os._exit(0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            finished, status = os.waitpid(pid, os.WNOHANG)
            if finished:
                assert os.waitstatus_to_exitcode(status) == 0
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in tracelet's after-fork handler")
    finally:
        done.set()
        thread.join()


@posix_only
def test_an_agent_killed_while_idle_is_replaced() -> None:
    first = memory_run(exp_name="first")
    assert tracelet.stop_logging().ok
    idle_pid = run_view(first.runs["memory"]).pid
    os.kill(idle_pid, signal.SIGKILL)
    second = memory_run(exp_name="second")
    for i in range(100):
        second.log_metric("x", float(i), i)
    report = tracelet.stop_logging()
    assert report.ok, report.format()
    run = run_view(second.runs["memory"])
    assert run.pid != idle_pid
    assert [m.value for m in run.metrics] == [float(i) for i in range(100)]


def test_a_store_that_refuses_to_open_is_reported_kept_and_synced(caplog: pytest.LogCaptureFixture) -> None:
    exp = tracelet.start_logging(exp_name="down", project="p", backend="closed-store", config={"lr": 0.1})
    for i in range(200):
        exp.log_metric("loss", float(i), i)
    assert exp.runs == {"closed-store": None}
    report = tracelet.stop_logging()
    r = report["closed-store"]
    assert (r.sent, r.delivered, r.failed + r.pending) == (201, 0, 201)
    assert any("it is down" in e for e in r.errors)
    errors = [rec.getMessage() for rec in caplog.records if rec.levelname == "ERROR"]
    assert sum("closed-store could not open a run" in m and "it is down" in m for m in errors) == 1
    release()  # the store is up again
    assert r.dead_letter_path is not None or r.spool_path is not None
    sync(exp.spool_dir)
    (run_dir,) = [p for p in (Path(os.environ["TRACELET_LOCAL_DIR"]) / "p").iterdir()]
    record = read_run("local", run_dir.name)
    assert record.metrics["loss"] == [(i, float(i)) for i in range(200)]
    assert record.params == {"lr": "0.1"}
    assert record.status == "finished"
    sync(exp.spool_dir)  # a second sync opens no second run and replays nothing twice
    assert len(list((Path(os.environ["TRACELET_LOCAL_DIR"]) / "p").iterdir())) == 1
    assert read_run("local", run_dir.name).metrics["loss"] == record.metrics["loss"]


def test_a_store_that_refuses_to_open_raises_in_strict_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACELET_STRICT", "1")
    exp = tracelet.start_logging(backend="failing", backend_options={"failing": {"fail_start": True}})
    exp.log_metric("x", 1.0)
    with pytest.raises(DeliveryError, match="no server"):
        tracelet.stop_logging()


def test_wait_true_raises_what_opening_raised() -> None:
    with pytest.raises(RunOpenError, match=r"failing.*no server"):
        tracelet.start_logging(
            backend="failing", backend_options={"failing": {"fail_start": True}}, wait=True
        )
    assert tracelet.get_active_experiment() is None


def test_an_agent_that_cannot_open_within_the_timeout_is_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TRACELET_AGENT_TIMEOUT", "1")
    exp = tracelet.start_logging(backend="slow-start", backend_options={"slow-start": {"seconds": 30}})
    exp.log_metric("x", 1.0)
    report = tracelet.stop_logging(flush_timeout=5)
    r = report["slow-start"]
    assert (r.sent, r.delivered, r.pending) == (1, 0, 1)
    assert any("TRACELET_AGENT_TIMEOUT" in e for e in r.errors)
    errors = [rec.getMessage() for rec in caplog.records if rec.levelname == "ERROR"]
    assert sum("TRACELET_AGENT_TIMEOUT" in m for m in errors) == 1
    if sys.platform.startswith("linux"):
        wait_for(lambda: agent_pids(os.getpid()) == [], 15, "the stuck agent to be killed")


def test_the_agent_runs_the_backends_in_another_process() -> None:
    exp = tracelet.start_logging(backend="memory")
    exp.log_metric("x", 1.0)
    assert tracelet.stop_logging().ok
    assert "tests.unit.fakes" in sys.modules  # the trainer imported the registry's module...
    assert run_view(exp.runs["memory"]).metrics[0].value == 1.0  # ...and the agent delivered


def test_handshake_timeout_raises_with_the_setting_named_when_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRACELET_AGENT_TIMEOUT", "1")
    t0 = time.monotonic()
    with pytest.raises(AgentStartError, match="TRACELET_AGENT_TIMEOUT"):
        tracelet.start_logging(
            backend="slow-start", backend_options={"slow-start": {"seconds": 30}}, wait=True
        )
    assert time.monotonic() - t0 < 15
    assert tracelet.get_active_experiment() is None
    if sys.platform.startswith("linux"):
        wait_for(lambda: agent_pids(os.getpid()) == [], 15, "the stuck agent to be killed")


def test_an_import_error_in_the_agent_is_raised_with_its_stderr_when_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRACELET_START", "wait")
    with pytest.raises(AgentStartError) as info:
        tracelet.start_logging(backend="agent-import-fails")
    message = str(info.value)
    assert "store_sdk" in message  # the agent's reason
    assert "Traceback" in info.value.stderr_tail  # and the tail of its stderr
    assert tracelet.get_active_experiment() is None


def test_an_import_error_in_the_agent_is_reported_and_kept_without_waiting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exp = tracelet.start_logging(backend="agent-import-fails")
    exp.log_metric("x", 1.0)
    report = tracelet.stop_logging()
    r = report["agent-import-fails"]
    assert (r.pending, r.spool_path) == (1, str(exp.spool_dir))
    assert any("store_sdk" in e for e in r.errors)
    assert sum("store_sdk" in rec.getMessage() for rec in caplog.records if rec.levelname == "ERROR") == 1


@posix_only
@linux_only
def test_the_agents_death_keeps_unacknowledged_events_in_the_spool(caplog: pytest.LogCaptureFixture) -> None:
    exp = tracelet.start_logging(exp_name="lost", project="p", backend="stalling-local")
    for i in range(300):
        exp.log_metric("loss", float(i), i)
    assert exp.flush(0.5) is False  # the store stalls: nothing is acknowledged
    (agent,) = agent_pids(os.getpid())
    os.kill(agent, signal.SIGKILL)
    time.sleep(0.5)
    for i in range(300, 400):  # logging goes on, into the trainer's spool; no crash, no hang
        exp.log_metric("loss", float(i), i)
    t0 = time.monotonic()
    report = tracelet.stop_logging(flush_timeout=5)
    assert time.monotonic() - t0 < 5
    r = report["stalling-local"]
    assert r.sent == 400
    assert r.delivered == 0
    assert r.pending == 400
    assert r.spool_path is not None
    assert any("delivery agent" in e for e in r.errors)
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelname == "WARNING"]
    assert sum(m.startswith("tracelet: the delivery agent exited") for m in warnings) == 1  # warned once
    release()
    sync(Path(r.spool_path))
    record = read_run("local", exp.runs["stalling-local"])  # type: ignore[arg-type]
    assert record.metrics["loss"] == [(i, float(i)) for i in range(400)]


@posix_only
@linux_only
def test_points_spooled_after_the_agents_death_replay_after_every_point_stamped(tmp_path: Path) -> None:
    """Logging faster than a point a millisecond runs each key's clock ahead of the wall.

    MLflow orders a key's history by timestamp, so the points the trainer spools after the
    agent died (never stamped: they never left for a store) must replay after every point
    stamped before, even those stamped seconds ahead of the wall clock. Found by the E2E
    SIGKILL test: MLflow read back steps 1563, 3001, 1564, 3002, ...
    """
    exp = tracelet.start_logging(exp_name="ahead", project="p", backend="stalling-local")
    for i in range(3000):  # a few milliseconds of wall time, 3,000 milliseconds of stamps
        exp.log_metric("loss", float(i), i)
    assert exp.flush(0.5) is False  # the store stalls: nothing is acknowledged
    (agent,) = agent_pids(os.getpid())
    os.kill(agent, signal.SIGKILL)
    time.sleep(0.5)  # the trainer notices: what follows goes to its spool
    for i in range(3000, 3200):
        exp.log_metric("loss", float(i), i)
    report = tracelet.stop_logging(flush_timeout=5)
    r = report["stalling-local"]
    assert (r.sent, r.pending) == (3200, 3200), report.format()
    release()
    sync(Path(r.spool_path or ""))
    (run_dir,) = (tmp_path / "runs").glob(f"*/{exp.runs['stalling-local']}")
    with open(run_dir / "events.jsonl", encoding="utf-8") as f:
        points = [json.loads(line) for line in f]
    stamped = sorted((p["timestamp"], p["step"]) for p in points if p["kind"] == "metric")
    assert [step for _, step in stamped] == list(range(3200))  # the order MLflow would read back
    assert len({ts for ts, _ in stamped}) == 3200


def script(tmp_path: Path, code: str) -> Path:
    path = tmp_path / "trainer.py"
    path.write_text(INTERACTIVE_SIGINT + textwrap.dedent(code))
    return path


def start_trainer(path: Path, tmp_path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "TRACELET_HANDLE_SIGNALS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    return subprocess.Popen(
        [sys.executable, str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal or a scheduler gives it
    )


TRAINER = """
import json, os, sys, time, tracelet
exp = tracelet.start_logging(exp_name="t", project="p", backend="local")
print(json.dumps({"run": exp.runs["local"], "pid": os.getpid()}), flush=True)
{before}
i = 0
while True:
    exp.log_metric("step", float(i), i)
    i += 1
    if i == 3000:
        print("READY", flush=True)
    if i % 100 == 0:
        time.sleep(0.001)
"""


@dataclass(frozen=True)
class Trainer:
    """What the trainer script prints first: its run's id and its pid."""

    run: str
    pid: int


def _run_until_ready(tmp_path: Path, before: str = "") -> tuple[subprocess.Popen[str], Trainer]:
    proc = start_trainer(script(tmp_path, TRAINER.replace("{before}", before)), tmp_path)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("{"), (first, proc.stderr.read() if proc.stderr else "")
    info = Trainer(**json.loads(first))
    assert proc.stdout.readline().strip() == "READY"
    return proc, info


def closed_run(info: Trainer, tmp_path: Path, timeout: float = 30.0) -> RunRecord:
    """The trainer's local run once it is no longer ``running`` (or as it is after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        record = read_run("local", info.run, root=tmp_path / "runs")
        if record.status != "running" or time.monotonic() > deadline:
            return record
        time.sleep(0.1)


def _agents_of(pid: int) -> list[int]:
    return agent_pids(pid) if sys.platform.startswith("linux") else []


@posix_only
def test_a_sigkilled_trainer_has_its_run_delivered_and_closed_killed(tmp_path: Path) -> None:
    proc, info = _run_until_ready(tmp_path)
    agents = _agents_of(info.pid)
    time.sleep(0.6)  # what was logged more than the feeder's interval ago has reached the agent
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    record = closed_run(info, tmp_path)
    assert record.status == "killed"
    steps = [s for s, _ in record.metrics["step"]]
    assert len(steps) >= 3000
    assert steps == list(range(len(steps)))
    if agents:  # the agent exits once it has closed the run: no orphan
        wait_for(lambda: not set(agents) & set(agent_pids()), 30)


@posix_only
def test_a_forked_child_holding_the_pipe_does_not_keep_the_agent_waiting(tmp_path: Path) -> None:
    """The child inherits the pipe; end-of-file never comes while it lives: the pid watch must act."""
    before = (
        "pid = os.fork()\nif pid == 0:\n    time.sleep(60)\n    os._exit(0)\nprint('CHILD', pid, flush=True)"
    )
    proc = start_trainer(script(tmp_path, TRAINER.replace("{before}", before)), tmp_path)
    assert proc.stdout is not None
    info = Trainer(**json.loads(proc.stdout.readline()))
    child = int(proc.stdout.readline().split()[1])
    assert proc.stdout.readline().strip() == "READY"
    try:
        time.sleep(0.6)  # what was logged more than the feeder's interval ago has reached the agent
        os.kill(proc.pid, signal.SIGKILL)  # the trainer only: the forked child lives on
        proc.wait(10)
        record = closed_run(info, tmp_path)
        assert record.status == "killed"
        assert len(record.metrics["step"]) >= 3000
    finally:
        os.kill(child, signal.SIGKILL)


@posix_only
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_whole_group_is_survived_by_the_agent(tmp_path: Path, signum: int) -> None:
    """Ctrl-C or a scheduler's SIGTERM reach every process of the group: the trainer decides."""
    proc, info = _run_until_ready(tmp_path)
    os.killpg(proc.pid, signum)
    proc.wait(60)
    record = read_run("local", info.run, root=tmp_path / "runs")
    assert record.status == "killed"
    steps = [s for s, _ in record.metrics["step"]]
    assert len(steps) >= 3000
    assert steps == list(range(len(steps)))
    if sys.platform.startswith("linux"):
        wait_for(lambda: agent_pids(info.pid) == [], 15)

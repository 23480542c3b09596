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
from pathlib import Path

import pytest

import tracelet
from tests.unit.fakes import release, run_view, wait_for
from tracelet.errors import AgentStartError
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


@linux_only
def test_no_agent_is_left_after_stop() -> None:
    exp = tracelet.start_logging(backend="memory")
    assert len(agent_pids(os.getpid())) == 1
    exp.log_metric("x", 1.0)
    tracelet.stop_logging()
    assert agent_pids(os.getpid()) == []


def test_the_agent_runs_the_backends_in_another_process() -> None:
    exp = tracelet.start_logging(backend="memory")
    exp.log_metric("x", 1.0)
    assert tracelet.stop_logging().ok
    assert "tests.unit.fakes" in sys.modules  # the trainer imported the registry's module...
    assert run_view(exp.runs["memory"]).metrics[0].value == 1.0  # ...and the agent delivered


def test_handshake_timeout_raises_with_the_setting_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACELET_AGENT_TIMEOUT", "1")
    t0 = time.monotonic()
    with pytest.raises(AgentStartError, match="TRACELET_AGENT_TIMEOUT"):
        tracelet.start_logging(backend="slow-start", backend_options={"slow-start": {"seconds": 30}})
    assert time.monotonic() - t0 < 15
    assert tracelet.get_active_experiment() is None
    if sys.platform.startswith("linux"):
        assert agent_pids(os.getpid()) == []


def test_an_import_error_in_the_agent_is_raised_with_its_stderr() -> None:
    with pytest.raises(AgentStartError) as info:
        tracelet.start_logging(backend="agent-import-fails")
    message = str(info.value)
    assert "store_sdk" in message  # the agent's reason
    assert "Traceback" in info.value.stderr_tail  # and the tail of its stderr
    assert tracelet.get_active_experiment() is None


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


def script(tmp_path: Path, code: str) -> Path:
    path = tmp_path / "trainer.py"
    path.write_text(textwrap.dedent(code))
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


def _run_until_ready(tmp_path: Path, before: str = "") -> tuple[subprocess.Popen[str], dict[str, object]]:
    proc = start_trainer(script(tmp_path, TRAINER.replace("{before}", before)), tmp_path)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("{"), (first, proc.stderr.read() if proc.stderr else "")
    info = json.loads(first)
    assert proc.stdout.readline().strip() == "READY"
    return proc, info


def closed_run(info: dict[str, object], tmp_path: Path, timeout: float = 30.0) -> RunRecord:
    """The trainer's local run once it is no longer ``running`` (or as it is after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        record = read_run("local", str(info["run"]), root=tmp_path / "runs")
        if record.status != "running" or time.monotonic() > deadline:
            return record
        time.sleep(0.1)


def _agents_of(pid: int) -> list[int]:
    return agent_pids(pid) if sys.platform.startswith("linux") else []


@posix_only
def test_a_sigkilled_trainer_has_its_run_delivered_and_closed_killed(tmp_path: Path) -> None:
    proc, info = _run_until_ready(tmp_path)
    agents = _agents_of(int(info["pid"]))  # type: ignore[arg-type]
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
    info = json.loads(proc.stdout.readline())
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
    record = read_run("local", str(info["run"]), root=tmp_path / "runs")
    assert record.status == "killed"
    steps = [s for s, _ in record.metrics["step"]]
    assert len(steps) >= 3000
    assert steps == list(range(len(steps)))
    if sys.platform.startswith("linux"):
        wait_for(lambda: agent_pids(int(info["pid"])) == [], 15)  # type: ignore[arg-type]

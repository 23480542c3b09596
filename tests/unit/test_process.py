"""What only a real process shows: exit flushing, signals, fork, and import hygiene."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.children import INTERACTIVE_SIGINT
from tests.e2e.audit import OPTIONAL_PACKAGES
from tracelet.testing import read_run

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("delivery_mode")


def run_script(code: str, tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    script = tmp_path / "script.py"
    script.write_text(INTERACTIVE_SIGINT + textwrap.dedent(code))
    full_env = {**os.environ, "TRACELET_LOCAL_DIR": str(tmp_path / "runs"), **env}
    full_env.pop("TRACELET_HANDLE_SIGNALS", None)
    full_env.update(env)
    return subprocess.Popen(
        [sys.executable, str(script)], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run_id_from(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("RUN "), (line, proc.stderr.read() if proc.stderr else "")
    return line.split()[1]


def test_import_tracelet_imports_no_backend_or_framework() -> None:
    heavy = str(set(OPTIONAL_PACKAGES))
    code = (
        "import sys, json, tracelet\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {heavy})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_forgotten_stop_is_flushed_at_exit(tmp_path: Path) -> None:
    proc = run_script(
        """
        import tracelet
        exp = tracelet.start_logging(exp_name="forgot", backend="local")
        print("RUN", exp.runs["local"], flush=True)
        for i in range(5000):
            exp.log_metric("loss", float(i), i)
        # no stop_logging(): the atexit hook must deliver and close the run
        """,
        tmp_path,
    )
    run_id = run_id_from(proc)
    assert proc.wait(timeout=60) == 0
    record = read_run("local", run_id, root=tmp_path / "runs")
    assert record.metrics["loss"] == [(i, float(i)) for i in range(5000)]
    assert record.status == "finished"


def test_uncaught_exception_at_exit_marks_the_run_failed(tmp_path: Path) -> None:
    proc = run_script(
        """
        import tracelet
        exp = tracelet.start_logging(backend="local")
        print("RUN", exp.runs["local"], flush=True)
        exp.log_metric("loss", 1.0)
        raise RuntimeError("training crashed")
        """,
        tmp_path,
    )
    run_id = run_id_from(proc)
    assert proc.wait(timeout=60) == 1
    record = read_run("local", run_id, root=tmp_path / "runs")
    assert record.status == "failed"
    assert record.metrics["loss"] == [(0, 1.0)]


LOOP = """
import time, tracelet
exp = tracelet.start_logging(exp_name="sig", backend="local")
print("RUN", exp.runs["local"], flush=True)
i = 0
while True:
    exp.log_metric("step", float(i), i)
    i += 1
    if i == 2000:
        print("READY", flush=True)
    if i % 1000 == 0:
        time.sleep(0.001)
"""


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, -signal.SIGINT)]
)
def test_signal_flushes_and_marks_the_run_killed(tmp_path: Path, signum: int, code: int) -> None:
    proc = run_script(LOOP, tmp_path)
    run_id = run_id_from(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == code
    record = read_run("local", run_id, root=tmp_path / "runs")
    assert record.status == "killed"
    steps = [s for s, _ in record.metrics["step"]]
    assert len(steps) >= 2000
    assert steps == list(range(len(steps)))


def test_signal_handling_can_be_switched_off(tmp_path: Path) -> None:
    proc = run_script(
        """
        import signal, tracelet
        before = signal.getsignal(signal.SIGTERM)
        tracelet.start_logging(backend="local")
        print("SAME" if signal.getsignal(signal.SIGTERM) is before else "CHANGED", flush=True)
        tracelet.stop_logging()
        """,
        tmp_path,
        TRACELET_HANDLE_SIGNALS="0",
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "SAME"
    assert proc.wait(timeout=60) == 0


def test_previous_handler_is_called_and_restored(tmp_path: Path) -> None:
    proc = run_script(
        """
        import os, signal, tracelet
        seen = []
        signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
        exp = tracelet.start_logging(backend="local")
        os.kill(os.getpid(), signal.SIGTERM)   # ours runs, then hands over to the user's handler
        exp.log_metric("after", 1.0)           # the process lives on, as the user's handler decided
        report = tracelet.stop_logging()
        print(seen == [signal.SIGTERM], report.status, signal.getsignal(signal.SIGTERM).__name__, flush=True)
        """,
        tmp_path,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().split() == ["True", "killed", "<lambda>"]
    assert proc.wait(timeout=60) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="not supported on this platform")
def test_forked_child_does_not_log(tmp_path: Path) -> None:
    proc = run_script(
        """
        import os, tracelet
        exp = tracelet.start_logging(exp_name="fork", backend="local")
        print("RUN", exp.runs["local"], flush=True)
        exp.log_metric("parent", 1.0, 0)
        pid = os.fork()
        if pid == 0:                      # like a DataLoader worker
            exp.log_metric("child", 1.0, 0)
            assert tracelet.get_active_experiment() is None
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        exp.log_metric("parent", 2.0, 1)
        tracelet.stop_logging()
        print("CHILD", status, flush=True)
        """,
        tmp_path,
    )
    run_id = run_id_from(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "CHILD 0"
    assert proc.wait(timeout=60) == 0
    record = read_run("local", run_id, root=tmp_path / "runs")
    assert record.metrics == {"parent": [(0, 1.0), (1, 2.0)]}


def test_cli_doctor_and_sync_usage(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tracelet", "doctor", "--json"], capture_output=True, text=True, check=True
    )
    report = json.loads(out.stdout)
    assert report["backends"]["local"] == "built-in"
    assert set(report["backends"]) >= {"mlflow", "wandb", "clearml"}
    missing = subprocess.run(
        [sys.executable, "-m", "tracelet", "sync", str(tmp_path)], capture_output=True, text=True
    )
    assert missing.returncode == 2
    assert "no tracelet spool" in missing.stderr


def test_a_multiprocessing_child_does_not_log_unless_it_is_rank_0(tmp_path: Path) -> None:
    """A spawned worker (parent_process() set) starts no agent; rank 0 of a spawn-started job does log."""
    proc = run_script(
        """
        import multiprocessing as mp, os, tracelet

        def child(rank):
            if rank is not None:
                os.environ["RANK"] = str(rank)
            exp = tracelet.start_logging(backend="local")
            exp.log_metric("x", 1.0)
            print("CHILD", rank, sorted(exp.runs), flush=True)
            if exp.runs:
                tracelet.stop_logging()

        if __name__ == "__main__":
            ctx = mp.get_context("spawn")
            for rank in (None, 0, 1):
                p = ctx.Process(target=child, args=(rank,))
                p.start()
                p.join()
        """,
        tmp_path,
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline().strip() for _ in range(3)]
    assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    assert lines == ["CHILD None []", "CHILD 0 ['local']", "CHILD 1 []"]

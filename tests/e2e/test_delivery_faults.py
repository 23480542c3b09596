"""Delivery under faults, against real stores: a SIGKILLed trainer, and an MLflow server that dies mid-run.

* A trainer killed with SIGKILL (no handler, no atexit) must lose nothing it logged
  more than 500 ms before the kill: the delivery agent delivers what it received,
  closes each run as ``killed`` and exits, leaving no process behind.
* An MLflow server that is SIGKILLed mid-run and comes back on the same port must
  lose nothing and duplicate nothing: transient errors (connection refused) are
  retried with backoff, and the report counts the retries.

Both tests kill process groups, so they run on POSIX hosts only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import tracelet
from tests.e2e.environments import MLflowEnvironment, own_mlflow_server
from tests.e2e.framework import Expected, assert_run_matches, e2e_framework
from tests.e2e.params import POSIX
from tests.e2e.processes import descendants, process_table
from tracelet.testing import read_run

# -- processes -----------------------------------------------------------------------------------

#: Set in the trainer's environment only; every process it starts (the agent) inherits it.
MARKER_VAR = "TRACELET_E2E_FAULT_MARKER"


def _carrying_marker(marker: str) -> dict[int, str]:
    """Linux: every live process whose environment holds ``MARKER_VAR=marker`` (however it was started)."""
    if not sys.platform.startswith("linux"):
        return {}
    entry = f"{MARKER_VAR}={marker}".encode()
    found: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if entry not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            stat = (proc / "stat").read_text()
            if stat[stat.rindex(")") + 2 :].startswith("Z"):  # a zombie waits for its reaper: it is gone
                continue
            found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    return found


class ProcessWatch:
    """The processes a trainer started: its descendants seen while it lived, and (Linux) its marker."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.seen: dict[int, str] = {}

    def snapshot(self, trainer_pid: int) -> None:
        """Remember the trainer's processes, apart from the trainer itself (which the test reaps)."""
        self.seen.update(descendants(trainer_pid))
        self.seen.update(_carrying_marker(self.marker))
        self.seen.pop(trainer_pid, None)

    def survivors(self) -> dict[int, str]:
        """Those still running; a pid counts only while it runs the same command (no pid reuse)."""
        table = process_table()
        alive = {
            pid: command
            for pid, command in self.seen.items()
            if pid in table and not table[pid][1].startswith("Z") and table[pid][2] == command
        }
        alive.update(_carrying_marker(self.marker))
        return alive

    def kill_survivors(self) -> None:
        """Cleanup only: these are the test's own offspring."""
        for pid in self.survivors():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _wait_for(condition: Any, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# -- 1. a SIGKILLed trainer ----------------------------------------------------------------------

TRAINER = r"""
import json, os, sys, time
import tracelet

cfg = json.loads(open(sys.argv[1]).read())
exp = tracelet.start_logging(
    exp_name=cfg["run_name"], project=cfg["project"], backend=["mlflow", "local"],
    backend_options=cfg["backend_options"], config=cfg["config"],
)
with open(cfg["runs_file"] + ".tmp", "w") as f:
    json.dump(exp.runs, f)
os.replace(cfg["runs_file"] + ".tmp", cfg["runs_file"])
# One line per call *after* it returned: "<time.time()> m <step> <repr(value)>" or "... p <name> <value>".
tally = open(cfg["tally_file"], "w", buffering=1)
give_up = time.monotonic() + cfg["give_up_after"]
step = 0
while time.monotonic() < give_up:
    value = 1.0 / (step + 1) + step
    exp.log_metric("loss", value, step)
    tally.write(f"{time.time():.6f} m {step} {value!r}\n")
    if step % 250 == 0:
        exp.log_params({"checkpoint": {str(step): f"ckpt-{step}.pt"}})
        tally.write(f"{time.time():.6f} p checkpoint/{step} ckpt-{step}.pt\n")
    step += 1
    time.sleep(0.001)
os._exit(3)  # the test kills it long before this
"""

KILL_AFTER_S = 3.0
GRACE_S = 0.5
CONFIG = {"lr": 0.001, "model": {"depth": 4, "act": "gelu"}}
CONFIG_PARAMS = {"lr": "0.001", "model/depth": "4", "model/act": "gelu"}


def _read_tally(path: Path) -> tuple[list[tuple[float, int, float]], list[tuple[float, str, str]]]:
    """The complete lines of the tally (a SIGKILL may cut the last one): metric points and params."""
    text = path.read_text()
    points: list[tuple[float, int, float]] = []
    params: list[tuple[float, str, str]] = []
    for line in text.split("\n")[:-1]:  # the part after the last newline is unfinished
        stamp, kind, name, value = line.split(" ")
        if kind == "m":
            points.append((float(stamp), int(name), float(value)))
        else:
            params.append((float(stamp), name, value))
    return points, params


def _store_status(backend: str, run_id: str, mlflow_uri: str, local_root: Path, project: str) -> str:
    """The run's status as the store holds it now, cheaply (no metric history)."""
    if backend == "mlflow":
        from mlflow.tracking import MlflowClient

        return str(MlflowClient(mlflow_uri).get_run(run_id).info.status).lower()
    return str(json.loads((local_root / project / run_id / "run.json").read_text())["status"])


def _check_landed(
    store: str,
    got: list[tuple[int, float]],
    logged: list[tuple[float, int, float]],
    cutoff: float,
) -> list[str]:
    """``got`` is the logged sequence's prefix, and holds at least every point logged before ``cutoff``."""
    problems = []
    sequence = [(step, value) for _, step, value in logged]
    must = sum(1 for stamp, _, _ in logged if stamp <= cutoff)
    n = min(len(got), len(sequence))
    if got[:n] != sequence[:n]:
        first = next(i for i in range(n) if got[i] != sequence[i])
        problems.append(
            f"{store}: stored 'loss' differs from what was logged at index {first}: "
            f"stored {got[first : first + 3]}, logged {sequence[first : first + 3]}"
        )
    # One point may be logged and delivered between its call and its tally line.
    extra = got[len(sequence) :]
    if len(extra) > 1 or (extra and sequence and extra[0][0] != sequence[-1][0] + 1):
        problems.append(f"{store}: {len(extra)} stored point(s) beyond the last logged one: {extra[:3]}")
    if len(got) < must:
        lost = sequence[len(got) : must]
        age = cutoff + GRACE_S - logged[len(got)][0]
        problems.append(
            f"{store}: lost {len(lost)} of the {must} point(s) logged more than {GRACE_S * 1000:.0f} ms "
            f"before the kill (stored {len(got)}; the oldest lost, step {lost[0][0]}, was logged "
            f"{age:.2f}s before the kill)"
        )
    return problems


@pytest.mark.e2e_floor
@pytest.mark.e2e_faults
@pytest.mark.slow
@pytest.mark.requires("mlflow")
@pytest.mark.platform_only(*POSIX)
@pytest.mark.framework_only("torch")
def test_sigkilled_trainer_loses_nothing_older_than_500ms(
    isolated_env: Path, tmp_path: Path, record_property: Any
) -> None:
    """SIGKILL a logging trainer's process group: what it logged >500 ms before is stored, in order,
    exactly, in MLflow and local; both runs end ``killed``; no process of the trainer's is left."""
    project = "sigkill"
    with e2e_framework.backend_environment("mlflow", project=project) as config:
        mlflow_env = config.store
        assert isinstance(mlflow_env, MLflowEnvironment)
        local_root = tmp_path / "local-runs"
        script = tmp_path / "trainer.py"
        script.write_text(TRAINER)
        runs_file, tally_file = tmp_path / "runs.json", tmp_path / "tally.txt"
        (tmp_path / "trainer.json").write_text(
            json.dumps(
                {
                    "run_name": "killed-mid-run",
                    "project": project,
                    "backend_options": {
                        "mlflow": config.backend_options["mlflow"],
                        "local": {"root": str(local_root)},
                    },
                    "config": CONFIG,
                    "runs_file": str(runs_file),
                    "tally_file": str(tally_file),
                    "give_up_after": 120,
                }
            )
        )
        marker = uuid.uuid4().hex
        watch = ProcessWatch(marker)
        out = open(tmp_path / "trainer.out", "wb")  # noqa: SIM115
        trainer = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "trainer.json")],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, MARKER_VAR: marker, "MLFLOW_DISABLE_TELEMETRY": "true"},
            start_new_session=True,  # its own process group, which the test kills whole
        )

        def trainer_output() -> str:
            return (tmp_path / "trainer.out").read_text(errors="replace")[-3000:]

        try:
            _wait_for(lambda: runs_file.exists() or trainer.poll() is not None, 120, "the trainer's run ids")
            assert trainer.poll() is None, f"the trainer exited early:\n{trainer_output()}"
            runs = json.loads(runs_file.read_text())
            assert runs.get("mlflow"), f"the mlflow run did not open: {runs}"
            assert runs.get("local"), f"the local run did not open: {runs}"
            _wait_for(lambda: tally_file.exists() and tally_file.stat().st_size > 0, 30, "the first point")
            watch.snapshot(trainer.pid)
            time.sleep(KILL_AFTER_S)
            assert trainer.poll() is None, f"the trainer exited early:\n{trainer_output()}"
            watch.snapshot(trainer.pid)

            kill_time = time.time()
            os.killpg(trainer.pid, signal.SIGKILL)
            trainer.wait(timeout=10)
            killed_at = time.monotonic()

            # Wait until both runs are closed, or nothing is left that could still close them.
            def closed() -> bool:
                for b in ("mlflow", "local"):
                    try:
                        status = _store_status(b, runs[b], mlflow_env.tracking_uri, local_root, project)
                    except Exception:  # e.g. sqlite busy while the agent writes: look again
                        return False
                    if status not in ("finished", "failed", "killed"):
                        return False
                return True

            while True:
                alive = watch.survivors()  # before reading: if none, what we read next is final
                if closed() or not alive or time.monotonic() - killed_at > 60:
                    break
                time.sleep(0.25)
            waited = time.monotonic() - killed_at
            with contextlib.suppress(AssertionError):  # a closing agent gets a moment to exit
                _wait_for(lambda: not watch.survivors(), 10, "the agent to exit", interval=0.2)
            survivors = watch.survivors()
            checked = time.monotonic() - killed_at
        finally:
            if trainer.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(trainer.pid, signal.SIGKILL)
                trainer.wait(timeout=10)
            out.close()
            leftover = watch.survivors()
            watch.kill_survivors()

        logged, logged_params = _read_tally(tally_file)
        assert logged, f"the trainer logged nothing:\n{trainer_output()}"
        assert logged[-1][0] - logged[0][0] > KILL_AFTER_S - 1, "the trainer did not log for ~3 s"
        cutoff = kill_time - GRACE_S
        must_params = {name: value for stamp, name, value in logged_params if stamp <= cutoff}
        assert sum(1 for p in logged if p[0] <= cutoff) > 500, "too few points before the cutoff to judge"

        problems: list[str] = []
        records = {
            "mlflow": mlflow_env.read(runs["mlflow"]),
            "local": read_run("local", runs["local"], root=str(local_root)),
        }
        owed = Counter((step, value) for stamp, step, value in logged if stamp <= cutoff)
        record_property("backend", "mlflow")
        record_property("fault", "trainer SIGKILLed, mlflow and local at once")
        record_property(
            "lost", sum(sum((owed - Counter(r.metrics.get("loss", []))).values()) for r in records.values())
        )
        for store, record in records.items():
            problems += _check_landed(store, record.metrics.get("loss", []), logged, cutoff)
            if set(record.metrics) - {"loss"}:
                problems.append(f"{store}: unexpected metrics {sorted(set(record.metrics) - {'loss'})}")
            wanted = {**CONFIG_PARAMS, **must_params}
            missing = {k: v for k, v in wanted.items() if record.params.get(k) != v}
            if missing:
                problems.append(f"{store}: params logged >{GRACE_S}s before the kill are missing: {missing}")
            known = {**CONFIG_PARAMS, **{n: v for _, n, v in logged_params}}
            last = logged[-1][1] + 1  # a param may land untallied with the step after the last tally
            known.update({f"checkpoint/{s}": f"ckpt-{s}.pt" for s in range(0, last + 1, 250)})
            unknown = {k: v for k, v in record.params.items() if known.get(k) != v}
            if unknown:
                problems.append(f"{store}: params that were never logged: {unknown}")
            if record.status != "killed":  # MLflow's KILLED reads back as 'killed'
                problems.append(
                    f"{store}: the run ended {record.status!r}, expected 'killed' "
                    f"(the wait for it ended {waited:.1f}s after the kill)"
                )
        if survivors:
            problems.append(
                f"processes of the killed trainer still run {checked:.0f}s after the kill: {survivors}"
            )
        elif leftover:
            problems.append(f"processes of the killed trainer were left behind: {leftover}")
        assert not problems, (
            f"{len(logged)} points logged in {logged[-1][0] - logged[0][0]:.1f}s; "
            f"{sum(1 for p in logged if p[0] <= cutoff)} of them >{GRACE_S}s before the kill; "
            f"processes seen besides the trainer: {watch.seen or 'none'}\n  " + "\n  ".join(problems)
        )


# -- 2. an MLflow server outage ------------------------------------------------------------------


OUTAGE_KEYS = ("train/loss", "train/acc", "val/loss", "lr")
#: Over the four keys: about 20k points in all, as the outage and restart take ~15-25 s here.
POINTS_PER_S = 1000
CRASH_AFTER_S = 2.5
DOWN_AT_LEAST_S = 5.0
LOG_AT_LEAST_S = 10.0
LOG_AFTER_RESTART_S = 1.5
#: TRACELET_LAG_WARN in the outage test: the server stays down longer than this
LAG_WARN_S = 2


def _history_problems(key: str, got: list[tuple[int, float]], logged: list[tuple[int, float]]) -> str | None:
    """None when ``got`` is exactly ``logged``; else what was lost, duplicated or reordered."""
    if got == logged:
        return None
    want, have = Counter(logged), Counter(got)
    lost = sorted((want - have).elements())
    duplicated = sorted((have - want).elements())
    detail = f"{key}: logged {len(logged)}, stored {len(got)}; lost {len(lost)}"
    if lost:
        detail += f" (between steps {lost[0][0]} and {lost[-1][0]})"
    detail += f", duplicated or foreign {len(duplicated)}"
    if duplicated:
        detail += f" (first {duplicated[:3]})"
    if not lost and not duplicated:
        detail += ", order differs"
    return detail


def _check_health_through_the_outage(
    seen: list[tuple[float, float, int]], timeline: dict[str, float], caplog: pytest.LogCaptureFixture
) -> None:
    """What ``exp.health()`` said in the loop, and the lag WARNINGs, against when the server was down."""
    down, up = timeline["down"], timeline["up"]
    before = [(lag, retries) for t, lag, retries in seen if t < down]
    outage = [(t, lag, retries) for t, lag, retries in seen if down + 1.0 <= t <= up]
    assert before, f"health was not read before the outage: {timeline}"
    assert outage, f"health was not read during the outage: {timeline}"
    assert max(lag for lag, _ in before) < LAG_WARN_S, f"behind before the outage: {before[-5:]}"
    first, last = outage[0], outage[-1]
    assert last[1] > first[1] + (last[0] - first[0]) / 2, f"the lag did not grow while down: {first} {last}"
    assert last[1] >= DOWN_AT_LEAST_S - 1.5, f"the lag at the restart was {last[1]:.1f}s"
    assert last[2] > before[-1][1], f"no retry was counted while down: {before[-1]} then {last}"

    def said(prefix: str) -> list[str]:
        messages = [r.getMessage() for r in caplog.records if r.name.startswith("tracelet")]
        return [m for m in messages if m.startswith(prefix)]

    # the lag is checked twice a second: the caught-up WARNING may come a moment after
    _wait_for(lambda: said("tracelet: mlflow caught up"), 5, "the caught-up WARNING")
    behind = [m for m in said("tracelet: mlflow is ") if "behind" in m]
    caught_up = said("tracelet: mlflow caught up")
    assert len(behind) == 1, f"expected one lag WARNING, got {behind}"
    assert len(caught_up) == 1, f"expected one caught-up WARNING, got {caught_up}"


@pytest.mark.e2e_floor
@pytest.mark.e2e_faults
@pytest.mark.slow
@pytest.mark.requires("mlflow")
@pytest.mark.platform_only(*POSIX)
@pytest.mark.framework_only("torch")
def test_mlflow_server_outage_is_bridged_by_retries(
    isolated_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SIGKILL the tracking server mid-run, keep it down >=5 s while logging goes on, restart it on the
    same port and store: every point lands exactly once, the report is ok and counts its retries.

    Meanwhile the training loop reads ``exp.health()``: the lag grows while the server is down and
    the retries count, one WARNING says the store fell behind (``TRACELET_LAG_WARN=2``), and after
    the restart the lag returns to about zero, with one WARNING that it caught up."""
    monkeypatch.setenv("TRACELET_LAG_WARN", str(LAG_WARN_S))
    caplog.set_level(logging.WARNING, logger="tracelet")
    # MLflow's own HTTP retries off and a short timeout: bridging the outage is tracelet's job.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    server = own_mlflow_server(tmp_path)
    timeline: dict[str, float] = {}
    failure: list[BaseException] = []
    try:
        expected = Expected(project="outage", run_name="server-outage")
        exp = tracelet.start_logging(
            exp_name=expected.run_name,
            project=expected.project,
            backend="mlflow",
            backend_options={"mlflow": {"tracking_uri": server.url}},
        )
        # Mid-run: the run is open first. start_logging returns before it is, and a cold agent can
        # spend longer than CRASH_AFTER_S importing MLflow (a store down at open is another test's).
        assert exp.runs["mlflow"], "the run did not open while the server was up"
        started = time.monotonic()

        def outage() -> None:
            try:
                time.sleep(CRASH_AFTER_S)
                server.crash()
                timeline["down"] = time.monotonic() - started
                assert not server.answers(), "the server still answers after SIGKILL of its group"
                time.sleep(DOWN_AT_LEAST_S)
                timeline["restarting"] = time.monotonic() - started
                server.restart()
                timeline["up"] = time.monotonic() - started
            except BaseException as exc:  # handed to the test's thread
                failure.append(exc)

        controller = threading.Thread(target=outage, name="outage", daemon=True)
        controller.start()
        #: (seconds since start, lag, retries) as the training loop saw them
        seen: list[tuple[float, float, int]] = []
        step = 0
        per_tick = 5  # steps per key per tick, paced to POINTS_PER_S
        while True:
            elapsed = time.monotonic() - started
            if not controller.is_alive() and (
                failure or (elapsed >= LOG_AT_LEAST_S and elapsed - timeline["up"] >= LOG_AFTER_RESTART_S)
            ):
                break
            if elapsed > 150:
                pytest.fail(f"the outage did not end in time: {timeline}")
            for _ in range(per_tick):
                for k, key in enumerate(OUTAGE_KEYS):
                    expected.metric(exp, key, math.sin(step * 0.001) * (k + 1) + step / 7, step)
                step += 1
            health = exp.health()["mlflow"]
            seen.append((time.monotonic() - started, health.lag, health.retries))
            next_tick = started + step / (POINTS_PER_S / len(OUTAGE_KEYS))
            time.sleep(max(0.0, next_tick - time.monotonic()))
        if failure:
            raise failure[0]
        logged_until = time.monotonic() - started
        # after the restart the store catches up: the lag returns to about zero
        caught_up_by = time.monotonic() + 60
        while (lag := exp.health()["mlflow"].lag) > 0.5 and time.monotonic() < caught_up_by:
            time.sleep(0.1)
        assert lag <= 0.5, f"the lag stayed at {lag:.1f}s after the restart; {exp.health()}"
        _check_health_through_the_outage(seen, timeline, caplog)
        report = tracelet.stop_logging(flush_timeout=120)
        total = sum(len(points) for points in expected.metrics.values())
        assert timeline["up"] - timeline["down"] >= DOWN_AT_LEAST_S, timeline
        during = step * (timeline["up"] - timeline["down"]) / logged_until
        assert during > 1000, f"too little was logged during the outage ({during:.0f} steps)"

        run_id = exp.runs["mlflow"]
        assert run_id, report.format()
        record = read_run("mlflow", run_id, tracking_uri=server.url)
        record_property("backend", "mlflow_server")
        record_property("fault", "server SIGKILLed mid-run, down 5 s")
        record_property(
            "lost",
            sum(
                sum((Counter(expected.metrics[k]) - Counter(record.metrics.get(k, []))).values())
                for k in OUTAGE_KEYS
            ),
        )
        problems = [
            p
            for key in OUTAGE_KEYS
            if (p := _history_problems(key, record.metrics.get(key, []), expected.metrics[key]))
        ]
        if not report.ok:
            problems.append(f"the report is not ok:\n{report.format()}")
        # the system metrics the agent sampled meanwhile are events of the run too (record.system_metrics)
        sampled = sum(len(points) for points in record.system_metrics.values())
        if report["mlflow"].delivered != total + sampled:
            problems.append(f"delivered {report['mlflow'].delivered} of {total} points and {sampled} samples")
        retries = getattr(report["mlflow"], "retries", None)
        if retries is None:
            problems.append("BackendReport has no 'retries' field: the retried writes are not counted")
        elif not retries > 0:
            problems.append(f"report['mlflow'].retries == {retries}: no write was retried across the outage")
        assert not problems, (
            f"{total} points over {len(OUTAGE_KEYS)} keys in {logged_until:.1f}s; server down "
            f"{timeline['down']:.1f}s..{timeline['up']:.1f}s (restart began at {timeline['restarting']:.1f}s)"
            "\n  " + "\n  ".join(problems)
        )
        assert_run_matches(expected, record)
    finally:
        server.stop()
    assert not server.group_alive(), "the restarted mlflow server survived its stop"


@pytest.mark.e2e_faults
@pytest.mark.slow
@pytest.mark.requires("mlflow")
@pytest.mark.platform_only("linux")
@pytest.mark.framework_only("torch")
@pytest.mark.mounts_tmpfs
def test_a_full_spool_disk_while_the_server_is_down(
    isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The server dies mid-run, the queues fill, and the spool's disk (a 512 KiB tmpfs) fills too.

    No exception reaches training; the report's counts add up with what was dropped; an
    ERROR names the full disk and the spool; what the store got before is intact.
    """
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("TRACELET_SYSTEM_METRICS", "0")  # the counts below are of what this test logs
    small = tmp_path / "small-disk"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(small)], check=True)
    server = own_mlflow_server(tmp_path)
    try:
        monkeypatch.setenv("TRACELET_SPOOL_DIR", str(small))
        exp = tracelet.start_logging(
            exp_name="full-disk",
            project="full-disk",
            backend="mlflow",
            backend_options={"mlflow": {"tracking_uri": server.url}},
        )
        for step in range(100):
            exp.log_metric("loss", float(step), step)
        assert exp.flush(60)
        run_id = exp.runs["mlflow"]
        server.crash()
        for step in range(100, 260_000):  # 100k fill the agent's queue, 100k the trainer's, then the disk
            exp.log_metric("loss", float(step), step)
        report = tracelet.stop_logging(flush_timeout=5)
        server.restart()  # to read back what the store took before it died
        stored = read_run("mlflow", run_id or "", tracking_uri=server.url)
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        subprocess.run(["umount", "-l", str(small)], check=False)
    r = report["mlflow"]
    assert r.sent == 260_000
    assert r.dropped > 0, report.format()
    assert r.sent == r.delivered + r.failed + r.pending + r.dropped, report.format()
    assert not report.ok
    disk = [
        rec.getMessage()
        for rec in caplog.records
        if rec.levelname == "ERROR" and "No space left" in rec.getMessage()
    ]
    assert disk, "no ERROR named the full disk"
    assert len(disk) <= 2, disk  # once in the trainer, once in the agent at most
    assert all(str(small) in message for message in disk), disk
    assert any("No space left" in e for e in r.errors)
    assert run_id is not None
    # What the store took before it died is there, once and in order.
    assert stored.metrics["loss"][:100] == [(step, float(step)) for step in range(100)]
    steps = [step for step, _ in stored.metrics["loss"]]
    assert steps == sorted(set(steps))

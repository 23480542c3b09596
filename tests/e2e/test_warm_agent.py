"""The background start and the warm agent, against real MLflow stores.

* a sweep of runs in one process, each pointed at its own store through the store's own
  variable (``MLFLOW_TRACKING_URI``), changed between runs while one agent stays warm: each
  run lands whole in its own store and in no other;
* a wrong tracking URI at start: ``start_logging()`` returns, the failure is reported, and
  ``tracelet sync --set mlflow.tracking_uri=...`` opens the run and lands everything once;
* a trainer SIGKILLed during its second run: the first run is finished, the second closed
  ``killed`` with what reached the agent.
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
from tests.e2e.params import POSIX
from tracelet.testing import read_run

pytestmark = [pytest.mark.requires("mlflow"), pytest.mark.framework_only("torch")]

ROOT = Path(__file__).resolve().parents[2]


def _uri(path: Path) -> str:
    return f"sqlite:///{path}"


def _runs_in(uri: str, project: str) -> dict[str, str]:
    """Run name -> run id of every run of ``project`` in the store at ``uri``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(project)
    if experiment is None:
        return {}
    runs = client.search_runs([experiment.experiment_id])
    return {run.info.run_name: run.info.run_id for run in runs}


@pytest.mark.e2e_basic
def test_a_sweep_lands_each_run_in_the_store_its_environment_names(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stores = [isolated_env / f"store-{n}.db" for n in range(3)]
    for n, store in enumerate(stores):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", _uri(store))
        exp = tracelet.start_logging(exp_name=f"trial-{n}", project="sweep", backend="mlflow")
        exp.log_params({"trial": n, "lr": 0.1 * (n + 1)})
        for step in range(300):
            exp.log_metric("loss", 1.0 / (step + 1) + n, step)
        report = tracelet.stop_logging()
        assert report.ok, report.format()
    for n, store in enumerate(stores):
        runs = _runs_in(_uri(store), "sweep")
        assert list(runs) == [f"trial-{n}"], f"store {n} holds {sorted(runs)}"
        record = read_run("mlflow", runs[f"trial-{n}"], tracking_uri=_uri(store))
        assert record.status == "finished"
        assert record.params == {"trial": str(n), "lr": str(0.1 * (n + 1))}
        assert record.metrics["loss"] == [(step, 1.0 / (step + 1) + n) for step in range(300)]


@pytest.mark.e2e_faults
def test_a_wrong_tracking_uri_is_reported_and_sync_set_lands_everything_once(
    isolated_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = f"sqlite:///{isolated_env}/no/such/directory/mlflow.db"
    right = _uri(isolated_env / "right.db")
    t0 = time.monotonic()
    exp = tracelet.start_logging(
        exp_name="late",
        project="wrong-uri",
        backend="mlflow",
        backend_options={"mlflow": {"tracking_uri": wrong}},
    )
    exp.log_params({"lr": 0.01})
    for step in range(200):
        exp.log_metric("loss", float(step), step)
    report = tracelet.stop_logging()
    r = report["mlflow"]
    assert not report.ok
    assert (r.sent, r.delivered, r.failed + r.pending) == (201, 0, 201)
    assert r.run_id is None
    errors = [rec.getMessage() for rec in caplog.records if rec.levelname == "ERROR"]
    assert sum("mlflow could not open a run" in m for m in errors) == 1, errors
    assert time.monotonic() - t0 < 120

    def sync() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "tracelet",
                "sync",
                str(exp.spool_dir),
                "--set",
                f"mlflow.tracking_uri={right}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )

    first = sync()
    assert first.returncode == 0, first.stderr
    runs = _runs_in(right, "wrong-uri")
    assert list(runs) == ["late"]
    record = read_run("mlflow", runs["late"], tracking_uri=right)
    assert record.params == {"lr": "0.01"}
    assert record.metrics["loss"] == [(step, float(step)) for step in range(200)]
    assert record.status == "finished"
    again = sync()  # a second sync opens no second run and lands nothing twice
    assert again.returncode == 0, again.stderr
    assert _runs_in(right, "wrong-uri") == runs
    assert read_run("mlflow", runs["late"], tracking_uri=right).metrics == record.metrics


TRAINER = """
import json, os, sys, time, tracelet
uri = sys.argv[1]
first = tracelet.start_logging(exp_name="first", project="killed", backend="mlflow",
                               backend_options={"mlflow": {"tracking_uri": uri}})
for i in range(500):
    first.log_metric("step", float(i), i)
assert tracelet.stop_logging().ok
second = tracelet.start_logging(exp_name="second", project="killed", backend="mlflow",
                                backend_options={"mlflow": {"tracking_uri": uri}})
i = 0
while True:
    second.log_metric("step", float(i), i)
    i += 1
    if i == 3000:
        print("READY", flush=True)
    if i % 100 == 0:
        time.sleep(0.001)
"""


@pytest.mark.e2e_faults
@pytest.mark.platform_only(*POSIX)
def test_a_trainer_killed_during_its_second_run(isolated_env: Path) -> None:
    uri = _uri(isolated_env / "killed.db")
    script = isolated_env / "trainer.py"
    script.write_text(textwrap.dedent(TRAINER))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, str(script), uri],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "READY", (line, proc.stderr.read() if proc.stderr else "")
    time.sleep(1.0)  # what was logged more than the feeder's interval ago has reached the agent
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + 60
    while True:
        runs = _runs_in(uri, "killed")
        second = read_run("mlflow", runs["second"], tracking_uri=uri) if "second" in runs else None
        if (second is not None and second.status != "running") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    first = read_run("mlflow", runs["first"], tracking_uri=uri)
    assert first.status == "finished"
    assert first.metrics["step"] == [(i, float(i)) for i in range(500)]
    assert second is not None
    assert second.status == "killed", json.dumps({"status": second.status})
    steps = [s for s, _ in second.metrics["step"]]
    assert len(steps) >= 3000
    assert steps == list(range(len(steps)))

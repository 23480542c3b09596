"""The background start and the warm agent, against real MLflow stores.

* a sweep of runs in one process, each pointed at its own store through the store's own
  variable (``MLFLOW_TRACKING_URI``), changed between runs while one agent stays warm: each
  run lands whole in its own store and in no other;
* a wrong tracking URI at start: ``start_logging()`` returns, the failure is reported, and
  ``tracelet sync --set mlflow.tracking_uri=...`` opens the run and lands everything once;
* a trainer SIGKILLed during its second run: the first run is finished, the second closed
  ``killed`` with what reached the agent;
* W&B, whose session reads its variables once: a sweep with ``WANDB_DIR`` changed between runs
  lands each run in its own folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import tracelet
from tests.e2e.environments import REPO, child_env
from tests.e2e.params import POSIX
from tests.e2e.processes import descendants
from tracelet.testing import read_run

pytestmark = [pytest.mark.framework_only("torch"), pytest.mark.e2e_floor]


def _uri(path: Path) -> str:
    return f"sqlite:///{path}"


def _sync(spool_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``tracelet sync <spool_dir> *args`` in a fresh process, as a user runs it after a failure."""
    return subprocess.run(
        [sys.executable, "-m", "tracelet", "sync", str(spool_dir), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def _runs_in(uri: str, project: str) -> dict[str, str]:
    """Run name -> run id of every run of ``project`` in the store at ``uri``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(project)
    if experiment is None:
        return {}
    runs = client.search_runs([experiment.experiment_id])
    return {run.info.run_name: run.info.run_id for run in runs}


@pytest.mark.requires("mlflow")
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


@pytest.mark.requires("mlflow")
@pytest.mark.e2e_faults
def test_a_wrong_tracking_uri_is_reported_and_sync_set_lands_everything_once(
    isolated_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_directory = isolated_env / "not-a-directory"
    not_a_directory.write_text("a file where the URI wants a directory")
    wrong = f"sqlite:///{not_a_directory}/mlflow.db"
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
        return _sync(exp.spool_dir, "--set", f"mlflow.tracking_uri={right}")

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
        time.sleep(0.01)
"""


def _start_trainer(folder: Path, source: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    """``source`` run as a trainer in its own session (killed as a group); returns it and its first line."""
    script = folder / "trainer.py"
    script.write_text(textwrap.dedent(source))
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        env=child_env(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, proc.stderr.read() if proc.stderr else ""
    return proc, line


@pytest.mark.requires("mlflow")
@pytest.mark.e2e_faults
@pytest.mark.platform_only(*POSIX)
def test_a_trainer_killed_during_its_second_run(isolated_env: Path) -> None:
    uri = _uri(isolated_env / "killed.db")
    proc, line = _start_trainer(isolated_env, TRAINER, uri)
    assert line == "READY", (line, proc.stderr.read() if proc.stderr else "")
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


@pytest.mark.requires("mlflow")
@pytest.mark.e2e_faults
@pytest.mark.platform_only("linux")
def test_the_agent_sigkilled_mid_run_loses_nothing_and_sync_lands_every_point_once(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OOM killer picks the agent (it holds the store's client) while training logs steadily.

    Training goes on; whatever the agent had not stored, the batch in flight included, stays with
    the trainer and reaches the spool; ``tracelet sync`` then lands every point once, in order.
    """
    from tracelet.delivery.trainer_side import IDLE_POOL

    IDLE_POOL.close_all()  # the agent of this run is the one started for it, carrying the marker
    marker = uuid.uuid4().hex
    monkeypatch.setenv("TRACELET_E2E_AGENT_MARKER", marker)
    uri = _uri(isolated_env / "oom.db")
    exp = tracelet.start_logging(
        exp_name="oom", project="oom", backend="mlflow", backend_options={"mlflow": {"tracking_uri": uri}}
    )
    assert exp.flush(120)  # the run is open and the agent is busy with the store from now on
    (agent,) = _agents_carrying(marker)
    total, killed_at = 8000, 3000
    for step in range(total):  # about 2,000 points a second, as a training loop logs
        exp.log_metric("loss", float(step), step)
        if step == killed_at:
            os.kill(agent, signal.SIGKILL)
        if step % 20 == 0:
            time.sleep(0.01)
    report = tracelet.stop_logging(flush_timeout=10)
    r = report["mlflow"]
    assert (r.sent, r.dropped) == (total, 0)
    assert r.pending > 0, report.format()
    assert r.delivered + r.pending == total, report.format()
    done = _sync(exp.spool_dir)
    assert done.returncode == 0, done.stderr
    record = read_run("mlflow", exp.runs["mlflow"] or "", tracking_uri=uri)
    assert record.metrics["loss"] == [(step, float(step)) for step in range(total)]


@pytest.mark.requires("mlflow")
@pytest.mark.e2e_faults
@pytest.mark.platform_only("linux", "darwin")
def test_an_agent_killed_between_the_stores_commit_and_its_ack_replays_that_batch_once(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window the random kill above hits one time in many, hit every time.

    The store commits a batch and the agent dies before acknowledging it: the trainer keeps the
    batch (it cannot know it landed) and ``tracelet sync`` replays it. The replayed points carry
    the timestamps they were stamped with at logging time, so MLflow holds each point once.
    """
    from tests.e2e.agent_backends import ENV_KILL_AFTER_BATCH, extra_backends_env
    from tracelet.delivery.trainer_side import IDLE_POOL

    IDLE_POOL.close_all()  # a fresh agent, armed by this run's environment
    monkeypatch.setenv("TRACELET_EXTRA_BACKENDS", extra_backends_env())
    monkeypatch.setenv(ENV_KILL_AFTER_BATCH, "3")
    name = "mlflow-killed-after-commit"
    uri = _uri(isolated_env / "commit.db")
    exp = tracelet.start_logging(
        exp_name="commit", project="commit", backend=name, backend_options={name: {"tracking_uri": uri}}
    )
    total = 3000
    for step in range(total):
        exp.log_metric("loss", float(step), step)
        if step % 20 == 0:
            time.sleep(0.01)
    report = tracelet.stop_logging(flush_timeout=10)
    r = report[name]
    assert r.pending > 0, report.format()
    assert r.delivered + r.pending == total, report.format()
    run_id = exp.runs[name] or ""
    stored = read_run("mlflow", run_id, tracking_uri=uri).metrics["loss"]
    assert len(stored) > r.delivered, "the killed batch was committed, yet never acknowledged"

    monkeypatch.delenv(ENV_KILL_AFTER_BATCH)
    done = _sync(exp.spool_dir)
    assert done.returncode == 0, done.stderr
    record = read_run("mlflow", run_id, tracking_uri=uri)
    assert record.metrics["loss"] == [(step, float(step)) for step in range(total)]


def _agents_carrying(marker: str) -> list[int]:
    """Live delivery agents whose environment holds ``TRACELET_E2E_AGENT_MARKER=marker``."""
    entry = f"TRACELET_E2E_AGENT_MARKER={marker}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if b"tracelet.delivery" in (proc / "cmdline").read_bytes() and entry in (
                proc / "environ"
            ).read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


class _RecordingProxy:
    """An HTTP endpoint in front of the real tracking server that records each request's Authorization.

    Two of them give the test two tracking URIs (two "servers" as the client sees them) and
    what each received; every request is forwarded to the real server, whose answer goes back.
    """

    def __init__(self, target: str) -> None:
        import http.client
        import http.server
        import threading
        import urllib.parse

        self.authorizations: list[str | None] = []
        host = urllib.parse.urlsplit(target)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                proxy.authorizations.append(self.headers.get("Authorization"))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization")
                }
                conn = http.client.HTTPConnection(host.hostname or "127.0.0.1", host.port, timeout=30)
                conn.request(self.command, self.path, body=body or None, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.requires("mlflow")
@pytest.mark.e2e_advanced
@pytest.mark.platform_only(*POSIX)
def test_a_warm_agent_never_sends_one_runs_credentials_to_the_next_runs_server(isolated_env: Path) -> None:
    """Run 1 to a server with ``user:password`` in its URI, run 2 to another without: no Authorization."""
    import base64

    from tests.e2e.framework import MLflowServerEnvironment

    server = MLflowServerEnvironment.shared_server()
    first, second = _RecordingProxy(server.url), _RecordingProxy(server.url)
    try:
        host = first.url.removeprefix("http://")
        one = tracelet.start_logging(
            exp_name="with-credentials",
            project="credentials",
            backend="mlflow",
            backend_options={"mlflow": {"tracking_uri": f"http://alice:s3cret-pw@{host}"}},
        )
        one.log_metric("loss", 1.0, 0)
        assert tracelet.stop_logging().ok
        two = tracelet.start_logging(
            exp_name="without",
            project="credentials",
            backend="mlflow",
            backend_options={"mlflow": {"tracking_uri": second.url}},
        )
        two.log_metric("loss", 2.0, 0)
        assert tracelet.stop_logging().ok
    finally:
        first.close()
        second.close()
    expected = "Basic " + base64.b64encode(b"alice:s3cret-pw").decode()
    assert first.authorizations, "run 1 sent nothing"
    assert set(first.authorizations) == {expected}  # the check can fail: run 1 did send its credentials
    assert second.authorizations, "run 2 sent nothing"
    assert set(second.authorizations) == {None}, second.authorizations
    for exp, value in ((one, 1.0), (two, 2.0)):
        record = read_run("mlflow", exp.runs["mlflow"] or "", tracking_uri=server.url)
        assert record.metrics["loss"] == [(0, value)]
        assert record.status == "finished"


@pytest.mark.requires("wandb")
@pytest.mark.e2e_basic
def test_a_wandb_sweep_lands_each_run_in_the_folder_its_environment_names(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    folders = [isolated_env / f"wandb-{n}" for n in range(3)]
    runs = []
    for n, folder in enumerate(folders):
        folder.mkdir()
        for var in (
            "WANDB_DIR",
            "WANDB_CACHE_DIR",
            "WANDB_DATA_DIR",
            "WANDB_CONFIG_DIR",
            "WANDB_ARTIFACT_DIR",
        ):
            monkeypatch.setenv(var, str(folder))
        exp = tracelet.start_logging(exp_name=f"trial-{n}", project="sweep", backend="wandb")
        exp.log_params({"trial": n})
        for step in range(200):
            exp.log_metric("loss", float(step + n), step)
        report = tracelet.stop_logging()
        assert report.ok, report.format()
        runs.append(exp.runs["wandb"])
    for n, (folder, run_id) in enumerate(zip(folders, runs, strict=True)):
        found = sorted(p.name for p in folder.rglob("*.wandb"))
        assert found == [f"run-{run_id}.wandb"], f"folder {n} holds {found}"
        record = read_run("wandb", run_id or "", wandb_dir=str(folder))
        assert record.params["trial"] == str(n)
        assert record.metrics["loss"] == [(step, float(step + n)) for step in range(200)]
        assert record.status == "finished"


OWN_WANDB_TRAINER = """
import sys, time
import wandb
import tracelet

# The trainer's own W&B run: its wandb-core exports its address (WANDB_SERVICE) to every child.
own = wandb.init(project="own", mode="offline")
own.log({"own": 1.0})
exp = tracelet.start_logging(exp_name="beside-own", project="beside", backend="wandb")
for step in range(int(sys.argv[1])):
    exp.log_metric("loss", float(step), step)
assert exp.flush(120)
print(exp.runs["wandb"], flush=True)
time.sleep(600)
"""


@pytest.mark.requires("wandb")
@pytest.mark.e2e_faults
@pytest.mark.platform_only(*POSIX)
def test_a_trainer_with_its_own_wandb_run_killed_leaves_tracelets_run_whole(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trainer that logs to W&B itself (its own ``wandb.init``) and through tracelet, SIGKILLed.

    Its wandb-core ends with it. The agent's run must not be written by that core (the trainer's
    ``WANDB_SERVICE`` reaches the agent with the trainer's environment): the agent has a core of its
    own, delivers what it holds and closes the run ``killed``, with every point.
    """
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(isolated_env))
    points = 3000
    proc, run_id = _start_trainer(isolated_env, OWN_WANDB_TRAINER, str(points))
    below = descendants(proc.pid)
    (agent,) = [pid for pid, command in below.items() if "tracelet.delivery" in command]
    own = [command for command in descendants(agent).values() if "wandb-core" in command]
    assert own, f"the agent has no wandb-core of its own: {below}"
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its own wandb-core; the agent has its own session
    proc.wait(10)
    deadline = time.monotonic() + 60
    while True:
        try:
            record = read_run("wandb", run_id, wandb_dir=str(isolated_env))
        except (FileNotFoundError, ValueError):
            record = None
        if (record is not None and record.status != "running") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert record is not None, f"no W&B run {run_id} under {isolated_env}"
    assert record.status == "killed", json.dumps({"status": record.status})
    assert record.metrics["loss"] == [(step, float(step)) for step in range(points)]


@pytest.mark.requires("mlflow")
@pytest.mark.e2e_advanced
def test_two_runs_opening_at_once_on_a_new_sqlite_store_both_land(isolated_env: Path) -> None:
    """Two runs start together (two Lightning loggers do), each in its own agent, on a store nobody
    created yet: both agents run MLflow's schema migrations at the same moment, and both runs land."""
    from tracelet.api import open_run

    for attempt in range(3):  # the race is a matter of timing: try it a few times, on new stores
        uri = _uri(isolated_env / f"new-{attempt}.db")
        options = {"mlflow": {"tracking_uri": uri}}
        active = tracelet.start_logging(
            exp_name="active", project="race", backend="mlflow", backend_options=options
        )
        beside = open_run(exp_name="beside", project="race", backend="mlflow", backend_options=options)
        for step in range(50):
            active.log_metric("a", float(step), step)
            beside.log_metric("b", float(step), step)
        reports = [beside.stop(), tracelet.stop_logging()]
        assert all(r.ok for r in reports), [r.format() for r in reports]
        runs = _runs_in(uri, "race")
        assert sorted(runs) == ["active", "beside"]
        assert read_run("mlflow", runs["beside"], tracking_uri=uri).metrics["b"] == [
            (step, float(step)) for step in range(50)
        ]


@pytest.mark.requires("clearml")
@pytest.mark.e2e_basic
def test_a_clearml_offline_sweep_shares_the_agent_and_lands_each_run_in_its_own_cache(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ClearML keeps one Task per process: offline, ``Task.init`` after ``close()`` opens a new session."""
    monkeypatch.setenv("CLEARML_OFFLINE_MODE", "1")
    caches, runs = [], []
    for n in range(3):
        home = isolated_env / f"clearml-{n}"
        home.mkdir()
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("CLEARML_CACHE_DIR", str(home / "cache"))
        exp = tracelet.start_logging(
            exp_name=f"trial-{n}", project="sweep", backend="clearml", config={"trial": n}
        )
        for step in range(100):
            exp.log_metric("loss", float(step + n), step)
        report = tracelet.stop_logging(status="failed" if n == 1 else None)
        assert report.ok, report.format()
        caches.append(home / "cache" / "offline")
        runs.append(exp.runs["clearml"])
    for n, (offline, run_id) in enumerate(zip(caches, runs, strict=True)):
        sessions = sorted(p.name for p in offline.iterdir() if p.is_dir())
        assert sessions == [str(run_id)], f"cache {n} holds {sessions}"
        record = read_run("clearml", run_id or "", offline_dir=str(offline))
        assert (record.run_name, record.params) == (f"trial-{n}", {"trial": str(n)})
        assert record.metrics["loss"] == [(step, float(step + n)) for step in range(100)]
        assert record.status == ("failed" if n == 1 else "finished")

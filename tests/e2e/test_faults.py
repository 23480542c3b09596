"""Faults survived against the real stores: how a trainer ends, failing backends beside a real one, an
outage that outlasts ``stop_logging``.

Each test runs once per backend, in the ``torch`` column (``framework_only``): what it proves does not
depend on the framework set. With the SIGKILL and server-outage tests of ``test_delivery_faults.py``,
these are the ``e2e_faults`` tests the summary's faults table counts.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import tracelet
from tests.children import INTERACTIVE_SIGINT
from tests.e2e.agent_backends import extra_backends_env
from tests.e2e.environments import own_mlflow_server
from tests.e2e.framework import Expected, assert_run_matches, e2e_framework
from tests.e2e.params import POSIX, environments
from tests.e2e.test_delivery_faults import (
    GRACE_S,
    MARKER_VAR,
    ProcessWatch,
    _check_landed,
    _history_problems,
    _read_tally,
    _wait_for,
)
from tracelet.testing import RunRecord, read_run

pytestmark = [
    pytest.mark.e2e_faults,
    pytest.mark.platform_only(*POSIX),
    pytest.mark.framework_only("torch"),
]

#: Every store once (the MLflow server's faults are the outage tests).
FAULT_ENVIRONMENTS = ["mlflow", "wandb", "clearml", "local"]

# -- 1. how a trainer ends -----------------------------------------------------------------------

TRAINER = r"""
import json, os, sys, time
import tracelet

cfg = json.loads(open(sys.argv[1]).read())
exp = tracelet.start_logging(
    exp_name=cfg["run_name"], project=cfg["project"], backend=cfg["backend"],
    backend_options=cfg["backend_options"], config={"lr": 0.1, "ending": cfg["ending"]},
)
with open(cfg["runs_file"] + ".tmp", "w") as f:
    json.dump(exp.runs, f)
os.replace(cfg["runs_file"] + ".tmp", cfg["runs_file"])
tally = open(cfg["tally_file"], "w", buffering=1)  # one line per call, *after* it returned
step = 0
while step < 100_000:
    value = 1.0 / (step + 1)
    exp.log_metric("loss", value, step)
    tally.write(f"{time.time():.6f} m {step} {value!r}\n")
    step += 1
    if step == cfg["end_at"]:
        if cfg["ending"] == "exception":
            raise RuntimeError("boom in the training loop")
        if cfg["ending"] == "forgotten_stop":
            sys.exit(0)  # the script ends without stop_logging()
    time.sleep(0.002)
"""

#: ending -> (signal sent to the trainer's process group, or None; the status the run must end with)
ENDINGS: dict[str, tuple[int | None, str]] = {
    "sigterm": (signal.SIGTERM, "killed"),
    "sigint": (signal.SIGINT, "killed"),
    "exception": (None, "failed"),
    "forgotten_stop": (None, "finished"),
    "sigkill": (signal.SIGKILL, "killed"),
}
END_AT = 400  # steps before the ending (the signals are sent once this many are tallied)


def _final_status(read: Any, run_id: str, timeout: float) -> RunRecord:
    """Read the run until the store holds a final status (the agent closes a SIGKILLed trainer's run)."""
    deadline = time.monotonic() + timeout
    record: RunRecord | None = None
    while time.monotonic() < deadline:
        try:
            record = read(run_id)
        except Exception:  # a store file mid-write: look again
            record = None
        if record is not None and record.status in ("finished", "failed", "killed"):
            return record
        time.sleep(0.3)
    assert record is not None, f"run {run_id} could not be read"
    return record


@pytest.mark.e2e_floor
@pytest.mark.parametrize("ending", list(ENDINGS))
@pytest.mark.parametrize("environment", environments(FAULT_ENVIRONMENTS))
def test_every_way_a_trainer_ends(
    ending: str, environment: str, isolated_env: Path, tmp_path: Path, record_property: Any
) -> None:
    """A trainer in its own session, ended as a terminal or a scheduler ends it: what it owed lands.

    SIGTERM, SIGINT (to the whole process group, with ``os.killpg``), an uncaught exception and a
    forgotten ``stop_logging`` deliver every point the trainer tallied; SIGKILL every point tallied
    more than 500 ms before the kill. The run ends ``killed``, ``killed``, ``failed``, ``finished``,
    ``killed``, and no process of the trainer's is left.
    """
    sig, status = ENDINGS[ending]
    with e2e_framework.backend_environment(environment, project="endings") as config:
        runs_file, tally_file = tmp_path / "runs.json", tmp_path / "tally.txt"
        script = tmp_path / "trainer.py"
        script.write_text(INTERACTIVE_SIGINT + TRAINER)
        (tmp_path / "trainer.json").write_text(
            json.dumps(
                {
                    "run_name": f"ended-by-{ending}",
                    "project": "endings",
                    "backend": config.backend_name,
                    "backend_options": config.backend_options,
                    "ending": ending,
                    "end_at": END_AT if sig is None else 100_000,
                    "runs_file": str(runs_file),
                    "tally_file": str(tally_file),
                }
            )
        )
        marker = uuid.uuid4().hex
        watch = ProcessWatch(marker)
        with open(tmp_path / "trainer.out", "wb") as out:
            trainer = subprocess.Popen(
                [sys.executable, str(script), str(tmp_path / "trainer.json")],
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, MARKER_VAR: marker},
                start_new_session=True,  # its own process group, as a terminal or a scheduler starts it
            )
            try:
                _wait_for(lambda: runs_file.exists() or trainer.poll() is not None, 120, "the trainer's run")
                watch.snapshot(trainer.pid)
                kill_time = math.inf
                if sig is not None:
                    _wait_for(lambda: _lines(tally_file) >= END_AT, 60, f"{END_AT} tallied points")
                    watch.snapshot(trainer.pid)
                    kill_time = time.time()
                    os.killpg(trainer.pid, sig)
                code = trainer.wait(timeout=120)
            finally:
                if trainer.poll() is None:
                    os.killpg(trainer.pid, signal.SIGKILL)
                    trainer.wait(timeout=10)
        output = (tmp_path / "trainer.out").read_text(errors="replace")[-3000:]
        runs = json.loads(runs_file.read_text())
        record = _final_status(config.read, runs[config.backend_name], timeout=90)
        _wait_for(lambda: not watch.survivors(), 30, "the trainer's processes to exit")

    expected_code = {"sigterm": 128 + 15, "sigint": 130, "exception": 1, "forgotten_stop": 0, "sigkill": -9}
    assert code == expected_code[ending] or (ending == "sigint" and code == -signal.SIGINT), (code, output)
    logged, _ = _read_tally(tally_file)
    cutoff = kill_time - GRACE_S if ending == "sigkill" else math.inf
    got = record.metrics.get("loss", [])
    record_property("fault", f"trainer ended by {ending.replace('_', ' ')}")
    record_property("lost", _lost([(s, v) for t, s, v in logged if t <= cutoff], got))
    problems = _check_landed(environment, got, logged, cutoff)
    assert not problems, f"{len(logged)} points tallied\n" + "\n".join(problems) + f"\n{output}"
    assert record.status == status, output
    assert record.params == {"lr": "0.1", "ending": ending}


def _lost(owed: list[tuple[int, float]], got: list[tuple[int, float]]) -> int:
    """How many owed points the store does not hold (the faults table's figure)."""
    return sum((Counter(owed) - Counter(got)).values())


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


# -- 2. failing backends beside a real one -------------------------------------------------------


@pytest.mark.e2e_floor
@pytest.mark.parametrize("environment", environments(FAULT_ENVIRONMENTS))
def test_raising_and_hanging_backends_beside_a_real_one(
    environment: str, isolated_env: Path, monkeypatch: pytest.MonkeyPatch, record_property: Any
) -> None:
    """A backend that raises on every call and one that hangs forever run beside the real store.

    Training finishes; the real store holds everything; ``stop_logging`` returns within its
    ``flush_timeout``; the raising backend's events are dead-lettered and the hung backend's are in
    the spool, for ``tracelet sync``.
    """
    monkeypatch.setenv("TRACELET_SYSTEM_METRICS", "0")  # the counts below are of what this test logs
    monkeypatch.setenv("TRACELET_EXTRA_BACKENDS", extra_backends_env())
    monkeypatch.setenv("TRACELET_LOCAL_DIR", str(isolated_env / "side-runs"))  # the broken one's own dir
    with e2e_framework.backend_environment(environment, project="beside") as config:
        expected = Expected(project="beside", run_name="beside-failing")
        backends = [config.backend_name, "broken", "hanging"]
        exp = tracelet.start_logging(
            exp_name=expected.run_name,
            project=expected.project,
            backend=backends,
            backend_options=config.backend_options,
        )
        expected.params_(exp, {"lr": 0.1, "model": {"depth": 2}})
        for step in range(2000):
            expected.metric(exp, "loss", 1.0 / (step + 1), step)
        # flush_timeout is the time to deliver, counted once the runs are open: a cold agent (this
        # test alone) spends seconds importing MLflow first, bounded by TRACELET_AGENT_TIMEOUT.
        assert exp.runs[config.backend_name] is not None
        started = time.monotonic()
        report = tracelet.stop_logging(flush_timeout=3)
        took = time.monotonic() - started
        record = config.read(exp.runs[config.backend_name])

    record_property("fault", "a raising and a hanging backend beside it")
    record_property("lost", _lost(expected.metrics["loss"], record.metrics.get("loss", [])))
    assert took < 3 + 5, f"stop_logging took {took:.1f}s with flush_timeout=3"
    real, broken, hanging = (report[b] for b in backends)
    assert real.ok, report.format()
    assert real.delivered == real.sent == 2001
    assert_run_matches(expected, record)
    assert broken.failed == broken.sent == 2001, report.format()
    assert hanging.pending == hanging.sent == 2001, report.format()
    assert hanging.spool_path is not None
    spooled = Path(exp.spool_dir) / "hanging" / "events.jsonl"
    lines = spooled.read_text().splitlines()
    assert len(lines) == 2001, f"{len(lines)} events in {spooled}"


@pytest.mark.e2e_floor
@pytest.mark.parametrize("environment", environments(["wandb"]))
def test_an_event_the_store_refuses_mid_batch_is_kept_and_the_rest_lands_once(
    environment: str, isolated_env: Path, record_property: Any
) -> None:
    """W&B refuses a tag of more than 64 characters: set amid 1,000 points, it is refused alone
    (dead-lettered with W&B's reason) while every point lands exactly once.

    The batch it arrives in is split to isolate it; each piece must start where the last left off
    (a write that logged the batch's other points and then raised used to have them logged again).
    """
    with e2e_framework.backend_environment(environment, project="refused") as config:
        exp = tracelet.start_logging(
            exp_name="refused-mid-batch",
            project="refused",
            backend=config.backend_name,
            backend_options=config.backend_options,
        )
        for step in range(1000):
            exp.log_metric("loss", float(step), step)
            if step == 500:
                exp.set_tags({"note": "x" * 80})
        report = tracelet.stop_logging(flush_timeout=60)
        record = config.read(exp.runs[config.backend_name])

    expected = [(step, float(step)) for step in range(1000)]
    record_property("fault", "one event the store refuses, amid a batch")
    record_property("lost", _lost(expected, record.metrics.get("loss", [])))
    result = report[config.backend_name]
    assert (result.failed, result.pending, result.dropped) == (1, 0, 0), report.format()
    assert result.delivered == result.sent - 1, report.format()
    assert record.metrics["loss"] == expected, "a point is missing or landed twice"
    assert "note" not in record.tags
    assert result.dead_letter_path is not None
    (kept,) = [json.loads(line) for line in Path(result.dead_letter_path).read_text().splitlines()]
    assert kept["kind"] == "tags", kept
    assert "W&B tags must be 1 to 64 characters" in kept["reason"], kept


# -- 3. an outage that outlasts stop_logging -----------------------------------------------------


@pytest.mark.e2e_floor
@pytest.mark.slow
@pytest.mark.requires("mlflow")
def test_outage_at_stop_is_spooled_and_synced_exactly_once(
    isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_property: Any
) -> None:
    """The tracking server dies and is still down at ``stop_logging(flush_timeout=3)``: what is left
    goes to the spool; after the server is back, ``tracelet sync`` replays it once, and a second sync
    replays nothing."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("TRACELET_SYSTEM_METRICS", "0")  # the counts below are of what this test logs
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    server = own_mlflow_server(tmp_path)
    try:
        expected = Expected(project="outage-at-stop", run_name="outage-at-stop")
        exp = tracelet.start_logging(
            exp_name=expected.run_name,
            project=expected.project,
            backend="mlflow",
            backend_options={"mlflow": {"tracking_uri": server.url}},
        )
        expected.params_(exp, {"lr": 0.1})
        for step in range(500):
            expected.metric(exp, "loss", 1.0 / (step + 1), step)
        assert exp.flush(60)
        server.crash()
        for step in range(500, 1000):
            expected.metric(exp, "loss", 1.0 / (step + 1), step)
        expected.params_(exp, {"after_crash": "yes"})
        started = time.monotonic()
        report = tracelet.stop_logging(flush_timeout=3)
        took = time.monotonic() - started
        assert took < 3 + 5, f"stop_logging took {took:.1f}s with flush_timeout=3"
        assert not report.ok
        assert report["mlflow"].pending == 501, report.format()
        assert report["mlflow"].delivered == 501, report.format()

        server.restart()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
        sync = [sys.executable, "-m", "tracelet", "sync", str(exp.spool_dir)]
        first = subprocess.run(sync, capture_output=True, text=True, timeout=120, env=env)
        assert first.returncode == 0, first.stderr[-3000:]
        second = subprocess.run(sync, capture_output=True, text=True, timeout=120, env=env)
        assert second.returncode == 0, second.stderr[-3000:]
        run_id = exp.runs["mlflow"]
        assert run_id is not None, "the run opened before the outage"
        record = read_run("mlflow", run_id, tracking_uri=server.url)
    finally:
        server.stop()
    record_property("backend", "mlflow_server")
    record_property("fault", "server down at stop, then tracelet sync")
    record_property("lost", _lost(expected.metrics["loss"], record.metrics.get("loss", [])))
    problem = _history_problems("loss", record.metrics.get("loss", []), expected.metrics["loss"])
    assert problem is None, problem
    assert record.params == expected.params
    assert record.status == "finished"


# -- 4. threads and DataLoader workers -----------------------------------------------------------

THREADS = 8
POINTS_PER_THREAD = 50_000


def _step(thread: int, i: int) -> int:
    """The last thread's steps go backwards: W&B drops such points unless steps are handled right."""
    return POINTS_PER_THREAD - 1 - i if thread == THREADS - 1 else i


class _LoggingDataset:
    """A map-style dataset whose ``__getitem__`` logs, as careless code in a DataLoader worker does."""

    def __init__(self, exp: tracelet.Experiment) -> None:
        self.exp = exp

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> Any:
        import torch

        self.exp.log_metric("worker/item", float(index), index)  # in a forked worker: dropped
        active = tracelet.get_active_experiment()
        if active is not None:
            active.log_metric("worker/active", float(index), index)
        return torch.tensor([float(index)])


@pytest.mark.slow
@pytest.mark.requires("torch")
@pytest.mark.parametrize("environment", environments(FAULT_ENVIRONMENTS))
@pytest.mark.no_subprocess_coverage
def test_threads_and_forked_dataloader_workers(
    environment: str, isolated_env: Path, record_property: Any
) -> None:
    """8 threads x 50,000 points on their own keys, while a DataLoader's 2 forked workers call log_metric:
    every thread's key lands complete and in order, nothing from the workers, and nothing hangs."""
    import threading

    from torch.utils.data import DataLoader

    with e2e_framework.backend_environment(environment, project="threads") as config:
        exp = tracelet.start_logging(
            exp_name="threads-and-workers",
            project="threads",
            backend=config.backend_name,
            backend_options=config.backend_options,
        )
        errors: list[BaseException] = []

        def log_from_thread(k: int) -> None:
            try:
                for i in range(POINTS_PER_THREAD):
                    exp.log_metric(f"thread/{k}", float(i), _step(k, i))
            except BaseException as exc:  # handed to the test
                errors.append(exc)

        threads = [
            threading.Thread(target=log_from_thread, args=(k,), name=f"logger-{k}") for k in range(THREADS)
        ]
        loader = DataLoader(
            _LoggingDataset(exp),
            batch_size=8,
            num_workers=2,
            multiprocessing_context="fork",
            shuffle=False,
            timeout=120,  # a hung worker fails the test instead of blocking it
        )
        # The workers are forked here, before the logging threads start: a fork copies every lock as
        # it is, and one held by another thread at that instant stays held in the child for good
        # (coverage's tracer lock did exactly that under `coverage run`). Then the workers call
        # log_metric while the 8 threads log.
        batches = iter(loader)
        for thread in threads:
            thread.start()
        total = sum(float(batch.sum()) for batch in batches)
        for thread in threads:
            thread.join(timeout=300)
        assert not any(t.is_alive() for t in threads), "a logging thread hangs"
        assert not errors, errors
        report = tracelet.stop_logging(flush_timeout=600)
        assert report.ok, report.format()
        record = config.read(exp.runs[config.backend_name])

    def expected(k: int) -> list[tuple[int, float]]:
        return [(_step(k, i), float(i)) for i in range(POINTS_PER_THREAD)]

    record_property("fault", "8 threads x 50k points, forked DataLoader workers")
    record_property(
        "lost", sum(_lost(expected(k), record.metrics.get(f"thread/{k}", [])) for k in range(THREADS))
    )
    assert total == sum(range(64))
    assert set(record.metrics) == {f"thread/{k}" for k in range(THREADS)}, "a worker's call landed"
    for k in range(THREADS):
        assert record.metrics[f"thread/{k}"] == expected(k), f"thread/{k} is incomplete or out of order"
    # a run this long also holds the system metrics the agent sampled meanwhile: events of the run too
    sampled = sum(len(points) for points in record.system_metrics.values())
    assert report[config.backend_name].delivered == THREADS * POINTS_PER_THREAD + sampled

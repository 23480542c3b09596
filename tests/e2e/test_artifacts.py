"""Artifacts against the real stores: what lands is what was logged, whatever happens to the file after.

Each test holds the delivery agent still (``SIGSTOP``) while it logs, so what it does to
the files between ``log_artifact`` and delivery is certain to happen before the store
reads them; then it reads every file back from the store and compares sha256s.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tracelet
from tests.e2e.environments import WandbEnvironment, own_mlflow_server
from tests.e2e.framework import BackendConfig, MLflowServer, e2e_framework
from tests.e2e.params import POSIX, environments
from tracelet.testing import read_artifact_tree, read_run


def _start(config: BackendConfig, name: str) -> tracelet.Experiment:
    exp = tracelet.start_logging(
        exp_name=name, project=config.project, backend=config.backend, backend_options=config.backend_options
    )
    assert all(exp.runs.values()), exp.runs  # open: the agent now waits for what is logged
    return exp


def _agent() -> int:
    """The pid of this process's delivery agent (its child running ``tracelet.delivery``)."""
    listing = subprocess.run(
        ["ps", "-A", "-ww", "-o", "pid=,ppid=,command="], capture_output=True, text=True, check=True
    ).stdout
    agents = [
        int(pid)
        for pid, ppid, command in (line.split(None, 2) for line in listing.splitlines() if line.strip())
        if int(ppid) == os.getpid() and "tracelet.delivery" in command
    ]
    assert len(agents) == 1, f"expected one delivery agent below {os.getpid()}, found {agents}"
    return agents[0]


@contextlib.contextmanager
def _agent_held() -> Iterator[None]:
    """The agent stopped (``SIGSTOP``): nothing is delivered until the block ends."""
    agent = _agent()
    os.kill(agent, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(agent, signal.SIGCONT)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.e2e_floor
@pytest.mark.framework_only("torch")  # store behaviour: once per store, not per framework set
@pytest.mark.platform_only(*POSIX)  # SIGSTOP holds the agent
@pytest.mark.e2e_basic
@pytest.mark.parametrize("environment", environments())
def test_what_lands_is_the_file_as_logged_and_copy_false_reads_it_when_delivered(
    environment: str, isolated_env: Path, tmp_path: Path
) -> None:
    """An overwritten checkpoint lands as logged; ``copy=False`` lands, or fails named if deleted first."""
    epoch1, epoch2, final = os.urandom(300_000), os.urandom(300_000), os.urandom(200_000)
    (tmp_path / "last.pt").write_bytes(epoch1)
    (tmp_path / "final.pt").write_bytes(final)
    (tmp_path / "scratch.pt").write_bytes(b"removed before the store reads it")
    with e2e_framework.backend_environment(environment, project="artifacts") as config:
        exp = _start(config, "overwrite")
        with _agent_held():
            exp.log_artifact(tmp_path / "last.pt", "checkpoints")
            (tmp_path / "last.pt").write_bytes(epoch2)  # the next epoch overwrites it at once
            exp.log_artifact(tmp_path / "final.pt", "model", copy=False)
            exp.log_artifact(tmp_path / "scratch.pt", "model", copy=False)
            (tmp_path / "scratch.pt").unlink()
        report = tracelet.stop_logging()[config.backend_name]
        assert report.failed == 1, report
        assert report.pending == 0, report
        said = "scratch.pt was deleted before it was delivered"
        assert any(said in e for e in report.errors), report.errors
        record = config.read(exp.runs[config.backend_name])
        stored = {a.path: (a.size, a.sha256) for a in record.artifacts}
        assert stored == {
            "checkpoints/last.pt": (len(epoch1), _sha(epoch1)),
            "model/final.pt": (len(final), _sha(final)),
        }
        assert config.store.read_artifact(record.run_id, "checkpoints/last.pt") == epoch1
        assert (tmp_path / "final.pt").read_bytes() == final  # the caller's own file is left as it was


@pytest.mark.e2e_floor
@pytest.mark.framework_only("torch")
@pytest.mark.platform_only(*POSIX)
@pytest.mark.e2e_basic
@pytest.mark.parametrize("environment", environments())
def test_the_staged_bytes_bound_holds_the_caller_until_the_store_takes_them(
    environment: str,
    isolated_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past ``TRACELET_ARTIFACT_STAGE_MB``, ``log_artifact`` waits (one WARNING); everything lands after."""
    monkeypatch.setenv("TRACELET_ARTIFACT_STAGE_MB", "1")
    files = {f"ckpt-{n}.pt": os.urandom(700_000) for n in range(3)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    caplog.set_level(logging.WARNING, logger="tracelet")
    with e2e_framework.backend_environment(environment, project="artifacts") as config:
        exp = _start(config, "bounded")
        logged = threading.Event()

        def the_rest() -> None:
            exp.log_artifact(tmp_path / "ckpt-1.pt", "checkpoints")
            exp.log_artifact(tmp_path / "ckpt-2.pt", "checkpoints")
            logged.set()

        with _agent_held():
            exp.log_artifact(tmp_path / "ckpt-0.pt", "checkpoints")  # 0.7 MiB staged: under the bound
            caller = threading.Thread(target=the_rest)
            caller.start()
            time.sleep(1.0)
            assert not logged.is_set(), "log_artifact staged past the bound while nothing was delivered"
            assert len(list((exp.spool_dir / "staging").rglob("*.pt"))) == 1
        assert logged.wait(120), "log_artifact still waits after the store took the first file"
        caller.join()
        report = tracelet.stop_logging()
        assert report.ok, report.format()
        warnings = [r for r in caplog.records if "TRACELET_ARTIFACT_STAGE_MB" in r.getMessage()]
        assert [r.levelno for r in warnings] == [logging.WARNING]
        record = config.read(exp.runs[config.backend_name])
        assert {a.path: a.sha256 for a in record.artifacts} == {
            f"checkpoints/{name}": _sha(data) for name, data in files.items()
        }
        assert not exp.spool_dir.exists()  # every snapshot deleted once stored, and the spool with them


@pytest.mark.e2e_floor
@pytest.mark.framework_only("torch")
@pytest.mark.e2e_basic
@pytest.mark.parametrize("environment", environments())
def test_a_folder_of_a_thousand_files_is_one_event_and_lands_whole(
    environment: str, isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,000 files of 4 KiB: one event and one snapshot; every file read back with its sha256."""
    monkeypatch.setenv("TRACELET_SYSTEM_METRICS", "0")  # the counts below are of what this test logs
    folder = tmp_path / "shards"
    files: dict[str, bytes] = {}
    for n in range(1000):
        relative = f"part-{n % 10}/shard-{n:04d}.bin"
        files[relative] = os.urandom(4096)
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(files[relative])
    with e2e_framework.backend_environment(environment, project="artifacts") as config:
        exp = _start(config, "folder")
        exp.log_artifact(folder, "dataset")
        report = tracelet.stop_logging()[config.backend_name]
        assert report.ok, report
        assert report.sent == 1  # the folder went as one event
        run_id = exp.runs[config.backend_name]
        assert run_id is not None
        record = config.read(run_id)
        assert {a.path: a.sha256 for a in record.artifacts} == {
            f"dataset/{relative}": _sha(data) for relative, data in files.items()
        }
        if isinstance(config.store, WandbEnvironment):  # one store operation: one W&B Artifact
            (logged,) = config.store.logged_artifacts(run_id)
            assert (logged.name, logged.type) == (f"run-{run_id}-dataset", "unspecified")
            assert sorted(logged.paths) == sorted(f"dataset/{relative}" for relative in files)
        fetched = read_artifact_tree(
            config.store.backend, run_id, "dataset/part-3", tmp_path / "back", **config.store.reader_options()
        )
        back = {p.relative_to(fetched).as_posix(): p.read_bytes() for p in fetched.rglob("*") if p.is_file()}
        assert back == {f"dataset/{r}": data for r, data in files.items() if r.startswith("part-3/")}


def _write_random(path: Path, size: int) -> str:
    """A file of ``size`` random bytes, written in chunks; its sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 64 << 20))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def _start_on(server: MLflowServer, name: str) -> tracelet.Experiment:
    """A run on the real ``mlflow server``, open (the agent waits for what is logged)."""
    exp = tracelet.start_logging(
        exp_name=name,
        project="artifacts",
        backend="mlflow",
        backend_options={"mlflow": {"tracking_uri": server.url}},
    )
    assert exp.runs["mlflow"], "the run did not open while the server was up"
    return exp


@pytest.mark.e2e_floor
@pytest.mark.slow
@pytest.mark.framework_only("torch")
@pytest.mark.e2e_basic
@pytest.mark.parametrize("environment", environments())
def test_a_200_mb_checkpoint_lands_whole(environment: str, isolated_env: Path, tmp_path: Path) -> None:
    size = 200 << 20
    sha = _write_random(tmp_path / "model.pt", size)
    with e2e_framework.backend_environment(environment, project="artifacts") as config:
        exp = _start(config, "large")
        exp.log_artifact(tmp_path / "model.pt", "checkpoints")
        (tmp_path / "model.pt").write_bytes(b"the next epoch")  # the snapshot holds the logged bytes
        report = tracelet.stop_logging(flush_timeout=300)
        assert report.ok, report.format()
        record = config.read(exp.runs[config.backend_name])
        assert [(a.path, a.size, a.sha256) for a in record.artifacts] == [("checkpoints/model.pt", size, sha)]


@pytest.mark.e2e_floor
@pytest.mark.framework_only("torch")
@pytest.mark.platform_only(*POSIX)
@pytest.mark.e2e_faults
@pytest.mark.requires("mlflow")
def test_an_mlflow_server_outage_during_an_upload_lands_the_artifact_after_it_once(
    isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tracking server is SIGKILLed while a checkpoint uploads and restarted 5 s later: it lands, once."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # bridging the outage is tracelet's job
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    size = 300 << 20
    sha = _write_random(tmp_path / "model.pt", size)
    with own_mlflow_server(tmp_path) as server:
        exp = _start_on(server, "outage")
        exp.log_artifact(tmp_path / "model.pt", "checkpoints")
        time.sleep(0.3)  # the agent has begun to stream the file
        server.crash()
        assert not server.answers()
        time.sleep(5.0)
        server.restart()
        report = tracelet.stop_logging(flush_timeout=300)
        assert report.ok, report.format()
        assert report["mlflow"].retries >= 1, report.format()
        record = read_run("mlflow", exp.runs["mlflow"] or "", tracking_uri=server.url)
    assert [(a.path, a.size, a.sha256) for a in record.artifacts] == [("checkpoints/model.pt", size, sha)]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.slow
@pytest.mark.framework_only("torch")
@pytest.mark.platform_only("linux")  # /proc
@pytest.mark.e2e_performance
@pytest.mark.requires("mlflow")
def test_a_2_gb_checkpoint_to_an_mlflow_server_holds_memory_bounded(
    isolated_env: Path, tmp_path: Path, record_property: Any
) -> None:
    """Trainer and agent RSS grow by less than 64 MB while 2 GB stream to a real ``mlflow server``."""
    size = 2 << 30
    sha = _write_random(tmp_path / "model.pt", size)
    with own_mlflow_server(tmp_path) as server:
        exp = _start_on(server, "memory")
        exp.log_metric("warm", 1.0)
        assert exp.flush(60)  # the agent's client has done its first request: its baseline is warm
        pids = {"trainer": os.getpid(), "agent": _agent()}
        before = {name: _rss_mb(pid) for name, pid in pids.items()}
        samples: dict[str, list[float]] = {name: [] for name in pids}
        done = threading.Event()

        def sample() -> None:  # every 20 ms while the 2 GB go; a process that ended stops counting
            while not done.wait(0.02):
                for name, pid in pids.items():
                    with contextlib.suppress(OSError):
                        samples[name].append(_rss_mb(pid))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            exp.log_artifact(tmp_path / "model.pt", "checkpoints")
            assert exp.flush(600)
        finally:
            done.set()
            sampler.join()
        report = tracelet.stop_logging(flush_timeout=60)
        assert report.ok, report.format()
        # the sampler really watched both processes through the upload (seconds: hundreds of samples)
        assert all(len(values) >= 20 for values in samples.values()), {k: len(v) for k, v in samples.items()}
        grown = {name: max(samples[name]) - before[name] for name in pids}
        record_property(
            "rss_mb",
            json.dumps(
                {n: {"before": before[n], "peak": max(v), "samples": len(v)} for n, v in samples.items()}
            ),
        )
        assert all(g < 64 for g in grown.values()), f"RSS grew by {grown} MB (before: {before})"
        record = read_run("mlflow", exp.runs["mlflow"] or "", tracking_uri=server.url)
    assert [(a.path, a.size, a.sha256) for a in record.artifacts] == [("checkpoints/model.pt", size, sha)]

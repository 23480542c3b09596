"""Artifacts against the real stores: what lands is what was logged, whatever happens to the file after.

Each test holds the delivery agent still (``SIGSTOP``) while it logs, so what it does to
the files between ``log_artifact`` and delivery is certain to happen before the store
reads them; then it reads every file back from the store and compares sha256s.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tracelet
from tests.e2e.framework import BackendConfig, e2e_framework
from tests.e2e.params import POSIX, environments
from tracelet.testing import read_artifact_tree


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


@pytest.mark.framework_only("torch")
@pytest.mark.e2e_basic
@pytest.mark.parametrize("environment", environments())
def test_a_folder_of_a_thousand_files_is_one_event_and_lands_whole(
    environment: str, isolated_env: Path, tmp_path: Path
) -> None:
    """1,000 files of 4 KiB: one event and one snapshot; every file read back with its sha256."""
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
        fetched = read_artifact_tree(
            config.store.backend, run_id, "dataset/part-3", tmp_path / "back", **config.store.reader_options()
        )
        back = {p.relative_to(fetched).as_posix(): p.read_bytes() for p in fetched.rglob("*") if p.is_file()}
        assert back == {f"dataset/{r}": data for r, data in files.items() if r.startswith("part-3/")}

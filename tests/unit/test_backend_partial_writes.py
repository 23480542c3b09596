"""A store call that fails part-way through a batch: the backend says how many events landed.

The writer retries (a transient error) or splits (a refusal) from there on. A backend that
raised plainly after logging part of the batch had that part logged a second time by the
retry. The stores' clients are faked here (error paths only); the E2E suite shows the refused
W&B point beside the others, read back from the run.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from tracelet.backends.base import PartialWriteError, RunInfo
from tracelet.backends.clearml import ClearMLBackend
from tracelet.backends.wandb import WandbBackend, _leave_the_parents_service
from tracelet.events import Artifact, Event, Metric, Params


class _FakeRun:
    """What ``wandb.init`` returns, as far as ``write`` uses it; ``log`` fails on call ``fail_at``."""

    def __init__(self, fail_at: int) -> None:
        self.rows: list[dict[str, Any]] = []
        self.fail_at = fail_at
        self.id = "fake"
        self.config = types.SimpleNamespace(update=lambda values, allow_val_change: None)

    def define_metric(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log(self, row: dict[str, Any]) -> None:
        if len(self.rows) + 1 == self.fail_at:
            raise ConnectionResetError("connection reset by wandb-core")
        self.rows.append(dict(row))


def _wandb_backend(monkeypatch: pytest.MonkeyPatch, run: _FakeRun) -> WandbBackend:
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: run  # type: ignore[attr-defined]
    fake.Settings = dict  # type: ignore[attr-defined]
    fake.teardown = lambda: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    backend = WandbBackend({"mode": "offline"})
    backend.start(RunInfo("p", "r"))
    return backend


def test_wandb_reports_the_rows_that_landed_before_a_failing_log(monkeypatch: pytest.MonkeyPatch) -> None:
    run = _FakeRun(fail_at=2)
    backend = _wandb_backend(monkeypatch, run)
    batch = [
        Metric("a", 1.0, 0, 0.0),
        Metric("b", 2.0, 0, 0.0),
        Metric("a", 3.0, 1, 0.0),
        Metric("a", 4.0, 2, 0.0),
    ]
    with pytest.raises(PartialWriteError) as caught:
        backend.write(batch)
    assert caught.value.landed == 2  # the first row, a and b at step 0
    assert isinstance(caught.value.cause, ConnectionResetError)
    assert backend.is_transient(caught.value.cause)
    run.fail_at = 0
    backend.write(batch[caught.value.landed :])  # what the writer's retry sends
    assert [row["a"] for row in run.rows] == [1.0, 3.0, 4.0]  # nothing twice


def test_wandb_stops_at_a_refused_name_after_logging_what_came_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = _FakeRun(fail_at=0)
    backend = _wandb_backend(monkeypatch, run)
    batch: list[Event] = [
        Metric("a", 1.0, 0, 0.0),
        Params({"lr": "0.1"}),
        Metric("_hidden", 2.0, 1, 0.0),
        Metric("a", 3.0, 1, 0.0),
    ]
    with pytest.raises(PartialWriteError) as caught:
        backend.write(batch)
    assert caught.value.landed == 2
    assert "W&B reserves names starting with '_'" in str(caught.value.cause)
    assert not backend.is_transient(caught.value.cause)
    assert run.rows == [{"a": 1.0, "tracelet/step": 0}]  # the point after the refused one is not logged yet
    with pytest.raises(ValueError, match="'_hidden'"):  # refused first in its piece: nothing landed
        backend.write(batch[2:])
    backend.write(batch[3:])
    assert [row["a"] for row in run.rows] == [1.0, 3.0]


def test_clearml_reports_the_events_before_a_failing_call(monkeypatch: pytest.MonkeyPatch) -> None:
    reported: list[tuple[str, float, int]] = []

    def report_scalar(title: str, series: str, value: float, iteration: int) -> None:
        if len(reported) == 2:
            raise TimeoutError("the ClearML server timed out")
        reported.append((series, value, iteration))

    task = types.SimpleNamespace(get_logger=lambda: types.SimpleNamespace(report_scalar=report_scalar))
    monkeypatch.setattr(ClearMLBackend, "_require_task", lambda self: task)
    batch = [Metric("loss", float(step), step, 0.0) for step in range(4)]
    with pytest.raises(PartialWriteError) as caught:
        ClearMLBackend().write(batch)
    assert caught.value.landed == 2
    assert isinstance(caught.value.cause, TimeoutError)


def test_the_agent_runs_wandb_in_a_core_of_its_own(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A WANDB_SERVICE the parent (the trainer) exported is dropped; one another process started stays."""
    import os

    theirs = f"3-{os.getppid()}-unix-{tmp_path}/socket"
    monkeypatch.setenv("WANDB_SERVICE", theirs)
    _leave_the_parents_service()
    assert "WANDB_SERVICE" not in os.environ
    shared = f"3-{os.getppid() + 100_000}-tcp-localhost-4321"  # `wandb beta core start`, detached
    monkeypatch.setenv("WANDB_SERVICE", shared)
    _leave_the_parents_service()
    assert os.environ["WANDB_SERVICE"] == shared


class _FakeFolderArtifact:
    """``wandb.Artifact`` as far as a folder uses it: the files ``add_dir`` found, by their paths."""

    def __init__(self, name: str, type: str) -> None:
        self.name, self.type = name, type
        self.paths: list[str] = []

    def add_dir(self, local_path: str, policy: str) -> None:
        assert policy == "immutable"  # referred to where they are: never copied to W&B's cache
        root = Path(local_path)
        self.paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_a_folder_w_and_b_refused_leaves_no_files_behind_and_the_retry_logs_it_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``log_artifact`` fails: the files placed for it are removed (they would hold the snapshots'
    bytes on disk for good); the retry logs the folder once, as one Artifact."""
    run = _FakeRun(fail_at=0)
    run.settings = types.SimpleNamespace(sync_file=str(tmp_path / "run" / "run-fake.wandb"))  # type: ignore[attr-defined]
    logged: list[_FakeFolderArtifact] = []
    failures = [ConnectionResetError("connection reset by wandb-core")]

    def log_artifact(artifact: _FakeFolderArtifact) -> None:
        if failures:
            raise failures.pop()
        logged.append(artifact)

    run.log_artifact = log_artifact  # type: ignore[attr-defined]
    backend = _wandb_backend(monkeypatch, run)
    sys.modules["wandb"].Artifact = _FakeFolderArtifact  # type: ignore[attr-defined]
    folder = tmp_path / "ckpt"
    for name in ("a.bin", "sub/b.bin"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(name.encode())
    event = Artifact(str(folder), "checkpoints/last", "", 14, owned=True, tree=True)  # a folder snapshot
    placed = tmp_path / "run" / "tracelet-artifacts"
    with pytest.raises(ConnectionResetError):
        backend.write([event])
    assert not [p for p in placed.rglob("*") if p.is_file()]  # nothing left of the failed attempt
    backend.write([event])  # the writer's retry
    assert [(a.name, a.type) for a in logged] == [("run-fake-checkpoints-last", "unspecified")]
    assert logged[0].paths == ["checkpoints/last/a.bin", "checkpoints/last/sub/b.bin"]
    assert sorted(p.relative_to(placed).as_posix() for p in placed.rglob("*") if p.is_file()) == [
        "2/checkpoints/last/a.bin",
        "2/checkpoints/last/sub/b.bin",
    ]

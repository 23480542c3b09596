"""An artifact's way from the caller to the stores: linked into place, deleted once stored, bounded.

The snapshot ``log_artifact`` takes is the stored copy where the store is a local
filesystem (linked, never copied twice); it is deleted as soon as every store has it, kept
for ``tracelet sync`` where a store refused it; the staged bytes are bounded; a full disk
raises on the caller's thread with nothing half-logged; ``copy=False`` reads the caller's
file when it is delivered and refuses one that changed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import threading
from pathlib import Path

import pytest

import tracelet
from tests.unit.fakes import hold, release, run_view, wait_for
from tracelet import snapshots
from tracelet.backends.files import tree_files
from tracelet.events import Artifact
from tracelet.snapshots import KEPT_MARKER


def _staged(exp: tracelet.Experiment) -> list[Path]:
    """The snapshots still staged (a refused one's ``.kept`` marker is not a snapshot)."""
    return sorted(p for p in (exp.spool_dir / "staging").rglob("*") if p.is_file() and p.name != KEPT_MARKER)


def _local_artifacts(tmp_path: Path, run_id: str | None) -> dict[str, Path]:
    """The local store's artifact records: artifact path -> the stored file."""
    (run_dir,) = (tmp_path / "runs").glob(f"*/{run_id}")
    lines = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    return {e["artifact_path"]: run_dir / e["local_path"] for e in lines if e["kind"] == "artifact"}


def test_the_snapshot_is_linked_into_the_store_and_deleted_once_every_store_has_it(
    tmp_path: Path, delivery_mode: str
) -> None:
    data = os.urandom(300_000)
    (tmp_path / "ckpt.pt").write_bytes(data)
    exp = tracelet.start_logging(exp_name="link", project="p", backend=["local", "memory"])
    exp.log_artifact(tmp_path / "ckpt.pt", "checkpoints")
    (tmp_path / "ckpt.pt").write_bytes(b"the next epoch")  # overwritten right after: the logged bytes land
    assert exp.flush(10)
    wait_for(lambda: _staged(exp) == [], 10, "the snapshot to be deleted once both stores have it")
    stored = _local_artifacts(tmp_path, exp.runs["local"])["checkpoints/ckpt.pt"]
    (memory,) = [e for e in run_view(exp.runs["memory"]).events if isinstance(e, Artifact)]
    assert stored.read_bytes() == data
    assert Path(memory.local_path).read_bytes() == data
    # one file on disk for both stores: the snapshot itself, linked into each, never copied again
    assert os.stat(stored).st_ino == os.stat(memory.local_path).st_ino
    assert os.stat(stored).st_nlink == 2
    report = tracelet.stop_logging()
    assert report.ok
    assert report["local"].notes == ()


def test_a_store_on_another_filesystem_gets_a_copy_and_the_report_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ext4 to ext4 links; the other filesystem is forced (EXDEV), since this machine has one disk."""
    monkeypatch.setenv("TRACELET_DELIVERY", "thread")  # the forced failure lives in this process

    def cross_device(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    (tmp_path / "ckpt.pt").write_bytes(b"weights")
    exp = tracelet.start_logging(exp_name="copy", project="p", backend="local")
    exp.log_artifact(tmp_path / "ckpt.pt")
    report = tracelet.stop_logging()
    assert report.ok
    stored = _local_artifacts(tmp_path, exp.runs["local"])["ckpt.pt"]
    assert stored.read_bytes() == b"weights"
    assert os.stat(stored).st_nlink == 1
    (note,) = report["local"].notes
    assert "1 artifact(s) copied" in note
    assert "'ckpt.pt'" in note
    assert "TRACELET_SPOOL_DIR" in note
    assert "note: 1 artifact(s) copied" in report.format()


def test_a_snapshot_a_store_refused_is_kept_for_sync_and_no_longer_counts(
    tmp_path: Path, delivery_mode: str
) -> None:
    (tmp_path / "ckpt.pt").write_bytes(b"weights")
    exp = tracelet.start_logging(exp_name="refused", project="p", backend=["memory", "failing"])
    exp.log_artifact(tmp_path / "ckpt.pt")
    exp.flush(10)
    (snapshot,) = _staged(exp)
    wait_for(lambda: (snapshot.parent / KEPT_MARKER).exists(), 10, "the refused snapshot marked kept")
    assert snapshot.read_bytes() == b"weights"
    report = tracelet.stop_logging()
    assert report["memory"].ok
    assert report["failing"].failed == 1
    assert snapshot.read_bytes() == b"weights"  # the spool (and the snapshot) wait for tracelet sync
    (dead,) = [json.loads(x) for x in Path(report["failing"].dead_letter_path or "").read_text().splitlines()]
    assert dead["kind"] == "artifact"
    assert dead["local_path"] == str(snapshot)


def test_the_staged_bytes_are_bounded_and_the_caller_waits_for_the_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, delivery_mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TRACELET_ARTIFACT_STAGE_MB", str(250_000 / (1 << 20)))  # 250 kB
    for n in range(3):
        (tmp_path / f"ckpt{n}.pt").write_bytes(bytes([n]) * 100_000)
    (tmp_path / "big.pt").write_bytes(b"B" * 400_000)  # larger than the bound: staged alone
    hold()  # the store stalls: nothing it takes frees room
    exp = tracelet.start_logging(exp_name="bound", project="p", backend="blocking")
    exp.log_artifact(tmp_path / "ckpt0.pt")
    exp.log_artifact(tmp_path / "ckpt1.pt")  # 200 kB staged: still under the bound
    done = threading.Event()

    def third() -> None:
        exp.log_artifact(tmp_path / "ckpt2.pt")
        exp.log_artifact(tmp_path / "big.pt")
        done.set()

    caplog.set_level(logging.WARNING, logger="tracelet")
    worker = threading.Thread(target=third)
    worker.start()
    wait_for(
        lambda: any("TRACELET_ARTIFACT_STAGE_MB" in r.getMessage() for r in caplog.records), 10, "warning"
    )
    assert not done.wait(0.5), "log_artifact went past the bound while the store was stalled"
    assert len(_staged(exp)) == 2
    release()
    assert done.wait(20)
    worker.join()
    report = tracelet.stop_logging()
    assert report.ok
    stored = [e for e in run_view(exp.runs["blocking"]).events if isinstance(e, Artifact)]
    assert [Path(e.local_path).read_bytes()[:1] for e in stored] == [b"\0", b"\1", b"\2", b"B"]
    warnings = [r for r in caplog.records if "TRACELET_ARTIFACT_STAGE_MB" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING


def test_a_full_disk_raises_on_the_callers_thread_and_nothing_of_the_folder_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, delivery_mode: str
) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in "abcde":
        (folder / f"{name}.bin").write_bytes(name.encode() * 1000)
    real = snapshots.snapshot_file
    calls: list[Path] = []

    def full_at_the_third(source: Path, target: Path) -> str:
        calls.append(source)
        if len(calls) == 3:
            target.write_bytes(b"half")  # a partial write, as ENOSPC leaves it
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(source, target)

    monkeypatch.setattr(snapshots, "snapshot_file", full_at_the_third)
    exp = tracelet.start_logging(exp_name="full", project="p", backend="memory")
    with pytest.raises(OSError, match=r"could not snapshot .*c\.bin: No space left") as caught:
        exp.log_artifact(folder)
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(folder / "c.bin")
    assert _staged(exp) == []  # the two snapshots taken and the partial third are gone
    exp.log_artifact(folder / "e.bin")  # the run goes on
    assert tracelet.stop_logging().ok
    assert [e.artifact_path for e in run_view(exp.runs["memory"]).events if isinstance(e, Artifact)] == [
        "e.bin"
    ]


def test_copy_false_reads_the_file_when_delivered_and_refuses_one_deleted_before(
    tmp_path: Path, delivery_mode: str
) -> None:
    (tmp_path / "final.pt").write_bytes(b"final weights")
    (tmp_path / "tmp.pt").write_bytes(b"deleted before delivery")
    (tmp_path / "grown.pt").write_bytes(b"changed")
    hold()
    exp = tracelet.start_logging(exp_name="nocopy", project="p", backend="blocking")
    exp.log_artifact(tmp_path / "final.pt", copy=False)
    exp.log_artifact(tmp_path / "tmp.pt", copy=False)
    exp.log_artifact(tmp_path / "grown.pt", copy=False)
    assert _staged(exp) == []  # no snapshot taken
    (tmp_path / "tmp.pt").unlink()
    (tmp_path / "grown.pt").write_bytes(b"changed, and longer now")
    release()
    report = tracelet.stop_logging()
    stored = {e.artifact_path: e for e in run_view(exp.runs["blocking"]).events if isinstance(e, Artifact)}
    assert list(stored) == ["final.pt"]
    assert Path(stored["final.pt"].local_path).read_bytes() == b"final weights"
    assert (tmp_path / "final.pt").read_bytes() == b"final weights"  # the caller's file is never touched
    assert os.stat(tmp_path / "final.pt").st_nlink == 1  # copied, not linked: the caller may rewrite it
    assert report["blocking"].failed == 2
    assert report["blocking"].delivered == 1
    errors = " ".join(report["blocking"].errors)
    assert "tmp.pt was deleted before it was delivered (logged with copy=False)" in errors
    assert "grown.pt changed before it was delivered" in errors


def test_copy_must_be_a_bool(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    exp = tracelet.start_logging(exp_name="bad", project="p", backend="memory")
    with pytest.raises(TypeError, match="copy must be True or False, not str"):
        exp.log_artifact(tmp_path / "f", copy="no")  # type: ignore[arg-type]
    assert tracelet.stop_logging().ok


def test_a_bad_stage_bound_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACELET_ARTIFACT_STAGE_MB", "lots")
    with pytest.raises(ValueError, match="TRACELET_ARTIFACT_STAGE_MB='lots' is not a number of MiB"):
        tracelet.start_logging(backend="memory")
    monkeypatch.setenv("TRACELET_ARTIFACT_STAGE_MB", "-1")
    with pytest.raises(ValueError, match="TRACELET_ARTIFACT_STAGE_MB='-1' must not be negative"):
        tracelet.start_logging(backend="memory")


def test_a_folder_is_one_event_and_one_snapshot_deleted_once_stored(
    tmp_path: Path, delivery_mode: str
) -> None:
    folder = tmp_path / "ckpt"
    files = {"model.pt": b"weights", "optim/state.pt": b"moments", "optim/sched.json": b"{}"}
    for relative, data in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
    exp = tracelet.start_logging(exp_name="folder", project="p", backend=["local", "memory"])
    exp.log_artifact(folder, "epoch-3")
    (folder / "model.pt").write_bytes(b"the next epoch")  # the folder's snapshot holds the logged bytes
    assert exp.flush(10)
    wait_for(
        lambda: not any((exp.spool_dir / "staging").iterdir()), 10, "the folder's snapshot to be deleted"
    )
    report = tracelet.stop_logging()
    assert report.ok
    assert report["local"].sent == 1  # one event for the whole folder
    stored = _local_artifacts(tmp_path, exp.runs["local"])
    assert {path: file.read_bytes() for path, file in stored.items()} == {
        f"epoch-3/{relative}": data for relative, data in files.items()
    }
    (run_dir,) = (tmp_path / "runs").glob(f"*/{exp.runs['local']}")
    records = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    hashes = {e["artifact_path"]: e["sha256"] for e in records if e["kind"] == "artifact"}
    assert hashes == {f"epoch-3/{r}": hashlib.sha256(d).hexdigest() for r, d in files.items()}
    memory = [e.artifact_path for e in run_view(exp.runs["memory"]).events if isinstance(e, Artifact)]
    assert memory == sorted(f"epoch-3/{relative}" for relative in files)


def test_tree_files_lists_a_folder_events_files_under_its_path(tmp_path: Path) -> None:
    (tmp_path / "tree" / "b").mkdir(parents=True)
    (tmp_path / "tree" / "a.txt").write_text("a")
    (tmp_path / "tree" / "b" / "c.txt").write_text("cc")
    tree = Artifact(str(tmp_path / "tree"), "", "", 3, tree=True)
    assert [(f.artifact_path, f.size, f.tree) for f in tree_files(tree)] == [
        ("a.txt", 1, False),
        ("b/c.txt", 2, False),
    ]
    under = tree_files(Artifact(str(tmp_path / "tree"), "run/x", "", 3, tree=True))
    assert [f.artifact_path for f in under] == ["run/x/a.txt", "run/x/b/c.txt"]
    assert [Path(f.local_path).read_text() for f in under] == ["a", "cc"]
    single = Artifact(str(tmp_path / "tree" / "a.txt"), "a.txt", "", 1)
    assert tree_files(single) == [single]


def test_the_staged_peak_counts_what_waited_at_once(tmp_path: Path, delivery_mode: str) -> None:
    for n in range(2):
        (tmp_path / f"ckpt{n}.pt").write_bytes(b"x" * 1000 * (n + 1))
    hold()
    exp = tracelet.start_logging(exp_name="peak", project="p", backend="blocking")
    exp.log_artifact(tmp_path / "ckpt0.pt")
    exp.log_artifact(tmp_path / "ckpt1.pt")
    assert exp.staged_bytes_peak() == 3000  # both wait for the stalled store
    release()
    assert exp.flush(10)
    wait_for(lambda: _staged(exp) == [], 10, "the snapshots to be deleted once stored")
    assert exp.staged_bytes_peak(reset=True) == 3000
    exp.log_artifact(tmp_path / "ckpt0.pt")
    assert exp.staged_bytes_peak() == 1000  # since the reset: the stored ones no longer count
    assert tracelet.stop_logging().ok

"""The caller's copy of a logged file: a kernel copy (or a reflink), exact, and no hashing on its thread."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

import tracelet
from tracelet import snapshots
from tracelet.snapshots import COPY, REFLINK, sha256_of, snapshot_file


def _file(path: Path, size: int = (1 << 20) + 7) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def test_a_snapshot_holds_the_bytes_exactly(tmp_path: Path) -> None:
    data = _file(tmp_path / "ckpt.pt")
    how = snapshot_file(tmp_path / "ckpt.pt", tmp_path / "copy.pt")
    assert how in (REFLINK, COPY)
    assert (tmp_path / "copy.pt").read_bytes() == data
    (tmp_path / "ckpt.pt").write_bytes(b"the next epoch")  # overwriting the source leaves the snapshot
    assert (tmp_path / "copy.pt").read_bytes() == data


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="FICLONE is Linux's")
def test_a_reflink_that_fails_falls_back_to_the_kernel_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ext4 has no reflink, so the failure is forced: the copy still lands, whole, from a clean start."""
    import fcntl

    calls: list[int] = []

    def refuse(fd: int, request: int, arg: Any = 0) -> None:
        calls.append(request)
        os.write(fd, b"half")  # whatever a failed clone left behind must not stay in front of the copy
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(fcntl, "ioctl", refuse)
    monkeypatch.setattr(snapshots, "_NO_REFLINK", set())  # as in a fresh process: nothing known yet
    data = _file(tmp_path / "ckpt.pt")
    assert snapshot_file(tmp_path / "ckpt.pt", tmp_path / "copy.pt") == COPY
    assert calls == [snapshots.FICLONE]
    assert (tmp_path / "copy.pt").read_bytes() == data
    # the filesystem said no: the next snapshot on it goes straight to the kernel copy
    assert snapshot_file(tmp_path / "ckpt.pt", tmp_path / "again.pt") == COPY
    assert calls == [snapshots.FICLONE]
    assert (tmp_path / "again.pt").read_bytes() == data


def test_the_hash_is_read_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshots, "HASH_CHUNK", 1000)
    data = _file(tmp_path / "f", 12_345)
    assert sha256_of(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_the_caller_does_not_hash_and_the_local_store_records_the_sha256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, delivery_mode: str
) -> None:
    data = _file(tmp_path / "ckpt.pt")
    exp = tracelet.start_logging(exp_name="ckpt", project="p", backend="local")
    hashed: list[str] = []
    real = snapshots.sha256_of

    def counting(path: str | os.PathLike[str]) -> str:
        hashed.append(str(path))
        return real(path)

    monkeypatch.setattr("tracelet.backends.local.sha256_of", counting)
    exp.log_artifact(tmp_path / "ckpt.pt", "checkpoints")
    (tmp_path / "ckpt.pt").write_bytes(b"overwritten right after")
    assert tracelet.stop_logging().ok
    (run_dir,) = (tmp_path / "runs").glob(f"*/{exp.runs['local']}")
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    (artifact,) = [e for e in events if e["kind"] == "artifact"]
    assert artifact["sha256"] == hashlib.sha256(data).hexdigest()
    assert (run_dir / artifact["local_path"]).read_bytes() == data
    if delivery_mode == "thread":  # the writer thread hashed the store's copy (the agent is another process)
        assert hashed == [str(run_dir / artifact["local_path"])]

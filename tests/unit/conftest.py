from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import tracelet
from tests.unit.fakes import FAKES, BlockingBackend, MemoryBackend, StallingLocalBackend
from tracelet.backends import registry


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own spool and local dirs, no TRACELET_* from outside, and the fakes."""
    for key in list(os.environ):
        if key.startswith("TRACELET_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TRACELET_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("TRACELET_LOCAL_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("TRACELET_HANDLE_SIGNALS", "0")
    monkeypatch.setattr(registry, "BUILTIN_BACKENDS", {**registry.BUILTIN_BACKENDS, **FAKES})
    MemoryBackend.instances.clear()
    BlockingBackend.release.clear()
    StallingLocalBackend.release.clear()
    yield tmp_path
    BlockingBackend.release.set()
    StallingLocalBackend.release.set()
    active = tracelet.get_active_experiment()
    if active is not None:
        active.stop(flush_timeout=5)

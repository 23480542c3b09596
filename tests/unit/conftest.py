from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import tracelet
from tests.unit.fakes import ENV_GATE, FAKES, release


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own spool and local dirs, no TRACELET_* from outside, and the fakes.

    System metrics are off: a slow test (two cores, xdist) would otherwise get a sample now and then.

    The fakes are registered through ``TRACELET_EXTRA_BACKENDS``, an environment
    variable, so the delivery agent (another process) finds them too.
    """
    for key in list(os.environ):
        if key.startswith("TRACELET_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TRACELET_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("TRACELET_LOCAL_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("TRACELET_HANDLE_SIGNALS", "0")
    # what a fake stores is exactly what the test logged; test_system_metrics.py turns sampling on
    monkeypatch.setenv("TRACELET_SYSTEM_METRICS", "0")
    monkeypatch.setenv("TRACELET_EXTRA_BACKENDS", ",".join(f"{k}={v}" for k, v in FAKES.items()))
    monkeypatch.setenv(ENV_GATE, str(tmp_path / "gate"))
    yield tmp_path
    release()
    active = tracelet.get_active_experiment()
    if active is not None:
        active.stop(flush_timeout=5)


@pytest.fixture(params=["agent", "thread"])
def delivery_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once with the delivery agent and once with writer threads: one writer, two homes."""
    monkeypatch.setenv("TRACELET_DELIVERY", request.param)
    return str(request.param)

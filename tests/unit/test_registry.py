"""Backend registry, entry points, and the absent-package error."""

from __future__ import annotations

import importlib.abc
import sys
from pathlib import Path

import pytest

import tracelet
from tracelet.backends.registry import ENTRY_POINT_GROUP, available_backends, get_backend_class
from tracelet.errors import UnknownBackendError


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(
        UnknownBackendError, match=r"unknown backend 'nope'; known backends: \['local', 'mlflow'"
    ):
        tracelet.start_logging(backend="nope")


def test_entry_point_backends_are_discovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A third-party distribution registers a backend in the ``tracelet.backends`` group."""
    dist = tmp_path / "tracelet_thirdparty-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tracelet-thirdparty\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nthirdparty = tests.unit.fakes:MemoryBackend\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "thirdparty" in available_backends()
    from tests.unit.fakes import MemoryBackend

    assert get_backend_class("thirdparty") is MemoryBackend
    exp = tracelet.start_logging(backend="thirdparty")
    exp.log_metric("x", 1.0)
    assert tracelet.stop_logging().ok


class _Block(importlib.abc.MetaPathFinder):
    """An import hook that makes packages look absent, as in a venv without them."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: object, target: object = None) -> None:
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


@pytest.mark.parametrize(
    ("backend", "extra"), [("wandb", "wandb"), ("mlflow", "mlflow"), ("clearml", "clearml")]
)
def test_absent_backend_names_the_extra(backend: str, extra: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "meta_path", [_Block({backend}), *sys.meta_path])
    for name in list(sys.modules):
        if name.split(".")[0] == backend:
            monkeypatch.delitem(sys.modules, name)
    with pytest.raises(tracelet.BackendNotInstalledError) as err:
        tracelet.start_logging(backend=["local", backend])
    assert f'pip install "tracelet[{extra}]"' in str(err.value)
    assert isinstance(err.value, ImportError)
    assert err.value.name == backend
    assert tracelet.get_active_experiment() is None  # nothing half-started

"""The MLflow backend's checks of a tracking URI before MLflow sees it (no mlflow needed)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tracelet.backends.mlflow import make_sqlite_folder


def test_the_folder_of_a_sqlite_database_is_made(tmp_path: Path) -> None:
    """MLflow before 3.7 does not make it, and retries the database it cannot open for an hour."""
    database = tmp_path / "runs" / "deep" / "mlflow.db"
    make_sqlite_folder(f"sqlite:///{database}")
    assert database.parent.is_dir()
    assert not database.exists()  # the database itself is MLflow's to create


def test_a_file_where_the_folder_should_be_raises_at_once_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file")
    started = time.monotonic()
    with pytest.raises(ValueError, match="not-a-directory") as raised:
        make_sqlite_folder(f"sqlite:///{blocker}/mlflow.db")
    assert "tracking_uri" in str(raised.value)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("uri", [None, "", "http://127.0.0.1:5000", "sqlite:///:memory:", "file:///tmp/x"])
def test_other_uris_are_left_alone(uri: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_sqlite_folder(uri)
    assert list(tmp_path.iterdir()) == []

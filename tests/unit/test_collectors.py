"""What a run records about itself: credential stripping, git, and which side reads the versions."""

from __future__ import annotations

import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from tracelet.collectors import git_metadata, strip_url_credentials


@pytest.mark.parametrize(
    ("url", "stripped"),
    [
        ("https://user:token@github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("https://ghp_abc123@github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("https://host/repo.git?private_token=abc#frag", "https://host/repo.git"),
        ("ssh://git:pw@host:2222/org/repo.git", "ssh://host:2222/org/repo.git"),
        ("http://u:p@[::1]:8080/x", "http://[::1]:8080/x"),
        ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
        ("/srv/git/repo.git", "/srv/git/repo.git"),
        ("https://github.com/org/repo.git", "https://github.com/org/repo.git"),
    ],
)
def test_remote_urls_lose_their_credentials(url: str, stripped: str) -> None:
    assert strip_url_credentials(url) == stripped


def test_no_repository_records_no_git(tmp_path: Path) -> None:
    assert git_metadata(str(tmp_path)) == {}


def _git_in(repo: Path) -> Callable[..., str]:
    """``git(*args)`` in ``repo``, as a user with a name and an e-mail; its output."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@x", *args],
            cwd=repo,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    return git


def _one_commit(repo: Path, *init_args: str) -> Callable[..., str]:
    """A repository in ``repo`` holding one committed file ``f``; its ``git(*args)``."""
    git = _git_in(repo)
    git("init", "-q", *init_args)
    (repo / "f").write_text("x")
    git("add", "f")
    git("commit", "-q", "-m", "one")
    return git


def test_a_clean_detached_checkout_has_no_branch(tmp_path: Path) -> None:
    git = _one_commit(tmp_path)
    commit = git("rev-parse", "HEAD")
    git("checkout", "-q", "--detach")
    (tmp_path / "untracked").write_text("y")  # untracked files do not make it dirty
    fields = git_metadata(str(tmp_path))
    assert fields == {"tracelet.git.commit": commit, "tracelet.git.dirty": "false"}


def test_a_branch_a_dirty_file_and_the_remote_lose_nothing_but_credentials(tmp_path: Path) -> None:
    """Branch, dirty flag and remote from two concurrent calls; origin first, else the first by name."""
    git = _one_commit(tmp_path, "-b", "feature/sweep-1")
    git("remote", "add", "zeta", "https://user:token@example.com/z.git")
    git("remote", "add", "alpha", "git@host:org/a.git")
    (tmp_path / "f").write_text("changed")
    fields = git_metadata(str(tmp_path / "."))
    assert fields == {
        "tracelet.git.commit": git("rev-parse", "HEAD"),
        "tracelet.git.branch": "feature/sweep-1",
        "tracelet.git.dirty": "true",
        "tracelet.git.remote": "git@host:org/a.git",
    }
    git("remote", "add", "origin", "https://ghp_secret@github.com/o/r.git?t=1")
    assert git_metadata(str(tmp_path))["tracelet.git.remote"] == "https://github.com/o/r.git"


@pytest.mark.parametrize("track", ["1", "0"])
def test_a_run_records_git_unless_track_git_is_off(
    track: str, delivery_mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a real run in a repository: the versions always, ``tracelet.git.*`` unless turned off.

    Both ways a backend gets them: ``local`` reads them as late as it can (``late_system_tags``:
    the git calls run while it opens its run); the ``memory`` fake, like a plugin, reads
    ``info.system_tags`` only, and gets them all there.
    """
    import tracelet
    from tests.unit.fakes import run_view
    from tracelet.backends.local import LocalBackend
    from tracelet.testing import read_run

    assert LocalBackend.late_system_tags

    repo = tmp_path / "repo"
    repo.mkdir()
    git = _one_commit(repo)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("TRACELET_TRACK_GIT", track)
    exp = tracelet.start_logging(exp_name="git", project="p", backend=["local", "memory"])
    assert tracelet.stop_logging(flush_timeout=30).ok
    for tags in (
        read_run("local", exp.runs["local"]).system_tags,  # type: ignore[arg-type]
        run_view(exp.runs["memory"]).system_tags,
    ):
        assert {"tracelet.version", "tracelet.python", "tracelet.platform"} <= set(tags)
        recorded = {key: value for key, value in tags.items() if key.startswith("tracelet.git.")}
        if track == "1":
            assert recorded == {"tracelet.git.commit": git("rev-parse", "HEAD"), **_branch_and_clean(git)}
        else:
            assert recorded == {}


def test_the_git_state_is_read_from_when_it_was_asked_for(tmp_path: Path) -> None:
    """``start_git_metadata`` starts both calls at once; the state is what the repository held then,
    read once however often it is asked for."""
    from tracelet.collectors.git import start_git_metadata

    git = _one_commit(tmp_path)
    first = git("rev-parse", "HEAD")
    collect = start_git_metadata(str(tmp_path))
    time.sleep(0.5)  # the calls have finished by now: what they saw is the first commit
    git("commit", "-q", "--allow-empty", "-m", "two")
    assert collect()["tracelet.git.commit"] == first
    assert collect() == collect() == git_metadata_at(first, git)
    assert git_metadata(str(tmp_path))["tracelet.git.commit"] == git("rev-parse", "HEAD") != first


def git_metadata_at(commit: str, git: Callable[..., str]) -> dict[str, str]:
    return {"tracelet.git.commit": commit, **_branch_and_clean(git)}


def _branch_and_clean(git: Callable[..., str]) -> dict[str, str]:
    return {"tracelet.git.branch": git("branch", "--show-current"), "tracelet.git.dirty": "false"}


@pytest.mark.usefixtures("delivery_mode")
def test_versions_are_read_where_the_runs_open_and_cuda_on_the_callers_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent has no torch imported: CUDA can only come from the caller, the rest from the opener."""
    import tracelet
    from tracelet.collectors import caller_metadata, environment_metadata
    from tracelet.testing import read_run

    fake_torch = types.SimpleNamespace(version=types.SimpleNamespace(cuda="12.4"))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    assert caller_metadata() == {"tracelet.cuda": "12.4"}
    assert "tracelet.cuda" not in environment_metadata()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRACELET_TRACK_GIT", "0")
    exp = tracelet.start_logging(exp_name="versions", project="p", backend="local")
    assert tracelet.stop_logging(flush_timeout=30).ok
    tags = read_run("local", exp.runs["local"]).system_tags  # type: ignore[arg-type]
    assert tags["tracelet.cuda"] == "12.4"
    assert {key: tags[key] for key in environment_metadata()} == environment_metadata()
    assert tags["tracelet.version"] == tracelet.__version__


def test_a_cpu_build_or_no_torch_records_no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    from tracelet.collectors import caller_metadata

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert caller_metadata() == {}
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(version=types.SimpleNamespace(cuda=None)))
    assert caller_metadata() == {}

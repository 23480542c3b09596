"""The git state a run started from: commit, branch, dirty flag, and the remote without credentials.

Read with the ``git`` command from the current directory, as ``git status`` there
would see it. No git, no repository, or a slow one (more than :data:`GIT_TIMEOUT`
seconds) records nothing rather than delaying the run. The remote URL is stripped of
any user, password or token before it leaves this module, so a credential written
into ``remote.origin.url`` reaches no store, spool or log.
"""

from __future__ import annotations

import logging
import os
import subprocess
import urllib.parse
from collections.abc import Callable

from tracelet.redaction import strip_url_userinfo

log = logging.getLogger(__name__)

#: Seconds each ``git`` call may take; a huge repository must not hold up ``start_logging``.
GIT_TIMEOUT = 5.0


def strip_url_credentials(url: str) -> str:
    """``https://user:token@host/x.git?t=1`` → ``https://host/x.git``.

    A URL with a scheme loses its whole user-info part (a token is often the *user*,
    as in ``https://ghp_...@github.com``), its query and its fragment. An scp-like
    remote (``git@host:org/repo.git``) has a user name but no place for a password,
    and is kept as it is; a local path is kept too.
    """
    if "://" not in url:
        return url
    parts = urllib.parse.urlsplit(strip_url_userinfo(url))
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _start_git(*args: str, cwd: str) -> subprocess.Popen[str] | None:
    try:
        return subprocess.Popen(
            ["git", *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"},
        )
    except OSError as exc:
        log.debug("tracelet: git %s failed: %s", args[0], type(exc).__name__)
        return None


def _output(proc: subprocess.Popen[str] | None) -> str | None:
    """The call's standard output, or None when it failed or took more than GIT_TIMEOUT."""
    if proc is None:
        return None
    try:
        out, _ = proc.communicate(timeout=GIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        log.debug("tracelet: a git call took longer than %ss", GIT_TIMEOUT)
        return None
    return out if proc.returncode == 0 else None


def git_metadata(cwd: str | None = None) -> dict[str, str]:
    """``tracelet.git.{commit,branch,dirty,remote}`` for the repository around ``cwd`` (or nothing).

    ``branch`` is absent on a detached HEAD; ``dirty`` is ``true`` when tracked files
    differ from the commit (untracked files do not count, as in GitPython's
    ``is_dirty()``); ``remote`` is ``origin``'s URL, else the first remote's.
    """
    return start_git_metadata(cwd)()


def start_git_metadata(cwd: str | None = None) -> Callable[[], dict[str, str]]:
    """Start reading the git state now; the returned call waits for it (once) and returns it.

    Two ``git`` calls, run at once: ``status --porcelain=v2 --branch`` answers commit,
    branch and dirty flag together, and ``config`` lists the remotes' URLs. A sweep opens
    run after run in one warm agent, and each pays this: five calls one after the other
    cost 15-25 ms a run here, two concurrent ones about a third of that, and started before
    a store opens its run (``Task.init``, ``create_run``) they cost the run nothing more.
    """
    where = cwd or os.getcwd()
    status_call = _start_git("status", "--porcelain=v2", "--branch", "--untracked-files=no", cwd=where)
    remotes_call = _start_git("config", "--get-regexp", r"^remote\..*\.url$", cwd=where)
    result: list[dict[str, str]] = []

    def collect() -> dict[str, str]:
        if not result:
            result.append(_parse(_output(status_call), _output(remotes_call)))
        return dict(result[0])

    return collect


def _parse(status: str | None, remotes: str | None) -> dict[str, str]:
    if status is None:
        return {}
    headers = dict(
        line[2:].split(" ", 1) for line in status.splitlines() if line.startswith("# ") and " " in line[2:]
    )
    commit = headers.get("branch.oid", "")
    if not commit or commit == "(initial)":
        return {}
    fields = {"tracelet.git.commit": commit}
    branch = headers.get("branch.head", "")
    if branch and branch != "(detached)":
        fields["tracelet.git.branch"] = branch
    fields["tracelet.git.dirty"] = (
        "true" if any(not line.startswith("#") for line in status.splitlines()) else "false"
    )
    urls = _remote_urls(remotes or "")
    if urls:
        url = urls.get("origin") or urls[min(urls)]  # else the first as `git remote` lists them
        fields["tracelet.git.remote"] = strip_url_credentials(url)
    return fields


def _remote_urls(config: str) -> dict[str, str]:
    """``remote.<name>.url <url>`` lines → {name: url}, in the order git lists them."""
    urls: dict[str, str] = {}
    for line in config.splitlines():
        key, _, url = line.partition(" ")
        name = key[len("remote.") : -len(".url")]
        if name and url:
            urls.setdefault(name, url.strip())
    return urls

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


def _git(*args: str, cwd: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"},
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("tracelet: git %s failed: %s", args[0], type(exc).__name__)
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip()


def git_metadata(cwd: str | None = None) -> dict[str, str]:
    """``tracelet.git.{commit,branch,dirty,remote}`` for the repository around ``cwd`` (or nothing).

    ``branch`` is absent on a detached HEAD; ``dirty`` is ``true`` when tracked files
    differ from the commit (untracked files do not count, as in GitPython's
    ``is_dirty()``); ``remote`` is ``origin``'s URL, else the first remote's.
    """
    where = cwd or os.getcwd()
    commit = _git("rev-parse", "--verify", "HEAD", cwd=where)
    if not commit:
        return {}
    fields = {"tracelet.git.commit": commit}
    branch = _git("symbolic-ref", "--quiet", "--short", "HEAD", cwd=where)
    if branch:
        fields["tracelet.git.branch"] = branch
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=where)
    if status is not None:
        fields["tracelet.git.dirty"] = "true" if status else "false"
    remotes = (_git("remote", cwd=where) or "").split()
    if remotes:
        name = "origin" if "origin" in remotes else remotes[0]
        url = _git("remote", "get-url", name, cwd=where)
        if url:
            fields["tracelet.git.remote"] = strip_url_credentials(url)
    return fields

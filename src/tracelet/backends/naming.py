"""Name mappings shared by the backends and their readers, so each is inverted exactly."""

from __future__ import annotations

SYSTEM_TAG_PREFIX = "tracelet."


def split_clearml(name: str) -> tuple[str, str]:
    """ClearML title and series: split at the first ``/``; a bare name is its own series."""
    title, sep, series = name.partition("/")
    return (title, series) if sep else (name, name)


def join_clearml(title: str, series: str) -> str:
    """Inverse of :func:`split_clearml`."""
    return title if title == series else f"{title}/{series}"


def tag_to_label(key: str, value: str) -> str:
    """W&B and ClearML tags are plain strings: ``key=value`` (``key`` alone when value is empty)."""
    return f"{key}={value}" if value != "" else key


def label_to_tag(label: str) -> tuple[str, str]:
    """Inverse of :func:`tag_to_label`; keys never contain ``=``."""
    key, _, value = label.partition("=")
    return key, value


def status_from_exit_code(code: int) -> str:
    """W&B keeps an exit code, not a status: 0 finished, 143 (SIGTERM) killed, else failed."""
    if code == 0:
        return "finished"
    if code == EXIT_CODE_KILLED:
        return "killed"
    return "failed"


EXIT_CODE_KILLED = 143
EXIT_CODES = {"finished": 0, "failed": 1, "killed": EXIT_CODE_KILLED}

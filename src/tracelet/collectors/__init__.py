"""What a run ran on, recorded with every run as tracelet's own ``tracelet.*`` fields.

:func:`run_metadata` is called once, on the caller's thread, in ``start_logging``.
Each backend stores the fields where it keeps such things (see the README's
"What a run records about itself"): tags in MLflow and local, the run config in
W&B, user properties in ClearML.
"""

from __future__ import annotations

from tracelet.collectors.git import git_metadata, strip_url_credentials
from tracelet.collectors.system import system_metadata

__all__ = ["git_metadata", "run_metadata", "strip_url_credentials", "system_metadata"]


def run_metadata(track_git: bool = True) -> dict[str, str]:
    """tracelet, Python, platform, torch and CUDA versions, then git (unless ``track_git`` is off)."""
    fields = system_metadata()
    if track_git:
        fields.update(git_metadata())
    return fields

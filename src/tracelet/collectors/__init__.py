"""What a run ran on, recorded with every run as tracelet's own ``tracelet.*`` fields.

The versions (:func:`environment_metadata`, once per process) and git
(:func:`git_metadata`) are read where the runs open, off the caller's thread (in the agent, or
on the thread mode's opener thread); only CUDA (:func:`caller_metadata`, from the torch the
training code imported) is read in ``start_logging``. Each backend stores the fields where it
keeps such things (see ``docs/run-metadata.md``): tags in MLflow and local, the run config in
W&B, user properties in ClearML.
"""

from __future__ import annotations

from tracelet.collectors.git import git_metadata, strip_url_credentials
from tracelet.collectors.system import caller_metadata, environment_metadata

__all__ = [
    "caller_metadata",
    "environment_metadata",
    "git_metadata",
    "strip_url_credentials",
]

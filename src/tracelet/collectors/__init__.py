"""What a run ran on, recorded with every run as tracelet's own ``tracelet.*`` fields.

The versions (:func:`system_metadata`) are read on the caller's thread in ``start_logging``;
git (:func:`git_metadata`) where the runs open, off that thread (in the agent, or on the thread
mode's opener thread). Each backend stores the fields where it keeps such things (see
``docs/run-metadata.md``): tags in MLflow and local, the run config in
W&B, user properties in ClearML.
"""

from __future__ import annotations

from tracelet.collectors.git import git_metadata, strip_url_credentials
from tracelet.collectors.system import system_metadata

__all__ = ["git_metadata", "strip_url_credentials", "system_metadata"]

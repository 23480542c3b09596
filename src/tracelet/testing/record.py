"""The normalized view of what landed in a store, shared by every reader."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tracelet.validation import SYSTEM_PREFIX


@dataclass(frozen=True)
class ArtifactRecord:
    """One stored file: its path relative to the run's artifact root, size and sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ImageRecord:
    """One stored image: the name it was logged under, its step and pixel size."""

    name: str
    step: int
    width: int
    height: int


@dataclass
class RunRecord:
    """What one backend holds for one run, read back through that backend's own client or files.

    ``metrics`` maps each key to its ``(step, value)`` points in the order the store
    keeps them: what the workflow logged. ``system_metrics`` holds the ``system/`` series
    tracelet sampled (their values differ from run to run, so exact key-set checks and the
    cross-store equivalence leave them out). ``params`` values are strings. ``tags`` are
    the user's tags; ``system_tags`` are tracelet's own (``tracelet.*``). ``timestamps`` holds,
    per key of ``metrics`` and point for point, when the point was logged (seconds since the
    epoch) where the store keeps it (W&B keeps one per history row); ``tracelet copy`` carries
    them over, the equivalence leaves them out.
    """

    backend: str
    run_id: str
    project: str
    run_name: str
    status: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    system_tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    images: list[ImageRecord] = field(default_factory=list)
    system_metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    timestamps: dict[str, list[float]] = field(default_factory=dict)
    #: what the store holds for the run that the reader does not carry (W&B tables, MLflow nested
    #: runs, ...): a description -> how many; ``tracelet copy`` lists them as not copied
    not_read: dict[str, int] = field(default_factory=dict)

    def set_aside_system_metrics(self) -> RunRecord:
        """Move the ``system/`` series from ``metrics`` to ``system_metrics`` (every reader's last step)."""
        for name in [name for name in self.metrics if name.startswith(SYSTEM_PREFIX)]:
            self.system_metrics[name] = self.metrics.pop(name)
        return self

    def artifact(self, path: str) -> ArtifactRecord:
        """The artifact stored at ``path``; ``KeyError`` names what is there instead."""
        for item in self.artifacts:
            if item.path == path:
                return item
        raise KeyError(f"no artifact {path!r}; stored: {[a.path for a in self.artifacts]}")


def copy_stored_files(files: Mapping[str, Path], dest: Path) -> int:
    """Copy each stored file to ``dest/<its artifact path>`` (in chunks); how many were copied."""
    for artifact_path, source in files.items():
        out = dest / artifact_path
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, out)
    return len(files)

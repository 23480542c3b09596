"""Read a ``local`` backend run back from its JSONL directory."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tracelet.backends.local import local_root
from tracelet.snapshots import sha256_of
from tracelet.testing.points import PointSink, points_or_whole, with_points
from tracelet.testing.record import ArtifactRecord, ImageRecord, RunRecord, copy_stored_files


def _run_dir(run_id: str, root: str | os.PathLike[str] | None) -> Path:
    base = local_root(root)
    matches = [p for p in base.glob(f"*/{run_id}") if (p / "run.json").is_file()]
    if not matches:
        raise FileNotFoundError(f"no local run {run_id!r} under {base}")
    return matches[0]


def read_local_artifact(run_id: str, path: str, root: str | os.PathLike[str] | None = None) -> bytes:
    """The bytes of the artifact logged under ``path`` (the last one, if logged twice)."""
    run_dir = _run_dir(run_id, root)
    found: bytes | None = None
    for event in _events(run_dir):
        if event["kind"] == "artifact" and event["artifact_path"] == path:
            found = (run_dir / event["local_path"]).read_bytes()
    if found is None:
        raise FileNotFoundError(f"local run {run_id!r} holds no artifact {path!r}")
    return found


def read_local_run(
    run_id: str, root: str | os.PathLike[str] | None = None, points: PointSink | None = None
) -> RunRecord:
    """What ``<root>/<project>/<run_id>/`` holds (root: ``TRACELET_LOCAL_DIR`` or ``./tracelet-runs``).

    ``points``: where the metric points go instead of ``record.metrics`` (a run read in pieces).
    """
    sink = points_or_whole(points)
    run_dir = _run_dir(run_id, root)
    meta = json.loads((run_dir / "run.json").read_text())
    record = RunRecord(
        backend="local",
        run_id=run_id,
        project=meta["project"],
        run_name=meta["run_name"],
        status=meta["status"],
    )
    for event in _events(run_dir):
        kind = event["kind"]
        if kind == "metric":
            sink.add_point(event["name"], event["step"], event["value"], event["timestamp"])
        elif kind == "params":
            record.params.update(event["values"])
        elif kind == "tags":
            (record.system_tags if event["system"] else record.tags).update(event["values"])
        elif kind == "artifact":
            stored = run_dir / event["local_path"]  # hashed again, in chunks, from the stored bytes
            record.artifacts.append(
                ArtifactRecord(event["artifact_path"], stored.stat().st_size, sha256_of(stored))
            )
        elif kind == "image":
            record.images.append(ImageRecord(event["name"], event["step"], event["width"], event["height"]))
    record.artifacts.sort(key=lambda a: a.path)
    record.images.sort(key=lambda i: (i.name, i.step))
    return with_points(record, sink)


def read_local_tree(run_id: str, path: str, dest: Path, root: str | os.PathLike[str] | None = None) -> int:
    """Every artifact at or under ``path`` (the last one logged at each path), copied into ``dest``."""
    run_dir = _run_dir(run_id, root)
    stored: dict[str, Path] = {}
    for event in _events(run_dir):
        if event["kind"] == "artifact" and _under(event["artifact_path"], path):
            stored[event["artifact_path"]] = run_dir / event["local_path"]
    return copy_stored_files(stored, dest)


def read_local_images(
    run_id: str, dest: Path, root: str | os.PathLike[str] | None = None
) -> list[tuple[ImageRecord, Path]]:
    """Each image of the run and its stored PNG (read in place: ``dest`` is not needed)."""
    run_dir = _run_dir(run_id, root)
    found = []
    for event in _events(run_dir):
        if event["kind"] == "image":
            image = ImageRecord(event["name"], event["step"], event["width"], event["height"])
            found.append((image, run_dir / event["local_path"]))
    return found


def read_local_system_tags(run_id: str, root: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """The run's ``tracelet.*`` tags; only its tag lines are parsed."""
    tags: dict[str, str] = {}
    with open(_run_dir(run_id, root) / "events.jsonl", encoding="utf-8") as f:
        for line in f:
            if '"kind": "tags"' in line and line.endswith("\n"):
                event = json.loads(line)
                if event["system"]:
                    tags.update(event["values"])
    return tags


def _events(run_dir: Path) -> Iterator[dict[str, Any]]:
    """The run's events in order; a last line cut short (a writer killed mid-line) is not one."""
    with open(run_dir / "events.jsonl", encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                return
            yield json.loads(line)


def _under(artifact_path: str, path: str) -> bool:
    return not path or artifact_path == path or artifact_path.startswith(path + "/")

"""The ``local`` backend: one JSONL file per run, needing no optional package.

Layout: ``<root>/<project>/<run_id>/`` with ``run.json`` (project, run name, status),
``events.jsonl`` (one event per line, the spool's format) and ``artifacts/``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from tracelet import config
from tracelet.atomic import write_json_atomic
from tracelet.backends.base import RUNNING, Backend, RunInfo
from tracelet.backends.files import Placement, tree_files
from tracelet.events import Artifact, Event, Image, Status, Tags, to_json
from tracelet.snapshots import sha256_of

DEFAULT_ROOT = "tracelet-runs"


def local_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The directory runs are written under: the option, ``TRACELET_LOCAL_DIR``, or ``./tracelet-runs``."""
    return Path(root or config.local_dir() or DEFAULT_ROOT).resolve()


class LocalBackend(Backend):
    """Writes every event as one JSON line; artifacts and images are copied beside it."""

    name = "local"
    option_keys = frozenset({"root"})
    late_system_tags = True

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._dir: Path | None = None
        self._events: TextIO | None = None
        self._meta: dict[str, Any] = {}
        #: the git state, still being read when the run was created: written with its first batch
        self._late_tags: Callable[[], dict[str, str]] | None = None
        self._placement = Placement()

    def _open(self, run_dir: Path) -> None:
        self._dir = run_dir
        (run_dir / "artifacts").mkdir(parents=True, exist_ok=True)
        self._events = open(run_dir / "events.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def start(self, info: RunInfo) -> str:
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        run_dir = local_root(self.options.get("root")) / info.project / run_id
        self._open(run_dir)
        self._meta = {
            "run_id": run_id,
            "project": info.project,
            "run_name": info.run_name,
            "status": RUNNING,
            "start_time": time.time(),
        }
        write_json_atomic(run_dir / "run.json", self._meta)
        self.run_id = run_id
        if info.system_tags:
            self.write([Tags(dict(info.system_tags), system=True)])
        # The git state is still being read (it started with the open): it goes with the first
        # batch (or the close), so a short run does not wait for two git calls here.
        self._late_tags = info.pending_tags
        return run_id

    def attach(self, run_id: str) -> None:
        root = local_root(self.options.get("root"))
        matches = [p for p in root.glob(f"*/{run_id}") if (p / "run.json").is_file()]
        if not matches:
            raise FileNotFoundError(f"no local run {run_id!r} under {root}")
        _drop_a_cut_line(matches[0] / "events.jsonl")
        self._open(matches[0])
        self._meta = json.loads((matches[0] / "run.json").read_text())
        self.run_id = run_id

    def write(self, events: Sequence[Event]) -> None:
        if self._events is None or self._dir is None:
            raise RuntimeError("LocalBackend.write() before start()")
        lines = []
        if self._late_tags is not None:
            late = self._late_tags()
            if late:
                lines.append(json.dumps(to_json(Tags(late, system=True))))
        for event in events:
            if isinstance(event, Artifact):  # a folder: one record per file, as if logged one by one
                for file in tree_files(event):
                    target = self._dir / "artifacts" / file.artifact_path
                    self._placement.place(file, target)  # the snapshot itself, linked (else copied)
                    # hashed here, on the writer's thread
                    stored = replace(
                        file, local_path=str(target.relative_to(self._dir)), sha256=sha256_of(target)
                    )
                    lines.append(json.dumps(to_json(stored)))
                continue
            data = to_json(event)
            if isinstance(event, Image):
                target = self._dir / "images" / event.name / f"{event.step}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(event.local_path, target)
                data["local_path"] = str(target.relative_to(self._dir))
            elif isinstance(event, Status):  # shown now; the run stays open, its close has the last word
                self._meta["status"] = event.status
                write_json_atomic(self._dir / "run.json", self._meta)
            lines.append(json.dumps(data))
        if lines:
            self._events.write("\n".join(lines) + "\n")
        self._events.flush()
        self._late_tags = None

    def notes(self) -> list[str]:
        return self._placement.notes()

    def finish(self, status: str) -> None:
        assert self._events is not None
        assert self._dir is not None
        if self._late_tags is not None:  # a run that logged nothing still records what it ran on
            self.write([])
        self._events.flush()
        os.fsync(self._events.fileno())
        self._events.close()
        self._meta.update(status=status, end_time=time.time())
        write_json_atomic(self._dir / "run.json", self._meta)


def _drop_a_cut_line(events: Path) -> None:
    """Cut a last line a killed writer left short, so what is appended starts a line of its own."""
    try:
        with open(events, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(max(0, size - (1 << 20)))
            tail = f.read()
            if tail.endswith(b"\n"):
                return
            cut = tail.rfind(b"\n")
            f.truncate(size - len(tail) + cut + 1 if cut >= 0 else 0)
    except FileNotFoundError:
        return

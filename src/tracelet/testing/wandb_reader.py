"""Read a W&B run back from its local ``run-<id>.wandb`` file, with no server and no wandb service.

The file is what ``wandb sync`` uploads, so it is the ground truth of what W&B got.
Its LevelDB-style framing is parsed by :func:`tracelet.backends.wandb_log.iter_log_file`
(the backend needs it too, to know when ``finish`` has reached the disk); only the
payloads are decoded with wandb's own protobuf ``Record``. A record cut short at the
end of the file (a run still being written) is ignored, so a live run reads as "running".
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from tracelet.backends.naming import SYSTEM_TAG_PREFIX, label_to_tag, status_from_exit_code
from tracelet.backends.wandb import STEP_KEY
from tracelet.backends.wandb_log import iter_log_file
from tracelet.snapshots import sha256_of
from tracelet.testing.points import PointSink, points_or_whole, with_points
from tracelet.testing.record import ArtifactRecord, ImageRecord, RunRecord, copy_stored_files

log = logging.getLogger(__name__)

#: ``FilesItem.type`` of files wandb registers for itself (requirements.txt, ...).
FILE_TYPE_WANDB = 1


def read_wandb_run(
    run_id: str, wandb_dir: str | os.PathLike[str] | None = None, points: PointSink | None = None
) -> RunRecord:
    """Everything the W&B SDK recorded for ``run_id`` under ``wandb_dir``.

    ``wandb_dir`` is what ``WANDB_DIR`` / ``dir=`` was (default: ``WANDB_DIR``, else the
    current directory); its ``wandb/`` (or ``.wandb/``) folder, the run folder itself, or
    the folder holding run folders are all accepted. A resumed run has one folder per
    session; they are read oldest first, as one run. ``points``: where the metric points go
    instead of ``record.metrics`` (a run read in pieces: the log is read a window at a time).
    """
    sink = points_or_whole(points)
    return with_points(_replay(run_id, wandb_dir, sink=sink).to_record(), sink)


def _replay(
    run_id: str,
    wandb_dir: str | os.PathLike[str] | None,
    only: tuple[str, ...] | None = None,
    sink: PointSink | None = None,
) -> _State:
    """The run's records applied in order, every session's (``only``: records of those types alone;
    ``sink``: where the points go, none kept when it is ``None``)."""
    from wandb.proto import wandb_internal_pb2 as pb

    state = _State(run_id, sink)
    for run_dir in _find_run_dirs(run_id, wandb_dir):
        state.run_dir = run_dir
        for payload in iter_log_file(run_dir / f"run-{run_id}.wandb"):
            record = pb.Record()  # type: ignore[attr-defined]  # protobuf classes are made at runtime
            record.ParseFromString(payload)
            if only is None or record.WhichOneof("record_type") in only:
                state.apply(record)
    return state


def read_wandb_images(
    run_id: str, dest: Path, wandb_dir: str | os.PathLike[str] | None = None
) -> list[tuple[ImageRecord, Path]]:
    """Each image of the offline run and its file in the run folder's ``media/`` (read in place)."""
    state = _replay(run_id, wandb_dir, only=("history",))
    return [(image, file) for image, file in state.image_files if file.is_file()]


def read_wandb_system_tags(run_id: str, wandb_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """The run's ``tracelet.*`` fields (config and tags); its history rows are not applied."""
    state = _replay(run_id, wandb_dir, only=("run", "config"))
    tags = dict(state.system_fields)
    for label in state.labels:
        key, value = label_to_tag(label)
        if key.startswith(SYSTEM_TAG_PREFIX):
            tags[key] = value
    return tags


def read_wandb_artifact(run_id: str, path: str, wandb_dir: str | os.PathLike[str] | None = None) -> bytes:
    """The bytes of one file the offline run saved: ``files/<path>`` of its newest session that has it,
    else the file of that path in a folder it logged as a W&B Artifact."""
    for run_dir in reversed(_find_run_dirs(run_id, wandb_dir)):
        file = run_dir.joinpath("files", *path.split("/"))
        if file.is_file():
            return file.read_bytes()
    in_folder = _replay(run_id, wandb_dir, only=("artifact",)).files.get(path)
    if in_folder is not None and in_folder.is_file():
        return in_folder.read_bytes()
    raise FileNotFoundError(f"W&B run {run_id!r} holds no file {path!r}")


def read_wandb_tree(
    run_id: str, path: str, dest: Path, wandb_dir: str | os.PathLike[str] | None = None
) -> int:
    """Every file the offline run saved at or under ``path``, copied into ``dest``.

    The files are found in the run folders' ``files/`` directly (the newest session's copy of
    each file wins) and in the manifests of the folders logged as W&B Artifacts, the run's
    log parsed for those records only; for ``path=""`` the whole log is parsed (W&B's own
    files and the images are then left out, as :func:`read_wandb_run` leaves them out).
    """
    if not path:
        return copy_stored_files(_replay(run_id, wandb_dir).stored_files(), dest)
    found: dict[str, Path] = {}
    for logged, file in _replay(run_id, wandb_dir, only=("artifact",)).files.items():
        if logged == path or logged.startswith(f"{path}/"):
            found[logged] = file
    for run_dir in _find_run_dirs(run_id, wandb_dir):  # oldest first: a newer session's file wins
        base = run_dir.joinpath("files", *path.split("/"))
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for file in files:
            found[f"{path}/{file.relative_to(base).as_posix()}" if file != base else path] = file
    return copy_stored_files({logged: file for logged, file in found.items() if file.is_file()}, dest)


def _find_run_dirs(run_id: str, wandb_dir: str | os.PathLike[str] | None) -> list[Path]:
    """The folders holding ``run-<id>.wandb``, oldest first (their names start with the time)."""
    root = Path(wandb_dir if wandb_dir is not None else os.environ.get("WANDB_DIR") or os.getcwd())
    filename = f"run-{run_id}.wandb"
    candidates = [root]
    for base in (root / "wandb", root / ".wandb", root):
        if base.is_dir():
            candidates.extend(base.iterdir())
    # ``latest-run`` is a symlink to a run folder: resolving keeps one copy, under its real name.
    found = {path.resolve() for path in candidates if (path / filename).is_file()}
    if not found:
        raise FileNotFoundError(f"no W&B run {run_id!r} ({filename}) under {root}")
    return sorted(found, key=_folder_time)


def _folder_time(path: Path) -> str:
    """``offline-run-20240101_120000-<id>`` -> ``20240101_120000`` (sorts by time)."""
    match = re.search(r"\d{8}_\d{6}", path.name)
    return match.group(0) if match else path.name


class _State:
    """The run as the records build it up, one record at a time."""

    def __init__(self, run_id: str, sink: PointSink | None) -> None:
        self.run_id = run_id
        self.sink = sink
        self.run_dir: Path | None = None
        self.project = ""
        self.run_name = ""
        self.seen_run = False
        self.exit_code: int | None = None
        self.labels: list[str] = []
        self.system_fields: dict[str, str] = {}
        self.params: dict[str, str] = {}
        self.images: list[ImageRecord] = []
        self.image_paths: set[str] = set()
        self.image_files: list[tuple[ImageRecord, Path]] = []
        self.not_read: dict[str, int] = {}
        #: every file the run holds, by its path in the run: saved (``files/``) or in a logged folder
        self.files: dict[str, Path] = {}
        #: the files that came with a logged W&B Artifact: the Artifact's name, by path
        self.artifact_of: dict[str, str] = {}

    def apply(self, record: Any) -> None:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            self.seen_run = True
            self.project = run.project or self.project
            self.run_name = run.display_name or self.run_name
            # Each run record carries the full tag list as of then: the last one wins.
            self.labels = list(run.tags)
            self._config(run.config)
        elif kind == "config":
            self._config(record.config)
        elif kind == "history":
            self._history(record.history)
        elif kind == "files":
            assert self.run_dir is not None
            for item in record.files.files:
                if item.type != FILE_TYPE_WANDB:  # saved again later: the later bytes win
                    path = item.path.replace(os.sep, "/")
                    self.files[path] = self.run_dir.joinpath("files", *path.split("/"))
        elif kind == "artifact":
            self._artifact(record.artifact)
        elif kind == "exit":
            self.exit_code = int(record.exit.exit_code)

    def _artifact(self, artifact: Any) -> None:
        """A logged W&B Artifact (a folder): each file of its manifest, where W&B will read it from.

        Its paths are the files' paths in the run. A manifest too large for the record (over
        100,000 files) is in a gzipped JSON-lines file the record names.
        """
        manifest = artifact.manifest
        entries: list[tuple[str, str]] = [(e.path, e.local_path) for e in manifest.contents]
        if manifest.manifest_file_path:
            with gzip.open(manifest.manifest_file_path, "rt", encoding="utf-8") as lines:
                for line in lines:
                    entry = json.loads(line)
                    entries.append((entry["path"], entry.get("local_path") or ""))
        for path, local_path in entries:
            if not local_path:  # a reference to another store (s3://...): not a file of this run
                self._unread(f"W&B artifact references ({artifact.name!r})")
                continue
            self.files[path] = Path(local_path)
            self.artifact_of[path] = artifact.name

    def stored_files(self) -> dict[str, Path]:
        """The run's files that are on disk, by path, images left out."""
        stored = {}
        for path, file in self.files.items():
            if path in self.image_paths:
                continue
            if not file.is_file():  # registered, but its bytes never landed
                log.debug("W&B run %s: %s is registered but missing", self.run_id, file)
                continue
            stored[path] = file
        return stored

    def _config(self, config: Any) -> None:
        for item in config.update:
            key = _key(item)
            if key == "_wandb":
                continue
            value = json.loads(item.value_json) if item.value_json else None
            text = value if isinstance(value, str) else json.dumps(value)
            # user params can never start with "tracelet" (a reserved prefix): these are tracelet's own
            (self.system_fields if key.startswith(SYSTEM_TAG_PREFIX) else self.params)[key] = text
        for item in config.remove:
            self.params.pop(_key(item), None)

    def _history(self, history: Any) -> None:
        """One row: scalar columns become points; ``image-file`` columns become images."""
        scalars: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for item in history.item:
            path = [item.key] if item.key else list(item.nested_key)
            if not path:
                continue
            value = _history_value(item)
            if len(path) == 1:
                scalars[path[0]] = value
            else:
                nested.setdefault(path[0], {})[path[1]] = value
        step_value = scalars.get(STEP_KEY, scalars.get("_step"))
        if step_value is None:
            return
        step = int(step_value)
        stamp = scalars.get("_timestamp")  # the row's wall time, seconds: every point in it shares it
        when = float(stamp) if isinstance(stamp, (int, float)) else 0.0
        for key, value in scalars.items():
            if key == STEP_KEY or key.startswith("_"):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if self.sink is not None:
                    self.sink.add_point(key, step, float(value), when)
            elif isinstance(value, dict) and value.get("_type"):  # a media object kept whole
                self._unread(f"W&B {value['_type']} values ({key!r})")
            elif value is not None:
                self._unread(f"W&B history values that are not numbers ({key!r})")
        for key, fields in nested.items():
            if fields.get("_type") != "image-file":
                self._unread(f"W&B {fields.get('_type') or 'nested'} values ({key!r})")
            else:
                image = ImageRecord(key, step, int(fields["width"]), int(fields["height"]))
                self.images.append(image)
                if isinstance(fields.get("path"), str) and self.run_dir is not None:
                    self.image_paths.add(fields["path"])
                    self.image_files.append(
                        (image, self.run_dir.joinpath("files", *fields["path"].split("/")))
                    )

    def _unread(self, what: str) -> None:
        self.not_read[what] = self.not_read.get(what, 0) + 1

    def to_record(self) -> RunRecord:
        if not self.seen_run:
            raise ValueError(f"W&B run {self.run_id!r} has no run record")
        tags: dict[str, str] = {}
        system_tags: dict[str, str] = dict(self.system_fields)
        for label in self.labels:
            key, value = label_to_tag(label)
            (system_tags if key.startswith(SYSTEM_TAG_PREFIX) else tags)[key] = value
        stored = self.stored_files()
        artifacts = [  # hashed in chunks, never read whole
            ArtifactRecord(path, file.stat().st_size, sha256_of(file)) for path, file in stored.items()
        ]
        # An Artifact's files wait in W&B's staging cache until it is synced, and W&B deletes them
        # there once uploaded: what the log names and the disk no longer holds is said, not dropped.
        for path, name in self.artifact_of.items():
            if path not in stored and path not in self.image_paths:
                self._unread(f"W&B artifact files no longer on disk ({name!r})")
        return RunRecord(
            backend="wandb",
            run_id=self.run_id,
            project=self.project,
            run_name=self.run_name,
            status="running" if self.exit_code is None else status_from_exit_code(self.exit_code),
            params=self.params,
            tags=tags,
            system_tags=system_tags,
            artifacts=artifacts,
            images=self.images,
            not_read=self.not_read,
        )


def _key(item: Any) -> str:
    """A config or history key: flat ``key``, or ``nested_key`` parts joined the tracelet way."""
    return str(item.key) if item.key else "/".join(item.nested_key)


def _history_value(item: Any) -> Any:
    """A history cell: the typed ``value`` oneof when set, else the JSON text (``NaN`` included).

    wandb before 0.31 writes the JSON text only: its ``HistoryItem`` has no ``value`` oneof.
    """
    if "value" not in item.DESCRIPTOR.oneofs_by_name:
        return json.loads(item.value_json) if item.value_json else None
    which = item.WhichOneof("value")
    if which is None:
        return json.loads(item.value_json) if item.value_json else None
    if which == "none":
        return None
    if which == "json":
        return json.loads(item.json)
    return getattr(item, which)

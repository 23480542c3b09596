"""Read a ClearML offline session back into a :class:`RunRecord`, straight from its files.

An offline session is a folder ``<cache>/offline/<task id>/`` (and, once the task is
closed, ``<task id>.zip`` next to it) holding:

* ``task.json`` - the task: ``name``, ``project_name``, ``tags``, ``hyperparams``
  (``{section: {name: {value, type, ...}}}``), ``execution.artifacts`` (``key``, ``uri``)
  and, when tracelet closed it, ``status``;
* ``metrics.jsonl`` - one JSON *list* of events per line; scalars are
  ``training_stats_scalar`` (``metric``, ``variant``, ``iter``, ``value``), debug images
  are ``training_debug_image`` (``metric``, ``variant``, ``iter``, ``url``, ``key``);
* ``data/`` - the artifact and image files; ``uri``/``url`` are absolute paths under the
  folder named by ``task.json``'s ``offline_folder``.

The reader recomputes sizes and sha256 from the stored bytes and image sizes from the PNG
header, so it reports what actually landed rather than what ClearML says about it. It
needs no ClearML import except to find ClearML's cache folder when none is given.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from tracelet.backends.clearml import FOLDER_METADATA, PARAMS_SECTION, PROPERTIES_SECTION
from tracelet.backends.naming import SYSTEM_TAG_PREFIX, join_clearml, label_to_tag
from tracelet.images import png_size
from tracelet.testing.points import PointSink, points_or_whole, with_points
from tracelet.testing.record import ArtifactRecord, ImageRecord, RunRecord

#: ClearML task status -> tracelet status. Offline sessions carry no status unless
#: tracelet wrote one at finish, so a missing status means the run never finished.
STATUS_FROM_CLEARML: dict[str, str] = {
    "completed": "finished",
    "published": "finished",
    "publishing": "finished",
    "closed": "finished",
    "failed": "failed",
    "stopped": "killed",
    "created": "running",
    "queued": "running",
    "in_progress": "running",
}


class _Session:
    """Files of one offline session, whether unpacked in a folder or still in its zip."""

    def __init__(self, location: Path) -> None:
        self.folder: Path | None = None
        self.zip: zipfile.ZipFile | None = None
        if location.is_dir():
            self.folder = location
        else:
            self.zip = zipfile.ZipFile(location)

    def read(self, relative: str) -> bytes:
        if self.folder is not None:
            return (self.folder / relative).read_bytes()
        assert self.zip is not None
        return self.zip.read(relative)

    def open(self, relative: str) -> IO[bytes]:
        """A stored file, to read in chunks."""
        if self.folder is not None:
            return open(self.folder / relative, "rb")
        assert self.zip is not None
        return self.zip.open(relative)

    def exists(self, relative: str) -> bool:
        if self.folder is not None:
            return (self.folder / relative).is_file()
        assert self.zip is not None
        try:
            self.zip.getinfo(relative)
        except KeyError:
            return False
        return True

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def default_offline_root() -> Path:
    """ClearML's offline folder: ``<cache dir>/offline``.

    Asks ClearML when it is installed (that honours a ``clearml.conf`` cache setting);
    otherwise mirrors its rule: ``CLEARML_CACHE_DIR`` (or ``TRAINS_CACHE_DIR``), else
    ``~/.clearml/cache``.
    """
    try:
        from clearml.config import get_offline_dir
    except ImportError:
        base = os.environ.get("CLEARML_CACHE_DIR") or os.environ.get("TRAINS_CACHE_DIR") or "~/.clearml/cache"
        return Path(os.path.expandvars(os.path.expanduser(base))) / "offline"
    return Path(get_offline_dir())


def _locate(task_id: str, offline_dir: str | os.PathLike[str] | None) -> Path:
    """The session folder (preferred: it is complete even before close) or its zip."""
    given = Path(offline_dir) if offline_dir is not None else default_offline_root()
    if given.is_file():
        return given
    if (given / "task.json").is_file():
        return given
    candidates = [given / task_id, given / f"{task_id}.zip"]
    for candidate in candidates:
        if (candidate / "task.json").is_file() or candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no ClearML offline session for task {task_id!r} in {given} "
        f"(looked for {', '.join(str(c) for c in candidates)})"
    )


def _relative_data_path(uri: str, offline_folder: str, key: str | None = None) -> str:
    """Path inside the session of a file ClearML recorded by absolute ``uri``."""
    prefix = offline_folder.rstrip("/") + "/"
    if offline_folder and uri.startswith(prefix):
        return uri[len(prefix) :]
    if key:
        return f"data/{key}"
    raise ValueError(f"stored file {uri!r} is not inside the offline session {offline_folder!r}")


def _events(session: _Session) -> Iterator[dict[str, Any]]:
    """The session's events in order, ``metrics.jsonl`` read line by line (never whole)."""
    if not session.exists("metrics.jsonl"):
        return
    with session.open("metrics.jsonl") as raw, io.TextIOWrapper(raw, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield from json.loads(line)


def _stored_files(session: _Session, task: dict[str, Any]) -> Iterator[tuple[str, Callable[[], IO[bytes]]]]:
    """Each stored file as ``(artifact path, opener)``: a logged folder's archive file by file."""
    offline_folder = str(task.get("offline_folder") or "")
    for item in (task.get("execution") or {}).get("artifacts") or []:
        relative = _relative_data_path(item["uri"], offline_folder)
        metadata = {str(k): str(v) for k, v in item.get("display_data") or []}
        if item.get("type") != "archive" or FOLDER_METADATA not in metadata:
            yield item["key"], functools.partial(session.open, relative)
            continue
        prefix = metadata[FOLDER_METADATA]
        with (
            session.open(relative) as raw,
            zipfile.ZipFile(raw if raw.seekable() else io.BytesIO(raw.read())) as archive,
        ):
            for member in archive.infolist():
                if member.is_dir():
                    continue
                path = f"{prefix}/{member.filename}" if prefix else member.filename
                yield path, functools.partial(_member, archive, member.filename)


def _member(archive: zipfile.ZipFile, name: str) -> IO[bytes]:
    return archive.open(name)


def _hash_stream(stream: IO[bytes]) -> tuple[int, str]:
    """Size and sha256 of a stream, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def read_clearml_artifact(
    task_id: str, path: str, offline_dir: str | os.PathLike[str] | None = None
) -> bytes:
    """The bytes of the artifact stored under ``path`` (its key) in the task's offline session."""
    session = _Session(_locate(task_id, offline_dir))
    try:
        task = json.loads(session.read("task.json").decode("utf-8"))
        for stored, opener in _stored_files(session, task):
            if stored == path:
                with opener() as f:
                    return f.read()
    finally:
        session.close()
    raise FileNotFoundError(f"ClearML task {task_id!r} holds no artifact {path!r}")


def read_clearml_tree(
    task_id: str, path: str, dest: Path, offline_dir: str | os.PathLike[str] | None = None
) -> int:
    """Every artifact at or under ``path`` (a folder's archive file by file), written into ``dest``."""
    session = _Session(_locate(task_id, offline_dir))
    found = 0
    try:
        task = json.loads(session.read("task.json").decode("utf-8"))
        for stored, opener in _stored_files(session, task):
            if path and stored != path and not stored.startswith(path + "/"):
                continue
            out = dest / stored
            out.parent.mkdir(parents=True, exist_ok=True)
            with opener() as f, open(out, "wb") as w:
                shutil.copyfileobj(f, w)
            found += 1
    finally:
        session.close()
    return found


def read_clearml_run(
    task_id: str, offline_dir: str | os.PathLike[str] | None = None, points: PointSink | None = None
) -> RunRecord:
    """What ClearML stored offline for ``task_id``.

    ``offline_dir`` may be ClearML's offline folder (holding ``<task id>/`` and
    ``<task id>.zip``), the session folder itself, or the session's ``.zip``; by default
    it is ClearML's offline folder under its cache dir. ``points``: where the metric points go
    instead of ``record.metrics`` (a run read in pieces: ``metrics.jsonl`` is read line by line).
    """
    sink = points_or_whole(points)
    session = _Session(_locate(task_id, offline_dir))
    try:
        task = json.loads(session.read("task.json").decode("utf-8"))
        if task.get("id") != task_id:
            raise ValueError(f"session holds task {task.get('id')!r}, not {task_id!r}")
        offline_folder = str(task.get("offline_folder") or "")

        params = {
            name: "" if item.get("value") is None else str(item.get("value"))
            for name, item in (task.get("hyperparams") or {}).get(PARAMS_SECTION, {}).items()
        }

        tags: dict[str, str] = {}
        system_tags: dict[str, str] = {
            name: str(item.get("value") or "")
            for name, item in (task.get("hyperparams") or {}).get(PROPERTIES_SECTION, {}).items()
            if name.startswith(SYSTEM_TAG_PREFIX)
        }
        for label in task.get("tags") or []:
            key, value = label_to_tag(label)
            (system_tags if key.startswith(SYSTEM_TAG_PREFIX) else tags)[key] = value

        artifacts = []
        for path, opener in _stored_files(session, task):  # a folder's archive: file by file
            with opener() as f:
                size, sha256 = _hash_stream(f)
            artifacts.append(ArtifactRecord(path=path, size=size, sha256=sha256))

        images: list[ImageRecord] = []
        not_read: dict[str, int] = {}
        for event in _events(session):
            kind = event.get("type")
            if kind not in ("training_stats_scalar", "training_debug_image"):
                what = f"ClearML {kind or 'untyped'} events"
                not_read[what] = not_read.get(what, 0) + 1
            if kind == "training_stats_scalar":
                name = join_clearml(event["metric"], event["variant"])
                when = float(event.get("timestamp") or 0) / 1000
                sink.add_point(name, int(event["iter"]), float(event["value"]), when)
            elif kind == "training_debug_image":
                relative = _relative_data_path(event["url"], offline_folder, event.get("key"))
                width, height = png_size(session.read(relative))
                name = join_clearml(event["metric"], event["variant"])
                images.append(ImageRecord(name=name, step=int(event["iter"]), width=width, height=height))

        status = STATUS_FROM_CLEARML.get(str(task.get("status") or "in_progress"), "running")
        record = RunRecord(
            backend="clearml",
            run_id=task_id,
            project=str(task.get("project_name") or ""),
            run_name=str(task.get("name") or ""),
            status=status,
            params=params,
            tags=tags,
            system_tags=system_tags,
            artifacts=artifacts,
            images=images,
            not_read=not_read,
        )
        return with_points(record, sink)
    finally:
        session.close()


def read_clearml_system_tags(
    task_id: str, offline_dir: str | os.PathLike[str] | None = None
) -> dict[str, str]:
    """The task's ``tracelet.*`` properties and tags, from its ``task.json`` alone."""
    session = _Session(_locate(task_id, offline_dir))
    try:
        task = json.loads(session.read("task.json").decode("utf-8"))
    finally:
        session.close()
    tags = {
        name: str(item.get("value") or "")
        for name, item in (task.get("hyperparams") or {}).get(PROPERTIES_SECTION, {}).items()
        if name.startswith(SYSTEM_TAG_PREFIX)
    }
    for label in task.get("tags") or []:
        key, value = label_to_tag(label)
        if key.startswith(SYSTEM_TAG_PREFIX):
            tags[key] = value
    return tags


def read_clearml_images(
    task_id: str, dest: Path, offline_dir: str | os.PathLike[str] | None = None
) -> list[tuple[ImageRecord, Path]]:
    """Each debug image of the offline session and its PNG, written into ``dest``."""
    session = _Session(_locate(task_id, offline_dir))
    found: list[tuple[ImageRecord, Path]] = []
    try:
        task = json.loads(session.read("task.json").decode("utf-8"))
        offline_folder = str(task.get("offline_folder") or "")
        for event in _events(session):
            if event.get("type") != "training_debug_image":
                continue
            data = session.read(_relative_data_path(event["url"], offline_folder, event.get("key")))
            width, height = png_size(data)
            image = ImageRecord(
                join_clearml(event["metric"], event["variant"]), int(event["iter"]), width, height
            )
            out = dest / f"{len(found)}.png"
            out.write_bytes(data)
            found.append((image, out))
    finally:
        session.close()
    return found


__all__ = ["STATUS_FROM_CLEARML", "default_offline_root", "read_clearml_run"]

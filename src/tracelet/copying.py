"""Copy runs from one store to another: ``tracelet copy SRC DST`` and :func:`copy_run`.

Why it can: tracelet reads every store back into one :class:`~tracelet.testing.RunRecord` (its
readers) and writes every store (its backends). A copy is a read of the source, a write of the
same run through the target's backend (its bulk path: MLflow ``log_batch``, W&B history rows),
and a read-back of the target compared point by point with the source
(:func:`tracelet.testing.equivalence.compare`, forgiving only a store's documented inherent
differences).

Exactly once: the target run carries a ``tracelet.copied_from`` system tag (the source's address,
credentials stripped). Copying again finds it: a copy that equals its source adds nothing; one
that does not (a copier killed halfway) is removed and copied again, so the target ends with
every point once.

Addresses: a source run is ``local:<root>#<id>``, ``mlflow:<tracking uri>#<id>``,
``wandb:<offline run folder>`` (the folder holding ``run-<id>.wandb``) or
``clearml:<offline session folder>``; a target is a store without a run: ``local:<root>``,
``mlflow:<tracking uri>``, ``wandb:<dir>`` (as ``WANDB_DIR``), ``clearml:<dir>`` (as
``CLEARML_CACHE_DIR``). W&B and ClearML targets are offline runs, for ``wandb sync`` and
``Task.import_offline_session`` to upload later.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tracelet.backends.base import STATUSES, Backend, RunInfo
from tracelet.backends.registry import get_backend_class
from tracelet.events import Artifact, Event, Image, Metric, MetricClock, Params, Tags
from tracelet.redaction import Redactor, strip_url_userinfo
from tracelet.testing import RunPoints, read_artifact_tree, read_images, read_run_in_pieces, read_system_tags
from tracelet.testing import points as points_module
from tracelet.testing.equivalence import compare
from tracelet.testing.record import RunRecord
from tracelet.validation import SYSTEM_PREFIX, check_name, safe_name

log = logging.getLogger(__name__)

#: the stores a run can be copied from and to
STORES = ("local", "mlflow", "wandb", "clearml")

#: the system tag that names where a copied run came from (how a second copy finds the first)
COPIED_FROM = "tracelet.copied_from"

#: the stores copied to and from as offline folders only, and what uploads such a folder later
OFFLINE_ONLY = {"wandb": "`wandb sync`", "clearml": "`Task.import_offline_session`"}

#: metric points per ``Backend.write``: MLflow's ``log_batch`` takes at most 1,000 metrics a call
CHUNK = 1_000


#: called as points are sent: (points the target holds now, points of the run)
Progress = Callable[[int, int], None]


def _no_progress(done: int, total: int) -> None:
    """No one is watching."""


class CopyError(Exception):
    """A copy that did not happen, or did not verify; the message says which run and why."""


@dataclass(frozen=True)
class Address:
    """A store, where it is (a folder or a tracking URI) and, for a source, a run in it."""

    store: str
    location: str
    run_id: str | None = None
    #: the run was named by its own folder (``wandb:<run folder>``): the address is written that way
    by_folder: bool = False

    @classmethod
    def parse(cls, text: str, *, role: str) -> Address:
        """``store:location[#run]``; ``role`` is ``"source"`` or ``"target"``, named in errors."""
        shown = strip_url_userinfo(text)  # what an error may repeat: never a credential
        store, sep, rest = text.partition(":")
        if not sep or store not in STORES:
            raise ValueError(
                f"{role} {shown!r}: not a store address; use one of "
                + ", ".join(f"{s}:<{_LOCATION[s]}>" for s in STORES)
            )
        location, hash_, run_id = rest.rpartition("#") if "#" in rest else (rest, "", "")
        if not location:
            raise ValueError(f"{role} {shown!r}: {store}: needs a {_LOCATION[store]}")
        if hash_ and not run_id:
            raise ValueError(f"{role} {shown!r}: an empty run id after '#'")
        if store in OFFLINE_ONLY and location.startswith(("http://", "https://")):
            raise ValueError(
                f"{role} {shown!r}: {store} runs are copied offline only, as a folder ({OFFLINE_ONLY[store]} "
                "uploads it later); name the folder, not a server"
            )
        address = cls(store, location, run_id or None)
        if role == "target" and address.run_id:
            raise ValueError(f"target {shown!r}: a target is a store, not a run (drop '#{run_id}')")
        if role == "source" and address.run_id is None and store in ("wandb", "clearml"):
            address = _run_folder(address)
        return address

    def __str__(self) -> str:
        return f"{self.store}:{self.location}" + (
            f"#{self.run_id}" if self.run_id and not self.by_folder else ""
        )

    def public(self) -> str:
        """This address with any credentials in it removed (what the target and the logs may hold)."""
        return strip_url_userinfo(str(self))

    def with_run(self, run_id: str, by_folder: bool = False) -> Address:
        return Address(self.store, self.location, run_id, by_folder)

    def reader_options(self) -> dict[str, Any]:
        """The options :func:`tracelet.testing.read_run` takes for this store."""
        if self.store == "local":
            return {"root": self.location}
        if self.store == "mlflow":
            return {"tracking_uri": self.location}
        if self.store == "wandb":
            return {"wandb_dir": self.location}
        return {"offline_dir": self._clearml_offline()}

    def _clearml_offline(self) -> str:
        folder = Path(self.location)
        if (folder / "task.json").is_file() or folder.name == "offline":
            return self.location
        return str(folder / "offline")  # a cache dir, as CLEARML_CACHE_DIR: sessions are in offline/

    def backend_options(self) -> dict[str, Any]:
        """The target's ``backend_options``: always an offline run for W&B and ClearML."""
        if self.store == "local":
            return {"root": self.location}
        if self.store == "mlflow":
            return {"tracking_uri": self.location}
        if self.store == "wandb":
            return {"dir": self.location, "mode": "offline"}
        return {"offline": True}


_LOCATION = {
    "local": "root>#<run id",
    "mlflow": "tracking uri>#<run id",
    "wandb": "offline run folder",
    "clearml": "offline session folder",
}


def _run_folder(address: Address) -> Address:
    """A W&B or ClearML source named by its run folder: the run id is read from the folder.

    A folder of runs (a ``WANDB_DIR``, ClearML's cache or offline folder) stays a store without a
    run id: with ``--project`` every run of that project in it is copied.
    """
    folder = Path(address.location)
    if not folder.is_dir():
        raise ValueError(f"source {address.public()}: no such folder")
    if address.store == "wandb":
        found = sorted(folder.glob("run-*.wandb"))
        if len(found) > 1:
            raise ValueError(f"source {address.public()}: holds {len(found)} runs; name one with '#<run id>'")
        return address.with_run(found[0].stem.removeprefix("run-"), by_folder=True) if found else address
    task = folder / "task.json"
    if not task.is_file():
        return address
    return address.with_run(str(json.loads(task.read_text(encoding="utf-8"))["id"]), by_folder=True)


@dataclass
class CopyResult:
    """One copied run: where from, where to (with the new run id), and what was sent."""

    source: str
    target: str
    points: int
    artifacts: int
    new_points: int
    verified: bool
    seconds: float = 0.0
    bytes: int = 0
    not_copied: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` line: source, target, points, artifacts, new_points, verified (and the rest)."""
        return {**asdict(self), "seconds": round(self.seconds, 3)}


def copy_run(
    source: str | Address,
    target: str | Address,
    *,
    project: str | None = None,
    name: str | None = None,
    verify: bool = True,
    progress: Progress | None = None,
) -> CopyResult:
    """Copy one run from ``source`` (a run's address) to ``target`` (a store's address).

    The run keeps its project and name unless ``project``/``name`` say otherwise. ``progress`` is
    called with the points sent so far and the run's total, as they are sent. Raises
    ``ValueError`` for bad input (before anything is written) and :class:`CopyError` when the
    copy does not verify (the message lists what differs), or when the target already holds a
    finished copy that differs from the source (it is left alone: it may hold a user's edits).
    """
    src = source if isinstance(source, Address) else Address.parse(source, role="source")
    dst = target if isinstance(target, Address) else Address.parse(target, role="target")
    if src.run_id is None:
        raise ValueError(
            f"source {src.public()}: names no run (add '#<run id>', or copy a project with copy_project)"
        )
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tracelet-copy-") as work, ExitStack() as kept:
        # the source and every target run read are held on disk, per key: a copy needs memory for
        # a chunk of points, whatever the run holds (tracelet.testing.read_run_in_pieces)
        pieces = _Pieces(Path(work), kept)
        try:
            record, points = pieces.read(src)
        except FileNotFoundError as exc:
            raise ValueError(f"source {src.public()}: {exc}") from None
        if record.status not in STATUSES:
            raise ValueError(
                f"source {src.public()}: the run is still {record.status!r}; copy it once it ended"
            )
        origin = src.public()
        project = project or record.project
        run_name = name or record.run_name
        _check_names(record, points, dst, origin)
        expected = _redacted(record, Redactor.from_env())  # what is written, and what the target must hold
        with _one_copier(origin, dst), _target_environment(dst):
            resume: tuple[RunRecord, RunPoints] | None = None
            for run_id in _find_copies(dst, origin, project):
                try:
                    held, held_points = pieces.read(dst.with_run(run_id))
                except Exception as exc:  # a run the journal names, cut too short to read: removed
                    log.warning(
                        "tracelet copy: an unfinished copy of %s (run %s) is removed: %r", origin, run_id, exc
                    )
                    _remove(dst, run_id)
                    continue
                differences = compare(expected, held, reference_points=points, other_points=held_points)
                if not differences:
                    log.info("tracelet copy: %s is already in %s as run %s", origin, dst.public(), run_id)
                    _journal(dst).finished(origin)
                    target_address = dst.with_run(run_id).public()
                    return CopyResult(
                        origin,
                        target_address,
                        points.total,
                        len(record.artifacts),
                        0,
                        True,
                        time.monotonic() - began,
                    )
                if held.status in STATUSES:
                    table = "\n".join(f"  - {p}" for p in differences)
                    raise CopyError(
                        f"{dst.with_run(run_id).public()} is a finished copy of {origin} that differs "
                        f"from it (left alone):\n{table}"
                    )
                if dst.store in RESUMABLE and resume is None and _holds_a_prefix(points, held_points):
                    log.warning("tracelet copy: resuming the unfinished copy of %s (run %s)", origin, run_id)
                    resume = held, held_points
                    continue
                log.warning(
                    "tracelet copy: an unfinished copy of %s (run %s) is removed, copied again",
                    origin,
                    run_id,
                )
                _remove(dst, run_id)
            written = _write(
                expected,
                points,
                src,
                dst,
                RunInfo(project, run_name, {**record.system_tags, COPIED_FROM: origin}),
                resume,
                progress or _no_progress,
            )
            verified = False
            if verify:
                held, held_points = pieces.read(dst.with_run(written.run_id))
                problems = compare(expected, held, reference_points=points, other_points=held_points)
                if problems:
                    table = "\n".join(f"  - {p}" for p in problems)
                    raise CopyError(
                        f"the copy of {origin} to {dst.with_run(written.run_id).public()} differs:\n{table}"
                    )
                verified = True
            _journal(dst).finished(origin)
        return CopyResult(
            origin,
            dst.with_run(written.run_id).public(),
            points.total,
            len(record.artifacts),
            written.points,
            verified,
            time.monotonic() - began,
            written.bytes,
            written.not_copied,
        )


class _Pieces:
    """Runs read in pieces into folders of one copy's work folder, each closed when the copy ends."""

    def __init__(self, work: Path, kept: ExitStack) -> None:
        self.work = work
        self.kept = kept
        self.reads = 0

    def read(self, address: Address) -> tuple[RunRecord, RunPoints]:
        assert address.run_id is not None
        self.reads += 1
        folder = self.work / f"points-{self.reads}"
        record, points = read_run_in_pieces(address.store, address.run_id, folder, **address.reader_options())
        self.kept.enter_context(points)
        return record, points


def _check_names(record: RunRecord, points: RunPoints, dst: Address, origin: str) -> None:
    """Every name and param value the target must hold, checked before anything is written.

    tracelet's names are those every store accepts (:func:`tracelet.validation.check_name`): a run
    written by a store's own client may hold others. The error says which, and what tracelet would
    map it to (:func:`tracelet.validation.safe_name`, as for TensorBoard tags).
    """
    named = [("metric", key) for key in points.workflow_keys()]
    named += [("param", key) for key in record.params] + [("tag", key) for key in record.tags]
    named += [("image", image.name) for image in record.images]
    for what, key in named:
        try:
            check_name(key, what)
        except ValueError as exc:
            raise ValueError(
                f"source {origin}: {dst.store} cannot hold {what} {key!r} as tracelet writes stores ({exc}); "
                f"tracelet would map it to {safe_name(key)!r}"
            ) from None
    limit = get_backend_class(dst.store)(dst.backend_options()).param_value_limit()
    for key, value in record.params.items():
        if limit is not None and len(value) > limit:
            raise ValueError(
                f"source {origin}: param {key!r} holds {len(value)} characters; "
                f"{dst.store} takes at most {limit}"
            )


#: targets whose unfinished copy is resumed (the run can be reopened); W&B and ClearML offline runs
#: cannot be, so theirs is removed and copied again
RESUMABLE = ("local", "mlflow")


def _holds_a_prefix(expected: RunPoints, held: RunPoints) -> bool:
    """True when each key the unfinished copy holds is the start of the source's series (steps)."""
    for key in held.all_keys():
        if held.count(key) > expected.count(key):
            return False
        for ours, theirs in zip(expected.points(key), held.points(key), strict=False):  # held's length
            if ours.step != theirs.step:
                return False
    return True


@contextmanager
def _one_copier(origin: str, dst: Address) -> Iterator[None]:
    """One copier at a time per (source, target): a second one waits for the first (POSIX ``flock``)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    digest = hashlib.sha256(f"{origin}\n{dst.public()}".encode()).hexdigest()[:32]
    folder = Path(tempfile.gettempdir()) / "tracelet-copy-locks"
    folder.mkdir(exist_ok=True)
    with open(folder / f"{digest}.lock", "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning(
                "tracelet copy: another copy of %s to %s is running; waiting for it", origin, dst.public()
            )
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _redacted(record: RunRecord, redactor: Redactor) -> RunRecord:
    """The source as the target gets it: params and tags through the redaction ``log_params`` applies."""
    return replace(
        record,
        params={k: str(redactor.value(k, v)) for k, v in record.params.items()},
        tags={k: str(redactor.value(k, v)) for k, v in record.tags.items()},
    )


def _ordered_points(points: RunPoints) -> Iterator[tuple[str, int, float, float]]:
    """Every point with its timestamp, each key's in its order, merged by step: points of one step
    sit side by side (a W&B history row holds one step: interleaved keys make one row per step,
    not one per point). A point whose store kept no time gets the copy's. Each key is read a chunk
    at a time, the chunks sharing :data:`tracelet.testing.points.CHUNK` points: the merge holds about
    as many, however many keys the run has."""
    now = time.time()
    # the workflow's keys first, then the source's own system/ series, as a whole read orders them
    keys = sorted(points.all_keys(), key=lambda key: key.startswith(SYSTEM_PREFIX))
    chunk = max(64, points_module.CHUNK // max(1, len(keys)))

    def stream(index: int, key: str) -> Iterator[tuple[int, int, str, float, float]]:
        for piece in points.series(key, chunk):
            for step, value, when in piece:
                yield step, index, key, value, when if when > 0 else now

    # (step, the key's place) orders the merge: it never compares past them, and of two points of
    # one step the earlier key's comes first, as a stable merge keeps them
    merged = heapq.merge(*(stream(index, key) for index, key in enumerate(keys)))
    for step, _, key, value, when in merged:
        yield key, step, value, when


@dataclass(frozen=True)
class _Written:
    run_id: str
    points: int
    bytes: int
    not_copied: list[str]


def _write(
    record: RunRecord,
    points: RunPoints,
    src: Address,
    dst: Address,
    info: RunInfo,
    resume: tuple[RunRecord, RunPoints] | None,
    progress: Progress,
) -> _Written:
    """Open the target run (or reopen ``resume``, an unfinished copy), send what ``record`` and
    ``points`` (the source, redacted) hold and it lacks, close it with the source's status."""
    backend_cls = get_backend_class(dst.store)
    backend_cls.ensure_installed()
    backend: Backend = backend_cls(dst.backend_options())
    if resume is None:
        run_id = backend.start(info)
        _journal(dst).opened(info.system_tags[COPIED_FROM], run_id)
        held = RunRecord(dst.store, run_id, info.project, info.run_name, "running")
        held_points: RunPoints | None = None
    else:
        held, held_points = resume
        backend.attach(held.run_id)
        run_id = held.run_id
    not_copied = [f"{what}: {count}" for what, count in record.not_read.items()]
    if not_copied:
        log.warning(
            "tracelet copy: %s holds what no reader carries, not copied: %s",
            src.public(),
            "; ".join(not_copied),
        )
    sent_bytes = sent_points = 0
    with tempfile.TemporaryDirectory(prefix="tracelet-copy-") as staging:
        head: list[Event] = []
        if record.params:
            head.append(Params(dict(record.params)))
        if record.tags:
            head.append(Tags(dict(record.tags)))
        if head:
            backend.write(head)
        # the source's times, made strictly increasing per key to the millisecond (MLflow keeps one
        # point per key, timestamp, step and value: two equal ones would be one); a resumed copy's
        # go on after what it holds
        held_keys = held_points.all_keys() if held_points is not None else []
        last_times = {k: held_points.last_timestamp(k) for k in held_keys} if held_points else {}
        clock = MetricClock({k: round(t * 1000) for k, t in last_times.items() if t is not None})
        skip = {key: held_points.count(key) for key in held_keys} if held_points else {}
        total = points.total
        done = sum(skip.values())
        chunk: list[Event] = []
        for key, step, value, when in _ordered_points(points):
            if skip.get(key):
                skip[key] -= 1
                continue
            raw = clock.stamp(("metric", key, value, step, when))
            chunk.append(Metric(key, value, step, raw[4]))
            if len(chunk) >= CHUNK:
                backend.write(chunk)
                sent_points += len(chunk)
                progress(done + sent_points, total)
                chunk = []
        if chunk:
            backend.write(chunk)
            sent_points += len(chunk)
            progress(done + sent_points, total)
        assert src.run_id is not None
        have_images = set(held.images)
        if set(record.images) - have_images:
            pictures = Path(staging) / "images"
            found = read_images(src.store, src.run_id, pictures / "read", **src.reader_options())
            readable = {image for image, _ in found}
            not_copied.extend(
                f"image {i.name!r} step {i.step}: its file is missing"
                for i in record.images
                if i not in readable
            )
            events: list[Event] = []
            for index, (image, file) in enumerate(found):
                if image in have_images:
                    continue
                own = pictures / f"{index}.png"  # a copy of ours: a store may move what it is given
                shutil.copyfile(file, own)
                events.append(Image(image.name, str(own), image.step, image.width, image.height))
            for start in range(0, len(events), 100):
                backend.write(events[start : start + 100])
        have_files = {(a.path, a.sha256) for a in held.artifacts}
        missing = [a for a in record.artifacts if (a.path, a.sha256) not in have_files]
        if missing:
            tree = Path(staging) / "artifacts"
            read_artifact_tree(src.store, src.run_id, "", tree, **src.reader_options())
            wanted = {a.path for a in missing}
            for file in sorted(p for p in tree.rglob("*") if p.is_file()):
                if file.relative_to(tree).as_posix() not in wanted:  # held already, or an image
                    file.unlink()
            sent_bytes = sum(a.size for a in missing)
            backend.write([Artifact(str(tree), "", "", sent_bytes, owned=True, tree=True)])
        backend.finish(record.status)
    return _Written(run_id, sent_points, sent_bytes, not_copied)


@contextmanager
def _target_environment(dst: Address) -> Iterator[None]:
    """The environment a W&B or ClearML offline target needs while it is written, then restored."""
    values: dict[str, str] = {}
    if dst.store == "wandb":
        values = {"WANDB_MODE": "offline", "WANDB_SILENT": os.environ.get("WANDB_SILENT", "true")}
    elif dst.store == "clearml":
        values = {"CLEARML_CACHE_DIR": dst.location, "CLEARML_OFFLINE_MODE": "1"}
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _find_copies(dst: Address, origin: str, project: str) -> list[str]:
    """The runs of ``project`` in the target that say they are copies of ``origin``, and any run an
    earlier copier of it opened and did not finish (the journal's: it may be too short to read).

    Only the runs' system tags are read (MLflow: one search by tag), never their points or files.
    """
    found = list(_journal(dst).pending(origin))
    if dst.store == "mlflow" and "'" not in origin:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(dst.location)
        experiment = client.get_experiment_by_name(project)
        if experiment is None:
            return found
        runs = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`{COPIED_FROM}` = '{origin}'", max_results=1000
        )
        return found + [run.info.run_id for run in runs if run.info.run_id not in found]
    for run_id in _run_ids(dst, project):
        if run_id in found:
            continue
        try:
            tags = read_system_tags(dst.store, run_id, **dst.reader_options())
        except Exception as exc:  # an unreadable run (cut short): not one of ours to judge
            log.debug("tracelet copy: cannot read %s run %s: %r", dst.store, run_id, exc)
            continue
        if tags.get(COPIED_FROM) == origin:
            found.append(run_id)
    return found


class _Journal:
    """The runs a copier opened in an offline-folder target (W&B, ClearML) and has not finished.

    A copier killed right after opening a W&B run may leave a run folder too short to read, and so
    without a readable ``tracelet.copied_from``: the journal (``<target>/.tracelet-copies/``) names
    it, so the next copy removes it instead of leaving it beside the new one.
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def _file(self, origin: str) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / f"{hashlib.sha256(origin.encode()).hexdigest()[:32]}.json"

    def pending(self, origin: str) -> list[str]:
        file = self._file(origin)
        if file is None or not file.is_file():
            return []
        return [str(json.loads(file.read_text(encoding="utf-8"))["run_id"])]

    def opened(self, origin: str, run_id: str) -> None:
        file = self._file(origin)
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(json.dumps({"origin": origin, "run_id": run_id}), encoding="utf-8")

    def finished(self, origin: str) -> None:
        file = self._file(origin)
        if file is not None:
            file.unlink(missing_ok=True)


def _journal(dst: Address) -> _Journal:
    return _Journal(Path(dst.location) / ".tracelet-copies" if dst.store in OFFLINE_ONLY else None)


def _run_ids(address: Address, project: str | None) -> list[str]:
    """The runs a store holds (of ``project``, where the store files runs by project)."""
    if address.store == "local":
        root = Path(address.location)
        pattern = f"{project}/*/run.json" if project else "*/*/run.json"
        return sorted(p.parent.name for p in root.glob(pattern))
    if address.store == "mlflow":
        from mlflow.tracking import MlflowClient

        client = MlflowClient(address.location)
        if project:
            experiment = client.get_experiment_by_name(project)
            experiments = [experiment.experiment_id] if experiment is not None else []
        else:
            experiments = [e.experiment_id for e in client.search_experiments()]
        if not experiments:
            return []
        return [run.info.run_id for run in client.search_runs(experiments, max_results=50_000)]
    if address.store == "wandb":
        return sorted({p.stem.removeprefix("run-") for p in Path(address.location).rglob("run-*.wandb")})
    offline = Path(address.reader_options()["offline_dir"])
    if (offline / "task.json").is_file():
        offline = offline.parent
    ids = []
    for task in sorted(offline.glob("*/task.json")):
        ids.append(str(json.loads(task.read_text(encoding="utf-8"))["id"]))
    return ids


def _remove(dst: Address, run_id: str) -> None:
    """Remove an unfinished copy (MLflow: deleted, as its own ``delete_run`` does; others: its folder)."""
    if dst.store == "mlflow":
        from mlflow.tracking import MlflowClient

        MlflowClient(dst.location).delete_run(run_id)
        return
    if dst.store == "local":
        folders = list(Path(dst.location).glob(f"*/{run_id}"))
    elif dst.store == "wandb":
        folders = [p.parent for p in Path(dst.location).rglob(f"run-{run_id}.wandb")]
    else:
        offline = Path(dst.reader_options()["offline_dir"])
        folders = [
            task.parent
            for task in offline.glob("*/task.json")
            if str(json.loads(task.read_text(encoding="utf-8"))["id"]) == run_id
        ]
    for folder in folders:
        shutil.rmtree(folder)
        if dst.store == "clearml":  # ClearML zips a closed session beside its folder
            folder.with_name(folder.name + ".zip").unlink(missing_ok=True)


def copy_project(
    source: str | Address,
    target: str | Address,
    project: str,
    *,
    name: str | None = None,
    verify: bool = True,
    progress: Progress | None = None,
) -> tuple[list[CopyResult], dict[str, str]]:
    """Copy every run of ``project`` in the source store; one that fails does not stop the others.

    Returns the copies and, per run that failed, why.
    """
    src = source if isinstance(source, Address) else Address.parse(source, role="source")
    dst = target if isinstance(target, Address) else Address.parse(target, role="target")
    results: list[CopyResult] = []
    failed: dict[str, str] = {}
    run_ids = _source_runs(src, project)
    if not run_ids:
        raise ValueError(f"source {src.public()}: no run of project {project!r}")
    for run_id in run_ids:
        try:
            results.append(copy_run(src.with_run(run_id), dst, name=name, verify=verify, progress=progress))
        except (CopyError, ValueError, OSError, RuntimeError) as exc:
            failed[src.with_run(run_id).public()] = str(exc)
    return results, failed


def _source_runs(src: Address, project: str) -> list[str]:
    if src.run_id is not None:
        return [src.run_id]
    if src.store in ("wandb", "clearml"):  # a folder of runs: keep those of the project
        return [run_id for run_id in _run_ids(src, None) if _project_of(src.with_run(run_id)) == project]
    return _run_ids(src, project)


def _project_of(address: Address) -> str:
    """The project of a run in a folder of runs (read in pieces, its points set aside and dropped)."""
    with tempfile.TemporaryDirectory(prefix="tracelet-copy-") as work, ExitStack() as kept:
        record, _ = _Pieces(Path(work), kept).read(address)
        return record.project


def summary_table(results: Sequence[CopyResult], failed: dict[str, str]) -> str:
    """The closing table: runs, points, artifacts, bytes, seconds, verified."""
    lines = [f"{'run':<60} {'points':>9} {'new':>9} {'artifacts':>9} {'bytes':>12} {'s':>7}  verified"]
    for r in results:
        lines.append(
            f"{r.target[-60:]:<60} {r.points:>9} {r.new_points:>9} {r.artifacts:>9} {r.bytes:>12} "
            f"{r.seconds:>7.2f}  {'yes' if r.verified else 'no (--no-verify)'}"
        )
        lines.extend(f"    not copied: {item}" for item in r.not_copied)
    for where, why in failed.items():
        lines.append(f"FAILED {where}: {why}")
    new_points = sum(r.new_points for r in results)
    lines.append(f"{len(results)} run(s) copied, {new_points} new point(s), {len(failed)} failed")
    return "\n".join(lines)

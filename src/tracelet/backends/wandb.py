"""The Weights & Biases backend: one ``wandb`` run per tracelet run, history rows keyed by our own step.

Mapping: ``project`` and ``exp_name`` are the W&B project and run name; params are
the run config, and so are tracelet's own ``tracelet.*`` fields (versions, git: a W&B
tag holds at most 64 characters); user tags are W&B tags spelled ``key=value`` (see
:mod:`tracelet.backends.naming`); a logged file is a file in the run's ``files/`` folder
at its relative path (``run.save``); a logged folder is one W&B Artifact (see
:meth:`WandbBackend._save_folder`); images are ``wandb.Image`` values in history.

Steps: W&B's own ``_step`` must only grow, and ``run.log(step=...)`` silently drops
any point whose step is lower than the last one. This backend therefore never passes
``step=``: every history row carries a ``tracelet/step`` column, and
``define_metric("*", step_metric="tracelet/step")`` makes it the x-axis of every
chart. ``_step`` then just counts rows, so no point is ever dropped, whatever order
the steps come in.

``wandb`` is imported inside the methods only: importing tracelet never imports it.
W&B's own environment variables (``WANDB_MODE``, ``WANDB_DIR``, ``WANDB_ENTITY``, ...)
keep working because wandb reads them itself; ``backend_options["wandb"]`` overrides them.
"""

from __future__ import annotations

import functools
import glob
import inspect
import logging
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from tracelet.backends.base import Backend, PartialWriteError, RunInfo
from tracelet.backends.files import Placement, tree_files
from tracelet.backends.naming import EXIT_CODES, label_to_tag, tag_to_label
from tracelet.backends.wandb_log import LOG_BLOCK_SIZE, iter_log_records
from tracelet.events import Artifact, Event, Image, Metric, Params, Tags

log = logging.getLogger(__name__)

#: The ``WANDB_*`` variables the W&B session of this process was set up with (see
#: :func:`_session_for_this_environment`).
_session_environment: dict[str, str] | None = None


def _wandb_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("WANDB_") and k != "WANDB_SERVICE"}


def _session_for_this_environment(wandb: Any) -> None:
    """A W&B session reads its ``WANDB_*`` variables once, when it starts, and ignores later changes.

    A warm delivery agent serves run after run, each in its caller's environment: when the
    ``WANDB_*`` variables differ from those the session started with (another ``WANDB_DIR``,
    mode or entity), the session is torn down (``wandb.teardown()``) so that ``wandb.init``
    starts one that reads them. Runs of one sweep, with one environment, share the session.
    """
    global _session_environment
    current = _wandb_environment()
    if _session_environment is not None and current != _session_environment:
        log.debug("tracelet: the WANDB_* variables changed since the last run; a new W&B session")
        wandb.teardown()
    _session_environment = current


#: ``WANDB_SERVICE``: ``<protocol version>-<pid of the process that started wandb-core>-<address>``.
_SERVICE_OWNER = re.compile(r"\d+-(\d+)-")


def _leave_the_parents_service() -> None:
    """Run in a wandb-core of our own, never in the one the process that started us runs.

    A process that calls ``wandb.init`` starts a wandb-core and exports its address as
    ``WANDB_SERVICE``; its children inherit it, and wandb connects them to that core. The
    delivery agent gets its trainer's environment, so a trainer that also logs to W&B itself
    (its own ``wandb.init``, Lightning's ``WandbLogger``) would have the agent's runs written by
    the trainer's core. That core exits with the trainer, and the agent outlives the trainer to
    deliver what it holds (a trainer killed mid-run): its runs would be cut short. A core
    shared on purpose (``wandb beta core start``) was started by another process, and is kept.
    """
    match = _SERVICE_OWNER.match(os.environ.get("WANDB_SERVICE", ""))
    if match and int(match.group(1)) == os.getppid():
        log.debug("tracelet: a W&B run of its own, not in the wandb-core of process %d", os.getppid())
        del os.environ["WANDB_SERVICE"]


#: The history column that holds tracelet's step (W&B's ``_step`` only counts rows).
STEP_KEY = "tracelet/step"

#: W&B rejects tags outside 1..64 characters (``Settings.validate_run_tags``); setting
#: ``run.tags`` with one only warns and keeps the old tags, so we check first.
MAX_TAG_LENGTH = 64

#: The run folder's subfolder that holds the files of the folders logged as W&B Artifacts.
FOLDER_ARTIFACTS = "tracelet-artifacts"


def folder_artifact_name(run_id: str, artifact_path: str) -> str:
    """``run-<run id>-<path>``, W&B's own name for a folder a run logs, in the characters W&B allows.

    W&B's shorthand takes the folder's base name; tracelet's artifact path is the folder's
    name in the run (``a/b`` becomes ``a-b``, and the root ``artifacts``).
    """
    path = re.sub(r"[^A-Za-z0-9._-]+", "-", artifact_path.strip("/")).strip("-.") or "artifacts"
    return f"run-{run_id}-{path}"[:128]


#: How long ``finish`` waits for wandb-core to write the run's exit record to disk.
FINISH_FLUSH_TIMEOUT = 30.0

#: Settings tracelet needs (users may still override them through ``settings``):
#: no system-metrics sampler, no stdout/stderr capture, no copy of the user's code, and
#: no git scan of its own: tracelet records git itself, with the remote's credentials
#: stripped (``tracelet.git.*`` in the config).
DEFAULT_SETTINGS: dict[str, Any] = {
    "x_disable_stats": True,
    "console": "off",
    "save_code": False,
    "disable_git": True,
}


class WandbBackend(Backend):
    """Writes a run with the ``wandb`` SDK (offline, online or shared mode alike).

    Options: ``mode`` and ``dir`` and ``entity`` are passed to ``wandb.init``;
    ``settings`` is a dict of extra ``wandb.Settings`` fields.
    """

    name = "wandb"
    package = "wandb"
    extra = "wandb"
    option_keys = frozenset({"mode", "dir", "entity", "settings"})

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._run: Any = None
        self._placement = Placement()
        self._folders = 0  # folders logged as Artifacts so far: each gets its own subfolder

    def param_value_limit(self) -> int | None:
        """W&B config values have no documented length limit."""
        return None

    def start(self, info: RunInfo) -> str:
        """Open the run and make ``tracelet/step`` the x-axis of every metric."""
        import wandb

        _leave_the_parents_service()
        _session_for_this_environment(wandb)
        settings = dict(DEFAULT_SETTINGS)
        settings.update(self.options.get("settings") or {})
        init_kwargs: dict[str, Any] = {}
        for key in ("mode", "dir", "entity"):
            if self.options.get(key) is not None:
                init_kwargs[key] = self.options[key]
        run = wandb.init(
            project=info.project,
            name=info.run_name,
            # What the run ran on (``tracelet.*``: versions, git) goes in the config, not in
            # tags: W&B tags hold at most 64 characters, a remote URL does not fit.
            config=dict(info.system_tags),
            # Several runs, one after another or side by side, in one process; the
            # user's own ``wandb.run`` is left alone.
            reinit="create_new",
            settings=wandb.Settings(**settings),
            **init_kwargs,
        )
        self._run = run
        run.define_metric(STEP_KEY)
        run.define_metric("*", step_metric=STEP_KEY)
        self.run_id = str(run.id)
        return self.run_id

    def write(self, events: Sequence[Event]) -> None:
        """Deliver events in order; stop at the first one W&B cannot take, and say how many landed.

        Consecutive metrics with the same step share one history row; a new row starts
        when the step changes, a key would repeat, or another kind of event comes, so no
        point is merged or reordered. The events before a failure landed and are reported
        as such (:class:`PartialWriteError`): the writer retries, or splits to isolate a
        refused event (a reserved name, an unsafe path, an over-long tag), from there on, so
        nothing W&B already holds is logged twice.
        """
        run = self._require_run()
        row: dict[str, Any] = {}
        row_step: int | None = None
        #: the events before this index are in W&B (or in the history row being built)
        landed = 0

        def flush(upto: int) -> None:
            nonlocal row, row_step, landed
            if row:
                row[STEP_KEY] = row_step
                run.log(row)
                row, row_step = {}, None
            landed = upto

        try:
            for index, event in enumerate(events):
                if isinstance(event, (Metric, Image)):
                    problem = _name_problem(event.name)
                    if problem:
                        flush(index)
                        kind = "metric" if isinstance(event, Metric) else "image"
                        raise ValueError(f"W&B cannot take {kind} {event.name!r}: {problem}")
                    if row and (event.step != row_step or event.name in row):
                        flush(index)
                    if isinstance(event, Metric):
                        row[event.name] = event.value
                    else:
                        try:
                            row[event.name] = self._image(event)
                        except Exception as exc:  # e.g. Pillow missing: wandb.Image needs it
                            flush(index)
                            raise ValueError(f"W&B cannot take image {event.name!r}: {exc!r}") from exc
                    row_step = event.step
                    continue
                flush(index)
                if isinstance(event, Params):
                    if event.values:
                        run.config.update(dict(event.values), allow_val_change=True)
                elif isinstance(event, Tags):
                    problems = self._add_tags(event.values)
                    if problems:
                        raise ValueError(f"W&B cannot take {'; '.join(problems)}")
                elif isinstance(event, Artifact) and event.tree:
                    self._save_folder(event)
                elif isinstance(event, Artifact):
                    self._save_artifact(event)
                # Status: a W&B run shows "running" until it finishes; its state is the exit code
                landed = index + 1
            flush(len(events))
        except Exception as exc:
            if landed:
                raise PartialWriteError(landed, exc) from exc
            raise

    def _save_artifact(self, event: Artifact) -> None:
        """A file linked into ``files/`` and saved; raises if it could not be."""
        try:
            self._save_file(event)
        except (OSError, ValueError) as exc:
            raise ValueError(f"W&B could not take artifact {event.artifact_path!r}: {exc}") from exc

    def _save_folder(self, event: Artifact) -> None:
        """A folder is one W&B Artifact, as ``run.log_artifact(folder)`` makes it: one store operation.

        Named and typed as W&B's own shorthand names a folder (``run-<run id>-<path>``, type
        ``unspecified``), so W&B keeps its versions under one name. Its files are first put in
        the run folder, under ``tracelet-artifacts/<n>/`` (the snapshots linked there: no second
        copy), and added with ``policy="immutable"``: W&B then refers to them where they are
        instead of copying them into its staging cache, and ``wandb sync`` uploads them from
        there. Outside ``files/``, because W&B uploads that folder's every file as a run file
        too. A new ``<n>`` for each folder logged: an earlier version keeps its own files.
        """
        import wandb

        run = self._require_run()
        if getattr(run, "disabled", False):  # mode="disabled": nothing is kept anywhere
            return
        self._folders += 1
        root = Path(run.settings.sync_file).parent / FOLDER_ARTIFACTS / str(self._folders)
        try:  # on any failure nothing stays: a retry places the files anew, and links left here
            problems = []  # would hold the snapshots' bytes on disk for good
            for file in tree_files(event):
                try:
                    self._placement.place(file, root.joinpath(*_safe_relative(file.artifact_path).parts))
                except (OSError, ValueError) as exc:
                    problems.append(f"artifact {file.artifact_path!r}: {exc}")
            if problems:
                more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
                raise ValueError(f"W&B could not take {'; '.join(problems[:3])}{more}")
            folder = wandb.Artifact(folder_artifact_name(run.id, event.artifact_path), type="unspecified")
            folder.add_dir(os.fspath(root), policy="immutable")  # its paths: each file's artifact path
            run.log_artifact(folder)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise

    def notes(self) -> list[str]:
        return self._placement.notes()

    def finish(self, status: str) -> None:
        """Close the run; W&B keeps an exit code, which the reader maps back to the status."""
        run = self._require_run()
        run.finish(exit_code=EXIT_CODES[status])
        if not getattr(run, "disabled", False):
            _wait_for_exit_record(Path(run.settings.sync_file), FINISH_FLUSH_TIMEOUT)

    # -- helpers ---------------------------------------------------------------------------
    def _require_run(self) -> Any:
        if self._run is None:
            raise RuntimeError("the W&B run was never started")
        return self._run

    @staticmethod
    def _image(event: Image) -> Any:
        """``wandb.Image`` copies the PNG into the run's ``media/`` folder when it is logged."""
        import wandb

        return wandb.Image(event.local_path)

    def _add_tags(self, values: dict[str, str]) -> list[str]:
        """Set tags as ``key=value`` labels: a key's old label is replaced, other labels kept."""
        run = self._run
        labels = list(run.tags or ())
        problems = []
        changed = False
        for key, value in values.items():
            label = tag_to_label(key, value)
            problem = _tag_problem(label)
            if problem:
                problems.append(f"tag {label!r}: {problem}")
                continue
            if [old for old in labels if label_to_tag(old)[0] == key] == [label]:
                continue
            labels = [*(old for old in labels if label_to_tag(old)[0] != key), label]
            changed = True
        if changed:
            run.tags = tuple(labels)
            if tuple(run.tags or ()) != tuple(labels):  # wandb only warns when it refuses
                raise RuntimeError(f"W&B refused the tags {labels}")
        return problems

    def _save_file(self, event: Artifact) -> None:
        """Link the snapshot into the run's ``files/`` folder and register it with ``run.save``.

        The snapshot becomes ``files/<artifact_path>`` (a hard link: no second copy; tracelet
        drops its own name for it once every store has it; copied across filesystems, or for
        ``copy=False``); a file already inside ``files/`` is registered as is, so it is
        uploaded once, in online mode, and readable in place in offline mode.
        """
        run = self._run
        if getattr(run, "disabled", False):  # mode="disabled": nothing is kept anywhere
            return
        files_dir = Path(run.settings.files_dir)
        relative = _safe_relative(event.artifact_path)
        target = files_dir.joinpath(*relative.parts)
        self._placement.place(event, target)
        if _save_takes_glob():
            run.save(os.fspath(target), base_path=os.fspath(files_dir), policy="now", glob=False)
        else:
            _save_before_0_29(run, target, files_dir)


@functools.cache
def _save_takes_glob() -> bool:
    """``run.save(..., glob=False)`` (wandb 0.29 and later) takes a path by its literal name.

    Asked once per process: a folder of 1,000 files is 1,000 saves.
    """
    from wandb.sdk.wandb_run import Run

    return "glob" in inspect.signature(Run.save).parameters


def _save_before_0_29(run: Any, target: Path, files_dir: Path) -> None:
    """wandb 0.19.10 to 0.28: ``run.save`` reads its path as a glob; escaped, it names one file.

    A checkpoint called ``epoch[3].pt`` would otherwise match nothing, or another file. The
    base path is escaped too: those releases glob it as well.
    """
    run.save(glob.escape(os.fspath(target)), base_path=glob.escape(os.fspath(files_dir)), policy="now")


def _name_problem(name: str) -> str | None:
    """Why a history key cannot carry a tracelet series, or None."""
    if not name:
        return "empty name"
    if name == STEP_KEY:
        return f"{STEP_KEY!r} is the step column tracelet writes itself"
    if name.startswith("_"):
        return "W&B reserves names starting with '_'"
    return None


def _tag_problem(label: str) -> str | None:
    """Why W&B would refuse a tag label, or None."""
    if not 1 <= len(label) <= MAX_TAG_LENGTH:
        return f"W&B tags must be 1 to {MAX_TAG_LENGTH} characters, this one has {len(label)}"
    return None


def _safe_relative(artifact_path: str) -> PurePosixPath:
    """The artifact path as a clean relative path inside ``files/``, never over W&B's own files."""
    path = PurePosixPath(artifact_path.replace("\\", "/"))
    if not artifact_path or path.is_absolute() or ".." in path.parts or str(path) in ("", "."):
        raise ValueError("artifact paths must be relative and stay inside the run")
    if len(path.parts) == 1 and _is_wandb_file(path.name):
        raise ValueError(f"{path.name!r} is a file W&B writes itself in the run's files")
    return path


def _is_wandb_file(name: str) -> bool:
    """W&B's own list of the files it keeps at the top of ``files/`` (config, summary, logs)."""
    try:
        from wandb.sdk.lib.filenames import is_wandb_file
    except ImportError:  # moved in some release: fall back to the names it has always used
        return name.startswith("wandb") or name in {
            "config.yaml",
            "output.log",
            "diff.patch",
            "requirements.txt",
            "conda-environment.yaml",
        }
    return bool(is_wandb_file(name))


def _wait_for_exit_record(path: Path, timeout: float) -> None:
    """Return once the run's exit record is on disk (or after ``timeout``, with a warning).

    ``run.finish()`` in wandb 0.31 returns once wandb-core has *handled* the exit, but
    the transaction log is written through a buffer that is flushed when the service
    closes the stream, asynchronously, a moment later. Waiting here makes "finished"
    mean "complete on disk": ``wandb sync`` or a reader can use the folder right away.
    Records are written in order, so once the exit record is there, all before it are.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            if _tail_has_exit_record(path):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            log.warning("tracelet: W&B had not written the end of %s after %.0fs", path, timeout)
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def _tail_has_exit_record(path: Path, blocks: int = 2) -> bool:
    """True when one of the last ``blocks`` blocks of the log holds an exit record.

    Fragments never cross a block boundary, so reading can start at any block.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        start = max(0, (size // LOG_BLOCK_SIZE - blocks + 1) * LOG_BLOCK_SIZE)
        f.seek(start)
        data = f.read()
    for payload in iter_log_records(data, start, str(path)):
        record = pb.Record()  # type: ignore[attr-defined]  # protobuf classes are made at runtime
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "exit":
            return True
    return False

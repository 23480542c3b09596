"""ClearML backend: one ``clearml.Task`` per run, online or in ClearML's offline mode.

ClearML's defaults suit a script that hands the whole process to ClearML: it patches
frameworks and argparse, captures stdout/stderr, samples machine resources, reuses the
last task of the same name, scans the git repository and pip environment (and asks
``updates.clear.ml`` for a newer release while doing so), and ships every report through
a separate subprocess. tracelet only wants the calls it makes itself, so :meth:`start`
turns every one of those off. ``clearml`` is imported inside the methods only: importing
tracelet must never import it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from tracelet.backends.base import FAILED, FINISHED, KILLED, STATUSES, Backend, PartialWriteError, RunInfo
from tracelet.backends.files import check_source
from tracelet.backends.naming import label_to_tag, split_clearml, tag_to_label
from tracelet.events import Artifact, Event, Image, Metric, Params, Status, Tags

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger(__name__)

#: Hyperparameter section tracelet's params live in. ``General`` is the section ClearML
#: itself uses for ``task.connect(dict)``, so params show up where ClearML users look.
#: ClearML splits ``"<section>/<name>"`` at the first ``/`` only, so a flattened key such
#: as ``model/depth`` is stored whole as the name and reads back unchanged.
PARAMS_SECTION = "General"

#: Section of ``task.set_user_properties``: tracelet's own ``tracelet.*`` fields (versions, git).
PROPERTIES_SECTION = "properties"

#: A logged folder is one ClearML artifact (a zip); this metadata key holds where its files land.
FOLDER_METADATA = "tracelet.folder"
#: The key of a folder logged at the run's artifact root (its files land at their own paths).
FOLDER_ROOT_KEY = "."

#: Private class attribute of ``clearml.Task`` that decides whether reports go through a
#: separate reporting subprocess (config ``sdk.development.report_use_subprocess``,
#: default on for Linux). That subprocess makes ``report_scalar`` ~70x slower and
#: ``close()`` take seconds, so tracelet turns it off. A unit test guards that it exists.
REPORT_SUBPROCESS_ATTR = "_report_subprocess_enabled"

#: Private ``Task`` method that edits task fields; in offline mode it writes ``task.json``.
#: ClearML's offline session has no run status at all (``mark_failed`` and friends are
#: server requests, dropped offline), so tracelet stores the status through it.
OFFLINE_EDIT_ATTR = "_edit"

#: Private ``Task`` classmethods that take ClearML's signal handlers (SIGINT, SIGTERM, ...)
#: and ``sys.excepthook`` wrapper off again. ``Task.init`` installs them; ``close()`` can
#: only put the signal handlers back on the main thread, and tracelet closes on its writer
#: thread. There ClearML forgets the originals yet leaves its handler installed, which then
#: swallows every later Ctrl-C / SIGTERM of the process. tracelet sets the run status
#: itself, so it does not need ClearML to watch signals or exceptions at all.
SIGNAL_HOOKS_ATTR = "_remove_signal_hooks"
EXCEPTION_HOOKS_ATTR = "_remove_exception_hooks"

#: Every private ``clearml.Task`` attribute tracelet relies on (guarded by an E2E test).
PRIVATE_TASK_ATTRIBUTES = (REPORT_SUBPROCESS_ATTR, OFFLINE_EDIT_ATTR, SIGNAL_HOOKS_ATTR, EXCEPTION_HOOKS_ATTR)

#: Everything ``Task.init(auto_connect_frameworks=...)`` knows, switched off. Keys missing
#: from the mapping default to *on*, and only an explicit ``detect_repository: False``
#: skips the repository/requirements scan, which is also where ClearML starts its
#: update-check thread (a request to ``updates.clear.ml``).
FRAMEWORKS_OFF: dict[str, bool] = {
    "hydra": False,
    "scikit": False,
    "joblib": False,
    "matplotlib": False,
    "tensorflow": False,
    "tensorboard": False,
    "tfdefines": False,
    "pytorch": False,
    "megengine": False,
    "xgboost": False,
    "catboost": False,
    "fastai": False,
    "lightgbm": False,
    "gradio": False,
    "detect_repository": False,
}

#: tracelet status -> ClearML task status (``Task.TaskStatusEnum`` values).
STATUS_TO_CLEARML: dict[str, str] = {FINISHED: "completed", FAILED: "failed", KILLED: "stopped"}

#: ClearML marks the process that created a task in these variables; a child process that
#: inherits them gets a stub instead of a task (ClearML's own job runner pops them too).
_MASTER_ENV_VARS = ("CLEARML_PROC_MASTER_ID", "TRAINS_PROC_MASTER_ID")

_TRUE_STRINGS = frozenset({"1", "true", "yes", "y", "on", "t"})
_OFFLINE_ENV_VARS = ("CLEARML_OFFLINE_MODE", "TRAINS_OFFLINE_MODE")


class _FrameworksOff(dict):  # type: ignore[type-arg]
    """``auto_connect_frameworks`` mapping that answers *off* for keys it has never heard of.

    ClearML treats a missing key as *on*; a framework binding added in a later ClearML
    release would otherwise switch itself on behind tracelet's back.
    """

    def get(self, key: Any, default: Any = None) -> Any:
        return super().get(key, False)


def disable_report_subprocess(task_cls: Any) -> Callable[[], None]:
    """Make ClearML report from in-process threads instead of its reporting subprocess.

    This is the one place that touches the private ``Task._report_subprocess_enabled``
    (see :data:`REPORT_SUBPROCESS_ATTR`). If a ClearML release drops the attribute this
    logs a warning and changes nothing, rather than failing the run. Returns a callable
    that puts the previous value back, so a user's own ClearML tasks keep their setting.
    """
    if not hasattr(task_cls, REPORT_SUBPROCESS_ATTR):
        logger.warning(
            "clearml.Task has no %s attribute any more; ClearML's reporting subprocess stays on "
            "(slower reporting and close)",
            REPORT_SUBPROCESS_ATTR,
        )
        return lambda: None
    own = REPORT_SUBPROCESS_ATTR in vars(task_cls)
    previous = vars(task_cls).get(REPORT_SUBPROCESS_ATTR)
    setattr(task_cls, REPORT_SUBPROCESS_ATTR, False)

    def restore() -> None:
        if own:
            setattr(task_cls, REPORT_SUBPROCESS_ATTR, previous)
        elif REPORT_SUBPROCESS_ATTR in vars(task_cls):
            delattr(task_cls, REPORT_SUBPROCESS_ATTR)

    return restore


def release_process_hooks(task_cls: Any) -> None:
    """Give the process its own signal handlers and ``sys.excepthook`` back after ``Task.init``.

    The one place that calls ClearML's private ``Task._remove_signal_hooks`` and
    ``Task._remove_exception_hooks`` (see :data:`SIGNAL_HOOKS_ATTR`). Must run on the
    thread that called ``Task.init``: signal handlers can only be changed from the main
    thread. Logs a warning, and leaves the hooks in place, if a method is gone.
    """
    for attr in (SIGNAL_HOOKS_ATTR, EXCEPTION_HOOKS_ATTR):
        remove = getattr(task_cls, attr, None)
        if callable(remove):
            remove()
        else:
            logger.warning(
                "clearml.Task has no %s method any more; ClearML's signal/exception hooks stay installed",
                attr,
            )


def record_offline_status(task: Any, clearml_status: str, reason: str) -> bool:
    """Write the final status into an offline session's ``task.json``.

    Offline, ClearML drops every status request, so the session would not say how the
    run ended. This is the one place that calls the private ``Task._edit`` (see
    :data:`OFFLINE_EDIT_ATTR`), which in offline mode sets the fields and rewrites
    ``task.json``. Logs a warning and returns False if the method is gone.
    """
    edit = getattr(task, OFFLINE_EDIT_ATTR, None)
    if not callable(edit):
        logger.warning(
            "clearml.Task has no %s method any more; the offline session will not record status %r",
            OFFLINE_EDIT_ATTR,
            clearml_status,
        )
        return False
    edit(status=clearml_status, status_reason=reason, status_message=reason)
    return True


def _as_bool(value: Any) -> bool:
    """``True``/``"1"``/``"yes"``... as ClearML reads its boolean environment variables."""
    if isinstance(value, str):
        return value.strip().lower() in _TRUE_STRINGS
    return bool(value)


def _env_offline() -> bool | None:
    """Offline mode as the user set it in the environment (read now, not at clearml import)."""
    for name in _OFFLINE_ENV_VARS:
        raw = os.environ.get(name)
        if raw is not None and raw.strip() != "":
            return _as_bool(raw)
    return None


class ClearMLBackend(Backend):
    """Logs a run as a ClearML task (``project`` -> project, ``run_name`` -> task name).

    Options: ``offline`` (bool; overrides ``CLEARML_OFFLINE_MODE``), ``task_type`` (a
    ``Task.TaskTypes`` name, default ``training``) and ``output_uri`` (passed to
    ``Task.init``; ClearML ignores it offline).
    """

    name = "clearml"
    package = "clearml"
    extra = "clearml"
    option_keys = frozenset({"offline", "task_type", "output_uri"})
    late_system_tags = True

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self._task: Any = None
        self._offline = False
        self._restore_report_subprocess: Callable[[], None] | None = None
        self._staging: Path | None = None
        self._staged = 0
        self._saved_master_env: dict[str, str | None] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, info: RunInfo) -> str:
        """Create a fresh task with every ClearML side effect off and return its id."""
        from clearml import Task

        if Task.current_task() is not None:
            # Task.init would hand back that task (or raise on a name mismatch), and
            # finish() would then close a task tracelet does not own.
            raise RuntimeError(
                "a ClearML task is already running in this process; close it (task.close()) "
                "before starting a tracelet run with the clearml backend"
            )
        self._apply_offline_mode(Task)
        self._restore_report_subprocess = disable_report_subprocess(Task)
        # A task tracelet opens is this process's own, even when a parent process ran ClearML.
        self._saved_master_env = {name: os.environ.pop(name, None) for name in _MASTER_ENV_VARS}
        try:
            task: Any = Task.init(
                project_name=info.project,
                task_name=info.run_name,
                task_type=self.options.get("task_type") or Task.TaskTypes.training,
                reuse_last_task_id=False,
                continue_last_task=False,
                output_uri=self.options.get("output_uri"),
                auto_connect_arg_parser=False,
                auto_connect_frameworks=_FrameworksOff(FRAMEWORKS_OFF),
                auto_resource_monitoring=False,
                auto_connect_streams=False,
                deferred_init=False,
            )
        except BaseException:
            self._restore_settings()
            raise
        if not isinstance(task.id, str):
            self._restore_settings()
            raise RuntimeError(f"ClearML returned no real task (got {type(task).__name__})")
        self._task = task
        system_tags = info.all_system_tags()  # the git state was read while Task.init ran
        if system_tags:
            # What the run ran on (versions, git): ClearML's "User Properties", where
            # such facts live, apart from the hyperparameters.
            task.set_user_properties(**system_tags)
        release_process_hooks(Task)
        self._staging = Path(tempfile.mkdtemp(prefix="tracelet-clearml-"))
        self._staged = 0
        self._offline = bool(Task.is_offline())
        self.run_id = str(task.id)
        return self.run_id

    def _apply_offline_mode(self, task_cls: Any) -> None:
        """Switch ClearML's offline mode to what the option, else the environment, asks for.

        ClearML reads ``CLEARML_OFFLINE_MODE`` once, when it is imported; reading it here
        honours a variable set later too. With neither set, ClearML's own state stands.
        """
        wanted = self.options.get("offline")
        offline = _as_bool(wanted) if wanted is not None else _env_offline()
        if offline is not None and offline != bool(task_cls.is_offline()):
            task_cls.set_offline(offline_mode=offline)

    def write(self, events: Sequence[Event]) -> None:
        """Deliver events in order with ClearML's own calls (it has no bulk scalar API).

        A call that fails stops the batch: the events before it landed and are reported as
        such (:class:`PartialWriteError`), so the writer's retry starts at the failed one and
        no scalar is reported twice.
        """
        task = self._require_task()
        clearml_logger = task.get_logger()
        for index, event in enumerate(events):
            try:
                self._write_one(task, clearml_logger, event)
            except Exception as exc:
                if index:
                    raise PartialWriteError(index, exc) from exc
                raise

    def _write_one(self, task: Any, clearml_logger: Any, event: Event) -> None:
        """One event, with the ClearML call its kind takes."""
        if isinstance(event, Metric):
            title, series = split_clearml(event.name)
            clearml_logger.report_scalar(title, series, value=event.value, iteration=event.step)
        elif isinstance(event, Params):
            if event.values:
                task.update_parameters({f"{PARAMS_SECTION}/{k}": v for k, v in event.values.items()})
        elif isinstance(event, Tags):
            self._set_tags(task, event.values)
        elif isinstance(event, Artifact):
            if event.tree:
                self._upload_folder(task, event)
            else:
                self._upload_artifact(task, event)
        elif isinstance(event, Image):
            self._report_image(clearml_logger, event)
        elif isinstance(event, Status):
            self._show_status(task, event.status)
        else:  # pragma: no cover - the Event union is closed
            raise TypeError(f"unknown event type {type(event).__name__}")

    def shares_process(self) -> bool:
        """Offline, yes: ``Task.init`` after ``close()`` opens a new session, in the run's own
        ``CLEARML_CACHE_DIR`` (tested, read back). Online it is untested here (no server), and
        ClearML keeps one ``Task`` per process: a fresh agent per run."""
        return self._offline

    def _show_status(self, task: Any, status: str) -> None:
        """Mid-run status (Lightning's finalize). Offline, the session's ``task.json`` records it, and
        what is logged later still lands in the session; the status at close is the last word.
        Online, a completed or failed task would refuse later reports: the server sees the status
        when the run is closed."""
        if self._offline:
            record_offline_status(task, STATUS_TO_CLEARML[status], f"tracelet: {status} (the run stays open)")

    def _report_image(self, clearml_logger: Any, event: Image) -> None:
        """Hand ClearML its own link to the PNG snapshot, which it deletes once stored.

        ``report_image`` copies the file later, on ClearML's reporting thread, and its
        ``flush(wait_for_uploads=True)`` can return before that copy (it races with the
        reporting loop). tracelet may delete the snapshot as soon as :meth:`write`
        returns, so ClearML gets a hard link (a copy across devices) of its own. The staged
        name is a plain ``<n>.png``: ClearML takes the extension from everything after the
        first dot of the file name.
        """
        assert self._staging is not None
        self._staged += 1
        staged = self._staging / f"{self._staged:08d}.png"
        try:
            os.link(event.local_path, staged)
        except OSError:
            shutil.copyfile(event.local_path, staged)
        title, series = split_clearml(event.name)
        # max_image_history=-1 keeps every image; by default ClearML recycles file names
        # after `metrics.file_history_size`, overwriting earlier steps' files.
        clearml_logger.report_image(
            title,
            series,
            iteration=event.step,
            local_path=str(staged),
            max_image_history=-1,
            delete_after_upload=True,
        )

    def _set_tags(self, task: Any, values: Mapping[str, str]) -> None:
        """Set ``key=value`` labels, replacing an earlier label of the same key.

        ``Task.add_tags`` only ever adds, so a re-set key would keep both values.
        """
        if not values:
            return
        new_labels = [tag_to_label(k, v) for k, v in values.items()]
        current = list(task.get_tags() or [])
        kept = [label for label in current if label_to_tag(label)[0] not in values]
        merged = kept + [label for label in new_labels if label not in kept]
        if merged != current:
            task.set_tags(merged)

    def _upload_artifact(self, task: Any, event: Artifact) -> None:
        """Copy the snapshot into the task's artifacts under the name ``artifact_path``.

        ClearML names the stored file after the local file, so a snapshot whose file name
        differs is hard-linked (or copied) under the artifact's own file name first.
        """
        check_source(event)
        source = Path(event.local_path)
        wanted_name = PurePosixPath(event.artifact_path).name or source.name
        with tempfile.TemporaryDirectory(prefix="tracelet-clearml-") as tmp:
            if source.name != wanted_name:
                staged = Path(tmp) / wanted_name
                try:
                    os.link(source, staged)
                except OSError:
                    shutil.copyfile(source, staged)
                source = staged
            ok = task.upload_artifact(
                name=event.artifact_path,
                artifact_object=source,
                wait_on_upload=True,
            )
        if not ok:
            raise RuntimeError(f"ClearML failed to store artifact {event.artifact_path!r}")

    def _upload_folder(self, task: Any, event: Artifact) -> None:
        """A folder is one artifact, as ClearML's users keep one: ``upload_artifact`` zips it.

        Its key is the folder's artifact path (:data:`FOLDER_ROOT_KEY` for the run's root), and
        its metadata says where its files land (:data:`FOLDER_METADATA`), so a reader lists the
        archive's files one by one, at the paths they were logged under.
        """
        key = event.artifact_path or FOLDER_ROOT_KEY
        ok = task.upload_artifact(
            name=key,
            artifact_object=Path(event.local_path),
            metadata={FOLDER_METADATA: event.artifact_path},
            wait_on_upload=True,
        )
        if not ok:
            raise RuntimeError(f"ClearML failed to store the folder {key!r}")

    def finish(self, status: str) -> None:
        """Flush everything, close the task and leave it with ``status``.

        Online, ``close()`` itself marks the task completed, so a failed or killed run is
        marked afterwards with ``force=True`` (the server would refuse completed -> failed
        otherwise). Offline, where status requests are dropped, the status goes into
        ``task.json`` before closing.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        task = self._require_task()
        clearml_status = STATUS_TO_CLEARML[status]
        reason = f"tracelet: run {status}"
        try:
            task.flush(wait_for_uploads=True)
            if self._offline:
                record_offline_status(task, clearml_status, reason)
                task.close()
            else:
                task.close()
                if status == FAILED:
                    task.mark_failed(status_reason=reason, status_message=reason, force=True)
                elif status == KILLED:
                    task.mark_stopped(force=True, status_message=reason)
        finally:
            self._task = None
            self._restore_settings()
            if self._staging is not None:
                # close() waited for every upload; anything left was never picked up.
                shutil.rmtree(self._staging, ignore_errors=True)
                self._staging = None

    def _restore_settings(self) -> None:
        for name, value in self._saved_master_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_master_env = {}
        if self._restore_report_subprocess is not None:
            self._restore_report_subprocess()
            self._restore_report_subprocess = None

    def _require_task(self) -> Any:
        if self._task is None:
            raise RuntimeError("the ClearML backend has no open task; call start() first")
        return self._task

    def param_value_limit(self) -> int | None:
        """ClearML documents no length limit for hyperparameter values."""
        return None

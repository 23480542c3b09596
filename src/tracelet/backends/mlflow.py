"""The MLflow backend: ``MlflowClient`` with explicit run ids, one ``log_batch`` per chunk.

Mapping: ``project`` is the experiment name and ``exp_name`` the run name. User tags
and tracelet's ``tracelet.*`` fields (versions, git) are MLflow tags, and the git
fields also fill MLflow's own ``mlflow.source.git.*`` tags; artifacts keep their relative
path; images land as ``tracelet-images/<name>/<step>.png``.

MLflow returns a metric's history ordered by (timestamp, step, value) and keeps one
row per (key, timestamp, step, value). The delivery stamps each key's points with
strictly increasing millisecond timestamps before anything can keep them
(:class:`~tracelet.events.MetricClock`), and this backend writes them as they are:
the stored order is the call order, no point is merged away, and a replayed batch the
store already holds lands once.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import os
import shutil
import sys
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tracelet.backends.base import FAILED, FINISHED, KILLED, Backend, PartialWriteError, RunInfo
from tracelet.backends.files import Placement, check_source, tree_files
from tracelet.events import Artifact, Event, Image, Metric, Params, Status, Tags, timestamp_ms
from tracelet.redaction import strip_url_userinfo

#: MLflow's documented ``log_batch`` limits.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
#: ``mlflow.utils.validation.MAX_PARAM_VAL_LENGTH``; the E2E suite checks it against the installed MLflow.
MAX_PARAM_VALUE_LENGTH = 6000

IMAGE_DIR = "tracelet-images"
STATUS_TO_MLFLOW = {FINISHED: "FINISHED", FAILED: "FAILED", KILLED: "KILLED"}

#: tracelet's git fields -> the tags MLflow's own UI shows as the run's source version.
MLFLOW_GIT_TAGS = {
    "tracelet.git.commit": "mlflow.source.git.commit",
    "tracelet.git.branch": "mlflow.source.git.branch",
    "tracelet.git.remote": "mlflow.source.git.repoURL",
}


def local_artifact_dir(artifact_uri: str) -> Path | None:
    """The run's artifact folder when MLflow keeps its artifacts on this machine's filesystem.

    That is MLflow's file repository: a ``file:`` URI or a plain path. Anything else (a
    server's ``mlflow-artifacts:``, ``s3:``, a ``file://`` URI naming another host) is None.
    """
    parts = urllib.parse.urlsplit(artifact_uri)
    if parts.scheme == "file" and parts.netloc in ("", "localhost"):
        return Path(urllib.request.url2pathname(parts.path))
    if not parts.scheme or (sys.platform == "win32" and len(parts.scheme) == 1):  # C:\...
        return Path(artifact_uri)
    return None


def _credentials_to_env(uri: str | None) -> str | None:
    """``http://user:pw@host`` → ``http://host``, with user and password in MLflow's own variables.

    MLflow sends ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` as basic auth, as
    it would the URL's; but it also prints and stores the tracking URI ("View run at ..."),
    and that copy must carry no credential.
    """
    if not uri or "@" not in uri or "://" not in uri:
        return uri
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None:
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = urllib.parse.unquote(parts.username)
    if parts.password is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = urllib.parse.unquote(parts.password)
    return strip_url_userinfo(uri)


def make_sqlite_folder(uri: str | None) -> None:
    """Create the folder of a ``sqlite:///`` tracking database, as MLflow 3.7 and later do themselves.

    Older MLflow retries a database it cannot open 15 times with doubling sleeps, about 55
    minutes, before it raises: a missing folder, or a file where the folder should be, was an
    hour's hang of the run's start instead of an error. Made here, the first is no problem, and
    the second raises at once, naming the folder.
    """
    if not uri or not uri.startswith("sqlite:///"):
        return
    path = urllib.parse.unquote(uri[len("sqlite:///") :].split("?", 1)[0])
    if not path or path == ":memory:":
        return
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"tracking_uri {uri!r}: the folder of its database cannot be made: {exc}") from exc


#: one artifact call at a time sets MLflow's global tracking URI (see proxied_artifacts_before_3_2)
_GLOBAL_URI_LOCK = threading.Lock()


@functools.cache
def _artifacts_follow_the_client() -> bool:
    """MLflow 3.2 and later resolve ``mlflow-artifacts:`` URIs against the client's tracking URI.

    Asked once per process, not on every artifact call.
    """
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    return "tracking_uri" in inspect.signature(MlflowArtifactsRepository.__init__).parameters


@contextlib.contextmanager
def proxied_artifacts_before_3_2(tracking_uri: str | None) -> Iterator[None]:
    """Artifact calls of a client for ``tracking_uri``, on MLflow before 3.2 too.

    A server's artifacts live at ``mlflow-artifacts:`` URIs, which MLflow resolves against a
    tracking URI. Before 3.2 it takes the *global* one (``mlflow.set_tracking_uri`` or
    ``MLFLOW_TRACKING_URI``), not the client's: a client given its server as an option failed
    with "the configured tracking uri scheme: 'file' is invalid for use with the proxy
    mlflow-artifact scheme". There the global URI is set for the call, then put back.
    """
    if not tracking_uri or _artifacts_follow_the_client():
        yield
        return
    import mlflow

    with _GLOBAL_URI_LOCK:
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(tracking_uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous)


@contextlib.contextmanager
def _schema_lock(uri: str | None) -> Iterator[None]:
    """Serialize opening runs on one sqlite database across processes.

    Two runs opened at once (two Lightning loggers, each in its own delivery agent) may both find
    a new database and both run MLflow's schema migrations, which then fail in many ways
    ("duplicate column name", alembic's "expected to match one row"). An exclusive lock on a file
    named after the database (in the temp directory, never beside the user's files) lets one
    create the schema while the other waits, then finds it done.
    Other stores (a server, a file store) need none.
    """
    if not uri or not uri.startswith("sqlite:///"):
        yield
        return
    database = Path(uri.removeprefix("sqlite:///").partition("?")[0]).absolute()
    digest = hashlib.sha256(str(database).encode()).hexdigest()[:24]
    lock_path = Path(tempfile.gettempdir()) / "tracelet-locks" / f"{digest}.lock"
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+b")  # noqa: SIM115
    except OSError:  # no lock to be had: open as before
        yield
        return
    with handle:
        _lock_file(handle.fileno())
        try:
            yield
        finally:
            _unlock_file(handle.fileno())


def _lock_file(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
                return
            except OSError:  # LK_LOCK gives up after 10 s: keep waiting
                continue
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX)


def _unlock_file(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


def mlflow_tags(system_tags: dict[str, str]) -> dict[str, str]:
    """tracelet's own fields as tags, plus MLflow's standard ``mlflow.source.git.*`` tags."""
    tags = dict(system_tags)
    for ours, theirs in MLFLOW_GIT_TAGS.items():
        if ours in system_tags:
            tags[theirs] = system_tags[ours]
    return tags


class MLflowBackend(Backend):
    """Sends batches to any MLflow tracking store (sqlite, file, or a server)."""

    name = "mlflow"
    package = "mlflow"
    extra = "mlflow"
    option_keys = frozenset({"tracking_uri", "artifact_location"})
    late_system_tags = True

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._client: Any = None
        self._last_ts: dict[str, int] = {}
        #: the git state, still being read when the run was created: written with its first batch
        self._late_tags: Callable[[], dict[str, str]] | None = None
        #: the run's artifact folder when MLflow keeps artifacts on this filesystem, else None
        self._artifact_dir: Path | None = None
        self._placement = Placement()

    def _connect(self) -> Any:
        from mlflow.tracking import MlflowClient

        uri = self.options.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        make_sqlite_folder(uri)
        self._client = MlflowClient(tracking_uri=_credentials_to_env(uri))
        return self._client

    def spool_options(self) -> dict[str, Any]:
        options = dict(self.options)
        if self._client is not None:
            options["tracking_uri"] = self._client.tracking_uri
        return options

    def param_value_limit(self) -> int | None:
        """MLflow's ``MAX_PARAM_VAL_LENGTH`` (6000 since MLflow 2.3), without importing MLflow."""
        return MAX_PARAM_VALUE_LENGTH

    def start(self, info: RunInfo) -> str:
        with _schema_lock(self.options.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")):
            self.run_id = self._open(info)
        return self.run_id

    def _open(self, info: RunInfo) -> str:
        client = self._connect()
        experiment_id = self._experiment_id(client, info.project)
        # The git state is still being read (it started with the open): its tags go with the
        # run's first batch, in the same transaction, instead of holding up create_run.
        run = client.create_run(experiment_id, run_name=info.run_name, tags=mlflow_tags(info.system_tags))
        self._late_tags = info.pending_tags
        self._artifact_dir = local_artifact_dir(run.info.artifact_uri)
        return str(run.info.run_id)

    def _experiment_id(self, client: Any, project: str) -> str:
        """The experiment named ``project``, created when there is none."""
        experiment = client.get_experiment_by_name(project)
        if experiment is not None:
            return str(experiment.experiment_id)
        try:
            return str(
                client.create_experiment(project, artifact_location=self.options.get("artifact_location"))
            )
        except Exception:  # created concurrently by another process: use theirs
            experiment = client.get_experiment_by_name(project)
            if experiment is None:
                raise
            return str(experiment.experiment_id)

    def _late_run_tags(self) -> list[Any]:
        """The git state's tags while they are still to be written (empty once they are)."""
        if self._late_tags is None:
            return []
        from mlflow.entities import RunTag

        return [RunTag(k, v) for k, v in mlflow_tags(self._late_tags()).items()]

    def attach(self, run_id: str) -> None:
        """Reopen a run for ``tracelet sync``.

        The replayed points carry the timestamps they were stamped with at logging time, so a
        point the store already holds (committed just before an agent died, never acknowledged)
        is the very same row, and MLflow keeps it once; the stamps only move on, so what is
        replayed sorts after what was stored.
        """
        client = self._connect()
        run = client.get_run(run_id)  # the run must exist: a clear error now, not at the first batch
        self._artifact_dir = local_artifact_dir(run.info.artifact_uri)
        self.run_id = run_id

    def is_transient(self, error: BaseException) -> bool:
        """MLflow's own codes first: a refused name or value is ``INVALID_PARAMETER_VALUE``."""
        code = getattr(error, "error_code", None)
        if code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE", "BAD_REQUEST"):
            return False
        if code in ("TEMPORARILY_UNAVAILABLE", "RESOURCE_EXHAUSTED", "REQUEST_LIMIT_EXCEEDED"):
            return True
        return super().is_transient(error)

    def write(self, events: Sequence[Event]) -> None:
        """One ``log_batch`` per chunk of consecutive metrics/params/tags, in order.

        A chunk is one store transaction. When one fails, :class:`PartialWriteError`
        tells the writer how many events landed before it, and the per-key timestamp
        state is rolled back to that point: a retried chunk carries the very same
        timestamps, so MLflow keeps one copy of each point, never two.
        """
        from mlflow.entities import Metric as MlflowMetric
        from mlflow.entities import Param, RunTag

        done = 0  # events known to have landed
        chunk_events = 0
        metrics: list[Any] = []
        params: list[Any] = []
        tags: list[Any] = self._late_run_tags()  # not events: they ride along with the first chunk
        saved_ts = dict(self._last_ts)

        def flush() -> None:
            nonlocal done, chunk_events, saved_ts
            if chunk_events or tags:
                try:
                    for start in range(0, max(len(params), len(tags), 1), MAX_PARAMS_TAGS_PER_BATCH):
                        end = start + MAX_PARAMS_TAGS_PER_BATCH
                        self._client.log_batch(
                            self._require_run(),
                            metrics=metrics if start == 0 else [],
                            params=params[start:end],
                            tags=tags[start:end],
                        )
                except BaseException as exc:
                    self._last_ts = saved_ts
                    raise PartialWriteError(done, exc) if done else exc from None
                done += chunk_events
                self._late_tags = None
            metrics.clear()
            params.clear()
            tags.clear()
            chunk_events = 0
            saved_ts = dict(self._last_ts)

        try:
            for event in events:
                if isinstance(event, Metric):
                    if len(metrics) + len(params) + len(tags) >= MAX_ENTITIES_PER_BATCH:
                        flush()
                    # stamped upstream; an unstamped point (spilled after an agent was lost) may move on
                    ts = timestamp_ms(event)
                    last = self._last_ts.get(event.name)
                    if last is not None and ts <= last:
                        ts = last + 1
                    self._last_ts[event.name] = ts
                    metrics.append(MlflowMetric(event.name, event.value, ts, event.step))
                    chunk_events += 1
                elif isinstance(event, (Params, Tags)):
                    size = len(event.values)
                    if (params or tags) and max(len(params), len(tags)) + size > MAX_PARAMS_TAGS_PER_BATCH:
                        flush()
                    if isinstance(event, Params):
                        params.extend(Param(k, v) for k, v in event.values.items())
                    else:
                        tags.extend(RunTag(k, v) for k, v in event.values.items())
                    chunk_events += 1
                else:
                    flush()
                    if isinstance(event, Artifact):
                        self._store_artifact(event)
                    elif isinstance(event, Image):
                        self._upload(event.local_path, f"{IMAGE_DIR}/{event.name}/{event.step}.png")
                    elif isinstance(event, Status):  # as Lightning's MLFlowLogger does at finalize
                        self._client.set_terminated(
                            self._require_run(), status=STATUS_TO_MLFLOW[event.status]
                        )
                    done += 1
                    saved_ts = dict(self._last_ts)
            flush()
        except PartialWriteError:
            raise
        except BaseException as exc:
            self._last_ts = saved_ts
            if done:
                raise PartialWriteError(done, exc) from exc
            raise

    def _require_run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("MLflow run was never started")
        return self.run_id

    def _store_artifact(self, event: Artifact) -> None:
        """Link the snapshot into a local artifact folder (MLflow's file repository), else upload it.

        MLflow's own ``log_artifact`` into its file repository is a ``shutil.copy2`` to
        ``<artifact_uri>/<artifact_path>``; the snapshot already holds those bytes, so it is
        linked there instead (copied across filesystems, or for ``copy=False``). A server
        (``mlflow-artifacts:``, ``s3:``, ...) gets the upload, which MLflow streams from the file;
        a folder is one ``log_artifacts`` call.
        """
        if self._artifact_dir is not None:
            for file in tree_files(event):
                self._placement.place(file, self._artifact_dir / file.artifact_path)
            return
        if event.tree:  # a folder: MLflow's own one call for it
            with proxied_artifacts_before_3_2(self._client.tracking_uri):
                self._client.log_artifacts(self.run_id, event.local_path, event.artifact_path or None)
            return
        check_source(event)
        self._upload(event.local_path, event.artifact_path)

    def notes(self) -> list[str]:
        return self._placement.notes()

    def _upload(self, local_path: str, artifact_path: str) -> None:
        """Upload one file so that it lands exactly at ``artifact_path``."""
        directory, _, filename = artifact_path.rpartition("/")
        with proxied_artifacts_before_3_2(self._client.tracking_uri):
            if os.path.basename(local_path) == filename:
                self._client.log_artifact(self.run_id, local_path, directory or None)
                return
            with tempfile.TemporaryDirectory(prefix="tracelet-upload-") as tmp:
                renamed = os.path.join(tmp, filename)
                shutil.copyfile(local_path, renamed)
                self._client.log_artifact(self.run_id, renamed, directory or None)

    def finish(self, status: str) -> None:
        late = self._late_run_tags()
        if late:  # a run that logged nothing still records what it ran on
            self._client.log_batch(self._require_run(), tags=late)
            self._late_tags = None
        self._client.set_terminated(self.run_id, status=STATUS_TO_MLFLOW[status])

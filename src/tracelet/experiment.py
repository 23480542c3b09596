"""The :class:`Experiment`: validation on the caller's thread, then fan-out to one writer per backend."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from tracelet.backends.base import FAILED, FINISHED, KILLED, STATUSES, RunInfo
from tracelet.collectors.system import caller_metadata
from tracelet.config import Settings
from tracelet.delivery import Delivery, OpenRequest, discard, open_delivery
from tracelet.errors import DeliveryError, RunOpenError, TraceletError
from tracelet.images import png_size, to_png
from tracelet.redaction import Redactor
from tracelet.report import DeliveryHealth, DeliveryReport
from tracelet.snapshots import Staging
from tracelet.spool import spool_root
from tracelet.validation import check_name, check_step, coerce_value, flatten_params

log = logging.getLogger(__name__)


class Experiment:
    """One run, sent to one or several backends.

    Every ``log_*`` method validates on the caller's thread and raises there
    (``ValueError``/``TypeError`` naming the argument); delivery happens behind one
    seam (:mod:`tracelet.delivery`): in the delivery agent by default, or on writer
    threads of this process. Use :func:`tracelet.start_logging` to create one.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        enabled: bool = True,
        on_close: Callable[[Experiment], None] | None = None,
        writer_options: Mapping[str, int] | None = None,
        param_limit: tuple[int, str] | None = None,
    ) -> None:
        self.project = settings.project
        self.name = settings.run_name
        self.settings = settings
        self.status: str = "running"
        self._runs: dict[str, str | None] | None = None
        self._params: dict[str, str] = {}
        self._last_step: dict[str, int] = {}
        self._image_steps: dict[str, int] = {}
        self._valid_names: set[str] = set()
        self._signal_status: str | None = None
        self._end_status: str | None = None
        self._report: DeliveryReport | None = None
        self._inactive = not enabled
        self._disabled = not enabled
        self._on_close = on_close
        self._lock = threading.Lock()
        key = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.spool_dir = (spool_root() / key).absolute()
        self._staging = Staging(
            self.spool_dir / "staging", settings.artifact_stage_bytes, delivering=self._delivering
        )
        self._delivery: Delivery | None = None
        self._send: Callable[[tuple[Any, ...]], None] = discard
        #: the smallest (static) param value limit over the backends, and the backend that sets it
        self._param_limit = param_limit
        #: secrets never leave the caller's thread (``TRACELET_REDACT``, see :mod:`tracelet.redaction`)
        self._redactor = Redactor.from_env()
        if not enabled:
            self._runs = {}
            return
        request = OpenRequest(
            backends=[(name, dict(settings.backend_options.get(name, {}))) for name in settings.backends],
            info=RunInfo(self.project, self.name, caller_metadata()),  # the rest where the runs open
            spool_dir=str(self.spool_dir),
            cwd=os.getcwd(),
            writer_options=dict(writer_options or {}),
            track_git=settings.track_git,
            system_interval=settings.system_interval,
            started_at=time.time(),
        )
        self._delivery = open_delivery(
            request,
            settings.delivery,
            agent_timeout=settings.agent_timeout,
            agent_drain=settings.agent_drain,
            agent_idle=settings.agent_idle,
            lag_warn=settings.lag_warn,
        )
        self._send = self._delivery.put
        if settings.wait:
            self._wait_open()

    def _wait_open(self) -> None:
        """``wait=True``: block until every run is open; raise what opening raised, leaving nothing behind."""
        assert self._delivery is not None
        opened = self._delivery.opened(self.settings.agent_timeout + 5.0)
        error: BaseException | None = self._delivery.open_error
        if opened is not None and error is None:
            if not opened.errors:
                return
            error = RunOpenError(opened.errors)
        self._inactive = True
        self._disabled = True
        self._delivery.stop(FAILED, 1.0)
        shutil.rmtree(self.spool_dir, ignore_errors=True)
        if error is not None:
            raise error
        raise TraceletError(
            f"the runs did not open within {self.settings.agent_timeout:.0f}s (TRACELET_AGENT_TIMEOUT)"
        )

    @property
    def runs(self) -> dict[str, str | None]:
        """Backend name -> its run id (``None`` for a backend whose run failed to open).

        The runs open in the background: this waits until each is open or has failed,
        at most ``TRACELET_AGENT_TIMEOUT`` seconds (then the ids not known yet are ``None``).
        """
        if self._runs is None:
            assert self._delivery is not None or self._disabled
            opened = (
                self._delivery.opened(self.settings.agent_timeout) if self._delivery is not None else None
            )
            if opened is None:
                return {name: None for name in self.settings.backends}
            self._runs = dict(opened.runs)
        return dict(self._runs)

    # -- metrics ---------------------------------------------------------------------------
    def log_metric(self, name: str, value: Any, iteration: int | None = None) -> None:
        """Log one point. ``iteration=None`` is one past this key's previous step (0 at first)."""
        if self._inactive:
            self._check_active()
            return
        if name not in self._valid_names:
            self._valid_names.add(check_name(name, "metric"))
        kind = type(value)
        if kind is not float and kind is not int:
            value = coerce_value(name, value)
        if iteration is None:
            iteration = self._last_step.get(name, -1) + 1
        elif type(iteration) is not int or iteration < 0:
            iteration = check_step(iteration)
        self._last_step[name] = iteration
        self._send(("metric", name, value, iteration, time.time()))

    def log_metrics(self, metrics: Mapping[str, Any], iteration: int | None = None) -> None:
        """Log several metrics at one step. All are validated before any is sent."""
        if self._inactive:
            self._check_active()
            return
        if not isinstance(metrics, Mapping):
            raise TypeError(f"metrics must be a dict, not {type(metrics).__name__}")
        step = None if iteration is None else check_step(iteration)
        checked = [(check_name(k, "metric"), coerce_value(k, v)) for k, v in metrics.items()]
        now = time.time()
        for name, value in checked:
            self._valid_names.add(name)
            point = self._last_step.get(name, -1) + 1 if step is None else step
            self._last_step[name] = point
            self._put(("metric", name, value, point, now))

    # -- params and tags -------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log hyperparameters; nested dicts are flattened with ``/``. Values are immutable."""
        if self._inactive:
            self._check_active()
            return
        # Secrets go before anything is stored, spooled or put in an error message.
        flat = {
            k: self._redactor.text(v) for k, v in flatten_params(self._redactor.value("", params)).items()
        }
        new: dict[str, str] = {}
        for key, value in flat.items():
            old = self._params.get(key)
            if old is not None and old != value:
                raise ValueError(
                    f"param {key!r} was already logged as {old!r}; it cannot change to {value!r}"
                )
            if self._param_limit is not None and len(value) > self._param_limit[0]:
                limit, backend = self._param_limit
                raise ValueError(
                    f"param {key!r} is {len(value)} characters long; {backend} accepts at most {limit}"
                )
            if old is None:
                new[key] = value
        if new:
            self._params.update(new)
            self._put(("params", new))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set user tags (string values). Keys follow the metric-name rules."""
        if self._inactive:
            self._check_active()
            return
        if not isinstance(tags, Mapping):
            raise TypeError(f"tags must be a dict, not {type(tags).__name__}")
        checked = {check_name(k, "tag"): str(self._redactor.value(k, v)) for k, v in tags.items()}
        checked = {k: self._redactor.text(v) for k, v in checked.items()}
        if checked:
            self._put(("tags", checked, False))

    # -- files -----------------------------------------------------------------------------
    def log_artifact(
        self, path: str | os.PathLike[str], artifact_path: str | None = None, *, copy: bool = True
    ) -> None:
        """Log a file, or a directory's files with their relative paths, under ``artifact_path``.

        The bytes are snapshotted now (one kernel copy, a reflink where the filesystem has
        them), so a file overwritten later does not change what lands; a store on this
        filesystem keeps that snapshot as its copy. Past ``TRACELET_ARTIFACT_STAGE_MB`` of
        snapshots still on their way, this waits for the stores (one WARNING says so). A
        directory is one snapshot and one store operation where the store has one (MLflow's
        ``log_artifacts``); a full disk raises ``OSError`` naming the file, with nothing logged.

        ``copy=False`` takes no snapshot: the store reads the file when it delivers it. Only
        for a file nothing rewrites or deletes until the run is stopped: one that is changed
        or deleted before delivery is not stored, and the run's report names it as failed.
        """
        if self._inactive:
            self._check_active()
            return
        if not isinstance(copy, bool):
            raise TypeError(f"copy must be True or False, not {type(copy).__name__}")
        source = Path(path)
        if not source.exists():
            raise FileNotFoundError(f"log_artifact: path {str(path)!r} does not exist")
        prefix = _clean_artifact_path(artifact_path)
        if source.is_dir():
            files = sorted(p for p in source.rglob("*") if p.is_file())
            if not files:
                raise ValueError(f"log_artifact: directory {str(path)!r} holds no files")
            root = source.resolve()
            for file in files:  # checked before any byte is copied: nothing is half-logged
                if not file.resolve().is_relative_to(root):
                    raise ValueError(
                        f"log_artifact: {str(file)!r} is a link to {str(file.resolve())!r}, outside "
                        f"the directory {str(path)!r}; log that file on its own if it is meant"
                    )
            targets = [(f, f.relative_to(source).as_posix()) for f in files]
        else:
            targets = [(source, source.name)]
        items: list[tuple[Any, ...]] = []
        if copy and source.is_dir():  # one event, one snapshot folder: one store operation where there is one
            tree, size = self._staging.snapshot_tree(targets)
            items.append(("artifact", str(tree), prefix, "", size, True, 0, True))
        elif copy:
            snapshot, size = self._staging.snapshot(
                source, source.name
            )  # the writer hashes it, not this thread
            items.append(("artifact", str(snapshot), _join(prefix, source.name), "", size, True, 0, False))
        else:
            for file, relative in targets:
                st = os.stat(file)  # what it was when logged: checked again when it is delivered
                owner_file = str(file.absolute())
                dest = _join(prefix, relative)
                items.append(("artifact", owner_file, dest, "", st.st_size, False, st.st_mtime_ns, False))
        for item in items:
            self._put(item)

    def health(self) -> DeliveryHealth:
        """How delivery goes, now: per backend, what is queued, delivered, failed and pending, the
        retries, how far behind the store is (``lag``, seconds) and the last error.

        Read from what delivery already acknowledged, with no round trip to the agent (about a
        microsecond): a training loop may call it every step. ``TRACELET_LAG_WARN`` makes the
        ``tracelet`` logger say when a store falls behind, and when it catches up.
        """
        delivery = self._delivery
        if delivery is None:
            return DeliveryHealth({})
        return delivery.health()

    def staged_bytes_peak(self, reset: bool = False) -> int:
        """The most bytes of artifact snapshots that waited for the stores at once in this run.

        What ``TRACELET_ARTIFACT_STAGE_MB`` bounds: disk that ``log_artifact`` took beside the
        file itself until every store had it (on a store that links the snapshot into place, it is
        the store's own copy from then on). ``reset=True`` starts the next peak from now.
        """
        return self._staging.peak_bytes(reset)

    def log_image(self, name: str, image: Any, iteration: int | None = None) -> None:
        """Log an image (numpy array, tensor or matplotlib figure), encoded as PNG now."""
        if self._inactive:
            self._check_active()
            return
        check_name(name, "image")
        step = self._image_steps.get(name, -1) + 1 if iteration is None else check_step(iteration)
        data = to_png(image)
        width, height = png_size(data)
        local = self._staging.new_dir() / f"{step}.png"
        local.write_bytes(data)
        self._image_steps[name] = step
        self._put(("image", name, str(local), step, width, height))

    def _delivering(self) -> bool:
        """Whether delivery may still free room in the staging area (see :class:`Staging`)."""
        delivery = self._delivery
        return delivery is not None and delivery.delivering()

    # -- plumbing --------------------------------------------------------------------------
    def _put(self, item: tuple[Any, ...]) -> None:
        self._send(item)

    def wake(self) -> None:
        """Ask delivery to send what is queued now (signal handlers use it)."""
        if self._delivery is not None:
            self._delivery.wake()

    def set_end_status(self, status: str) -> None:
        """The status this run closes with when ``stop`` is given none (at exit, or ``stop_logging()``).

        A Lightning logger's ``finalize("failed")`` leaves its run open (a later
        ``trainer.test()`` may still log to it), but the run must not end ``finished``.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        self._end_status = status

    def show_status(self, status: str) -> None:
        """Show ``status`` in the stores now, in order with what was logged; the run stays open.

        MLflow's run and the local store's say it at once (ClearML's offline session too);
        a W&B run shows "running" until it is closed. What is logged later still lands, and
        the status the run is closed with has the last word.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if self._inactive:
            self._check_active()
            return
        self._put(("status", status))

    def mark_killed(self) -> None:
        """A signal ends this run: it closes as ``killed`` (at exit or at the next stop)."""
        self._signal_status = KILLED
        self.wake()

    def detach(self) -> None:
        """In a forked child (a DataLoader worker): log nothing, touch none of the parent's delivery."""
        self._inactive = True
        self._disabled = True
        self._send = discard
        if self._delivery is not None:
            self._delivery.detach()
            self._delivery = None

    def _check_active(self) -> None:
        if self._disabled:
            return
        raise TraceletError(f"experiment {self.name!r} is stopped; start a new one with start_logging()")

    @property
    def closed(self) -> bool:
        return self._report is not None or self._disabled

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything logged so far has been delivered (or failed). False on timeout."""
        if self._delivery is None:
            return True
        return self._delivery.flush(self.settings.flush_timeout if timeout is None else timeout)

    def stop(self, status: str | None = None, flush_timeout: float | None = None) -> DeliveryReport:
        """Flush (bounded by ``flush_timeout``), close every run, and report what landed."""
        if self._report is not None:
            return self._report
        status = status or self._signal_status or self._end_status or FINISHED
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        self._inactive = True
        timeout = self.settings.flush_timeout if flush_timeout is None else flush_timeout
        reports = self._delivery.stop(status, timeout) if self._delivery is not None else {}
        self.status = status
        self._report = DeliveryReport(status=status, backends=reports)
        if self._on_close is not None:
            self._on_close(self)
        if self._disabled:  # a forked child or a non-zero rank: the spool belongs to another process
            return self._report
        if self._report.ok:
            shutil.rmtree(self.spool_dir, ignore_errors=True)
            log.info("tracelet: run %r delivered\n%s", self.name, self._report.format())
        else:
            log.warning("tracelet: run %r did not deliver everything\n%s", self.name, self._report.format())
        if self.settings.strict and not self._report.ok:
            raise DeliveryError(self._report)
        return self._report

    def exit_status(self) -> str:
        """The status an exiting interpreter implies: killed by a signal, failed by an uncaught error."""
        if self._signal_status:
            return self._signal_status
        last = getattr(sys, "last_value", None)
        if isinstance(last, KeyboardInterrupt):
            return KILLED
        return FAILED if last is not None else self._end_status or FINISHED

    def __enter__(self) -> Experiment:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.stop()
            return
        if isinstance(exc, KeyboardInterrupt) or self._signal_status:
            status = KILLED
        elif isinstance(exc, SystemExit) and exc.code in (0, None):
            status = FINISHED
        else:
            status = FAILED
        try:
            self.stop(status)
        except DeliveryError as err:  # never hide the user's own exception behind ours
            log.error("%s", err)

    def __repr__(self) -> str:
        return (
            f"Experiment(name={self.name!r}, project={self.project!r}, backends={self.settings.backends!r})"
        )


def _join(prefix: str, relative: str) -> str:
    return f"{prefix}/{relative}" if prefix else relative


def _clean_artifact_path(artifact_path: str | None) -> str:
    if artifact_path is None:
        return ""
    if not isinstance(artifact_path, str):
        raise TypeError(f"artifact_path must be a str or None, not {type(artifact_path).__name__}")
    cleaned = artifact_path.replace("\\", "/").strip("/")
    parts = [p for p in cleaned.split("/") if p not in ("", ".")]
    if os.path.isabs(artifact_path) or ".." in parts:
        raise ValueError(f"artifact_path must be a relative path inside the run, got {artifact_path!r}")
    return "/".join(parts)

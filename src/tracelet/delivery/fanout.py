"""One run per backend and one writer each: the engine of both delivery modes.

The thread mode (:class:`~tracelet.delivery.thread.ThreadDelivery`) runs a
:class:`Fanout` in the training process; the delivery agent runs the very same
class in its own process, so both modes run the same writer code.

Opening happens here, off the caller's thread: building each store's client, opening
its run, and reading what the run ran on: the environment's versions (once per
process) and the git state of the caller's working directory (two ``git`` calls, started
before the stores open their runs and read while they do). A backend whose run cannot be
opened is reported once, at ERROR, with the store's own message; its writer keeps
everything logged for it in its spool (never dropped), so
``tracelet sync`` can open the run and deliver it later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from tracelet.backends.registry import get_backend_class
from tracelet.collectors.git import start_git_metadata
from tracelet.collectors.system import environment_metadata
from tracelet.delivery import Opened, OpenRequest
from tracelet.delivery.health import Progress
from tracelet.delivery.ledger import SnapshotLedger
from tracelet.delivery.writer import BackendWriter
from tracelet.redaction import Redactor, strip_url_userinfo
from tracelet.report import BackendReport
from tracelet.spool import DiskAlarm, Spool

log = logging.getLogger(__name__)


class Fanout:
    """One writer per backend; every event goes to each of them."""

    def __init__(
        self,
        request: OpenRequest,
        on_progress: Callable[[], None] | None = None,
        disk_alarm: DiskAlarm | None = None,
    ) -> None:
        self.writers: list[BackendWriter] = []
        #: the names the user asked for (an entry point's name may differ from its class's ``name``)
        self.names: list[str] = []
        #: False when a backend's client cannot serve another run in the same process (ClearML)
        self.reusable = True
        runs: dict[str, str | None] = {}
        errors: dict[str, str] = {}
        spool_dir = Path(request.spool_dir)
        #: deletes each artifact snapshot once every backend stored it
        self.ledger = SnapshotLedger(len(request.backends))
        # the versions and the git state are read here, off the caller's thread; git is
        # started now and read while the stores open their runs
        info = replace(request.info, system_tags={**environment_metadata(), **request.info.system_tags})
        if request.track_git:
            info = replace(info, pending_tags=start_git_metadata(request.cwd))
        for name, options in request.backends:
            backend = get_backend_class(name)(options)
            error: BaseException | None = None
            try:
                runs[name] = backend.start(info if backend.late_system_tags else info.resolved())
            except Exception as exc:
                error = exc
                runs[name] = None
                errors[name] = strip_url_userinfo(f"{type(exc).__name__}: {exc}")
                log.error(
                    "tracelet: %s could not open a run: %s; what is logged for it is kept in %s "
                    "(replay: tracelet sync)",
                    name,
                    errors[name],
                    spool_dir / name,
                )
            self.reusable = self.reusable and backend.shares_process()
            meta = {
                "backend": name,
                "run_id": backend.run_id,
                "project": info.project,
                "run_name": info.run_name,
                # no credential on disk: `tracelet sync` takes them from the store's own variables
                "options": Redactor.from_env().without_secrets(backend.spool_options()),
                "system_tags": info.all_system_tags(),
                "order": 0,
            }
            spool = Spool(spool_dir / name, meta)
            self.writers.append(
                BackendWriter(
                    backend,
                    spool,
                    start_error=error,
                    on_progress=on_progress,
                    disk_alarm=disk_alarm,
                    on_settled=self.ledger.settled,
                    **request.writer_options,
                )
            )
            self.names.append(name)
        self.opened = Opened(runs=runs, errors=errors)
        for writer in self.writers:
            writer.start()

    def put(self, item: tuple[Any, ...]) -> None:
        self.ledger.hold(item)
        for writer in self.writers:
            writer.put(item)

    def put_many(self, items: list[tuple[Any, ...]]) -> None:
        for item in items:
            self.ledger.hold(item)
        for writer in self.writers:
            for item in items:
                writer.put(item)

    def wake(self) -> None:
        for writer in self.writers:
            writer.wake()

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(w.flush(max(0.0, deadline - time.monotonic())) for w in self.writers)

    def stop(self, status: str, timeout: float) -> dict[str, BackendReport]:
        """Drain every backend at once, within one shared deadline."""
        deadline = time.monotonic() + timeout
        for writer in self.writers:
            writer.begin_stop(status)
        return {
            name: replace(w.stop(status, max(0.0, deadline - time.monotonic())), backend=name)
            for name, w in zip(self.names, self.writers, strict=True)
        }

    def hung(self) -> bool:
        """True when a writer is still stuck in a store call after its stop gave up on it."""
        return any(w.hung() for w in self.writers)

    def progress(self) -> dict[str, Progress]:
        """Per backend, its writer's counts (see :meth:`BackendWriter.progress`)."""
        return {name: w.progress() for name, w in zip(self.names, self.writers, strict=True)}

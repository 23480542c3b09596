"""Writers on threads of the process that owns them: the thread mode, and the agent's engine.

:class:`Fanout` opens one run per backend and feeds one
:class:`~tracelet.delivery.writer.BackendWriter` each. The thread mode
(:class:`ThreadDelivery`) uses it in the training process; the delivery agent uses
the very same class in its own process, so both modes run the same writer code.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tracelet.backends.registry import get_backend_class
from tracelet.delivery import Delivery, Opened, OpenRequest
from tracelet.delivery.writer import BackendWriter
from tracelet.redaction import Redactor
from tracelet.report import BackendReport
from tracelet.spool import Spool

log = logging.getLogger(__name__)


class Fanout:
    """One writer per backend; every event goes to each of them."""

    def __init__(self, request: OpenRequest) -> None:
        self.writers: list[BackendWriter] = []
        #: the names the user asked for (an entry point's name may differ from its class's ``name``)
        self.names: list[str] = []
        runs: dict[str, str | None] = {}
        limits: list[tuple[int, str]] = []
        spool_dir = Path(request.spool_dir)
        for name, options in request.backends:
            backend = get_backend_class(name)(options)
            error: BaseException | None = None
            try:
                runs[name] = backend.start(request.info)
            except Exception as exc:
                error = exc
                runs[name] = None
                log.warning("tracelet: %s could not open a run: %r", name, exc)
            if error is None:
                try:
                    limit = backend.param_value_limit()
                except Exception as exc:
                    limit = None
                    log.warning("tracelet: %s param limit unknown: %r", name, exc)
                if limit is not None:
                    limits.append((limit, name))
            meta = {
                "backend": name,
                "run_id": backend.run_id,
                "project": request.info.project,
                "run_name": request.info.run_name,
                # no credential on disk: `tracelet sync` takes them from the store's own variables
                "options": Redactor.from_env().without_secrets(backend.spool_options()),
                "order": 0,
            }
            spool = Spool(spool_dir / name, meta)
            self.writers.append(BackendWriter(backend, spool, start_error=error, **request.writer_options))
            self.names.append(name)
        self.opened = Opened(runs=runs, param_limit=min(limits) if limits else None)
        for writer in self.writers:
            writer.start()

    def put(self, item: tuple[Any, ...]) -> None:
        for writer in self.writers:
            writer.put(item)

    def put_many(self, items: list[tuple[Any, ...]]) -> None:
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

    def progress(self) -> dict[str, tuple[int, int, int, int]]:
        """Per backend: (delivered, failed, durable, retries); see :meth:`BackendWriter.durable`."""
        return {
            name: (w.delivered, w.failed, w.durable(), w.retries)
            for name, w in zip(self.names, self.writers, strict=True)
        }


class ThreadDelivery(Delivery):
    """The thread mode (``TRACELET_DELIVERY=thread``): the writers run in this process."""

    def __init__(self, request: OpenRequest) -> None:
        self._fanout: Fanout | None = Fanout(request)
        self.opened = self._fanout.opened
        self._put = self._fanout.put

    def put(self, item: tuple[Any, ...]) -> None:
        self._put(item)

    def flush(self, timeout: float) -> bool:
        return self._fanout.flush(timeout) if self._fanout else True

    def stop(self, status: str, timeout: float) -> dict[str, BackendReport]:
        return self._fanout.stop(status, timeout) if self._fanout else {}

    def wake(self) -> None:
        if self._fanout is not None:
            self._fanout.wake()

    def detach(self) -> None:
        self._fanout = None
        self._put = _drop


def _drop(item: tuple[Any, ...]) -> None:
    """A detached delivery (a forked child) takes nothing."""

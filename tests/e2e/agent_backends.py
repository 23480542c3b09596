"""Backends the E2E tests add next to the real stores, registered through ``TRACELET_EXTRA_BACKENDS``.

The delivery agent is another process, so a test cannot patch a class in its own
memory and expect the agent to see it; these classes are importable by both, and
report what they saw through files.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tracelet.backends.local import LocalBackend
from tracelet.backends.mlflow import MLflowBackend
from tracelet.events import Event

ENV_CALLS_FILE = "TRACELET_E2E_CALLS_FILE"


class BrokenBackend(LocalBackend):
    """Every write raises: a store that refuses everything."""

    name = "broken"

    def write(self, events: Sequence[Event]) -> None:
        if events:
            raise OSError("disk on fire")


class HangingBackend(LocalBackend):
    """Opens its run, then every write hangs forever: a store that stopped answering mid-run."""

    name = "hanging"

    def write(self, events: Sequence[Event]) -> None:
        if getattr(self, "_opened", False):
            while True:
                time.sleep(1.0)
        super().write(events)

    def start(self, info: Any) -> str:
        run_id = super().start(info)
        self._opened = True
        return run_id


class CountingMLflowBackend(MLflowBackend):
    """The real MLflow backend, recording the size of every ``log_batch`` call in a JSON-lines file."""

    name = "mlflow-counting"

    def _connect(self) -> Any:
        client = super()._connect()
        original = client.log_batch
        calls = Path(os.environ[ENV_CALLS_FILE])

        def log_batch(run_id: str, metrics: Any = (), params: Any = (), tags: Any = (), **kw: Any) -> Any:
            with open(calls, "a", encoding="utf-8") as f:
                f.write(json.dumps({"metrics": len(metrics), "pid": os.getpid()}) + "\n")
            return original(run_id, metrics=metrics, params=params, tags=tags, **kw)

        client.log_batch = log_batch
        return client


ENV_KILL_AFTER_BATCH = "TRACELET_E2E_KILL_AFTER_BATCH"


class KilledAfterCommitMLflowBackend(MLflowBackend):
    """The real MLflow backend, whose process is SIGKILLed right after the Nth ``log_batch`` returns.

    ``TRACELET_E2E_KILL_AFTER_BATCH=N`` arms it: the store has committed batch N, and the agent
    dies before it can acknowledge it, the narrowest window an OOM kill can hit. Unset (as in
    ``tracelet sync``), it is the plain MLflow backend.
    """

    name = "mlflow-killed-after-commit"

    def _connect(self) -> Any:
        client = super()._connect()
        armed = os.environ.get(ENV_KILL_AFTER_BATCH)
        if not armed:
            return client
        original = client.log_batch
        calls = 0

        def log_batch(*args: Any, **kw: Any) -> Any:
            nonlocal calls
            result = original(*args, **kw)
            calls += 1
            if calls == int(armed):
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        client.log_batch = log_batch
        return client


EXTRA = {
    "broken": "tests.e2e.agent_backends:BrokenBackend",
    "hanging": "tests.e2e.agent_backends:HangingBackend",
    "mlflow-counting": "tests.e2e.agent_backends:CountingMLflowBackend",
    "mlflow-killed-after-commit": "tests.e2e.agent_backends:KilledAfterCommitMLflowBackend",
}


def extra_backends_env() -> str:
    return ",".join(f"{k}={v}" for k, v in EXTRA.items())

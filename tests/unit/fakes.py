"""Backends for the unit tests: recording, blocking, failing, flaky, refusing.

They must work in the delivery agent too, a separate process: they are registered
through ``TRACELET_EXTRA_BACKENDS`` (see ``conftest.py``), keep what they receive in
files under ``TRACELET_LOCAL_DIR``, and are controlled through files (a *gate* that
blocked writes wait for). Tests read results back with :func:`run_view`, never from
objects in the test's own memory.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tracelet.backends.base import Backend, RunInfo
from tracelet.backends.files import Placement, tree_files
from tracelet.backends.local import LocalBackend
from tracelet.events import Artifact, Event, Metric, from_json, to_json

ENV_GATE = "TRACELET_TEST_GATE"
#: a variable only some runs set: a warm agent must not carry it from one run into the next
ENV_SECRET = "TRACELET_TEST_SECRET"


def _root() -> Path:
    return Path(os.environ["TRACELET_LOCAL_DIR"]) / "_memory"


def gate_open() -> bool:
    gate = os.environ.get(ENV_GATE)
    return gate is None or Path(gate).exists()


def release() -> None:
    """Open the gate: blocked writes go through (in whichever process they wait)."""
    Path(os.environ[ENV_GATE]).touch()


def hold() -> None:
    Path(os.environ[ENV_GATE]).unlink(missing_ok=True)


def wait_for(condition: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    """Poll ``condition`` until it is true; fail the test (naming ``what``) past ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.05)


def _wait_for_gate() -> None:
    while not gate_open():
        time.sleep(0.01)


class MemoryBackend(Backend):
    """Records every delivered batch in ``<local dir>/_memory/<run id>/``."""

    name = "memory"
    option_keys = frozenset({"limit"})

    def param_value_limit(self) -> int | None:
        limit = self.options.get("limit")
        return int(limit) if limit is not None else None

    def start(self, info: RunInfo) -> str:
        self.run_id = f"mem-{uuid.uuid4().hex[:8]}"
        self._dir = _root() / self.run_id
        self._dir.mkdir(parents=True)
        self._meta: dict[str, Any] = {
            "backend": self.name,
            "project": info.project,
            "run_name": info.run_name,
            "system_tags": info.system_tags,
            "status": None,
            "started": time.time(),
            # where and in which environment the run was opened (a warm agent serves many runs)
            "pid": os.getpid(),
            "cwd": os.getcwd(),
            "secret": os.environ.get(ENV_SECRET),
        }
        self._save()
        return self.run_id

    def _save(self) -> None:
        tmp = self._dir / "run.json.tmp"
        tmp.write_text(json.dumps(self._meta))
        os.replace(tmp, self._dir / "run.json")

    def write(self, events: Sequence[Event]) -> None:
        # a file store: an artifact is placed (linked, as the local store does) under artifacts/,
        # and the record points there; the snapshot itself goes once every store has it
        events = [
            stored
            for e in events
            for stored in ([self._store(f) for f in tree_files(e)] if isinstance(e, Artifact) else [e])
        ]
        with open(self._dir / "events.jsonl", "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(to_json(e)) + "\n" for e in events))
        with open(self._dir / "batches.jsonl", "a", encoding="utf-8") as f:
            f.write(f"{len(events)}\n")

    def _store(self, event: Artifact) -> Artifact:
        target = self._dir / "artifacts" / event.artifact_path
        Placement().place(event, target)
        return replace(event, local_path=str(target))

    def finish(self, status: str) -> None:
        self._meta["status"] = status
        self._save()


class BlockingBackend(MemoryBackend):
    """Blocks in ``write`` until the gate is open: a stalled server."""

    name = "blocking"

    def write(self, events: Sequence[Event]) -> None:
        _wait_for_gate()
        super().write(events)


class FailingBackend(MemoryBackend):
    """Refuses every write for good (a permanent error): a broken store. ``fail_start`` fails the open."""

    name = "failing"
    option_keys = frozenset({"limit", "fail_start"})

    def start(self, info: RunInfo) -> str:
        if self.options.get("fail_start"):
            raise ConnectionError("no server")
        return super().start(info)

    def write(self, events: Sequence[Event]) -> None:
        with open(self._dir / "calls.txt", "a") as f:  # how often delivery tried
            f.write(f"{len(events)}\n")
        raise PermissionError("store refuses everything")


class FlakyBackend(MemoryBackend):
    """Fails with a transient error (connection refused) for its first ``fail_times`` writes."""

    name = "flaky"
    option_keys = frozenset({"fail_times", "partial", "finish_fails"})

    def finish(self, status: str) -> None:
        """Closing fails ``finish_fails`` times first, as sqlite does while a reader holds it."""
        failures = self._meta.get("finish_failures", 0)
        if failures < int(self.options.get("finish_fails", 0)):
            self._meta["finish_failures"] = failures + 1
            self._save()
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        super().finish(status)

    def write(self, events: Sequence[Event]) -> None:
        from tracelet.backends.base import PartialWriteError

        failures = self._meta.get("failures", 0)
        if failures < int(self.options.get("fail_times", 3)):
            self._meta["failures"] = failures + 1
            self._save()
            cause = ConnectionRefusedError(111, "Connection refused")
            landed = min(int(self.options.get("partial", 0)), len(events) - 1)
            if landed > 0:
                super().write(events[:landed])
                raise PartialWriteError(landed, cause)
            raise cause
        super().write(events)


#: A name tracelet accepts and the refusing fakes refuse, as a store refuses a name or a value
#: of its own (MLflow's INVALID_PARAMETER_VALUE): the whole batch it rides in is refused.
REFUSED_NAME = "refused/by-the-store"


class RefusingBackend(MemoryBackend):
    """Like MLflow: a batch holding one metric the store will not take is refused whole."""

    name = "refusing"

    def write(self, events: Sequence[Event]) -> None:
        for e in events:
            if isinstance(e, Metric) and e.name == REFUSED_NAME:
                raise ValueError(f"INVALID_PARAMETER_VALUE: invalid metric name {e.name!r}")
        super().write(events)


class HangingBackend(MemoryBackend):
    """Hangs in every metric write until the gate opens (forever, unless a test opens it)."""

    name = "hanging"

    def write(self, events: Sequence[Event]) -> None:
        if any(isinstance(e, Metric) for e in events):
            _wait_for_gate()
        super().write(events)


class StallingLocalBackend(LocalBackend):
    """The local backend behind the gate, so a stop can time out and leave a spool to sync."""

    name = "stalling-local"

    def write(self, events: Sequence[Event]) -> None:
        if any(isinstance(e, Metric) for e in events):  # not the system tags written at start
            _wait_for_gate()
        super().write(events)


FAKES = {
    "memory": "tests.unit.fakes:MemoryBackend",
    "blocking": "tests.unit.fakes:BlockingBackend",
    "failing": "tests.unit.fakes:FailingBackend",
    "flaky": "tests.unit.fakes:FlakyBackend",
    "refusing": "tests.unit.fakes:RefusingBackend",
    "hanging": "tests.unit.fakes:HangingBackend",
    "stalling-local": "tests.unit.fakes:StallingLocalBackend",
}


class RunView:
    """What a fake backend recorded for one run, read from its files on every access."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.dir = _root() / run_id

    def _meta(self) -> dict[str, Any]:
        return dict(json.loads((self.dir / "run.json").read_text()))

    @property
    def events(self) -> list[Event]:
        path = self.dir / "events.jsonl"
        if not path.exists():
            return []
        return [from_json(json.loads(line)) for line in path.read_text().splitlines()]

    @property
    def metrics(self) -> list[Metric]:
        return [e for e in self.events if isinstance(e, Metric)]

    @property
    def batches(self) -> list[int]:
        path = self.dir / "batches.jsonl"
        return [int(n) for n in path.read_text().split()] if path.exists() else []

    @property
    def status(self) -> str | None:
        status = self._meta()["status"]
        return str(status) if status is not None else None

    @property
    def project(self) -> str:
        return str(self._meta()["project"])

    @property
    def run_name(self) -> str:
        return str(self._meta()["run_name"])

    @property
    def system_tags(self) -> dict[str, str]:
        return dict(self._meta()["system_tags"])

    @property
    def pid(self) -> int:
        """The process that opened the run: the delivery agent, or the trainer in thread mode."""
        return int(self._meta()["pid"])

    @property
    def cwd(self) -> str:
        return str(self._meta()["cwd"])

    @property
    def secret(self) -> str | None:
        """``TRACELET_TEST_SECRET`` as the store's client saw it when it opened the run."""
        secret = self._meta()["secret"]
        return str(secret) if secret is not None else None


def run_view(run_id: str | None) -> RunView:
    assert run_id is not None, "the backend opened no run"
    return RunView(run_id)


def all_runs() -> list[RunView]:
    """Every run any fake opened in this test, oldest first."""
    if not _root().exists():
        return []
    dirs = sorted(_root().iterdir(), key=lambda d: json.loads((d / "run.json").read_text())["started"])
    return [RunView(d.name) for d in dirs]


class SlowStartBackend(MemoryBackend):
    """Takes ``seconds`` to open its run (a slow server): for the handshake timeout."""

    name = "slow-start"
    option_keys = frozenset({"seconds"})

    def start(self, info: RunInfo) -> str:
        time.sleep(float(self.options.get("seconds", 30)))
        return super().start(info)


class RefusingLocalBackend(StallingLocalBackend):
    """The local backend refusing ``REFUSED_NAME`` until the gate opens: a refusal that a later sync fixes."""

    name = "refusing-local"

    def write(self, events: Sequence[Event]) -> None:
        if not gate_open():
            for e in events:
                if isinstance(e, Metric) and e.name == REFUSED_NAME:
                    raise ValueError(f"INVALID_PARAMETER_VALUE: invalid metric name {e.name!r}")
        LocalBackend.write(self, events)


class GatedStartBackend(MemoryBackend):
    """Opens its run only once the gate is open: a store that takes as long as a test wants."""

    name = "gated-start"

    def start(self, info: RunInfo) -> str:
        _wait_for_gate()
        return super().start(info)


class ClosedStoreBackend(LocalBackend):
    """The local store, refusing to open a run while the gate is closed: a server that is down at start."""

    name = "closed-store"

    def start(self, info: RunInfo) -> str:
        if not gate_open():
            raise ConnectionError("the store refused the run: it is down")
        return super().start(info)


FAKES["slow-start"] = "tests.unit.fakes:SlowStartBackend"
FAKES["gated-start"] = "tests.unit.fakes:GatedStartBackend"
FAKES["closed-store"] = "tests.unit.fakes:ClosedStoreBackend"
FAKES["refusing-local"] = "tests.unit.fakes:RefusingLocalBackend"
FAKES["agent-import-fails"] = "tests.unit.agent_import_fails:Backend"

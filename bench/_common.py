"""What the suite's children share: store isolation, the native clients, the facts of the machine.

Every measure compares tracelet with each store's own client, so both sides must run against the
same kind of store, configured the same way, in an equally fresh process. Keeping that here (one
environment recipe, one native adapter per store) means no two measures drift apart on what "fair"
means. The targets live in ``bench/targets.py``.

Nothing here is imported from ``tests/``, so the benchmarks run from a plain install: the
isolation recipe mirrors ``tests/e2e/environments.py``, and the ``mlflow server`` is the one
both use, :class:`tracelet.testing.servers.MLflowServer`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Store -> the package it needs (``None``: nothing beyond tracelet).
PACKAGES: dict[str, str | None] = {
    "mlflow": "mlflow",
    "mlflow_server": "mlflow",
    "wandb": "wandb",
    "clearml": "clearml",
    "local": None,
}

#: The tracelet backend name behind each store label.
BACKEND_OF: dict[str, str] = {
    "mlflow": "mlflow",
    "mlflow_server": "mlflow",
    "wandb": "wandb",
    "clearml": "clearml",
    "local": "local",
}

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent

#: the child's environment variable that carries :func:`native_settings` (JSON)
NATIVE_SETTINGS_VAR = "BENCH_NATIVE_SETTINGS"


def native_settings() -> dict[str, Any]:
    """The settings tracelet's wandb and clearml backends use, imported from them (never copied).

    The native run gets the same ones, so the comparison is between two ways of logging, not two
    configurations (``detect_repository: False`` is what keeps ClearML from scanning the repository).
    Read in the suite's own process and handed to each child through its environment
    (:func:`store_env`): a native child never imports tracelet, whose import (0.17 s, 14 MB here)
    would land in the native side's time and memory.
    """
    from tracelet.backends.clearml import FRAMEWORKS_OFF, REPORT_SUBPROCESS_ATTR
    from tracelet.backends.wandb import DEFAULT_SETTINGS

    return {
        "wandb": dict(DEFAULT_SETTINGS),
        "clearml_frameworks_off": dict(FRAMEWORKS_OFF),
        "clearml_report_subprocess_attr": REPORT_SUBPROCESS_ATTR,
    }


def _native_settings() -> dict[str, Any]:
    """In a child: what the suite handed over."""
    settings: dict[str, Any] = json.loads(os.environ[NATIVE_SETTINGS_VAR])
    return settings


def installed(store: str) -> bool:
    """True when the package a store needs can be imported (checked without importing it)."""
    package = PACKAGES[store]
    return package is None or importlib.util.find_spec(package) is not None


def select_stores(requested: Sequence[str], known: Sequence[str]) -> list[str]:
    """The requested stores that can run here; prints a note for each one skipped."""
    chosen = []
    for store in requested:
        if store not in known:
            raise SystemExit(f"unknown backend {store!r}; choose from {', '.join(known)}")
        if installed(store):
            chosen.append(store)
        else:
            print(f"note: skipping {store}: package {PACKAGES[store]!r} is not installed")
    return chosen


# -- isolation -----------------------------------------------------------------------------------


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path.as_posix()}"


def store_env(root: Path, delivery: str | None) -> dict[str, str]:
    """The environment of one benchmark child: every store writes under ``root`` only.

    Mirrors the E2E environments (``tests/e2e/framework.py``): W&B's five directories and
    offline mode, ClearML offline with its own ``HOME`` and cache (it writes
    ``~/.clearml``), MLflow without telemetry, tracelet's spool and local runs. The
    child also runs with ``cwd=root``, so a store's relative default (``./mlruns``,
    ``./wandb``) lands there too. ``delivery`` sets ``TRACELET_DELIVERY``; ``None``
    leaves the caller's setting (or the library default) alone.
    """
    env = dict(os.environ)
    wandb_dirs = {
        "WANDB_DIR": root / "wandb",
        "WANDB_CACHE_DIR": root / "wandb_cache_dir",
        "WANDB_DATA_DIR": root / "wandb_data_dir",
        "WANDB_CONFIG_DIR": root / "wandb_config_dir",
        "WANDB_ARTIFACT_DIR": root / "wandb_artifact_dir",
    }
    dirs = {
        **wandb_dirs,
        "HOME": root / "home",
        "CLEARML_CACHE_DIR": root / "clearml-cache",
        "TRACELET_SPOOL_DIR": root / "spool",
        "TRACELET_LOCAL_DIR": root / "local",
    }
    for key, path in dirs.items():
        path.mkdir(parents=True, exist_ok=True)
        env[key] = str(path)
    env.update(
        {
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "WANDB_DISABLE_GIT": "true",
            "CLEARML_OFFLINE_MODE": "1",
            "CLEARML_LOG_LEVEL": "ERROR",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    # A tracking URI inherited from the caller's shell must not send a child elsewhere.
    env.pop("MLFLOW_TRACKING_URI", None)
    if delivery is not None:
        env["TRACELET_DELIVERY"] = delivery
    env[NATIVE_SETTINGS_VAR] = json.dumps(native_settings())
    return env


def tracelet_backend(store: str, root: Path, server_url: str | None = None) -> tuple[str, dict[str, Any]]:
    """The ``backend`` and ``backend_options`` that point tracelet at the store under ``root``."""
    backend = BACKEND_OF[store]
    options: dict[str, Any]
    if store == "mlflow":
        options = {
            "tracking_uri": sqlite_uri(root / "tracelet-mlflow.db"),
            "artifact_location": (root / "tracelet-mlflow-artifacts").as_uri(),
        }
    elif store == "mlflow_server":
        if not server_url:
            raise ValueError("mlflow_server needs a server URL")
        options = {"tracking_uri": server_url}
    elif store == "wandb":
        options = {"dir": str(root / "wandb"), "mode": "offline"}
    elif store == "clearml":
        options = {"offline": True}
    elif store == "local":
        options = {"root": str(root / "local")}
    else:
        raise ValueError(f"unknown store {store!r}")
    return backend, {backend: options}


# -- native clients ------------------------------------------------------------------------------


class NativeRun:
    """One run opened with a store's own client; ``log_params``, ``log_step``, then ``close``.

    ``import_s`` and ``create_s`` say how long importing the client and opening the run
    took: the native counterparts of ``import tracelet`` and ``start_logging()``.
    """

    store = ""

    def __init__(self) -> None:
        self.import_s = 0.0
        self.create_s = 0.0

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Hyperparameters, with the store's own call for them."""
        raise NotImplementedError

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        raise NotImplementedError

    def log_point(self, name: str, value: float, step: int) -> None:
        """One value in one call: the store's per-call API, what a loop without batching does."""
        self.log_step(step, {name: value})

    def close(self) -> None:
        raise NotImplementedError


class MLflowNative(NativeRun):
    """``MlflowClient.log_batch``: per step (``chunk=None``) or in chunks of ``chunk`` metrics.

    Per step is what a training loop without a logging library does; chunks of 1000
    (MLflow's batch limit) is the best the store's bulk API can do, the throughput
    baseline. Close is ``set_terminated``.
    """

    store = "mlflow"

    def __init__(self, tracking_uri: str, project: str, run_name: str, chunk: int | None) -> None:
        super().__init__()
        t0 = time.perf_counter()
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        t1 = time.perf_counter()
        self._metric = Metric
        self._param = Param
        self._client = MlflowClient(tracking_uri=tracking_uri)
        experiment = self._client.get_experiment_by_name(project)
        experiment_id = (
            experiment.experiment_id if experiment is not None else self._client.create_experiment(project)
        )
        self._run_id: str = self._client.create_run(experiment_id, run_name=run_name).info.run_id
        self.import_s, self.create_s = t1 - t0, time.perf_counter() - t1
        self._chunk = chunk
        self._buffer: list[Any] = []

    def log_params(self, params: Mapping[str, Any]) -> None:
        """One ``log_batch(params=...)``: MLflow stores every param value as a string."""
        self._client.log_batch(self._run_id, params=[self._param(k, str(v)) for k, v in params.items()])

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        ts = int(time.time() * 1000)
        metric = self._metric
        self._buffer.extend(metric(key, value, ts, step) for key, value in metrics.items())
        if self._chunk is None:
            self._client.log_batch(self._run_id, metrics=self._buffer)
            self._buffer = []
            return
        while len(self._buffer) >= self._chunk:
            self._client.log_batch(self._run_id, metrics=self._buffer[: self._chunk])
            del self._buffer[: self._chunk]

    def log_point(self, name: str, value: float, step: int) -> None:
        self._client.log_metric(self._run_id, name, value, step=step)

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def client(self) -> Any:
        return self._client

    def close(self) -> None:
        if self._buffer:
            self._client.log_batch(self._run_id, metrics=self._buffer)
            self._buffer = []
        self._client.set_terminated(self._run_id, "FINISHED")


class WandbNative(NativeRun):
    """``run.log({...})``, one row per step, offline; close is ``run.finish()``."""

    store = "wandb"

    def __init__(self, wandb_dir: Path, project: str, run_name: str) -> None:
        super().__init__()
        t0 = time.perf_counter()
        import wandb

        t1 = time.perf_counter()
        self._run = wandb.init(
            project=project,
            name=run_name,
            dir=str(wandb_dir),
            mode="offline",
            reinit="create_new",
            settings=wandb.Settings(**_native_settings()["wandb"]),
        )
        self.import_s, self.create_s = t1 - t0, time.perf_counter() - t1

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._run.config.update(dict(params))

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        self._run.log(dict(metrics), step=step)

    @property
    def run(self) -> Any:
        return self._run

    def close(self) -> None:
        self._run.finish()


class ClearMLNative(NativeRun):
    """``Logger.report_scalar`` per value, offline, reporting subprocess off; close is ``task.close()``.

    The reporting subprocess is switched off the way tracelet's clearml backend does
    it (the private ``Task._report_subprocess_enabled``): with it on, ``report_scalar``
    is ~70x slower and ``close()`` takes seconds, which would flatter tracelet.
    """

    store = "clearml"

    def __init__(self, project: str, run_name: str) -> None:
        super().__init__()
        t0 = time.perf_counter()
        from clearml import Task

        t1 = time.perf_counter()
        settings = _native_settings()
        setattr(Task, settings["clearml_report_subprocess_attr"], False)  # as tracelet's backend does
        Task.set_offline(offline_mode=True)
        self._task = Task.init(
            project_name=project,
            task_name=run_name,
            task_type=Task.TaskTypes.training,
            reuse_last_task_id=False,
            continue_last_task=False,
            auto_connect_arg_parser=False,
            auto_connect_frameworks=settings["clearml_frameworks_off"],
            auto_resource_monitoring=False,
            auto_connect_streams=False,
        )
        self._logger = self._task.get_logger()
        self.import_s, self.create_s = t1 - t0, time.perf_counter() - t1
        self._split: dict[str, tuple[str, str]] = {}

    def log_params(self, params: Mapping[str, Any]) -> None:
        """``task.connect(dict)``: ClearML's own way, into its ``General`` section (as tracelet's)."""
        self._task.connect(dict(params))

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        report = self._logger.report_scalar
        split = self._split
        for key, value in metrics.items():
            names = split.get(key)
            if names is None:
                title, _, series = key.partition("/")
                names = split[key] = (title, series or title)
            report(names[0], names[1], value, iteration=step)

    @property
    def task(self) -> Any:
        return self._task

    def close(self) -> None:
        self._task.close()


class LocalNative(NativeRun):
    """What a user writes by hand without a tracker: JSON lines appended to a file.

    tracelet's ``local`` store has no third-party client, so its "native" is the obvious
    hand-written equivalent of the same events (name, value, step, time), one JSON object
    per line. Per step (``chunk=None``) flushes after every step, as a loop that wants its
    numbers on disk would; otherwise Python's own buffering batches the writes. Close
    flushes and fsyncs, as ``stop_logging`` does for the local store.
    """

    store = "local"

    def __init__(self, root: Path, run_name: str, chunk: int | None) -> None:
        super().__init__()
        t0 = time.perf_counter()
        self.run_dir = root / "native-local" / run_name
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.run_dir / "events.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.create_s = time.perf_counter() - t0
        self._flush_each_step = chunk is None
        self._dumps = json.dumps

    def log_params(self, params: Mapping[str, Any]) -> None:
        """One JSON line with every param, in the same file as the metrics."""
        self._file.write(self._dumps({"kind": "params", "params": dict(params), "time": time.time()}) + "\n")
        if self._flush_each_step:
            self._file.flush()

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        now, dumps, write = time.time(), self._dumps, self._file.write
        for key, value in metrics.items():
            write(dumps({"kind": "metric", "name": key, "value": value, "step": step, "time": now}) + "\n")
        if self._flush_each_step:
            self._file.flush()

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def open_native(
    store: str,
    root: Path,
    project: str,
    run_name: str,
    *,
    mlflow_chunk: int | None,
    server_url: str | None = None,
) -> NativeRun:
    """Open a run on ``store`` with its own client, under ``root`` (or on the server)."""
    if store == "mlflow":
        return MLflowNative(sqlite_uri(root / "native-mlflow.db"), project, run_name, mlflow_chunk)
    if store == "mlflow_server":
        if not server_url:
            raise ValueError("mlflow_server needs a server URL")
        return MLflowNative(server_url, project, run_name, mlflow_chunk)
    if store == "wandb":
        return WandbNative(root / "wandb", project, run_name)
    if store == "clearml":
        return ClearMLNative(project, run_name)
    if store == "local":
        return LocalNative(root, run_name, mlflow_chunk)
    raise ValueError(f"store {store!r} has no native client")


def backend_counts(report: Any, backend: str) -> dict[str, Any]:
    """The ``DeliveryReport`` counts for one backend, as plain JSON."""
    r = report[backend]
    return {
        "sent": r.sent,
        "delivered": r.delivered,
        "failed": r.failed,
        "pending": r.pending,
        "ok": bool(r.ok),
        "errors": list(r.errors)[:3],
    }


# -- a git repository around a child -------------------------------------------------------------


def git_init(root: Path) -> bool:
    """Make ``root`` a git repository with one commit, as a training script's folder is.

    tracelet records the git state a run started from (``git`` calls from the current
    directory), so ``start_logging`` costs what it costs a user only inside a repository.
    Returns False, doing nothing, where ``git`` is not installed. The caller's ``GIT_*``
    variables are dropped (a hook's ``GIT_DIR`` must not point elsewhere); the author is set
    here, as the child's ``HOME`` has no git config.
    """
    git = shutil.which("git")
    if git is None:
        return False
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    name, email = "tracelet-bench", "bench@localhost"
    env.update(
        GIT_AUTHOR_NAME=name, GIT_AUTHOR_EMAIL=email, GIT_COMMITTER_NAME=name, GIT_COMMITTER_EMAIL=email
    )
    (root / "train.py").write_text("# the training script of a benchmark sweep\n", encoding="utf-8")
    for args in (["init", "-q"], ["add", "train.py"], ["commit", "-q", "-m", "a training script"]):
        subprocess.run([git, *args], cwd=root, env=env, check=True, capture_output=True, timeout=60)
    return True


# -- children ------------------------------------------------------------------------------------


def write_child_result(spec: Mapping[str, Any], result: Mapping[str, Any]) -> None:
    Path(spec["result"]).write_text(json.dumps(result, indent=1))


# -- facts and numbers ---------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    """What a reader needs to judge the numbers: cores, load, versions, the code measured."""
    versions: dict[str, str | None] = {}
    for dist in ("tracelet", "mlflow", "wandb", "clearml", "torch"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    commit = dirty = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "src"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cores": os.cpu_count(),
        "usable_cores": affinity,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "versions": versions,
        "git_commit": commit,
        "src_dirty": dirty,
        "tracelet_delivery_env": os.environ.get("TRACELET_DELIVERY"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def rep_orders(items: Sequence[str], reps: int, seed: int) -> list[list[str]]:
    """One run order per repetition: a seeded shuffle, rotated each rep.

    Rotation moves every variant through different positions, so none always runs
    first (cold page cache) or right after the heaviest one (a warm, busy CPU).
    """
    base = list(items)
    random.Random(seed).shuffle(base)
    step = max(1, len(base) // max(1, reps))
    return [base[(r * step) % len(base) :] + base[: (r * step) % len(base)] for r in range(reps)]

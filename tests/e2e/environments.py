"""The real stores a test logs into, each set up in a temp dir, and the config a workflow receives.

MLflow with a sqlite store and through a real ``mlflow server`` (:mod:`tracelet.testing.servers`, the one
the benchmarks use too), W&B offline, ClearML offline, tracelet's own ``local`` store, and the three
backends side by side (``all``). Each environment points the store's own variables at its temp dir,
reads runs back through the store's own client or files, and lists the runs the store holds.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tracelet.testing import RunRecord, read_artifact, read_run
from tracelet.testing.servers import MLflowServer


def opened(runs: Mapping[str, str | None], backend: str) -> str:
    """``backend``'s run id in ``Experiment.runs``; a failure names the backend whose run never opened."""
    run_id = runs[backend]
    assert run_id is not None, f"the {backend} run never opened"
    return run_id


@dataclass(frozen=True, eq=False)
class BackendConfig(Mapping[str, Any]):
    """What a workflow receives: where to log, and the store to read the run back from.

    The seed README's custom workflows read it as a mapping (``backend_config["backend"]``,
    ``backend_config.get("project")``): the mapping view offers the seed's keys, read-only.
    """

    #: ``start_logging``'s ``backend``: one name, or the three of the ``all`` environment
    backend: str | list[str]
    #: the environment's name (``mlflow_server`` logs to the ``mlflow`` backend)
    environment: str
    project: str
    backend_options: dict[str, dict[str, Any]]
    #: the store itself: read runs and artifacts back, list its runs
    store: BackendEnvironment

    SEED_KEYS: ClassVar[tuple[str, ...]] = ("backend", "environment", "project", "backend_options")

    def __getitem__(self, key: str) -> Any:
        if key not in self.SEED_KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.SEED_KEYS)

    def __len__(self) -> int:
        return len(self.SEED_KEYS)

    @property
    def backend_name(self) -> str:
        """The one backend this config logs to (the ``all`` environment has three: use ``backend``)."""
        assert isinstance(self.backend, str), f"the {self.environment} environment logs to {self.backend}"
        return self.backend

    def read(self, run_id: str | None) -> RunRecord:
        """The run as the store holds it (``run_id`` from ``Experiment.runs``; ``None`` never opened)."""
        assert run_id is not None, f"the {self.environment} run never opened"
        return self.store.read(run_id)

    def read_runs(self, runs: Mapping[str, str | None]) -> dict[str, RunRecord]:
        """What each store holds for one tracelet run, by backend (``runs`` is ``Experiment.runs``)."""
        return self.store.read_runs(runs)


#: the repository's root: on a child's ``PYTHONPATH`` so that it imports ``tests`` as this process does
REPO = Path(__file__).resolve().parents[2]


def child_env(*first: Path, **extra: str) -> dict[str, str]:
    """This process's environment for a child Python, with ``first`` ahead on ``PYTHONPATH``.

    What was on it stays behind them: the network audit's ``sitecustomize`` (every child is
    audited too) and whatever made this process import its tracelet (a checkout's ``src``).
    """
    path = os.pathsep.join(filter(None, [*map(str, first), os.environ.get("PYTHONPATH")]))
    return {**os.environ, **extra, "PYTHONPATH": path}


class BackendEnvironment(ABC):
    """Sets up one real backend store in a temp dir, and reads runs back from it."""

    name: ClassVar[str]
    backend: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    #: several stores in one run (not a store of its own): never among the installed environments
    composite: ClassVar[bool] = False

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"tracelet-e2e-{self.name}-"))
        self._saved: dict[str, str | None] = {}

    def _setenv(self, **values: str) -> None:
        for key, value in values.items():
            self._saved.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def setup(self) -> None:
        """Point the backend's own variables at the temp dir."""

    def options(self) -> dict[str, Any]:
        return {}

    def read(self, run_id: str) -> RunRecord:
        """Read a run back through the backend's own client or files."""
        return read_run(self.backend, run_id, **self.reader_options())

    def read_runs(self, runs: Mapping[str, str | None]) -> dict[str, RunRecord]:
        """What each store holds for one tracelet run, by backend (``runs`` is ``Experiment.runs``)."""
        return {self.backend: self.read(opened(runs, self.backend))}

    def read_artifact(self, run_id: str, path: str) -> bytes:
        """One artifact's bytes, fetched back from the store (never from the file that was logged)."""
        return read_artifact(self.backend, run_id, path, **self.reader_options())

    def reader_options(self) -> dict[str, Any]:
        """What ``read_run``/``read_artifact`` need to find this store."""
        return {}

    def delete(self, run_id: str) -> bool:
        """Delete a run through the backend's own API; False where the offline store has none."""
        return False

    def shows_open_runs(self) -> bool:
        """Whether a run can be read back while it is still open (every store, W&B from 0.31)."""
        return True

    def stored_roots(self) -> list[Path]:
        """Every directory the store writes into (searched by the tests that look for leaks)."""
        return [self.root]

    def list_runs(self, project: str) -> list[RunRecord]:
        """Every run the store holds for ``project``, found through the store itself (not our run ids)."""
        return [r for r in (self.read(run_id) for run_id in self.run_ids()) if r.project == project]

    @abstractmethod
    def run_ids(self) -> list[str]:
        """Every run id the store holds (all projects)."""

    def teardown(self) -> None:
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(self.root, ignore_errors=True)

    def config(self, project: str) -> BackendConfig:
        """The ``backend_config`` a workflow receives."""
        return BackendConfig(self.backend, self.name, project, {self.backend: self.options()}, self)


#: an empty MLflow database that MLflow itself created, once per pytest process (see
#: :meth:`MLflowEnvironment.setup`)
_empty_mlflow_db: Path | None = None


def empty_mlflow_db() -> Path:
    """An empty sqlite database MLflow created and migrated, made once per process, for tests to copy.

    MLflow runs its ~50 schema migrations on the first open of a new sqlite file: about 2 s of
    CPU, in the delivery agent or in whichever process opens the file first. The suite opens
    a new database for nearly every test (hundreds per session, on 2 cores); a copy of one
    MLflow made is the same database, at no cost. The tests that start from a missing
    database (the examples, the warm-agent tests' own files) keep MLflow's creation covered.
    """
    global _empty_mlflow_db
    if _empty_mlflow_db is None:
        from mlflow.tracking import MlflowClient

        folder = Path(tempfile.mkdtemp(prefix="tracelet-e2e-mlflow-empty-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        made = folder / "mlflow.db"
        MlflowClient(f"sqlite:///{made.as_posix()}").search_experiments()  # creates and migrates it
        _empty_mlflow_db = made
    return _empty_mlflow_db


def own_mlflow_server(tmp_path: Path) -> MLflowServer:
    """A test's own ``mlflow server`` (one it may crash or stop), in ``tmp_path / "server"``.

    It starts from a copy of :func:`empty_mlflow_db`, as every MLflow store of the suite does.
    """
    return MLflowServer(tmp_path / "server", database=empty_mlflow_db())


class MLflowEnvironment(BackendEnvironment):
    """MLflow with a sqlite store and an artifact directory in a temp dir."""

    name = "mlflow"
    backend = "mlflow"
    requires = ("mlflow",)

    def setup(self) -> None:
        shutil.copyfile(empty_mlflow_db(), self.root / "mlflow.db")
        self._setenv(MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_TRACKING_URI=self.tracking_uri)

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{(self.root / 'mlflow.db').as_posix()}"

    def options(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "artifact_location": (self.root / "artifacts").as_uri()}

    def reader_options(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri}

    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.tracking_uri)

    def list_runs(self, project: str) -> list[RunRecord]:
        """The runs of MLflow's experiment named ``project`` (the server is shared: never read them all)."""
        client = self.client()
        experiment = client.get_experiment_by_name(project)
        if experiment is None:
            return []
        found = client.search_runs([experiment.experiment_id], max_results=10_000)
        return [self.read(run.info.run_id) for run in found]

    def run_ids(self) -> list[str]:
        client = self.client()
        experiments = [e.experiment_id for e in client.search_experiments()]
        return [run.info.run_id for run in client.search_runs(experiments, max_results=10_000)]

    def delete(self, run_id: str) -> bool:
        client = self.client()
        client.delete_run(run_id)
        return bool(client.get_run(run_id).info.lifecycle_stage == "deleted")


class MLflowServerEnvironment(MLflowEnvironment):
    """MLflow through a real tracking server (HTTP), shared by the whole pytest session."""

    name = "mlflow_server"
    server: ClassVar[MLflowServer | None] = None
    _server_root: ClassVar[Path | None] = None

    @classmethod
    def shared_server(cls) -> MLflowServer:
        if cls.server is None:
            cls._server_root = Path(tempfile.mkdtemp(prefix="tracelet-e2e-mlflow-server-"))
            cls.server = MLflowServer(cls._server_root, database=empty_mlflow_db())
        return cls.server

    @classmethod
    def stop_server(cls) -> list[str]:
        """Stop the shared server; returns problems (a process that survived) for the session to report."""
        problems = []
        if cls.server is not None:
            cls.server.stop()
            if cls.server.group_alive():
                problems.append(f"mlflow server process group {cls.server.process.pid} survived its stop")
            cls.server = None
        if cls._server_root is not None:
            shutil.rmtree(cls._server_root, ignore_errors=True)
            cls._server_root = None
        return problems

    def setup(self) -> None:  # the server holds the database: no file of its own here
        self._setenv(MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_TRACKING_URI=self.tracking_uri)

    @property
    def tracking_uri(self) -> str:
        return self.shared_server().url

    def options(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri}

    def stored_roots(self) -> list[Path]:
        return [self.root, *([self._server_root] if self._server_root is not None else [])]


class WandbEnvironment(BackendEnvironment):
    """W&B offline, with every W&B directory redirected into the temp dir."""

    name = "wandb"
    backend = "wandb"
    requires = ("wandb",)

    def setup(self) -> None:
        dirs = {
            k: str(self.root / k.lower())
            for k in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR")
        }
        for path in dirs.values():
            os.makedirs(path, exist_ok=True)
        self._setenv(
            WANDB_MODE="offline",
            WANDB_DIR=str(self.root),
            WANDB_SILENT="true",
            **dirs,
        )

    def options(self) -> dict[str, Any]:
        # wandb reads its environment once per process (its settings singleton), so each
        # environment names its directory and mode explicitly, as a user with two runs would.
        return {"dir": str(self.root), "mode": "offline"}

    def reader_options(self) -> dict[str, Any]:
        return {"wandb_dir": str(self.root)}

    def run_ids(self) -> list[str]:
        return sorted({p.stem.removeprefix("run-") for p in self.root.rglob("run-*.wandb")})

    def logged_artifacts(self, run_id: str) -> list[WandbArtifactLogged]:
        """The W&B Artifacts the run logged, read from its own ``run-<id>.wandb`` log."""
        from wandb.proto import wandb_internal_pb2 as pb

        from tracelet.backends.wandb_log import iter_log_records

        logged = []
        for log in sorted(self.root.rglob(f"run-{run_id}.wandb")):
            for payload in iter_log_records(log.read_bytes(), 0, str(log)):
                record = pb.Record()
                record.ParseFromString(payload)
                if record.WhichOneof("record_type") == "artifact":
                    artifact = record.artifact
                    paths = [entry.path for entry in artifact.manifest.contents]
                    logged.append(WandbArtifactLogged(artifact.name, artifact.type, paths))
        return logged

    def shows_open_runs(self) -> bool:
        """wandb-core before 0.31 keeps an open offline run's transaction log in memory: the run
        is on disk once it ends (seen with 0.19.10 to 0.30: nothing readable after 90 s)."""
        from importlib.metadata import version

        major, minor = (int(part) for part in version("wandb").split(".")[:2])
        return (major, minor) >= (0, 31)


@dataclass(frozen=True)
class WandbArtifactLogged:
    """One ``artifact`` record of a W&B run's log: the Artifact's name, type and its files' paths."""

    name: str
    type: str
    paths: list[str]


class ClearMLEnvironment(BackendEnvironment):
    """ClearML offline, with HOME and the cache redirected (no server, no config file)."""

    name = "clearml"
    backend = "clearml"
    requires = ("clearml",)

    def setup(self) -> None:
        self._setenv(
            HOME=str(self.root / "home"),
            CLEARML_CACHE_DIR=str(self.root / "cache"),
            CLEARML_OFFLINE_MODE="1",
            CLEARML_LOG_LEVEL="ERROR",
        )
        (self.root / "home").mkdir()

    def reader_options(self) -> dict[str, Any]:
        return {"offline_dir": str(self.root / "cache" / "offline")}

    def run_ids(self) -> list[str]:
        offline = self.root / "cache" / "offline"
        return sorted({p.name for p in offline.glob("offline-*") if p.is_dir()}) if offline.is_dir() else []


class LocalEnvironment(BackendEnvironment):
    """tracelet's own JSONL backend."""

    name = "local"
    backend = "local"

    def setup(self) -> None:
        self._setenv(TRACELET_LOCAL_DIR=str(self.root / "runs"))

    def reader_options(self) -> dict[str, Any]:
        return {"root": str(self.root / "runs")}

    def run_ids(self) -> list[str]:
        return sorted(p.parent.name for p in (self.root / "runs").glob("*/*/run.json"))

    def delete(self, run_id: str) -> bool:
        matches = list((self.root / "runs").glob(f"*/{run_id}"))
        for match in matches:
            shutil.rmtree(match)
        return bool(matches)


class AllBackendsEnvironment(BackendEnvironment):
    """MLflow (sqlite), W&B offline and ClearML offline side by side: one run, ``backend=[...]`` of all three.

    Every other session installs one backend. This one proves the three packages work together in one
    process tree, where their shared dependencies (protobuf among them) could clash, and that one call
    lands the same run in each store.
    """

    name = "all"
    backend = "all"
    requires = ("mlflow", "wandb", "clearml")
    composite = True

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[BackendEnvironment] = [MLflowEnvironment(), WandbEnvironment(), ClearMLEnvironment()]

    def setup(self) -> None:
        for part in self.parts:
            part.setup()

    def read(self, run_id: str) -> RunRecord:
        raise TypeError("the 'all' environment holds one run per store: use read_runs(exp.runs)")

    def read_runs(self, runs: Mapping[str, str | None]) -> dict[str, RunRecord]:
        return {part.backend: part.read(opened(runs, part.backend)) for part in self.parts}

    def run_ids(self) -> list[str]:
        return sorted(run_id for part in self.parts for run_id in part.run_ids())

    def stored_roots(self) -> list[Path]:
        return [root for part in self.parts for root in part.stored_roots()]

    def teardown(self) -> None:
        for part in reversed(self.parts):
            part.teardown()
        super().teardown()

    def config(self, project: str) -> BackendConfig:
        backends = [part.backend for part in self.parts]
        options = {part.backend: part.options() for part in self.parts}
        return BackendConfig(backends, self.name, project, options, self)


ENVIRONMENTS: dict[str, type[BackendEnvironment]] = {
    cls.name: cls
    for cls in (
        MLflowEnvironment,
        MLflowServerEnvironment,
        WandbEnvironment,
        ClearMLEnvironment,
        LocalEnvironment,
        AllBackendsEnvironment,
    )
}

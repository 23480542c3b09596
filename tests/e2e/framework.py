"""The E2E framework: real backend environments, realistic training workflows, and a registry.

Each workflow records for itself, *before* calling tracelet, everything it logs
(:class:`Expected`). Tests compare that record with what the backend's own store
holds (:mod:`tracelet.testing`), never with another tracelet backend.

Where the seed README assumes Docker or hosted servers, this uses the closest real
thing on the machine: a real ``mlflow server`` process on 127.0.0.1, W&B offline
and ClearML offline.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

import tracelet
from tracelet.testing import RunRecord, read_artifact, read_run
from tracelet.testing.equivalence import compare, record_to_json

# -- what a workflow logged ----------------------------------------------------------------------


@dataclass
class Expected:
    """Everything a workflow handed to tracelet, recorded before the call."""

    project: str
    run_name: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    images: set[tuple[str, int, int, int]] = field(default_factory=set)  # name, step, width, height

    def metric(self, exp: tracelet.Experiment, name: str, value: Any, step: int) -> None:
        """Record the value as it is now (``.item()`` of a tensor), then log the original object."""
        self.metrics.setdefault(name, []).append(
            (step, float(value.item() if hasattr(value, "item") else value))
        )
        exp.log_metric(name, value, step)

    def metrics_(self, exp: tracelet.Experiment, values: dict[str, float], step: int) -> None:
        """Several keys at one step, in one ``log_metrics`` call."""
        for name, value in values.items():
            self.metrics.setdefault(name, []).append((step, float(value)))
        exp.log_metrics(values, step)

    def params_(self, exp: tracelet.Experiment, params: dict[str, Any]) -> None:
        self.params.update(_flatten(params))
        exp.log_params(params)

    def tags_(self, exp: tracelet.Experiment, tags: dict[str, str]) -> None:
        self.tags.update(tags)
        exp.set_tags(tags)

    def artifact(self, exp: tracelet.Experiment, path: Path, artifact_path: str | None = None) -> None:
        dest = f"{artifact_path}/{path.name}" if artifact_path else path.name
        self.artifacts[dest] = hashlib.sha256(path.read_bytes()).hexdigest()
        exp.log_artifact(path, artifact_path)

    def image(self, exp: tracelet.Experiment, name: str, image: Any, step: int) -> None:
        shape = tuple(image.shape)
        height, width = (shape[1], shape[2]) if len(shape) == 3 and shape[0] in (1, 3, 4) else shape[:2]
        self.images.add((name, step, int(width), int(height)))
        exp.log_image(name, image, step)

    def visual(self, exp: tracelet.Experiment, name: str, grid: Any, step: int) -> None:
        """A 2-D array, scaled to 0..1, logged as an image.

        Never a matplotlib figure: the records of one workflow are compared across every session,
        and whether matplotlib is importable differs between them (``mlflow`` installs it), which
        would change the stored picture's size from one session to the next.
        """
        import numpy as np

        values = np.asarray(grid, dtype=float)
        low, high = float(values.min()), float(values.max())
        self.image(exp, name, (values - low) / ((high - low) or 1.0), step)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "images": sorted(self.images)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Expected:
        return cls(
            project=data["project"],
            run_name=data["run_name"],
            params=data["params"],
            metrics={k: [(int(s), float(v)) for s, v in points] for k, points in data["metrics"].items()},
            tags=data["tags"],
            artifacts=data["artifacts"],
            images={tuple(i) for i in data["images"]},  # type: ignore[misc]
        )


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def assert_run_matches(expected: Expected, record: RunRecord, status: str = "finished") -> None:
    """Every param, metric point (steps in order, values rel=1e-9), artifact, image, tag and name."""
    assert (record.project, record.run_name) == (expected.project, expected.run_name)
    assert record.status == status
    assert record.params == expected.params
    assert set(record.metrics) == set(expected.metrics)
    for key, points in expected.metrics.items():
        got = record.metrics[key]
        assert [s for s, _ in got] == [s for s, _ in points], f"steps of {key!r} differ"
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-9), key
    assert record.tags == expected.tags
    assert {a.path: a.sha256 for a in record.artifacts} == expected.artifacts
    assert {(i.name, i.step, i.width, i.height) for i in record.images} == expected.images
    assert record.system_tags.get("tracelet.version") == tracelet.__version__


def verify_landed(
    workflow: TrainingWorkflow, records: Mapping[str, RunRecord], expected: Expected | None = None
) -> None:
    """One run as each store it went to holds it: everything logged (when ``expected`` says what),
    every key of ``get_expected_metrics()``, and the stores agree with each other."""
    for backend, record in records.items():
        if expected is not None:
            assert_run_matches(expected, record)
        missing = sorted(set(workflow.get_expected_metrics()) - set(record.metrics))
        assert not missing, f"metrics {missing} did not land in {backend}"
    first, *others = records.values()
    for other in others:
        differences = compare(first, other)
        assert not differences, f"{first.backend} and {other.backend} differ: {differences}"


#: where the E2E session keeps the records of its workflows' runs (nox sets it per session)
RECORDS_DIR_VAR = "TRACELET_E2E_RECORDS_DIR"


def save_record(workflow: str, environment: str, record: RunRecord) -> None:
    """Keep what the store returned for a fixed-seed workflow, for the summary's cross-backend table."""
    folder = os.environ.get(RECORDS_DIR_VAR)
    if not folder:
        return
    path = Path(folder) / workflow / f"{environment}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record_to_json(record), indent=1, allow_nan=False), encoding="utf-8")


def files_holding(secrets: list[str], roots: list[Path]) -> dict[str, list[str]]:
    """Every file under ``roots`` that holds one of ``secrets``, with the ones it holds (leak searches)."""
    found: dict[str, list[str]] = {}
    for root in roots:
        for file in Path(root).rglob("*"):
            if file.is_file():
                data = file.read_bytes()
                hits = [s for s in secrets if s.encode() in data]
                if hits:
                    found[str(file)] = hits
    return found


# -- backend environments ------------------------------------------------------------------------


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

    def read_runs(self, runs: Mapping[str, str]) -> dict[str, RunRecord]:
        """What each store holds for one tracelet run, by backend (``runs`` is ``Experiment.runs``)."""
        return {self.backend: self.read(runs[self.backend])}

    def read_artifact(self, run_id: str, path: str) -> bytes:
        """One artifact's bytes, fetched back from the store (never from the file that was logged)."""
        return read_artifact(self.backend, run_id, path, **self.reader_options())

    def reader_options(self) -> dict[str, Any]:
        """What ``read_run``/``read_artifact`` need to find this store."""
        return {}

    def delete(self, run_id: str) -> bool:
        """Delete a run through the backend's own API; False where the offline store has none."""
        return False

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

    def config(self, project: str) -> dict[str, Any]:
        """The ``backend_config`` a workflow receives."""
        return {
            "backend": self.backend,
            "environment": self.name,
            "project": project,
            "backend_options": {self.backend: self.options()},
            "read": self.read,
            "read_runs": self.read_runs,
        }


class MLflowEnvironment(BackendEnvironment):
    """MLflow with a sqlite store and an artifact directory in a temp dir."""

    name = "mlflow"
    backend = "mlflow"
    requires = ("mlflow",)

    def setup(self) -> None:
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


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the MLflow server's, the DDP rendezvous')."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MLflowServer:
    """A real ``mlflow server`` on a free 127.0.0.1 port, in its own process session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(root / "server.log", "wb")  # noqa: SIM115
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{(root / 'server.db').as_posix()}",
            "--artifacts-destination",
            (root / "server-artifacts").as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        # No background job runner (huey workers): the tests need tracking only.
        env = {
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self._wait_healthy(timeout=120)

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                if r.status == 200:
                    return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer /health within {timeout}s")

    def stop(self) -> None:
        """TERM the whole process group, then KILL what is left; no process survives."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # workers that outlived their parent
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()

    def group_alive(self) -> bool:
        """True while any process of the server's group still runs (zombies awaiting reaping don't count)."""
        listing = subprocess.run(
            ["ps", "-eo", "pgid=,stat="], capture_output=True, text=True, check=True
        ).stdout
        for line in listing.splitlines():
            pgid, _, stat = line.strip().partition(" ")
            if pgid == str(self.process.pid) and not stat.strip().startswith("Z"):
                return True
        return False


class MLflowServerEnvironment(MLflowEnvironment):
    """MLflow through a real tracking server (HTTP), shared by the whole pytest session."""

    name = "mlflow_server"
    server: ClassVar[MLflowServer | None] = None
    _server_root: ClassVar[Path | None] = None

    @classmethod
    def shared_server(cls) -> MLflowServer:
        if cls.server is None:
            cls._server_root = Path(tempfile.mkdtemp(prefix="tracelet-e2e-mlflow-server-"))
            cls.server = MLflowServer(cls._server_root)
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

    def read_runs(self, runs: Mapping[str, str]) -> dict[str, RunRecord]:
        return {part.backend: part.read(runs[part.backend]) for part in self.parts}

    def run_ids(self) -> list[str]:
        return sorted(run_id for part in self.parts for run_id in part.run_ids())

    def stored_roots(self) -> list[Path]:
        return [root for part in self.parts for root in part.stored_roots()]

    def teardown(self) -> None:
        for part in reversed(self.parts):
            part.teardown()
        super().teardown()

    def config(self, project: str) -> dict[str, Any]:
        config = super().config(project)
        config["backend"] = [part.backend for part in self.parts]
        config["backend_options"] = {part.backend: part.options() for part in self.parts}
        return config


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


# -- workflows -----------------------------------------------------------------------------------


class TrainingWorkflow(ABC):
    """A realistic training run that logs through tracelet and records what it logged."""

    requires: ClassVar[tuple[str, ...]] = ("torch",)

    def __init__(self, name: str, config: dict[str, Any] | None = None) -> None:
        self.name = name
        self.config = config or {}

    @abstractmethod
    def run(self, backend_config: dict[str, Any]) -> dict[str, Any]:
        """Train, log through tracelet, and return results including ``expected`` and ``run_id``."""

    @abstractmethod
    def get_expected_metrics(self) -> list[str]:
        """The metric keys this workflow logs."""

    def validate_results(self, results: dict[str, Any]) -> bool:
        """Training itself worked: the loss went down."""
        return bool(results["final_loss"] < results["initial_loss"])

    def start(self, backend_config: dict[str, Any], expected: Expected) -> tracelet.Experiment:
        return tracelet.start_logging(
            exp_name=expected.run_name,
            project=expected.project,
            backend=backend_config["backend"],
            backend_options=backend_config.get("backend_options"),
        )

    def results(
        self,
        backend_config: dict[str, Any],
        exp: tracelet.Experiment,
        expected: Expected,
        report: tracelet.DeliveryReport,
        initial_loss: float,
        final_loss: float,
        epochs: int,
    ) -> dict[str, Any]:
        """What ``run`` returns: the record to compare, the run id, the report and the training outcome."""
        return {
            "expected": expected,
            # one store: its run id; several (the ``all`` environment): read every one through ``runs``
            "run_id": exp.runs[backend] if isinstance(backend := backend_config["backend"], str) else None,
            "runs": dict(exp.runs),
            "report": report,
            "initial_loss": initial_loss,
            "final_loss": final_loss,
            "epochs_completed": epochs,
        }

    def new_expected(self, backend_config: dict[str, Any]) -> Expected:
        return Expected(project=backend_config["project"], run_name=f"{self.name}-{uuid.uuid4().hex[:8]}")


class SimplePyTorchWorkflow(TrainingWorkflow):
    """Regression on synthetic data with an MLP, 10 epochs, checkpoints as artifacts."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("simple_pytorch", {"epochs": 10, "batch_size": 32, "lr": 0.05, **(config or {})})

    def get_expected_metrics(self) -> list[str]:
        return ["train/loss", "epoch/train_loss", "val/mse"]

    def run(self, backend_config: dict[str, Any]) -> dict[str, Any]:
        import torch
        from torch import nn

        torch.manual_seed(0)
        cfg = self.config
        x = torch.randn(512, 8)
        y = x @ torch.randn(8, 1) + 0.1 * torch.randn(512, 1)
        x_train, y_train, x_val, y_val = x[:384], y[:384], x[384:], y[384:]
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
        expected = self.new_expected(backend_config)
        exp = self.start(backend_config, expected)
        expected.params_(
            exp,
            {
                "optimizer": {"name": "sgd", "lr": cfg["lr"]},
                "epochs": cfg["epochs"],
                "batch_size": cfg["batch_size"],
                "model": {"hidden": 16, "layers": 2},
            },
        )
        expected.tags_(exp, {"workflow": self.name, "framework": "torch"})
        workdir = Path(tempfile.mkdtemp(prefix="tracelet-wf-"))
        step = 0
        losses: list[float] = []
        for epoch in range(cfg["epochs"]):
            model.train()
            perm = torch.randperm(len(x_train))
            epoch_loss = torch.zeros(())
            for i in range(0, len(x_train), cfg["batch_size"]):
                idx = perm[i : i + cfg["batch_size"]]
                loss = nn.functional.mse_loss(model(x_train[idx]), y_train[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                expected.metric(exp, "train/loss", loss, step)  # a 0-dim tensor with grad history
                epoch_loss += loss.detach() * len(idx)
                step += 1
            epoch_loss /= len(x_train)
            losses.append(float(epoch_loss))
            expected.metric(exp, "epoch/train_loss", epoch_loss, epoch)
            epoch_loss.add_(1000.0)  # mutated after logging: the logged value must not change
            with torch.no_grad():
                expected.metric(exp, "val/mse", nn.functional.mse_loss(model(x_val), y_val), epoch)
            if epoch == cfg["epochs"] // 2:
                checkpoint = workdir / "model.pt"
                torch.save(model.state_dict(), checkpoint)
                expected.artifact(exp, checkpoint, "checkpoints")
        torch.save(model.state_dict(), workdir / "model.pt")  # overwritten after logging
        (workdir / "summary.txt").write_text(f"final loss {losses[-1]:.6f}\n")
        expected.artifact(exp, workdir / "summary.txt")
        report = tracelet.stop_logging()
        shutil.rmtree(workdir, ignore_errors=True)
        return self.results(backend_config, exp, expected, report, losses[0], losses[-1], cfg["epochs"])


class LightningWorkflow(TrainingWorkflow):
    """A Lightning Trainer with validation, logging ``self.log`` through tracelet's Logger.

    A second, recording Logger receives exactly what Lightning hands to tracelet.
    """

    requires: ClassVar[tuple[str, ...]] = ("torch", "lightning")
    #: the package the Trainer comes from: ``lightning`` (``lightning.pytorch``) or ``pytorch_lightning``
    package: ClassVar[str] = "lightning"

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(self.package, {"epochs": 3, "lr": 0.05, **(config or {})})

    def get_expected_metrics(self) -> list[str]:
        return ["train/loss", "val/loss", "epoch"]

    def run(self, backend_config: dict[str, Any]) -> dict[str, Any]:
        import importlib

        import torch
        from torch import nn
        from torch.utils.data import DataLoader, TensorDataset

        from tracelet.integrations.lightning import TraceletLogger

        pl: Any = importlib.import_module(
            "lightning.pytorch" if self.package == "lightning" else self.package
        )
        Logger: Any = importlib.import_module(f"{pl.__name__}.loggers.logger").Logger
        expected = self.new_expected(backend_config)
        cfg = self.config

        class Recorder(Logger):
            """Records what Lightning sends to loggers, independently of tracelet."""

            name = "recorder"
            version = "0"

            def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
                for key, value in metrics.items():
                    expected.metrics.setdefault(key, []).append((int(step or 0), float(value)))

            def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
                expected.params.update(_flatten(dict(params)))

        class Regressor(pl.LightningModule):
            def __init__(self, lr: float, hidden: int) -> None:
                super().__init__()
                self.save_hyperparameters()
                self.net = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 1))
                self.losses: list[float] = []

            def training_step(self, batch: Any, batch_idx: int) -> Any:
                x, y = batch
                loss = nn.functional.mse_loss(self.net(x), y)
                self.log("train/loss", loss)
                self.losses.append(float(loss))
                return loss

            def validation_step(self, batch: Any, batch_idx: int) -> None:
                x, y = batch
                self.log("val/loss", nn.functional.mse_loss(self.net(x), y))

            def configure_optimizers(self) -> Any:
                return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

        torch.manual_seed(0)
        x = torch.randn(256, 4)
        y = x.sum(dim=1, keepdim=True)
        train = DataLoader(TensorDataset(x[:192], y[:192]), batch_size=16)
        val = DataLoader(TensorDataset(x[192:], y[192:]), batch_size=32)
        logger = TraceletLogger(
            exp_name=expected.run_name,
            project=expected.project,
            backend=backend_config["backend"],
            backend_options=backend_config.get("backend_options"),
        )
        model = Regressor(cfg["lr"], 8)
        trainer = pl.Trainer(
            max_epochs=cfg["epochs"],
            logger=[logger, Recorder()],
            log_every_n_steps=1,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            devices=1,
        )
        trainer.fit(model, train, val)
        exp = logger.experiment
        report = exp.stop()  # finalize() flushed and left the run open, as WandbLogger does
        return self.results(
            backend_config, exp, expected, report, model.losses[0], model.losses[-1], trainer.current_epoch
        )


class PyTorchLightningWorkflow(LightningWorkflow):
    """The Lightning workflow with the standalone ``pytorch-lightning`` package (``pytorch_lightning``)."""

    requires = ("torch", "pytorch_lightning")
    package = "pytorch_lightning"


class VisionWorkflow(TrainingWorkflow):
    """A small CNN on torchvision's FakeData, logging sample images each epoch."""

    requires = ("torch", "torchvision")

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("vision", {"epochs": 3, "lr": 0.01, **(config or {})})

    def get_expected_metrics(self) -> list[str]:
        return ["train/loss", "train/accuracy"]

    def run(self, backend_config: dict[str, Any]) -> dict[str, Any]:
        import torch
        from torch import nn
        from torch.utils.data import DataLoader
        from torchvision import datasets, transforms

        torch.manual_seed(0)
        cfg = self.config
        data = datasets.FakeData(
            size=96, image_size=(3, 16, 16), num_classes=4, transform=transforms.ToTensor(), random_offset=0
        )
        loader = DataLoader(data, batch_size=16, shuffle=False)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 8 * 8, 4)
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
        expected = self.new_expected(backend_config)
        exp = self.start(backend_config, expected)
        expected.params_(
            exp, {"model": "cnn", "epochs": cfg["epochs"], "optimizer": {"name": "adam", "lr": cfg["lr"]}}
        )
        losses: list[float] = []
        step = 0
        for epoch in range(cfg["epochs"]):
            for images, labels in loader:
                logits = model(images)
                loss = nn.functional.cross_entropy(logits, labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                accuracy = (logits.argmax(dim=1) == labels).float().mean()
                expected.metric(exp, "train/loss", loss, step)
                expected.metric(exp, "train/accuracy", accuracy, step)
                losses.append(float(loss))
                step += 1
            expected.image(exp, "samples/input", images[0], epoch)  # a C×H×W float tensor
        report = tracelet.stop_logging()
        return self.results(backend_config, exp, expected, report, losses[0], min(losses[-6:]), cfg["epochs"])


class TimeSeriesWorkflow(TrainingWorkflow):
    """An LSTM forecasting a noisy sine wave, logging train and validation losses."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("time_series", {"epochs": 8, "lr": 0.02, "window": 16, **(config or {})})

    def get_expected_metrics(self) -> list[str]:
        return ["train/loss", "val/loss"]

    def run(self, backend_config: dict[str, Any]) -> dict[str, Any]:
        import torch
        from torch import nn

        torch.manual_seed(0)
        cfg = self.config
        t = torch.linspace(0, 24, 400)
        series = torch.sin(t) + 0.05 * torch.randn_like(t)
        w = cfg["window"]
        xs = torch.stack([series[i : i + w] for i in range(len(series) - w)]).unsqueeze(-1)
        ys = series[w:].unsqueeze(-1)
        split = int(0.8 * len(xs))

        class Forecaster(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lstm = nn.LSTM(1, 16, batch_first=True)
                self.head = nn.Linear(16, 1)

            def forward(self, x: Any) -> Any:
                out, _ = self.lstm(x)
                return self.head(out[:, -1])

        model = Forecaster()
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
        expected = self.new_expected(backend_config)
        exp = self.start(backend_config, expected)
        expected.params_(exp, {"model": {"type": "lstm", "hidden": 16}, "window": w, "lr": cfg["lr"]})
        losses = []
        for epoch in range(cfg["epochs"]):
            for i in range(0, split, 32):
                loss = nn.functional.mse_loss(model(xs[i : i + 32]), ys[i : i + 32])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            losses.append(float(loss))
            expected.metric(exp, "train/loss", loss.detach(), epoch)
            with torch.no_grad():
                expected.metric(
                    exp, "val/loss", nn.functional.mse_loss(model(xs[split:]), ys[split:]).item(), epoch
                )
        report = tracelet.stop_logging()
        return self.results(backend_config, exp, expected, report, losses[0], losses[-1], cfg["epochs"])


class NLPWorkflow(TrainingWorkflow):
    """A tiny transformer encoder classifying synthetic token sequences: does token 7 occur?"""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("nlp", {"epochs": 4, "lr": 0.01, "vocab": 20, "length": 12, **(config or {})})

    def get_expected_metrics(self) -> list[str]:
        return ["train/loss", "val/accuracy"]

    def run(self, backend_config: dict[str, Any]) -> dict[str, Any]:
        import torch
        from torch import nn

        torch.manual_seed(0)
        cfg = self.config
        tokens = torch.randint(1, cfg["vocab"], (320, cfg["length"]))
        labels = (tokens == 7).any(dim=1).long()
        train_x, train_y, val_x, val_y = tokens[:256], labels[:256], tokens[256:], labels[256:]

        class Classifier(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.embed = nn.Embedding(cfg["vocab"], 16)
                layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
                self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
                self.head = nn.Linear(16, 2)

            def forward(self, x: Any) -> Any:
                return self.head(self.encoder(self.embed(x)).mean(dim=1))

        model = Classifier()
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
        expected = self.new_expected(backend_config)
        exp = self.start(backend_config, expected)
        expected.params_(
            exp,
            {
                "model": {"type": "transformer_encoder", "d_model": 16, "heads": 2, "layers": 1},
                "data": {"vocab": cfg["vocab"], "length": cfg["length"]},
                "lr": cfg["lr"],
            },
        )
        workdir = Path(tempfile.mkdtemp(prefix="tracelet-wf-"))
        vocab = workdir / "vocab.json"
        vocab.write_text(json.dumps({f"tok{i}": i for i in range(cfg["vocab"])}))
        expected.artifact(exp, vocab, "tokenizer")
        losses: list[float] = []
        step = 0
        for epoch in range(cfg["epochs"]):
            for i in range(0, len(train_x), 32):
                loss = nn.functional.cross_entropy(model(train_x[i : i + 32]), train_y[i : i + 32])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                expected.metric(exp, "train/loss", loss, step)
                losses.append(float(loss))
                step += 1
            with torch.no_grad():
                predicted = model(val_x).argmax(dim=1)
            expected.metric(exp, "val/accuracy", (predicted == val_y).float().mean(), epoch)
        confusion = [[int(((val_y == t) & (predicted == p)).sum()) for p in (0, 1)] for t in (0, 1)]
        expected.visual(exp, "val/confusion", confusion, cfg["epochs"] - 1)
        report = tracelet.stop_logging()
        shutil.rmtree(workdir, ignore_errors=True)
        return self.results(backend_config, exp, expected, report, losses[0], min(losses[-8:]), cfg["epochs"])


class MetricsAtScaleWorkflow(TrainingWorkflow):
    """100,000 points over 50 keys: 2,000 steps of ``log_metrics`` with 50 values each."""

    requires = ()  # numpy only: tracelet's own dependency
    KEYS = 50
    STEPS = 2_000

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("metrics_at_scale", config)

    def get_expected_metrics(self) -> list[str]:
        return [f"scale/key_{k:02d}" for k in range(self.KEYS)]

    def validate_results(self, results: dict[str, Any]) -> bool:
        return bool(results["points"] == self.KEYS * self.STEPS)

    def run(self, backend_config: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        expected = self.new_expected(backend_config)
        exp = self.start(backend_config, expected)
        expected.params_(exp, {"keys": self.KEYS, "steps": self.STEPS})
        grid = np.fromfunction(lambda k, s: np.sin(s * 0.01 + k) / (1.0 + k), (self.KEYS, self.STEPS))
        for step in range(self.STEPS):
            expected.metrics_(
                exp, {f"scale/key_{k:02d}": float(grid[k, step]) for k in range(self.KEYS)}, step
            )
        workdir = Path(tempfile.mkdtemp(prefix="tracelet-wf-"))
        final = workdir / "final.csv"
        final.write_text("".join(f"scale/key_{k:02d},{grid[k, -1]!r}\n" for k in range(self.KEYS)))
        expected.artifact(exp, final, "summary")
        expected.visual(exp, "scale/overview", grid[:, ::40], self.STEPS - 1)
        report = tracelet.stop_logging(flush_timeout=600)
        shutil.rmtree(workdir, ignore_errors=True)
        results = self.results(backend_config, exp, expected, report, 1.0, 0.0, 1)
        results["points"] = sum(len(points) for points in expected.metrics.values())
        return results


class HyperparameterSweepWorkflow(TrainingWorkflow):
    """Three runs of one regression with different learning rates, in one project.

    ``results["trials"]`` lists each run's learning rate, run ids, expected record and final
    validation loss; ``results["best_lr"]`` is the learning rate whose final ``val/loss`` is lowest.
    """

    LEARNING_RATES = (0.001, 0.03, 0.3)

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("hyperparameter_sweep", {"epochs": 5, **(config or {})})

    def get_expected_metrics(self) -> list[str]:
        return ["train/loss", "val/loss"]

    def validate_results(self, results: dict[str, Any]) -> bool:
        return len(results["trials"]) == len(self.LEARNING_RATES)

    def run(self, backend_config: dict[str, Any]) -> dict[str, Any]:
        import torch
        from torch import nn

        sweep: list[dict[str, Any]] = []
        for trial, lr in enumerate(self.LEARNING_RATES):
            torch.manual_seed(0)  # the same data and initial weights: only the learning rate differs
            x = torch.randn(256, 4)
            y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
            model = nn.Linear(4, 1)
            optimizer = torch.optim.SGD(model.parameters(), lr=lr)
            expected = Expected(
                project=backend_config["project"], run_name=f"sweep-{uuid.uuid4().hex[:6]}-{trial}"
            )
            exp = self.start(backend_config, expected)
            expected.params_(
                exp, {"lr": lr, "trial": trial, "optimizer": "sgd", "epochs": self.config["epochs"]}
            )
            expected.tags_(exp, {"sweep": "lr"})
            for epoch in range(self.config["epochs"]):
                for i in range(0, 192, 32):
                    loss = nn.functional.mse_loss(model(x[i : i + 32]), y[i : i + 32])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                expected.metric(exp, "train/loss", loss.detach(), epoch)
                with torch.no_grad():
                    expected.metric(exp, "val/loss", nn.functional.mse_loss(model(x[192:]), y[192:]), epoch)
            expected.visual(exp, "weights", model.weight.detach().numpy(), self.config["epochs"] - 1)
            workdir = Path(tempfile.mkdtemp(prefix="tracelet-wf-"))
            torch.save(model.state_dict(), workdir / "model.pt")
            expected.artifact(exp, workdir / "model.pt", "model")
            report = tracelet.stop_logging()
            shutil.rmtree(workdir, ignore_errors=True)
            assert report.ok, report.format()
            sweep.append(
                {
                    "lr": lr,
                    "runs": dict(exp.runs),
                    "expected": expected,
                    "final_val_loss": expected.metrics["val/loss"][-1][1],
                }
            )
        best = min(sweep, key=lambda trial: trial["final_val_loss"])
        return {"trials": sweep, "best_lr": best["lr"], "report": report}


class CheckpointingWorkflow(TrainingWorkflow):
    """Train, keep checkpoints as artifacts, download one back from the store, resume in a new run.

    The training is deterministic (full batches, no shuffling), so the resumed run must repeat the
    first run's losses at the same steps: that, and the downloaded bytes' sha256 being the one of
    the file that was logged, proves the checkpoint survived the store whole.
    """

    CHECKPOINT = "checkpoints/epoch-4.pt"

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("checkpointing", {"epochs": 6, "steps_per_epoch": 4, "lr": 0.05, **(config or {})})

    def get_expected_metrics(self) -> list[str]:
        return ["train/loss"]

    def _train(
        self,
        exp: tracelet.Experiment,
        expected: Expected,
        state: dict[str, Any],
        epochs: range,
        workdir: Path,
    ) -> None:
        import torch
        from torch import nn

        torch.manual_seed(0)
        x = torch.randn(128, 6)
        y = torch.sin(x.sum(dim=1, keepdim=True))
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=self.config["lr"], momentum=0.9)
        if "model" in state:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        step = state.get("step", 0)
        for epoch in epochs:
            for i in range(self.config["steps_per_epoch"]):
                batch = slice(i * 32, (i + 1) * 32)
                loss = nn.functional.mse_loss(model(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                expected.metric(exp, "train/loss", loss.detach(), step)
                step += 1
            if epoch in (2, 4):
                path = workdir / f"epoch-{epoch}.pt"
                snapshot = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
                torch.save({**snapshot, "epoch": epoch}, path)
                expected.artifact(exp, path, "checkpoints")
        expected.visual(exp, "weights/first_layer", model[0].weight.detach().numpy(), step)

    def run(self, backend_config: dict[str, Any]) -> dict[str, Any]:
        import io

        import torch

        environment: BackendEnvironment = backend_config["environment_object"]
        workdir = Path(tempfile.mkdtemp(prefix="tracelet-wf-"))
        first = self.new_expected(backend_config)
        exp = self.start(backend_config, first)
        first.params_(exp, {"lr": self.config["lr"], "epochs": self.config["epochs"], "momentum": 0.9})
        self._train(exp, first, {}, range(self.config["epochs"]), workdir)
        first_report = tracelet.stop_logging()
        first_run = exp.runs[backend_config["backend"]]
        assert first_run is not None

        downloaded = environment.read_artifact(first_run, self.CHECKPOINT)  # from the store, not workdir
        checkpoint = torch.load(io.BytesIO(downloaded), weights_only=True)
        resumed = self.new_expected(backend_config)
        exp = self.start(backend_config, resumed)
        resumed.params_(exp, {"lr": self.config["lr"], "resumed_from_epoch": checkpoint["epoch"]})
        self._train(exp, resumed, checkpoint, range(checkpoint["epoch"] + 1, self.config["epochs"]), workdir)
        report = tracelet.stop_logging()
        shutil.rmtree(workdir, ignore_errors=True)
        assert first_report.ok, first_report.format()
        return {
            "expected": resumed,
            "run_id": exp.runs[backend_config["backend"]],
            "first": {"expected": first, "run_id": first_run},
            "checkpoint": {"step": checkpoint["step"], "sha256": hashlib.sha256(downloaded).hexdigest()},
            "report": report,
            "epochs_completed": self.config["epochs"],
        }

    def validate_results(self, results: dict[str, Any]) -> bool:
        return bool(results["report"].ok)


def _ddp_worker(rank: int, world_size: int, port: int, backend_config: dict[str, Any], out: str) -> None:
    """One rank of the distributed workflow: every rank runs the same training script and logs."""
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        x = torch.randn(256, 5)
        y = x @ torch.ones(5, 1)
        model = DistributedDataParallel(nn.Linear(5, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        expected = Expected(project=backend_config["project"], run_name=backend_config["run_name"])
        exp = tracelet.start_logging(
            exp_name=expected.run_name,
            project=expected.project,
            backend=backend_config["backend"],
            backend_options=backend_config["backend_options"],
        )
        expected.params_(exp, {"world_size": world_size, "lr": 0.05, "backend": "gloo"})
        shard = x[rank::world_size], y[rank::world_size]
        for step in range(12):
            batch = slice((step % 4) * 32, (step % 4 + 1) * 32)
            loss = nn.functional.mse_loss(model(shard[0][batch]), shard[1][batch])
            optimizer.zero_grad()
            loss.backward()  # gradients are averaged over both ranks here
            optimizer.step()
            expected.metric(exp, "train/loss", loss.detach(), step)
        expected.visual(exp, "weights", model.module.weight.detach().numpy(), 11)
        workdir = Path(tempfile.mkdtemp(prefix=f"tracelet-ddp-{rank}-"))
        torch.save(model.module.state_dict(), workdir / "model.pt")
        expected.artifact(exp, workdir / "model.pt", "model")
        report = tracelet.stop_logging()
        shutil.rmtree(workdir, ignore_errors=True)
        dist.barrier()
        Path(out, f"rank{rank}.json").write_text(
            json.dumps({"expected": expected.to_json(), "runs": dict(exp.runs), "ok": report.ok})
        )
    finally:
        dist.destroy_process_group()


class DistributedWorkflow(TrainingWorkflow):
    """2-process DDP on the CPU (gloo): both ranks call tracelet, only rank 0's run lands."""

    WORLD_SIZE = 2

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("distributed", config)

    def get_expected_metrics(self) -> list[str]:
        return ["train/loss"]

    def run(self, backend_config: dict[str, Any]) -> dict[str, Any]:
        import torch.multiprocessing as mp

        run_name = f"{self.name}-{uuid.uuid4().hex[:8]}"
        out = tempfile.mkdtemp(prefix="tracelet-ddp-")
        config = {key: backend_config[key] for key in ("backend", "backend_options", "project")} | {
            "run_name": run_name
        }
        mp.spawn(_ddp_worker, args=(self.WORLD_SIZE, _free_port(), config, out), nprocs=self.WORLD_SIZE)
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(self.WORLD_SIZE)]
        shutil.rmtree(out, ignore_errors=True)
        expected = Expected.from_json(ranks[0]["expected"])
        losses = [v for _, v in expected.metrics["train/loss"]]
        return {
            "expected": expected,
            "run_id": ranks[0]["runs"][backend_config["backend"]],
            "runs": ranks[0]["runs"],
            "ranks": ranks,
            "report_ok": ranks[0]["ok"],
            "initial_loss": losses[0],
            "final_loss": losses[-1],
            "epochs_completed": 1,
        }


# -- the framework object ------------------------------------------------------------------------


def _importable(packages: tuple[str, ...]) -> bool:
    return all(importlib.util.find_spec(package) is not None for package in packages)


class E2EFramework:
    """Environments and workflows by name, as the seed README describes."""

    def __init__(self) -> None:
        self.environments: dict[str, type[BackendEnvironment]] = dict(ENVIRONMENTS)
        self.workflows: dict[str, Callable[..., TrainingWorkflow]] = {
            "simple_pytorch": SimplePyTorchWorkflow,
            "lightning": LightningWorkflow,
            "pytorch_lightning": PyTorchLightningWorkflow,
            "vision": VisionWorkflow,
            "time_series": TimeSeriesWorkflow,
            "nlp": NLPWorkflow,
            "hyperparameter_sweep": HyperparameterSweepWorkflow,
            "checkpointing": CheckpointingWorkflow,
            "distributed": DistributedWorkflow,
            "metrics_at_scale": MetricsAtScaleWorkflow,
        }

    @contextlib.contextmanager
    def backend_environment(self, name: str, project: str = "tracelet-e2e") -> Iterator[dict[str, Any]]:
        """Set up the named environment; yields the ``backend_config`` for workflows."""
        environment = self.environments[name]()
        environment.setup()
        try:
            config = environment.config(project)
            config["environment_object"] = environment
            yield config
        finally:
            active = tracelet.get_active_experiment()
            if active is not None:
                active.stop(status="failed", flush_timeout=10)
            environment.teardown()

    def run_workflow(self, name: str, backend_config: dict[str, Any]) -> dict[str, Any]:
        """Run one workflow; ``success`` means it trained and everything it logged landed.

        A workflow of ours returns the run id and an :class:`Expected` record, and the run read back
        must match it (a sweep returns ``trials``, each with its runs and record, all verified). A
        workflow that returns neither (the seed README's custom workflow) is still
        checked by read-back: its run is the one run that appeared in the store while it ran, and
        every key of ``get_expected_metrics()`` must have landed there. ``results["record"]`` is what
        the store holds (``results["records"]``, by backend: what each store holds, where one run went
        to several, and those must agree with each other).
        """
        workflow = self.workflows[name]()
        environment: BackendEnvironment | None = backend_config.get("environment_object")
        before = set(environment.run_ids()) if environment is not None else set()
        started = time.monotonic()
        try:
            results = workflow.run(backend_config)
            trials = results.get("trials") or [results]  # a sweep: several runs, each verified
            for trial in trials:
                if trial.get("runs") is None:
                    if trial.get("run_id") is None:
                        trial["run_id"] = self._new_run(environment, before)
                    trial["runs"] = {backend_config["backend"]: trial["run_id"]}
                trial["records"] = backend_config["read_runs"](trial["runs"])
                trial["record"] = next(iter(trial["records"].values()))
                verify_landed(workflow, trial["records"], trial.get("expected"))
            results.setdefault("records", trials[0]["records"])
            results.setdefault("record", trials[0]["record"])
            report = results.get("report")
            results["success"] = workflow.validate_results(results) and (report is None or report.ok)
        except Exception as exc:
            results = {
                "success": False,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
        results["duration_s"] = time.monotonic() - started
        return results

    @staticmethod
    def _new_run(environment: BackendEnvironment | None, before: set[str]) -> str:
        """The one run that appeared in the store since ``before``."""
        assert environment is not None, "backend_config has no environment to find the run in"
        new = sorted(set(environment.run_ids()) - before)
        assert len(new) == 1, f"expected the workflow to leave one new run in {environment.name}, found {new}"
        return new[0]

    def installed_environments(self) -> list[str]:
        """The environments whose packages are importable here (the MLflow server: on POSIX only)."""
        return [
            name
            for name, cls in self.environments.items()
            if not cls.composite
            and _importable(cls.requires)
            and (name != "mlflow_server" or sys.platform in ("linux", "darwin"))
        ]

    def installed_workflows(self) -> list[str]:
        """The workflows whose framework packages are importable here."""
        return [name for name, factory in self.workflows.items() if _importable(factory().requires)]

    def run_comprehensive_test(
        self, workflows: list[str] | None = None, backends: list[str] | None = None
    ) -> dict[str, dict[str, dict[str, Any]]]:
        """Every workflow on every backend environment; results[workflow][environment].

        By default: every installed workflow on every installed environment.
        """
        results: dict[str, dict[str, dict[str, Any]]] = {}
        for workflow in workflows or self.installed_workflows():
            for backend in backends or self.installed_environments():
                with self.backend_environment(backend) as config:
                    results.setdefault(workflow, {})[backend] = self.run_workflow(workflow, config)
        return results

    def shutdown(self) -> list[str]:
        """Stop shared resources (the MLflow server); called at the end of the pytest session."""
        return MLflowServerEnvironment.stop_server()


e2e_framework = E2EFramework()

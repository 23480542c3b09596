"""Integrations against the real stores: TensorBoard capture, Lightning's logger contract (both packages).

Each test reads back what landed through the store's own reader, and compares it with
what TensorBoard's own event files (``EventAccumulator``) or Lightning's own
``CSVLogger`` recorded for the same run.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import tracelet
from tests.e2e.environments import REPO, child_env
from tests.e2e.framework import BackendConfig, e2e_framework
from tests.e2e.params import ALL_ENVIRONMENTS, environments
from tracelet.testing import RunRecord

pytestmark = pytest.mark.e2e_advanced

#: Every store, but the MLflow server only once (the sqlite store runs the same client code).
CONTRACT_ENVIRONMENTS = [n for n in ALL_ENVIRONMENTS if n != "mlflow_server"]
#: stores whose run shows the status of Lightning's ``finalize`` while it stays open (W&B shows
#: "running" until the run is closed; ClearML's offline session records it in task.json)
STATUS_WHILE_OPEN = ("mlflow", "local")


def lightning_packages() -> list[Any]:
    """``pkg`` params: each Lightning package requires itself (and tensorboard, its default logger).

    Each runs in its own framework column: the ``lightning`` column has the standalone
    ``pytorch_lightning`` too (``lightning`` requires it, at the same pin), and testing it there
    again would repeat the ``pytorch_lightning`` column.
    """
    return [
        pytest.param(
            name,
            marks=(pytest.mark.requires("torch", name, "tensorboard"), pytest.mark.framework_only(name)),
            id=name,
        )
        for name in ("lightning", "pytorch_lightning")
    ]


def _start(config: BackendConfig, name: str) -> tracelet.Experiment:
    return tracelet.start_logging(
        exp_name=name,
        project=config.project,
        backend=config.backend_name,
        backend_options=config.backend_options,
    )


def _event_scalars(logdir: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Every scalar in TensorBoard's own event files: run (relative dir) -> tag -> points."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for folder in sorted({p.parent for p in logdir.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        run = "" if folder == logdir else folder.relative_to(logdir).as_posix()
        runs[run] = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return runs


def _points(record: RunRecord, key: str) -> list[tuple[int, Any]]:
    return _approx(record.metrics[key])


# -- TensorBoard ---------------------------------------------------------------------------------


LATE_IMPORT_SCRIPT = """
import json, sys
import tracelet
config = json.loads(sys.argv[1])
exp = tracelet.start_logging(
    exp_name="tb-late", project=config["project"], backend="local", backend_options=config["backend_options"]
)
before = "torch.utils.tensorboard.writer" in sys.modules
from torch.utils.tensorboard import SummaryWriter  # first imported here, after start_logging
writer = SummaryWriter(sys.argv[2])
for step in range(3):
    writer.add_scalar("loss", 1.0 / (step + 1), step)
report = tracelet.stop_logging()
writer.close()
print("RESULT" + json.dumps({"run": exp.runs["local"], "ok": report.ok, "imported_before": before}))
"""


@pytest.mark.requires("torch", "tensorboard")
@pytest.mark.framework_only("torch")
def test_tensorboard_imported_after_start_logging_is_captured(isolated_env: Path, tmp_path: Path) -> None:
    """Training code that imports ``SummaryWriter`` only after ``start_logging()`` (a fresh process,
    so nothing imported it before): the import hook patches it as it loads, and its scalars land."""
    script = tmp_path / "late_tb.py"
    script.write_text(textwrap.dedent(LATE_IMPORT_SCRIPT))
    with e2e_framework.backend_environment("local", project="tensorboard") as config:
        plain = {"project": config.project, "backend_options": config.backend_options}
        done = subprocess.run(
            [sys.executable, str(script), json.dumps(plain), str(tmp_path / "tb")],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=str(REPO),
            env=child_env(REPO),
        )
        assert done.returncode == 0, done.stderr[-4000:]
        result = json.loads(done.stdout.split("RESULT", 1)[1].splitlines()[0])
        record = config.read(result["run"])
    assert result == {"run": record.run_id, "ok": True, "imported_before": False}
    logged = _approx([(0, 1.0), (1, 0.5), (2, 1.0 / 3)])
    assert record.metrics["loss"] == logged
    assert _event_scalars(tmp_path / "tb")[""]["loss"] == logged


@pytest.mark.requires("torch", "tensorboard")
@pytest.mark.parametrize("environment", environments())
def test_tensorboard_writer_is_captured_until_stop(
    environment: str, isolated_env: Path, tmp_path: Path
) -> None:
    """Every captured method lands, mapped as documented; TensorBoard's event files stay whole."""
    import numpy as np
    import torch
    from torch.utils.tensorboard import SummaryWriter

    logdir = tmp_path / "tb"
    with e2e_framework.backend_environment(environment, project="tensorboard") as config:
        exp = _start(config, "tb-capture")
        train = SummaryWriter(str(logdir / "train"))
        val = SummaryWriter(str(logdir / "val"))
        for step in range(5):
            train.add_scalar("loss", torch.tensor(1.0 / (step + 1)), step)  # a 0-d tensor
            train.add_scalar("loss/train", 0.5 + step, step)  # not the add_scalars series below
            train.add_scalars("loss", {"train": 0.1 * step, "val": 0.2 * step}, step)
            val.add_scalar("loss", 2.0 / (step + 1), step)  # same tag, another writer directory
        train.add_scalar("acc@1 (top)", 0.75, 3)  # outside tracelet's character set: mapped
        train.add_hparams({"lr": 0.01, "optimizer": "sgd"}, {"hparam/best_acc": 0.9})
        train.add_image("samples", torch.rand(3, 12, 20), 4)  # C×H×W floats
        train.add_image("mask", np.zeros((12, 20), dtype=np.uint8), 4, dataformats="HW")
        train.add_text("notes", "lr warmup done", 2)
        report = tracelet.stop_logging()
        train.add_scalar("after_stop", 1.0, 0)  # the patch is gone: not captured
        train.close()
        val.close()
        assert report.ok, report.format()
        record = config.read(exp.runs[config.backend_name])

    expected = {
        "loss": [(s, 1.0 / (s + 1)) for s in range(5)],
        "loss/train": [(s, 0.5 + s) for s in range(5)],
        "loss_train/loss": [(s, 0.1 * s) for s in range(5)],
        "loss_val/loss": [(s, 0.2 * s) for s in range(5)],
        "val/loss": [(s, 2.0 / (s + 1)) for s in range(5)],
        "acc_1__top_": [(3, 0.75)],
        "hparam/best_acc": [(0, 0.9)],
    }
    assert set(record.metrics) == set(expected)
    for key, points in expected.items():
        assert record.metrics[key] == _approx(points), key
    assert record.params == {"lr": "0.01", "optimizer": "sgd"}
    assert {(i.name, i.step, i.width, i.height) for i in record.images} == {
        ("samples", 4, 20, 12),
        ("mask", 4, 20, 12),
    }
    text = record.artifact("text/notes/2.txt")
    assert text.sha256 == hashlib.sha256(b"lr warmup done").hexdigest()

    # TensorBoard's own files are complete, the point written after stop included.
    events = _event_scalars(logdir)
    assert events["train"]["loss"] == _approx([(s, 1.0 / (s + 1)) for s in range(5)])
    assert events["train"]["after_stop"] == _approx([(0, 1.0)])
    assert events["train/loss_train"]["loss"] == _approx([(s, 0.1 * s) for s in range(5)])
    assert events["val"]["loss"] == _approx([(s, 2.0 / (s + 1)) for s in range(5)])


def _approx(points: list[tuple[int, float]]) -> list[tuple[int, Any]]:
    return [(s, pytest.approx(v, rel=1e-6)) for s, v in points]


@pytest.mark.requires("torch", "tensorboard")
def test_tensorboard_capture_can_be_turned_off(isolated_env: Path, tmp_path: Path, monkeypatch: Any) -> None:
    """``TRACELET_TRACK_TENSORBOARD=0``: the writer works, tracelet receives nothing from it."""
    from torch.utils.tensorboard import SummaryWriter

    monkeypatch.setenv("TRACELET_TRACK_TENSORBOARD", "0")
    with e2e_framework.backend_environment("local", project="tensorboard") as config:
        exp = _start(config, "tb-off")
        writer = SummaryWriter(str(tmp_path / "tb"))
        writer.add_scalar("loss", 1.0, 0)
        exp.log_metric("own", 2.0, 0)
        assert tracelet.stop_logging().ok
        writer.close()
        record = config.read(exp.runs["local"])
    assert record.metrics == {"own": [(0, 2.0)]}
    assert _event_scalars(tmp_path / "tb")[""]["loss"] == [(0, 1.0)]


# -- Lightning -----------------------------------------------------------------------------------


def _lightning(pkg: str) -> Any:
    return importlib.import_module("lightning.pytorch" if pkg == "lightning" else "pytorch_lightning")


def _module_class(pl: Any) -> Any:
    import torch
    from torch import nn

    class Regressor(pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self, lr: float = 0.05, hidden: int = 8, schedule: dict[str, Any] | None = None) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 1))

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

        def test_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("test_loss", nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    return Regressor


def _data() -> Any:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    x = torch.randn(96, 4)
    y = x.sum(dim=1, keepdim=True)
    return DataLoader(TensorDataset(x, y), batch_size=16)


def _trainer(pl: Any, loggers: list[Any], root: Path, **overrides: Any) -> Any:
    settings: dict[str, Any] = {
        "max_epochs": 2,
        "logger": loggers,
        "log_every_n_steps": 1,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "devices": 1,
        "default_root_dir": str(root),
    }
    settings.update(overrides)
    return pl.Trainer(**settings)


def _logger(config: Mapping[str, Any], name: str, **extra: Any) -> Any:
    """A TraceletLogger for the environment's store. ``config`` is the seed's mapping: a ``BackendConfig``
    here, or the same keys as plain JSON in a spawned rank (``SPAWN_SCRIPT``)."""
    from tracelet.integrations.lightning import TraceletLogger

    return TraceletLogger(
        exp_name=name,
        project=config["project"],
        backend=config["backend"],
        backend_options=config["backend_options"],
        **extra,
    )


def _csv_points(path: Path) -> dict[str, list[tuple[int, float]]]:
    """CSVLogger's metrics.csv: one row per ``log_metrics`` call; every filled cell is a point."""
    points: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            step = int(row["step"])
            for key, value in row.items():
                if key != "step" and value not in ("", None):
                    points.setdefault(key, []).append((step, float(value)))
    return points


@pytest.mark.parametrize("pkg", lightning_packages())
@pytest.mark.parametrize("environment", environments(CONTRACT_ENVIRONMENTS))
def test_lightning_logger_equals_csvlogger(
    pkg: str, environment: str, isolated_env: Path, tmp_path: Path
) -> None:
    """fit then test, beside a TensorBoardLogger and a CSVLogger, and a second (prefixed) TraceletLogger.

    * the run holds exactly what CSVLogger wrote: keys, steps, values, hyperparameters;
    * no point twice, though TensorBoard capture is on and a TensorBoardLogger writes the same values;
    * ``trainer.test()`` after ``fit`` logs into the same run (finalize does not end it);
    * the second TraceletLogger has a run of its own, every point once, names prefixed.
    """
    import yaml

    pl = _lightning(pkg)
    loggers_module = importlib.import_module(f"{pl.__name__}.loggers")
    with e2e_framework.backend_environment(environment, project="lightning") as config:
        first = _logger(config, "lightning-first")
        second = _logger(config, "lightning-second", prefix="shadow")
        tb = loggers_module.TensorBoardLogger(str(tmp_path / "tb"))
        csv_logger = loggers_module.CSVLogger(str(tmp_path / "csv"))
        model = _module_class(pl)(schedule={"warmup": 2, "kind": "cosine"})
        trainer = _trainer(pl, [first, second, tb, csv_logger], tmp_path)
        trainer.fit(model, _data(), _data())
        if config.backend_name in STATUS_WHILE_OPEN:  # fit's outcome is in the store before test() starts
            after_fit = config.read(first.experiment.runs[config.backend_name])
            assert after_fit.status == "finished"
            assert "test_loss" not in after_fit.metrics
        trainer.test(model, _data())
        runs = (first.experiment, second.experiment)
        assert runs[0] is not runs[1]
        assert tracelet.get_active_experiment() is runs[0]
        reports = [tracelet.stop_logging(), runs[1].stop()]
        assert all(r.ok for r in reports), [r.format() for r in reports]
        records = [config.read(run.runs[config.backend_name]) for run in runs]

    csv_points = _csv_points(Path(csv_logger.log_dir) / "metrics.csv")
    assert {"train_loss_step", "train_loss_epoch", "val_loss", "test_loss", "epoch"} <= set(csv_points)
    for record, prefix in zip(records, ("", "shadow-"), strict=True):
        assert record.status == "finished"
        assert set(record.metrics) == {prefix + key for key in csv_points}
        for key, points in csv_points.items():
            assert record.metrics[prefix + key] == _approx(points), key
    hparams = yaml.safe_load((Path(csv_logger.log_dir) / "hparams.yaml").read_text())
    assert hparams == {"lr": 0.05, "hidden": 8, "schedule": {"warmup": 2, "kind": "cosine"}}
    expected_params = {"lr": "0.05", "hidden": "8", "schedule/warmup": "2", "schedule/kind": "cosine"}
    assert records[0].params == expected_params
    assert records[1].params == expected_params
    # TensorBoard's own files have the same points (and Lightning's hp_metric placeholder).
    events = _event_scalars(Path(tb.log_dir))[""]
    assert events["train_loss_step"] == _approx(csv_points["train_loss_step"])
    assert "hp_metric" not in records[0].metrics  # the TensorBoardLogger's own writes are not captured twice


@pytest.mark.parametrize("pkg", lightning_packages())
@pytest.mark.parametrize("environment", environments(CONTRACT_ENVIRONMENTS))
def test_lightning_lr_find_then_fit_is_one_run(
    pkg: str, environment: str, isolated_env: Path, tmp_path: Path
) -> None:
    """``Tuner.lr_find`` finalizes the logger; the ``fit`` after it still logs, into the same run."""
    pl = _lightning(pkg)
    tuner_module = importlib.import_module(f"{pl.__name__}.tuner")
    with e2e_framework.backend_environment(environment, project="lightning") as config:
        logger = _logger(config, "lr-find")
        model = _module_class(pl)()
        trainer = _trainer(pl, [logger], tmp_path, max_epochs=1)
        tuner_module.Tuner(trainer).lr_find(
            model, _data(), _data(), num_training=8, early_stop_threshold=None
        )
        trainer.fit(model, _data(), _data())
        run = logger.experiment
        report = tracelet.stop_logging()
        assert report.ok, report.format()
        record = config.read(run.runs[config.backend_name])
    assert record.status == "finished"
    assert [s for s, _ in record.metrics["train_loss_step"]] == list(range(6))
    assert record.metrics["val_loss"][0][0] == 5
    assert record.params["lr"] == str(model.hparams.lr)


SPAWN_SCRIPT = """
import importlib, json, os, sys
from pathlib import Path

from tests.e2e.test_integrations import _data, _logger, _module_class, _trainer

# At module level, so that the spawned ranks (which import this file again) find the class.
pl = importlib.import_module(os.environ["SPAWN_LIGHTNING"])
Regressor = _module_class(pl)
Regressor.__qualname__ = "Regressor"
Regressor.__module__ = __name__

if __name__ == "__main__":
    config, root = json.loads(sys.argv[1]), Path(sys.argv[2])
    logger = _logger(config, "spawned")
    logger.log_hyperparams({"before_spawn": 1})  # it has logged: its live run must not cross a pickle
    parent = logger.experiment
    trainer = _trainer(pl, [logger], root, strategy="ddp_spawn", devices=2, max_epochs=1)
    trainer.fit(Regressor(), _data(), _data())
    print("PARENT", json.dumps(parent.runs), flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("pkg", lightning_packages())
@pytest.mark.parametrize("environment", environments(CONTRACT_ENVIRONMENTS))
def test_lightning_logger_survives_ddp_spawn(
    pkg: str, environment: str, isolated_env: Path, tmp_path: Path
) -> None:
    """A logger that has logged is pickled into 2 spawned ranks: the fit completes, in rank 0's run."""
    with e2e_framework.backend_environment(environment, project="spawn") as config:
        plain = {k: v for k, v in config.items() if k in ("backend", "project", "backend_options")}
        script = tmp_path / "spawn_train.py"
        script.write_text(textwrap.dedent(SPAWN_SCRIPT))
        done = subprocess.run(
            [sys.executable, str(script), json.dumps(plain), str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=str(REPO),
            env=child_env(REPO, SPAWN_LIGHTNING=_lightning(pkg).__name__),
        )
        assert done.returncode == 0, done.stderr[-4000:]
        parent_runs = json.loads(done.stdout.split("PARENT", 1)[1].splitlines()[0])
        parent = config.read(parent_runs[config.backend_name])
        found = _runs_named(config, environment, "spawned")
    assert parent.params == {"before_spawn": "1"}
    assert parent.status == "finished"
    children = [r for r in found if r.run_id != parent.run_id]
    assert len(children) == 1, f"rank 0 alone opens a run; found {[r.run_id for r in found]}"
    child = children[0]
    assert child.status == "finished"
    assert child.params["lr"] == "0.05"
    steps = [s for s, _ in child.metrics["train_loss_step"]]
    assert steps == sorted(set(steps)), "no step twice: rank 1 logged nothing"
    assert len(steps) == 3  # 96 samples, 2 ranks, batches of 16


def _runs_named(config: BackendConfig, environment: str, name: str) -> list[RunRecord]:
    """Every run of the project with this name, found through the store itself."""
    env = config.store
    return [r for r in env.list_runs(config.project) if r.run_name == name]

"""The advanced workflows: vision, time series, NLP, 100k points, a sweep, checkpoints, DDP.

Each has its typed result where it returns more than one run's outcome (:class:`SweepResult`,
:class:`CheckpointResult`, :class:`DistributedResult`, :class:`ScaleResult`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tracelet
from tests.e2e.environments import BackendConfig, opened
from tests.e2e.expectations import Expected
from tests.e2e.workflow import TrainingWorkflow, Trial, WorkflowResult
from tracelet.testing.servers import free_port


@dataclass(eq=False)
class ScaleResult(WorkflowResult):
    @property
    def points(self) -> int:
        """Metric points logged in all, as the workflow recorded them before calling tracelet."""
        return sum(len(points) for points in self.expected.metrics.values()) if self.expected else 0


@dataclass(eq=False)
class SweepTrial(Trial):
    lr: float = 0.0
    final_val_loss: float = 0.0


@dataclass(eq=False)
class SweepResult(WorkflowResult):
    #: the learning rate whose final ``val/loss`` is lowest
    best_lr: float = 0.0


@dataclass(eq=False)
class CheckpointResult(WorkflowResult):
    """The resumed run (the result's own fields) and the first run, whose checkpoint was downloaded."""

    first: Trial = field(default_factory=Trial)
    #: the step the downloaded checkpoint was taken at, and the sha256 of its bytes as downloaded
    checkpoint_step: int = 0
    checkpoint_sha256: str = ""


@dataclass(frozen=True)
class RunTarget:
    """Where a DDP rank logs (picklable: it crosses ``mp.spawn``)."""

    backend: str | list[str]
    backend_options: dict[str, dict[str, Any]]
    project: str
    run_name: str


@dataclass(frozen=True)
class Rank:
    """What one DDP rank logged and reported."""

    expected: Expected
    runs: dict[str, str | None]
    ok: bool

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rank:
        return cls(Expected.from_json(data["expected"]), data["runs"], bool(data["ok"]))


@dataclass(eq=False)
class DistributedResult(WorkflowResult):
    ranks: list[Rank] = field(default_factory=list)


class VisionWorkflow(TrainingWorkflow):
    """A small CNN on torchvision's FakeData, logging sample images each epoch."""

    requires = ("torch", "torchvision")

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("vision", {"epochs": 3, "lr": 0.01, **(config or {})})

    def get_expected_metrics(self) -> list[str]:
        return ["train/loss", "train/accuracy"]

    def run(self, backend_config: BackendConfig) -> WorkflowResult:
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

    def run(self, backend_config: BackendConfig) -> WorkflowResult:
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

    def run(self, backend_config: BackendConfig) -> WorkflowResult:
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

    def validate_results(self, results: WorkflowResult) -> bool:
        return isinstance(results, ScaleResult) and results.points == self.KEYS * self.STEPS

    def run(self, backend_config: BackendConfig) -> WorkflowResult:
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
        return self.results(backend_config, exp, expected, report, 1.0, 0.0, 1, result_type=ScaleResult)


class HyperparameterSweepWorkflow(TrainingWorkflow):
    """Three runs of one regression with different learning rates, in one project.

    ``trials`` lists each run's learning rate, run ids, expected record and final validation loss;
    ``best_lr`` is the learning rate whose final ``val/loss`` is lowest.
    """

    LEARNING_RATES = (0.001, 0.03, 0.3)

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("hyperparameter_sweep", {"epochs": 5, **(config or {})})

    def get_expected_metrics(self) -> list[str]:
        return ["train/loss", "val/loss"]

    def validate_results(self, results: WorkflowResult) -> bool:
        return len(results.trials) == len(self.LEARNING_RATES)

    def run(self, backend_config: BackendConfig) -> WorkflowResult:
        import torch
        from torch import nn

        sweep: list[SweepTrial] = []
        for trial, lr in enumerate(self.LEARNING_RATES):
            torch.manual_seed(0)  # the same data and initial weights: only the learning rate differs
            x = torch.randn(256, 4)
            y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
            model = nn.Linear(4, 1)
            optimizer = torch.optim.SGD(model.parameters(), lr=lr)
            expected = Expected(
                project=backend_config.project, run_name=f"sweep-{uuid.uuid4().hex[:6]}-{trial}"
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
                SweepTrial(
                    expected, runs=dict(exp.runs), lr=lr, final_val_loss=expected.metrics["val/loss"][-1][1]
                )
            )
        best = min(sweep, key=lambda trial: trial.final_val_loss)
        return SweepResult(trials=list(sweep), best_lr=best.lr, report=report)


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

    def run(self, backend_config: BackendConfig) -> WorkflowResult:
        import io

        import torch

        workdir = Path(tempfile.mkdtemp(prefix="tracelet-wf-"))
        first = self.new_expected(backend_config)
        exp = self.start(backend_config, first)
        first.params_(exp, {"lr": self.config["lr"], "epochs": self.config["epochs"], "momentum": 0.9})
        self._train(exp, first, {}, range(self.config["epochs"]), workdir)
        first_report = tracelet.stop_logging()
        first_run = opened(exp.runs, self.backend(backend_config))

        downloaded = backend_config.store.read_artifact(
            first_run, self.CHECKPOINT
        )  # from the store, not workdir
        checkpoint = torch.load(io.BytesIO(downloaded), weights_only=True)
        resumed = self.new_expected(backend_config)
        exp = self.start(backend_config, resumed)
        resumed.params_(exp, {"lr": self.config["lr"], "resumed_from_epoch": checkpoint["epoch"]})
        self._train(exp, resumed, checkpoint, range(checkpoint["epoch"] + 1, self.config["epochs"]), workdir)
        report = tracelet.stop_logging()
        shutil.rmtree(workdir, ignore_errors=True)
        assert first_report.ok, first_report.format()
        return CheckpointResult(
            expected=resumed,
            run_id=exp.runs[self.backend(backend_config)],
            report=report,
            epochs_completed=self.config["epochs"],
            first=Trial(first, run_id=first_run),
            checkpoint_step=checkpoint["step"],
            checkpoint_sha256=hashlib.sha256(downloaded).hexdigest(),
        )

    @staticmethod
    def backend(backend_config: BackendConfig) -> str:
        assert isinstance(backend_config.backend, str), "one store at a time"
        return backend_config.backend

    def validate_results(self, results: WorkflowResult) -> bool:
        return results.report is not None and results.report.ok


def _ddp_worker(rank: int, world_size: int, port: int, target: RunTarget, out: str) -> None:
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
        expected = Expected(project=target.project, run_name=target.run_name)
        exp = tracelet.start_logging(
            exp_name=expected.run_name,
            project=expected.project,
            backend=target.backend,
            backend_options=target.backend_options,
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

    def run(self, backend_config: BackendConfig) -> WorkflowResult:
        import torch.multiprocessing as mp

        run_name = f"{self.name}-{uuid.uuid4().hex[:8]}"
        out = tempfile.mkdtemp(prefix="tracelet-ddp-")
        target = RunTarget(
            backend_config.backend, backend_config.backend_options, backend_config.project, run_name
        )
        mp.spawn(_ddp_worker, args=(self.WORLD_SIZE, free_port(), target, out), nprocs=self.WORLD_SIZE)
        ranks = [
            Rank.from_json(json.loads(Path(out, f"rank{r}.json").read_text())) for r in range(self.WORLD_SIZE)
        ]
        shutil.rmtree(out, ignore_errors=True)
        losses = [v for _, v in ranks[0].expected.metrics["train/loss"]]
        backend = backend_config.backend
        return DistributedResult(
            expected=ranks[0].expected,
            run_id=ranks[0].runs[backend] if isinstance(backend, str) else None,
            runs=ranks[0].runs,
            ranks=ranks,
            initial_loss=losses[0],
            final_loss=losses[-1],
            epochs_completed=1,
        )

    def validate_results(self, results: WorkflowResult) -> bool:
        """The loss went down, and every rank's ``stop_logging`` reported everything delivered."""
        ranks_ok = isinstance(results, DistributedResult) and all(rank.ok for rank in results.ranks)
        return ranks_ok and super().validate_results(results)

"""The basic PyTorch workflow: a regression with an MLP, checkpoints as artifacts."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import tracelet
from tests.e2e.environments import BackendConfig
from tests.e2e.workflow import TrainingWorkflow, WorkflowResult


class SimplePyTorchWorkflow(TrainingWorkflow):
    """Regression on synthetic data with an MLP, 10 epochs, checkpoints as artifacts."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__("simple_pytorch", {"epochs": 10, "batch_size": 32, "lr": 0.05, **(config or {})})

    def get_expected_metrics(self) -> list[str]:
        return ["train/loss", "epoch/train_loss", "val/mse"]

    def run(self, backend_config: BackendConfig) -> WorkflowResult:
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

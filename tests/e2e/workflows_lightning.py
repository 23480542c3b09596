"""The Lightning workflows: a Trainer with validation, with ``lightning`` and with ``pytorch-lightning``."""

from __future__ import annotations

from typing import Any, ClassVar

from tests.e2e.environments import BackendConfig
from tests.e2e.expectations import flatten
from tests.e2e.workflow import TrainingWorkflow, WorkflowResult


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

    def run(self, backend_config: BackendConfig) -> WorkflowResult:
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
                expected.params.update(flatten(dict(params)))

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
            backend=backend_config.backend,
            backend_options=backend_config.backend_options,
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

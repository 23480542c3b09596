"""Log one run to MLflow, W&B and ClearML at once, then read each store back.

    pip install -e ".[mlflow,wandb,clearml]"
    python examples/three_backends.py /tmp/tracelet-demo

Everything stays on this machine: MLflow uses a sqlite file, W&B and ClearML run offline.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else "tracelet-demo").resolve()
root.mkdir(parents=True, exist_ok=True)
os.environ.update(
    MLFLOW_DISABLE_TELEMETRY="true",
    WANDB_MODE="offline",
    WANDB_DIR=str(root),
    WANDB_SILENT="true",
    CLEARML_OFFLINE_MODE="1",
    CLEARML_CACHE_DIR=str(root / "clearml"),
)

import tracelet  # noqa: E402
from tracelet.testing import read_run  # noqa: E402

uri = f"sqlite:///{root / 'mlflow.db'}"
checkpoint = root / "checkpoint.bin"
checkpoint.write_bytes(os.urandom(4096))
digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()

exp = tracelet.start_logging(
    exp_name="three-backends",
    project="tracelet-demo",
    backend=["mlflow", "wandb", "clearml"],
    config={"lr": 0.01, "model": {"depth": 4, "activation": "relu"}},
    tags={"team": "demo"},
    backend_options={"mlflow": {"tracking_uri": uri, "artifact_location": (root / "mlruns").as_uri()}},
)
for step in range(1000):
    exp.log_metric("train/loss", 1.0 / (step + 1), step)
    exp.log_metric("accuracy", step / 1000, step)
exp.log_artifact(checkpoint, "checkpoints")
report = tracelet.stop_logging()
print(report)

options = {"mlflow": {"tracking_uri": uri}, "wandb": {"wandb_dir": str(root)}, "clearml": {}}
for backend, run_id in exp.runs.items():
    assert run_id is not None
    record = read_run(backend, run_id, **options[backend])
    loss = record.metrics["train/loss"]
    assert [s for s, _ in loss] == list(range(1000))
    assert len(record.metrics["accuracy"]) == 1000
    assert record.params == {"lr": "0.01", "model/depth": "4", "model/activation": "relu"}
    assert record.tags == {"team": "demo"}
    assert record.artifact("checkpoints/checkpoint.bin").sha256 == digest
    assert (record.project, record.run_name, record.status) == ("tracelet-demo", "three-backends", "finished")
    print(
        f"{backend:8} run {run_id}: 2000 points, params, tag and artifact (sha256 {digest[:12]}…) read back"
    )

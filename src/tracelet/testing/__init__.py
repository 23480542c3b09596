"""Read back what actually landed in a store, as one normalized :class:`RunRecord`.

These readers use each backend's own client or files (MLflow's ``MlflowClient``, the
W&B offline ``.wandb`` log, the ClearML offline session, the ``local`` JSONL) and are
public: use them to test your own training code.

>>> record = read_run("mlflow", exp.runs["mlflow"], tracking_uri="sqlite:///mlflow.db")  # doctest: +SKIP
>>> record.metrics["loss"][:2]  # doctest: +SKIP
[(0, 0.93), (1, 0.71)]
"""

from __future__ import annotations

from typing import Any

from tracelet.testing.record import ArtifactRecord, ImageRecord, RunRecord

__all__ = ["ArtifactRecord", "ImageRecord", "RunRecord", "read_artifact", "read_run"]


def read_run(backend: str, run_id: str, **options: Any) -> RunRecord:
    """Read ``run_id`` back from ``backend``'s store.

    Options: ``mlflow``: ``tracking_uri``; ``wandb``: ``wandb_dir``;
    ``clearml``: ``offline_dir``; ``local``: ``root``.
    """
    if backend == "mlflow":
        from tracelet.testing.mlflow_reader import read_mlflow_run

        return read_mlflow_run(run_id, **options)
    if backend == "wandb":
        from tracelet.testing.wandb_reader import read_wandb_run

        return read_wandb_run(run_id, **options)
    if backend == "clearml":
        from tracelet.testing.clearml_reader import read_clearml_run

        return read_clearml_run(run_id, **options)
    if backend == "local":
        from tracelet.testing.local_reader import read_local_run

        return read_local_run(run_id, **options)
    raise ValueError(f"no reader for backend {backend!r}; readers: mlflow, wandb, clearml, local")


def read_artifact(backend: str, run_id: str, path: str, **options: Any) -> bytes:
    """The bytes of the artifact stored at ``path`` of ``run_id``, fetched from ``backend``'s store.

    ``path`` is an ``ArtifactRecord.path``; the options are :func:`read_run`'s. Use it to check that
    what training saves can be restored from the store (a checkpoint, say), not from the local file.
    """
    if backend == "mlflow":
        from tracelet.testing.mlflow_reader import read_mlflow_artifact

        return read_mlflow_artifact(run_id, path, **options)
    if backend == "wandb":
        from tracelet.testing.wandb_reader import read_wandb_artifact

        return read_wandb_artifact(run_id, path, **options)
    if backend == "clearml":
        from tracelet.testing.clearml_reader import read_clearml_artifact

        return read_clearml_artifact(run_id, path, **options)
    if backend == "local":
        from tracelet.testing.local_reader import read_local_artifact

        return read_local_artifact(run_id, path, **options)
    raise ValueError(f"no reader for backend {backend!r}; readers: mlflow, wandb, clearml, local")

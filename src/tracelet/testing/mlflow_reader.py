"""Read an MLflow run back through ``MlflowClient``."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from tracelet.backends.mlflow import proxied_artifacts_before_3_2
from tracelet.backends.naming import SYSTEM_TAG_PREFIX
from tracelet.images import png_size
from tracelet.snapshots import sha256_of
from tracelet.testing.points import PointSink, points_or_whole, with_points
from tracelet.testing.record import ArtifactRecord, ImageRecord, RunRecord

IMAGE_DIR = "tracelet-images"
_STATUS = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "killed", "RUNNING": "running"}


def read_mlflow_run(
    run_id: str, tracking_uri: str | None = None, points: PointSink | None = None
) -> RunRecord:
    """What the MLflow store at ``tracking_uri`` (default: ``MLFLOW_TRACKING_URI``) holds for ``run_id``.

    ``points``: where the metric points go instead of ``record.metrics`` (a run read in pieces:
    MLflow's history call returns one key whole, so one key at a time is in memory).
    """
    sink = points_or_whole(points)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    for key in sorted(run.data.metrics):
        history = client.get_metric_history(run_id, key)
        sink.add_points(key, [(int(m.step), float(m.value), m.timestamp / 1000) for m in history])
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith(("mlflow.", SYSTEM_TAG_PREFIX))}
    system_tags = {k: v for k, v in run.data.tags.items() if k.startswith(SYSTEM_TAG_PREFIX)}
    artifacts: list[ArtifactRecord] = []
    images: list[ImageRecord] = []
    with tempfile.TemporaryDirectory(prefix="tracelet-read-") as tmp:
        # one call for the whole tree (MLflow fetches a server's files in parallel), then hashed
        # in chunks: a checkpoint of gigabytes is never read whole
        with proxied_artifacts_before_3_2(client.tracking_uri):
            root = (
                Path(client.download_artifacts(run_id, "", tmp))
                if client.list_artifacts(run_id)
                else Path(tmp)
            )
        for local in sorted(p for p in root.rglob("*") if p.is_file()):
            path = local.relative_to(root).as_posix()
            if path.startswith(IMAGE_DIR + "/"):
                name, _, filename = path[len(IMAGE_DIR) + 1 :].rpartition("/")
                with open(local, "rb") as f:
                    width, height = png_size(f.read())
                images.append(ImageRecord(name, int(filename.removesuffix(".png")), width, height))
            else:
                artifacts.append(ArtifactRecord(path, local.stat().st_size, sha256_of(local)))
    record = RunRecord(
        not_read=_not_read(client, run),
        backend="mlflow",
        run_id=run_id,
        project=experiment.name,
        run_name=run.info.run_name,
        status=_STATUS.get(run.info.status, run.info.status.lower()),
        params=dict(run.data.params),
        tags=tags,
        system_tags=system_tags,
        artifacts=sorted(artifacts, key=lambda a: a.path),
        images=sorted(images, key=lambda i: (i.name, i.step)),
    )
    return with_points(record, sink)


def read_mlflow_system_tags(run_id: str, tracking_uri: str | None = None) -> dict[str, str]:
    """The run's ``tracelet.*`` tags (one ``get_run``: no history, no files)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    tags = client.get_run(run_id).data.tags
    return {k: v for k, v in tags.items() if k.startswith(SYSTEM_TAG_PREFIX)}


def _not_read(client: Any, run: Any) -> dict[str, int]:
    """What MLflow holds for the run beyond metrics, params, tags and files: nested runs, logged
    models' entries (their files are artifacts, read as such), dataset inputs."""
    found: dict[str, int] = {}
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'",
        max_results=1000,
    )
    if children:
        found["MLflow nested runs (runs whose parent is this one)"] = len(children)
    models = run.data.tags.get("mlflow.log-model.history")
    if models:
        found["MLflow logged-model entries (their files are read as artifacts)"] = len(json.loads(models))
    inputs = getattr(run, "inputs", None)
    datasets = list(getattr(inputs, "dataset_inputs", None) or [])
    if datasets:
        found["MLflow dataset inputs"] = len(datasets)
    return found


def read_mlflow_images(
    run_id: str, dest: Path, tracking_uri: str | None = None
) -> list[tuple[ImageRecord, Path]]:
    """Each image of the run (tracelet keeps them in ``tracelet-images/``), its PNG fetched into ``dest``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    with proxied_artifacts_before_3_2(client.tracking_uri):
        if not any(item.path == IMAGE_DIR for item in client.list_artifacts(run_id)):
            return []
        root = Path(client.download_artifacts(run_id, IMAGE_DIR, str(dest)))
    found = []
    for local in sorted(p for p in root.rglob("*.png") if p.is_file()):
        name, _, filename = local.relative_to(root).as_posix().rpartition("/")
        with open(local, "rb") as f:
            width, height = png_size(f.read(64))
        found.append((ImageRecord(name, int(filename.removesuffix(".png")), width, height), local))
    return found


def read_mlflow_artifact(run_id: str, path: str, tracking_uri: str | None = None) -> bytes:
    """The bytes of one artifact, downloaded from the MLflow store (through its artifact repository)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    with (
        tempfile.TemporaryDirectory(prefix="tracelet-read-") as tmp,
        proxied_artifacts_before_3_2(client.tracking_uri),
    ):
        local = client.download_artifacts(run_id, path, tmp)
        with open(local, "rb") as f:
            return f.read()


def read_mlflow_tree(run_id: str, path: str, dest: Path, tracking_uri: str | None = None) -> int:
    """Every artifact at or under ``path``, downloaded into ``dest`` with one ``download_artifacts`` call."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    with tempfile.TemporaryDirectory(prefix="tracelet-read-", dir=dest) as tmp:
        with proxied_artifacts_before_3_2(client.tracking_uri):
            downloaded = Path(client.download_artifacts(run_id, path, tmp))
        return _move_into(downloaded, dest / path if path else dest)


def _move_into(source: Path, target: Path) -> int:
    """Move a downloaded file or folder to ``target`` (its files merged into what is there); how many."""
    files = (
        {target: source}
        if source.is_file()
        else {target / p.relative_to(source): p for p in sorted(source.rglob("*")) if p.is_file()}
    )
    for out, file in files.items():
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(file, out)
    return len(files)

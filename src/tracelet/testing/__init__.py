"""Read back what actually landed in a store, as one normalized :class:`RunRecord`.

These readers use each backend's own client or files (MLflow's ``MlflowClient``, the
W&B offline ``.wandb`` log, the ClearML offline session, the ``local`` JSONL) and are
public: use them to test your own training code.

Examples:
    >>> record = read_run("mlflow", exp.runs["mlflow"], tracking_uri="sqlite:///mlflow.db")  # doctest: +SKIP
    >>> record.metrics["loss"][:2]  # doctest: +SKIP
    [(0, 0.93), (1, 0.71)]
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tracelet.testing.points import Point, RunPoints
from tracelet.testing.record import ArtifactRecord, ImageRecord, RunRecord

__all__ = [
    "ArtifactRecord",
    "ImageRecord",
    "Point",
    "RunPoints",
    "RunRecord",
    "read_artifact",
    "read_artifact_tree",
    "read_images",
    "read_run",
    "read_run_in_pieces",
    "read_system_tags",
]


#: backend -> the module holding its ``read_<backend>_run`` and ``read_<backend>_artifact``;
#: imported on first use, so reading one store never imports another store's package
_READERS = {
    "mlflow": "tracelet.testing.mlflow_reader",
    "wandb": "tracelet.testing.wandb_reader",
    "clearml": "tracelet.testing.clearml_reader",
    "local": "tracelet.testing.local_reader",
}


def _reader(backend: str, what: str) -> Callable[..., Any]:
    if backend not in _READERS:
        raise ValueError(f"no reader for backend {backend!r}; readers: {', '.join(_READERS)}")
    reader: Callable[..., Any] = getattr(importlib.import_module(_READERS[backend]), f"read_{backend}_{what}")
    return reader


def read_run(backend: str, run_id: str, **options: Any) -> RunRecord:
    """Read ``run_id`` back from ``backend``'s store.

    Options: ``mlflow``: ``tracking_uri``; ``wandb``: ``wandb_dir``;
    ``clearml``: ``offline_dir``; ``local``: ``root``. The ``system/`` series tracelet
    sampled are in ``record.system_metrics``, apart from what the workflow logged.
    """
    record: RunRecord = _reader(backend, "run")(run_id, **options)
    return record.set_aside_system_metrics()


def read_run_in_pieces(
    backend: str, run_id: str, folder: str | os.PathLike[str], **options: Any
) -> tuple[RunRecord, RunPoints]:
    """Read ``run_id`` as :func:`read_run` does, its metric points kept on disk instead of in memory.

    Returns the record without its points (``record.metrics`` is empty) and a :class:`RunPoints`
    holding them in ``folder`` (created; removed when the ``RunPoints`` is closed), one file per key,
    each key's points in the order the store keeps them, ``system/`` series among them. Memory stays
    bounded whatever the run holds (MLflow: one key at a time, as its history call returns a key
    whole): what ``tracelet copy`` reads runs with. The options are :func:`read_run`'s.
    """
    points = RunPoints(Path(folder))
    try:
        record: RunRecord = _reader(backend, "run")(run_id, points=points, **options)
    except BaseException:
        points.close()
        raise
    return record, points


def read_artifact(backend: str, run_id: str, path: str, **options: Any) -> bytes:
    """The bytes of the artifact stored at ``path`` of ``run_id``, fetched from ``backend``'s store.

    ``path`` is an ``ArtifactRecord.path``; the options are :func:`read_run`'s. Use it to check that
    what training saves can be restored from the store (a checkpoint, say), not from the local file.
    """
    data: bytes = _reader(backend, "artifact")(run_id, path, **options)
    return data


def read_artifact_tree(
    backend: str, run_id: str, path: str, dest: str | os.PathLike[str], **options: Any
) -> Path:
    """Fetch every artifact stored at or under ``path`` into ``dest`` (relative paths kept); returns ``dest``.

    One store call where the store has one (MLflow's ``download_artifacts`` of the folder);
    the files are copied in chunks, never read whole. ``path=""`` fetches the run's every
    artifact. The options are :func:`read_run`'s.
    """
    target = Path(dest)
    target.mkdir(parents=True, exist_ok=True)
    if not _reader(backend, "tree")(run_id, path.strip("/"), target, **options):
        raise FileNotFoundError(f"{backend} run {run_id!r} holds no artifact at or under {path!r}")
    return target


def read_images(
    backend: str, run_id: str, dest: str | os.PathLike[str], **options: Any
) -> list[tuple[ImageRecord, Path]]:
    """Each image the run holds and a PNG file of it (fetched into ``dest`` where the store is not a
    local folder, else where the store keeps it; read it, never change it). The options are
    :func:`read_run`'s.
    """
    target = Path(dest)
    target.mkdir(parents=True, exist_ok=True)
    found: list[tuple[ImageRecord, Path]] = _reader(backend, "images")(run_id, target, **options)
    return sorted(found, key=lambda item: (item[0].name, item[0].step))


def read_system_tags(backend: str, run_id: str, **options: Any) -> dict[str, str]:
    """tracelet's own ``tracelet.*`` tags of ``run_id``, read without its points or files (cheap:
    what ``tracelet copy`` reads of every run of a target project to find its earlier copies).
    The options are :func:`read_run`'s."""
    tags: dict[str, str] = _reader(backend, "system_tags")(run_id, **options)
    return tags

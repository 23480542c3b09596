"""The MLflow backend: ``MlflowClient`` with explicit run ids, one ``log_batch`` per chunk.

Mapping: ``project`` is the experiment name and ``exp_name`` the run name. User tags
and tracelet's ``tracelet.*`` tags are MLflow tags; artifacts keep their relative
path; images land as ``tracelet-images/<name>/<step>.png``.

MLflow returns a metric's history ordered by (timestamp, step, value) and drops
exact duplicates, so this backend gives each key strictly increasing millisecond
timestamps: the stored order is then the call order, and no point is merged away.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

from tracelet.backends.base import FAILED, FINISHED, KILLED, Backend, RunInfo
from tracelet.events import Artifact, Event, Image, Metric, Params, Tags

#: MLflow's documented ``log_batch`` limits.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000

IMAGE_DIR = "tracelet-images"
STATUS_TO_MLFLOW = {FINISHED: "FINISHED", FAILED: "FAILED", KILLED: "KILLED"}


class MLflowBackend(Backend):
    """Sends batches to any MLflow tracking store (sqlite, file, or a server)."""

    name = "mlflow"
    package = "mlflow"
    extra = "mlflow"
    option_keys = frozenset({"tracking_uri", "artifact_location"})

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._client: Any = None
        self._last_ts: dict[str, int] = {}

    def _connect(self) -> Any:
        from mlflow.tracking import MlflowClient

        uri = self.options.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        self._client = MlflowClient(tracking_uri=uri)
        return self._client

    def spool_options(self) -> dict[str, Any]:
        options = dict(self.options)
        if self._client is not None:
            options["tracking_uri"] = self._client.tracking_uri
        return options

    def param_value_limit(self) -> int | None:
        from mlflow.utils import validation

        return int(getattr(validation, "MAX_PARAM_VAL_LENGTH", 6000))

    def start(self, info: RunInfo) -> str:
        client = self._connect()
        experiment = client.get_experiment_by_name(info.project)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            try:
                experiment_id = client.create_experiment(
                    info.project, artifact_location=self.options.get("artifact_location")
                )
            except Exception:  # created concurrently by another process: use theirs
                experiment = client.get_experiment_by_name(info.project)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        run = client.create_run(experiment_id, run_name=info.run_name, tags=dict(info.system_tags))
        self.run_id = str(run.info.run_id)
        return self.run_id

    def attach(self, run_id: str) -> None:
        self._connect().get_run(run_id)
        self.run_id = run_id

    def write(self, events: Sequence[Event]) -> None:
        from mlflow.entities import Metric as MlflowMetric
        from mlflow.entities import Param, RunTag

        metrics: list[Any] = []
        params: list[Any] = []
        tags: list[Any] = []

        def flush() -> None:
            while metrics or params or tags:
                chunk_p = params[:MAX_PARAMS_TAGS_PER_BATCH]
                chunk_t = tags[:MAX_PARAMS_TAGS_PER_BATCH]
                room = MAX_ENTITIES_PER_BATCH - len(chunk_p) - len(chunk_t)
                chunk_m = metrics[: min(room, MAX_METRICS_PER_BATCH)]
                self._client.log_batch(self.run_id, metrics=chunk_m, params=chunk_p, tags=chunk_t)
                del metrics[: len(chunk_m)], params[: len(chunk_p)], tags[: len(chunk_t)]

        for event in events:
            if isinstance(event, Metric):
                ts = int(event.timestamp * 1000)
                last = self._last_ts.get(event.name)
                if last is not None and ts <= last:
                    ts = last + 1
                self._last_ts[event.name] = ts
                metrics.append(MlflowMetric(event.name, event.value, ts, event.step))
            elif isinstance(event, Params):
                params.extend(Param(k, v) for k, v in event.values.items())
            elif isinstance(event, Tags):
                tags.extend(RunTag(k, v) for k, v in event.values.items())
            elif isinstance(event, Artifact):
                flush()
                self._upload(event.local_path, event.artifact_path)
            elif isinstance(event, Image):
                flush()
                self._upload(event.local_path, f"{IMAGE_DIR}/{event.name}/{event.step}.png")
        flush()

    def _upload(self, local_path: str, artifact_path: str) -> None:
        """Upload one file so that it lands exactly at ``artifact_path``."""
        directory, _, filename = artifact_path.rpartition("/")
        if os.path.basename(local_path) == filename:
            self._client.log_artifact(self.run_id, local_path, directory or None)
            return
        with tempfile.TemporaryDirectory(prefix="tracelet-upload-") as tmp:
            renamed = os.path.join(tmp, filename)
            shutil.copyfile(local_path, renamed)
            self._client.log_artifact(self.run_id, renamed, directory or None)

    def finish(self, status: str) -> None:
        self._client.set_terminated(self.run_id, status=STATUS_TO_MLFLOW[status])

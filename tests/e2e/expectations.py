"""What a workflow logged, and the checks that compare it with what a store holds.

Each workflow records for itself, *before* calling tracelet, everything it logs (:class:`Expected`).
Tests compare that record with what the store's own client or files return
(:mod:`tracelet.testing`), never with another tracelet backend.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

import tracelet
from tracelet.testing import RunRecord
from tracelet.testing.equivalence import compare, record_to_json


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
        self.params.update(flatten(params))
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


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
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
    metric_keys: Iterable[str], records: Mapping[str, RunRecord], expected: Expected | None = None
) -> None:
    """One run as each store it went to holds it: everything logged (when ``expected`` says what),
    every key of ``metric_keys`` (a workflow's ``get_expected_metrics()``), and the stores agree."""
    for backend, record in records.items():
        if expected is not None:
            assert_run_matches(expected, record)
        missing = sorted(set(metric_keys) - set(record.metrics))
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

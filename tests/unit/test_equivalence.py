"""Cross-store comparison: only the documented inherent differences are forgiven."""

from __future__ import annotations

import json
import math
import sys

import pytest

from tracelet.testing import ArtifactRecord, ImageRecord, RunRecord
from tracelet.testing.equivalence import INHERENT_DIFFERENCES, compare, record_from_json, record_to_json


def record(backend: str, **changes: object) -> RunRecord:
    base: dict[str, object] = {
        "backend": backend,
        "run_id": f"{backend}-id",
        "project": "p",
        "run_name": f"run-{backend}",
        "status": "finished",
        "params": {"lr": "0.1", "model.depth": "2"},
        "metrics": {"loss": [(0, 1.0), (1, 0.5)], "edge": [(0, 0.25)]},
        "tags": {"team": "a"},
        "system_tags": {"tracelet.version": "0.1.0", "tracelet.git.commit": backend},
        "artifacts": [ArtifactRecord("model/w.bin", 3, "abc")],
        "images": [ImageRecord("samples", 0, 8, 8)],
    }
    base.update(changes)
    return RunRecord(**base)  # type: ignore[arg-type]


def test_the_same_run_in_two_stores_has_no_differences() -> None:
    """Run ids, names and system tags are per-run facts and are not compared."""
    assert compare(record("local"), record("wandb")) == []


@pytest.mark.parametrize(
    ("logged", "backend", "stored"),
    [
        (math.nan, "clearml", 0.0),
        (math.inf, "clearml", 0.0),
        (-math.inf, "clearml", 0.0),
        (math.inf, "mlflow", sys.float_info.max),
        (-math.inf, "mlflow", -sys.float_info.max),
    ],
)
def test_what_a_store_changes_by_itself_is_forgiven(logged: float, backend: str, stored: float) -> None:
    assert (
        compare(
            record("local", metrics={"edge": [(0, logged)]}), record(backend, metrics={"edge": [(0, stored)]})
        )
        == []
    )


def test_two_stores_that_each_change_inf_still_agree() -> None:
    """ClearML's 0 and MLflow's max float both come from +inf."""
    mlflow = record("mlflow", metrics={"edge": [(0, sys.float_info.max)]})
    assert compare(record("clearml", metrics={"edge": [(0, 0.0)]}), mlflow) == []


@pytest.mark.parametrize(
    ("logged", "backend", "stored"),
    [
        (0.5, "clearml", 0.0),  # a finite value is never kept as 0
        (math.nan, "mlflow", 0.0),  # MLflow keeps NaN
        (math.inf, "wandb", sys.float_info.max),  # W&B keeps inf
        (1.0, "local", 1.0 + 1e-6),  # beyond the tolerance
    ],
)
def test_any_other_value_difference_is_reported(logged: float, backend: str, stored: float) -> None:
    found = compare(
        record("local", metrics={"edge": [(0, logged)]}), record(backend, metrics={"edge": [(0, stored)]})
    )
    assert found == [f"metric 'edge' step 0: {logged!r} in local, {stored!r} in {backend}"]


def test_clearml_reads_a_title_equal_to_its_series_back_as_the_title() -> None:
    logged = record("mlflow", metrics={"acc/acc": [(0, 1.0)]})
    assert compare(logged, record("clearml", metrics={"acc": [(0, 1.0)]})) == []
    # the rule belongs to ClearML: between two other stores the keys differ
    assert compare(logged, record("wandb", metrics={"acc": [(0, 1.0)]})) == [
        "metric 'acc' only in wandb",
        "metric 'acc/acc' only in mlflow",
    ]


def test_keys_steps_params_tags_artifacts_images_and_status_are_compared() -> None:
    other = record(
        "wandb",
        metrics={"loss": [(0, 1.0)], "edge": [(0, 0.25)], "extra": [(0, 1.0)]},
        params={"lr": "0.2", "model.depth": "2"},
        tags={},
        artifacts=[ArtifactRecord("model/w.bin", 3, "abd")],
        images=[],
        status="failed",
    )
    assert compare(record("local"), other) == [
        "metric 'extra' only in wandb",
        "metric 'loss': steps differ (2 in local, 1 in wandb)",
        "params 'lr': '0.1' in local, '0.2' in wandb",
        "tags 'team': 'a' in local, None in wandb",
        "artifacts 'model/w.bin': 'abc' in local, 'abd' in wandb",
        "image ('samples', 0, 8, 8) only in local",
        "status: 'finished' in local, 'failed' in wandb",
    ]


def test_every_inherent_difference_is_documented_and_has_a_rule() -> None:
    for rule in INHERENT_DIFFERENCES:
        assert rule.description
        assert (rule.origins is None) != (rule.key is None), rule


def test_records_survive_json_with_nan_and_inf() -> None:
    original = record("clearml", metrics={"edge": [(0, math.nan), (1, math.inf), (2, -math.inf), (3, 0.5)]})
    text = json.dumps(record_to_json(original), allow_nan=False)  # strict JSON
    back = record_from_json(json.loads(text))
    assert compare(original, back) == []
    assert back.artifacts == original.artifacts
    assert back.images == original.images
    assert back.system_tags == original.system_tags

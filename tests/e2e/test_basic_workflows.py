"""Basic workflows (PyTorch regression, Lightning) on every backend environment, read back from the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.framework import assert_run_matches, e2e_framework
from tests.e2e.params import environments, workflow

pytestmark = pytest.mark.e2e_basic


def run_and_verify(workflow_name: str, environment: str) -> dict[str, Any]:
    with e2e_framework.backend_environment(environment) as config:
        wf = e2e_framework.workflows[workflow_name]()
        results = wf.run(config)
        report = results["report"]
        assert report.ok, report.format()
        backend_report = report[config["backend"]]
        assert backend_report.sent == backend_report.delivered > 0
        record = config["read"](results["run_id"])
        assert_run_matches(results["expected"], record)
        assert set(wf.get_expected_metrics()) <= set(record.metrics)
        assert wf.validate_results(results), "training did not reduce the loss"
    return results


@pytest.mark.parametrize("workflow", [workflow("simple_pytorch")])
@pytest.mark.parametrize("environment", environments())
def test_pytorch_workflow(workflow: str, environment: str, isolated_env: Path) -> None:
    results = run_and_verify(workflow, environment)
    assert results["epochs_completed"] == 10
    # the checkpoint logged at epoch 5 is the epoch-5 bytes, not the file overwritten later
    assert "checkpoints/model.pt" in results["expected"].artifacts


@pytest.mark.parametrize("workflow", [workflow("lightning"), workflow("pytorch_lightning")])
@pytest.mark.parametrize("environment", environments())
def test_lightning_workflow(workflow: str, environment: str, isolated_env: Path) -> None:
    results = run_and_verify(workflow, environment)
    expected = results["expected"]
    assert expected.params["lr"] == "0.05"
    assert expected.params["hidden"] == "8"
    assert len(expected.metrics["val/loss"]) == 3  # one validation point per epoch

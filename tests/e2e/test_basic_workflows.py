"""Basic workflows (PyTorch regression, Lightning) on every backend environment, read back from the store.

They also run with all three backends in one run (environment ``all``, the ``e2e-all-torch`` session),
and every session keeps their records for the summary's cross-backend table.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.framework import WorkflowResult, e2e_framework, save_record, verify_landed
from tests.e2e.params import WITH_ALL_BACKENDS, environments, workflow

pytestmark = [pytest.mark.e2e_basic, pytest.mark.e2e_floor]


def run_and_verify(workflow_name: str, environment: str) -> WorkflowResult:
    """Run the workflow, read its run back from every store it went to, and keep the records.

    Where the run went to several stores at once (the ``all`` environment), each store must hold
    everything, and the stores must agree with each other.
    """
    with e2e_framework.backend_environment(environment) as config:
        wf = e2e_framework.workflows[workflow_name]()
        results = wf.run(config)
        assert isinstance(results, WorkflowResult)
        assert results.runs is not None
        report = results.report
        assert report is not None
        assert report.ok, report.format()
        records = config.read_runs(results.runs)
        verify_landed(wf.get_expected_metrics(), records, results.expected)
        for backend, record in records.items():
            backend_report = report[backend]
            assert backend_report.sent == backend_report.delivered > 0
            save_record(
                workflow_name, environment if len(records) == 1 else f"{environment}+{backend}", record
            )
        assert wf.validate_results(results), "training did not reduce the loss"
    return results


@pytest.mark.parametrize("workflow", [workflow("simple_pytorch")])
@pytest.mark.parametrize("environment", environments(WITH_ALL_BACKENDS))
def test_pytorch_workflow(workflow: str, environment: str, isolated_env: Path) -> None:
    results = run_and_verify(workflow, environment)
    assert results.epochs_completed == 10
    assert results.expected is not None
    # the checkpoint logged at epoch 5 is the epoch-5 bytes, not the file overwritten later
    assert "checkpoints/model.pt" in results.expected.artifacts


@pytest.mark.parametrize("workflow", [workflow("lightning"), workflow("pytorch_lightning")])
@pytest.mark.parametrize("environment", environments(WITH_ALL_BACKENDS))
def test_lightning_workflow(workflow: str, environment: str, isolated_env: Path) -> None:
    results = run_and_verify(workflow, environment)
    expected = results.expected
    assert expected is not None
    assert expected.params["lr"] == "0.05"
    assert expected.params["hidden"] == "8"
    assert len(expected.metrics["val/loss"]) == 3  # one validation point per epoch

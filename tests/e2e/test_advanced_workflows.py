"""Advanced workflows: CNN image classification with images, LSTM time series; and the comprehensive run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.e2e.framework import e2e_framework
from tests.e2e.params import POSIX, environments, workflow
from tests.e2e.test_basic_workflows import run_and_verify

pytestmark = pytest.mark.e2e_advanced


@pytest.mark.parametrize("workflow", [workflow("vision")])
@pytest.mark.parametrize("environment", environments())
def test_computer_vision_workflow(workflow: str, environment: str, isolated_env: Path) -> None:
    results = run_and_verify(workflow, environment)
    assert {(n, s) for n, s, _, _ in results["expected"].images} == {("samples/input", e) for e in range(3)}


@pytest.mark.framework_only("torch")  # plain torch: the same run in every framework column
@pytest.mark.parametrize("workflow", [workflow("time_series")])
@pytest.mark.parametrize("environment", environments())
def test_time_series_workflow(workflow: str, environment: str, isolated_env: Path) -> None:
    run_and_verify(workflow, environment)


@pytest.mark.e2e_comprehensive
@pytest.mark.slow
@pytest.mark.requires("torch")
def test_comprehensive_run_on_every_installed_backend(
    install_set: frozenset[str], isolated_env: Path
) -> None:
    """``run_comprehensive_test`` over the workflows and environments this session installed."""
    envs = [
        n
        for n, cls in e2e_framework.environments.items()
        if set(cls.requires) <= install_set and (n != "mlflow_server" or sys.platform in POSIX)
    ]
    flows = [n for n, f in e2e_framework.workflows.items() if set(f().requires) <= install_set]
    results = e2e_framework.run_comprehensive_test(workflows=flows, backends=envs)
    failures = {
        (wf, env): r.get("error")
        for wf, per_env in results.items()
        for env, r in per_env.items()
        if not r["success"]
    }
    assert not failures, failures
    assert sum(len(v) for v in results.values()) == len(envs) * len(flows)

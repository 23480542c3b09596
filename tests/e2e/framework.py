"""The E2E framework: real backend environments, realistic training workflows, and a registry.

The parts live in their own modules: what a workflow logged and the checks (:mod:`tests.e2e.expectations`),
the stores (:mod:`tests.e2e.environments`), the workflow base and its results (:mod:`tests.e2e.workflow`),
and the workflows (:mod:`tests.e2e.workflows_basic`, :mod:`tests.e2e.workflows_lightning`,
:mod:`tests.e2e.workflows_advanced`). This module
keeps :class:`E2EFramework` and re-exports what the seed README and the tests import from it
(``from tests.e2e.framework import TrainingWorkflow, e2e_framework``).

Where the seed README assumes Docker or hosted servers, this uses the closest real thing on the
machine: a real ``mlflow server`` process on 127.0.0.1, W&B offline and ClearML offline.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
import traceback
from collections.abc import Callable, Iterator

import tracelet
from tests.e2e.environments import (
    ENVIRONMENTS,
    BackendConfig,
    BackendEnvironment,
    MLflowServerEnvironment,
)
from tests.e2e.expectations import Expected, assert_run_matches, files_holding, save_record, verify_landed
from tests.e2e.workflow import TrainingWorkflow, Trial, WorkflowResult
from tests.e2e.workflows_advanced import (
    CheckpointingWorkflow,
    DistributedWorkflow,
    HyperparameterSweepWorkflow,
    MetricsAtScaleWorkflow,
    NLPWorkflow,
    TimeSeriesWorkflow,
    VisionWorkflow,
)
from tests.e2e.workflows_basic import SimplePyTorchWorkflow
from tests.e2e.workflows_lightning import LightningWorkflow, PyTorchLightningWorkflow
from tracelet.testing.servers import MLflowServer

__all__ = [
    "ENVIRONMENTS",
    "BackendConfig",
    "BackendEnvironment",
    "CheckpointingWorkflow",
    "E2EFramework",
    "Expected",
    "MLflowServer",
    "MLflowServerEnvironment",
    "TrainingWorkflow",
    "Trial",
    "WorkflowResult",
    "assert_run_matches",
    "e2e_framework",
    "files_holding",
    "save_record",
    "verify_landed",
]


def _importable(packages: tuple[str, ...]) -> bool:
    return all(importlib.util.find_spec(package) is not None for package in packages)


class E2EFramework:
    """Environments and workflows by name, as the seed README describes."""

    def __init__(self) -> None:
        self.environments: dict[str, type[BackendEnvironment]] = dict(ENVIRONMENTS)
        self.workflows: dict[str, Callable[[], TrainingWorkflow]] = {
            "simple_pytorch": SimplePyTorchWorkflow,
            "lightning": LightningWorkflow,
            "pytorch_lightning": PyTorchLightningWorkflow,
            "vision": VisionWorkflow,
            "time_series": TimeSeriesWorkflow,
            "nlp": NLPWorkflow,
            "hyperparameter_sweep": HyperparameterSweepWorkflow,
            "checkpointing": CheckpointingWorkflow,
            "distributed": DistributedWorkflow,
            "metrics_at_scale": MetricsAtScaleWorkflow,
        }

    @contextlib.contextmanager
    def backend_environment(self, name: str, project: str = "tracelet-e2e") -> Iterator[BackendConfig]:
        """Set up the named environment; yields the ``backend_config`` for workflows."""
        environment = self.environments[name]()
        environment.setup()
        try:
            yield environment.config(project)
        finally:
            active = tracelet.get_active_experiment()
            if active is not None:
                active.stop(status="failed", flush_timeout=10)
            environment.teardown()

    def run_workflow(self, name: str, backend_config: BackendConfig) -> WorkflowResult:
        """Run one workflow; ``success`` means it trained and everything it logged landed.

        A workflow of ours returns its run ids and an :class:`Expected` record, and each run read back
        must match it (a sweep returns ``trials``, each verified). A workflow that returns neither (the
        seed README's custom workflow, whose plain dict becomes a :class:`WorkflowResult`) is still
        checked by read-back: its run is the one run that appeared in the store while it ran, and every
        key of ``get_expected_metrics()`` must have landed there. ``records`` is what each store holds
        for the (first) run, by backend; where one run went to several stores, they must agree.
        """
        workflow = self.workflows[name]()
        store = backend_config.store
        before = set(store.run_ids())
        started = time.monotonic()
        try:
            returned = workflow.run(backend_config)
            result = (
                returned if isinstance(returned, WorkflowResult) else WorkflowResult.from_mapping(returned)
            )
            for trial in result.trials or [result]:
                if trial.runs is None:
                    if trial.run_id is None:
                        trial.run_id = self._new_run(store, before)
                    trial.runs = {store.backend: trial.run_id}
                trial.records = backend_config.read_runs(trial.runs)
                verify_landed(workflow.get_expected_metrics(), trial.records, trial.expected)
            if not result.records:
                result.records = result.trials[0].records
            result.success = workflow.validate_results(result) and (result.report is None or result.report.ok)
        except Exception as exc:
            result = WorkflowResult(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        result.duration_s = time.monotonic() - started
        return result

    @staticmethod
    def _new_run(environment: BackendEnvironment, before: set[str]) -> str:
        """The one run that appeared in the store since ``before``."""
        new = sorted(set(environment.run_ids()) - before)
        assert len(new) == 1, f"expected the workflow to leave one new run in {environment.name}, found {new}"
        return new[0]

    def installed_environments(self) -> list[str]:
        """The environments whose packages are importable here (the MLflow server: on POSIX only)."""
        return [
            name
            for name, cls in self.environments.items()
            if not cls.composite
            and _importable(cls.requires)
            and (name != "mlflow_server" or sys.platform in ("linux", "darwin"))
        ]

    def installed_workflows(self) -> list[str]:
        """The workflows whose framework packages are importable here."""
        return [name for name, factory in self.workflows.items() if _importable(factory().requires)]

    def run_comprehensive_test(
        self, workflows: list[str] | None = None, backends: list[str] | None = None
    ) -> dict[str, dict[str, WorkflowResult]]:
        """Every workflow on every backend environment; results[workflow][environment].

        By default: every installed workflow on every installed environment.
        """
        results: dict[str, dict[str, WorkflowResult]] = {}
        for workflow in workflows or self.installed_workflows():
            for backend in backends or self.installed_environments():
                with self.backend_environment(backend) as config:
                    results.setdefault(workflow, {})[backend] = self.run_workflow(workflow, config)
        return results

    def shutdown(self) -> list[str]:
        """Stop shared resources (the MLflow server); called at the end of the pytest session."""
        return MLflowServerEnvironment.stop_server()


e2e_framework = E2EFramework()

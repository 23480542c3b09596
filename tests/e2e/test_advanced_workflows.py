"""Advanced workflows: a CNN with images, an LSTM, a transformer on tokens, a sweep, checkpoint and resume,
2-process DDP, 100k points; and the comprehensive run. Each is read back from the store it logged to."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.e2e.environments import MLflowEnvironment
from tests.e2e.framework import CheckpointingWorkflow, assert_run_matches, e2e_framework, save_record
from tests.e2e.params import POSIX, environments, workflow
from tests.e2e.test_basic_workflows import run_and_verify
from tests.e2e.workflows_advanced import (
    CheckpointResult,
    DistributedResult,
    ScaleResult,
    SweepResult,
    SweepTrial,
)

pytestmark = pytest.mark.e2e_advanced

BASIC_WORKFLOWS = ("simple_pytorch", "lightning", "pytorch_lightning")


@pytest.mark.parametrize("workflow", [workflow("vision")])
@pytest.mark.parametrize("environment", environments())
def test_computer_vision_workflow(workflow: str, environment: str, isolated_env: Path) -> None:
    results = run_and_verify(workflow, environment)
    assert results.expected is not None
    assert {(n, s) for n, s, _, _ in results.expected.images} == {("samples/input", e) for e in range(3)}


@pytest.mark.framework_only("torch")  # plain torch: the same run in every framework column
@pytest.mark.parametrize("workflow", [workflow("time_series")])
@pytest.mark.parametrize("environment", environments())
def test_time_series_workflow(workflow: str, environment: str, isolated_env: Path) -> None:
    run_and_verify(workflow, environment)


@pytest.mark.e2e_comprehensive
@pytest.mark.slow
@pytest.mark.requires("torch")
def test_comprehensive_run_on_every_installed_backend(isolated_env: Path) -> None:
    """``run_comprehensive_test`` over the basic workflows and the environments this session installed."""
    envs = e2e_framework.installed_environments()  # under nox, the declared set (checked at start)
    # the basic workflows: every other one has its own test on every store already
    flows = [n for n in e2e_framework.installed_workflows() if n in BASIC_WORKFLOWS]
    results = e2e_framework.run_comprehensive_test(workflows=flows, backends=envs)
    failures = {
        (wf, env): r.error for wf, per_env in results.items() for env, r in per_env.items() if not r.success
    }
    assert not failures, failures
    assert sum(len(v) for v in results.values()) == len(envs) * len(flows)


# -- the seed's other workflow templates ---------------------------------------------------------
# They need torch only, so they run in every session that has it: every framework column (the vision
# column's torch is another build). Only the 100k-point run, a scale test of each store that needs no
# framework at all, runs once per backend, in the `torch` column, like the other scale tests.


@pytest.mark.parametrize("workflow", [workflow("nlp")])
@pytest.mark.parametrize("environment", environments())
def test_nlp_workflow(workflow: str, environment: str, isolated_env: Path) -> None:
    results = run_and_verify(workflow, environment)
    assert results.expected is not None
    assert results.expected.artifacts.keys() == {"tokenizer/vocab.json"}
    assert {name for name, *_ in results.expected.images} == {"val/confusion"}


@pytest.mark.e2e_performance
@pytest.mark.slow
@pytest.mark.framework_only("torch")
@pytest.mark.parametrize("workflow", [workflow("metrics_at_scale")])
@pytest.mark.parametrize("environment", environments())
def test_metrics_at_scale_workflow(workflow: str, environment: str, isolated_env: Path) -> None:
    """100,000 points over 50 keys land, each key complete and in order (read back point by point)."""
    results = run_and_verify(workflow, environment)  # every point, in order, read back and compared
    assert isinstance(results, ScaleResult)
    assert results.points == 100_000


@pytest.mark.parametrize("workflow", [workflow("hyperparameter_sweep")])
@pytest.mark.parametrize("environment", environments())
def test_hyperparameter_sweep_workflow(workflow: str, environment: str, isolated_env: Path) -> None:
    """Three runs in one project: the store groups them there, and its own API finds the best one."""
    project = f"sweep-{uuid.uuid4().hex[:8]}"
    with e2e_framework.backend_environment(environment, project=project) as config:
        results = e2e_framework.workflows[workflow]().run(config)
        assert isinstance(results, SweepResult)
        backend = config.backend_name
        stored = config.store.list_runs(project)  # found through the store itself
        trials = [trial for trial in results.trials if isinstance(trial, SweepTrial)]
        assert len(trials) == len(results.trials) == 3
        assert sorted(r.run_name for r in stored) == sorted(
            trial.expected.run_name for trial in trials if trial.expected
        )
        for trial in trials:
            assert trial.runs is not None
            assert trial.expected is not None
            record = config.read(trial.runs[backend])
            assert_run_matches(trial.expected, record)
            save_record(f"{workflow}-lr{trial.lr}", environment, record)
        if isinstance(config.store, MLflowEnvironment):  # MLflow orders runs by a metric itself
            client = config.store.client()
            experiment = client.get_experiment_by_name(project)
            best = client.search_runs([experiment.experiment_id], order_by=["metrics.`val/loss` ASC"])[0]
            best_lr = best.data.params["lr"]
        else:  # W&B and ClearML offline, and local: every run of the project, read from the store
            best_lr = min(stored, key=lambda r: r.metrics["val/loss"][-1][1]).params["lr"]
        assert best_lr == str(results.best_lr)


@pytest.mark.parametrize("workflow", [workflow("checkpointing")])
@pytest.mark.parametrize("environment", environments())
def test_checkpointing_workflow(workflow: str, environment: str, isolated_env: Path) -> None:
    """A checkpoint downloaded from the store resumes training exactly where it left off."""
    with e2e_framework.backend_environment(environment, project="checkpoints") as config:
        results = e2e_framework.workflows[workflow]().run(config)
        assert isinstance(results, CheckpointResult)
        assert results.report is not None
        assert results.report.ok, results.report.format()
        assert results.first.expected is not None
        assert results.expected is not None
        first = config.read(results.first.run_id)
        resumed = config.read(results.run_id)
        assert_run_matches(results.first.expected, first)
        assert_run_matches(results.expected, resumed)
        save_record(workflow, environment, resumed)
    path = CheckpointingWorkflow.CHECKPOINT
    logged = results.first.expected.artifacts[path]
    # the bytes downloaded from the store are the file that was logged
    assert results.checkpoint_sha256 == logged == first.artifact(path).sha256
    step = results.checkpoint_step
    resumed_steps = [s for s, _ in resumed.metrics["train/loss"]]
    assert resumed_steps == list(range(step, step + len(resumed_steps))), "the resumed steps do not continue"
    # deterministic training: the resumed run repeats the first run's losses at the same steps
    first_losses = dict(first.metrics["train/loss"])
    resumed_losses = [v for _, v in resumed.metrics["train/loss"]]
    assert resumed_losses == pytest.approx([first_losses[s] for s in resumed_steps], rel=1e-9)


@pytest.mark.platform_only(*POSIX)
@pytest.mark.parametrize("workflow", [workflow("distributed")])
@pytest.mark.parametrize("environment", environments())
def test_distributed_workflow(workflow: str, environment: str, isolated_env: Path) -> None:
    """2-process DDP (gloo): both ranks call tracelet; one run, one set of params, each step once."""
    project = f"ddp-{uuid.uuid4().hex[:8]}"
    with e2e_framework.backend_environment(environment, project=project) as config:
        results = e2e_framework.workflows[workflow]().run(config)
        assert isinstance(results, DistributedResult)
        assert results.expected is not None
        rank0, rank1 = results.ranks
        assert rank0.ok
        assert not any(rank1.runs.values()), f"rank 1 started a run: {rank1.runs}"
        stored = config.store.list_runs(project)
        assert [r.run_id for r in stored] == [results.run_id], "more than one run in the project"
        record = stored[0]
        assert_run_matches(results.expected, record)  # params once, every point exactly
        assert [s for s, _ in record.metrics["train/loss"]] == list(range(12)), "duplicate or missing steps"
        save_record(workflow, environment, record)

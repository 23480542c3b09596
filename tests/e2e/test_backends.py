"""Backend contracts against the real stores: lifecycle, scale, fan-out, failures, absent packages."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import tracelet
from tests.e2e.audit import OPTIONAL_PACKAGES
from tests.e2e.environments import MLflowEnvironment, own_mlflow_server
from tests.e2e.framework import (
    BackendConfig,
    Expected,
    assert_run_matches,
    e2e_framework,
    files_holding,
)
from tests.e2e.params import BACKEND_ENVIRONMENTS, environments

EXTRAS = {"mlflow": "mlflow", "wandb": "wandb", "clearml": "clearml"}


def _start(config: BackendConfig, name: str) -> tracelet.Experiment:
    return tracelet.start_logging(
        exp_name=name,
        project=config.project,
        backend=config.backend_name,
        backend_options=config.backend_options,
    )


@pytest.mark.e2e_floor
@pytest.mark.framework_only("torch")  # backend behaviour: once per backend, not per framework set
@pytest.mark.e2e_basic
@pytest.mark.parametrize("environment", environments())
def test_experiment_lifecycle(environment: str, isolated_env: Path) -> None:
    """Create a run, finish it, check statuses and run ids; delete it where the store has an API for it."""
    with e2e_framework.backend_environment(environment, project="lifecycle") as config:
        env = config.store
        exp = _start(config, "first")
        run_id = exp.runs[config.backend_name]
        assert isinstance(run_id, str)
        assert run_id
        exp.flush()
        if env.shows_open_runs():
            assert _read_eventually(config, run_id).status == "running"
        else:  # the store writes the run when it ends: nothing of it can be read yet
            with pytest.raises(ValueError, match="no run record"):
                config.read(run_id)
        exp.log_metric("x", 1.0)
        assert tracelet.stop_logging().ok
        assert config.read(run_id).status == "finished"

        with pytest.raises(RuntimeError, match="boom"), _start(config, "second") as failed:
            raise RuntimeError("boom")
        failed_id = failed.runs[config.backend_name]
        assert failed_id != run_id
        assert config.read(failed_id).status == "failed"

        killed = _start(config, "third")
        killed.stop(status="killed")
        assert config.read(killed.runs[config.backend_name]).status == "killed"

        if env.delete(run_id):  # MLflow and local; W&B and ClearML offline have no delete API
            if isinstance(env, MLflowEnvironment):
                assert env.client().get_run(run_id).info.lifecycle_stage == "deleted"
            else:
                with pytest.raises(FileNotFoundError):
                    config.read(run_id)
        else:
            assert environment in ("wandb", "clearml")


@pytest.mark.e2e_floor
@pytest.mark.framework_only("torch")  # backend behaviour: once per backend, not per framework set
@pytest.mark.e2e_basic
@pytest.mark.requires("torch")
@pytest.mark.parametrize("environment", environments())
def test_tensor_values_are_taken_at_call_time(environment: str, isolated_env: Path) -> None:
    """Log ``t``, then ``t.add_(1)``: the old value lands."""
    import torch

    with e2e_framework.backend_environment(environment, project="tensors") as config:
        exp = _start(config, "tensors")
        t = torch.tensor(1.5)
        exp.log_metric("t", t, 0)
        t.add_(1)
        exp.log_metric("t", t, 1)
        t.add_(1)
        exp.log_metric("grad", torch.tensor([2.0], requires_grad=True) * 2, 0)
        with pytest.raises(TypeError, match="one-element tensor"):
            exp.log_metric("t", torch.ones(2), 2)
        tracelet.stop_logging()
        record = config.read(exp.runs[config.backend_name])
        assert record.metrics["t"] == [(0, 1.5), (1, 2.5)]
        assert record.metrics["grad"] == [(0, 4.0)]


#: Names tracelet's check accepts at its edges: dots inside a segment, a digit first, the
#: longest name. Each must land, as spelled, in every store (a name tracelet accepts and a
#: store refuses is a bug in the check: MLflow would refuse the whole batch it rides in).
ACCEPTED_EDGE_NAMES = ["a/..b", "a/b.", "a/.b", "v1.2/loss", "0", "A-b_c.d/e-f", "n" * 250]
#: Values every store takes (documented differences: ClearML keeps NaN and +-inf as 0, MLflow
#: keeps +-inf as +-1.7976931348623157e308).
ACCEPTED_EDGE_VALUES = [
    0.0,
    -0.0,
    5e-324,
    1.7976931348623157e308,
    -1e300,
    2**70,
    -(2**53),
    True,
    math.nan,
    math.inf,
    -math.inf,
]


@pytest.mark.e2e_floor
@pytest.mark.e2e_basic
@pytest.mark.parametrize("environment", environments())
def test_accepted_edge_names_land_as_spelled(environment: str, isolated_env: Path) -> None:
    with e2e_framework.backend_environment(environment, project="names") as config:
        expected = Expected(project="names", run_name="edge-names")
        exp = _start(config, "edge-names")
        for i, name in enumerate(ACCEPTED_EDGE_NAMES):
            expected.metric(exp, name, float(i), 0)
            expected.metric(exp, name, i + 0.5, 1)
        expected.params_(exp, {name: f"value-{i}" for i, name in enumerate(ACCEPTED_EDGE_NAMES)})
        for step, value in enumerate(ACCEPTED_EDGE_VALUES):
            exp.log_metric("edge/value", value, step)
        report = tracelet.stop_logging()
        assert report.ok, report.format()
        record = config.read(exp.runs[config.backend_name])
    values = record.metrics.pop("edge/value")
    assert_run_matches(expected, record)
    assert [s for s, _ in values] == list(range(len(ACCEPTED_EDGE_VALUES)))
    for (_, got), sent in zip(values, ACCEPTED_EDGE_VALUES, strict=True):
        want = float(sent)
        if environment == "clearml" and not math.isfinite(want):
            want = 0.0  # ClearML's documented difference: NaN and +-inf are stored as 0
        elif environment.startswith("mlflow") and math.isinf(want):
            want = math.copysign(sys.float_info.max, want)  # MLflow's: +-inf is stored as +-max float
        assert (math.isnan(got) and math.isnan(want)) or got == want, (sent, got)


def _log_one_run_to(
    backends: list[str], options: dict[str, Any], run_name: str, tmp_path: Path
) -> tuple[Expected, tracelet.Experiment, tracelet.DeliveryReport]:
    """Params (nested), 1000 points of two metrics, a tag and an artifact, to several stores at once."""
    expected = Expected(project="fanout", run_name=run_name)
    exp = tracelet.start_logging(
        exp_name=run_name, project="fanout", backend=backends, backend_options=options
    )
    expected.params_(exp, {"lr": 0.01, "model": {"depth": 4, "act": "relu"}})
    expected.tags_(exp, {"team": "vision"})
    for i in range(1000):
        expected.metric(exp, "train/loss", 1 / (i + 1), i)
        expected.metric(exp, "acc", i / 1000, i)
    artifact = tmp_path / "weights.bin"
    artifact.write_bytes(bytes(range(256)) * 64)
    expected.artifact(exp, artifact, "model")
    return expected, exp, tracelet.stop_logging()


@pytest.mark.e2e_comprehensive
@pytest.mark.e2e_together
@pytest.mark.requires("mlflow", "wandb", "clearml")
def test_all_three_backends_at_once(isolated_env: Path, tmp_path: Path) -> None:
    """The same run lands whole in mlflow, wandb and clearml."""
    envs = [e2e_framework.environments[n]() for n in ("mlflow", "wandb", "clearml")]
    for env in envs:
        env.setup()
    try:
        options = {e.backend: e.options() for e in envs}
        expected, exp, report = _log_one_run_to(
            ["mlflow", "wandb", "clearml"], options, "all-three", tmp_path
        )
        assert report.ok, report.format()
        for env in envs:
            assert_run_matches(expected, env.read(exp.runs[env.backend]))  # type: ignore[arg-type]
    finally:
        for env in envs:
            env.teardown()


@pytest.mark.e2e_floor
@pytest.mark.framework_only("torch")  # backend behaviour: once per backend, not per framework set
@pytest.mark.e2e_comprehensive
@pytest.mark.parametrize("environment", environments(BACKEND_ENVIRONMENTS))
def test_fan_out_to_a_backend_and_local(environment: str, isolated_env: Path, tmp_path: Path) -> None:
    """One run, two stores (this session's backend and ``local``): both hold everything, independently."""
    with e2e_framework.backend_environment(environment, project="fanout") as config:
        local = e2e_framework.environments["local"]()
        local.setup()
        try:
            backends = [config.backend_name, "local"]
            expected, exp, report = _log_one_run_to(backends, config.backend_options, "two-stores", tmp_path)
            assert report.ok, report.format()
            assert set(report.backends) == {config.backend_name, "local"}
            assert_run_matches(expected, config.read(exp.runs[config.backend_name]))
            assert_run_matches(expected, local.read(exp.runs["local"]))  # type: ignore[arg-type]
        finally:
            local.teardown()


@pytest.mark.e2e_floor
@pytest.mark.framework_only("torch")  # backend behaviour: once per backend, not per framework set
@pytest.mark.e2e_advanced
@pytest.mark.requires("mlflow")
def test_failing_backend_next_to_mlflow(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend whose every write raises: training finishes, mlflow holds everything, failures counted."""
    from tests.e2e.agent_backends import extra_backends_env

    monkeypatch.setenv("TRACELET_SYSTEM_METRICS", "0")  # the counts below are of what this test logs
    monkeypatch.setenv("TRACELET_EXTRA_BACKENDS", extra_backends_env())
    with e2e_framework.backend_environment("mlflow", project="failing") as config:
        expected = Expected(project="failing", run_name="with-broken")
        exp = tracelet.start_logging(
            exp_name="with-broken",
            project="failing",
            backend=["broken", "mlflow"],
            backend_options={"mlflow": config.backend_options["mlflow"]},
        )
        for i in range(500):
            expected.metric(exp, "loss", float(i), i)
        report = tracelet.stop_logging()
        assert report["mlflow"].ok
        assert report["mlflow"].delivered == 500
        assert report["broken"].failed == 500
        assert report["broken"].delivered == 0
        assert report["broken"].sent == report["broken"].failed + report["broken"].pending
        assert "disk on fire" in report["broken"].errors[0]
        assert report["broken"].dead_letter_path is not None  # refused, yet kept for a look and a replay
        assert len(Path(report["broken"].dead_letter_path).read_text().splitlines()) == 500
        assert_run_matches(expected, config.read(exp.runs["mlflow"]))

        monkeypatch.setenv("TRACELET_STRICT", "1")
        exp = tracelet.start_logging(
            backend=["broken", "mlflow"], backend_options={"mlflow": config.backend_options["mlflow"]}
        )
        exp.log_metric("loss", 1.0)
        with pytest.raises(tracelet.DeliveryError, match="broken"):
            tracelet.stop_logging()


def _read_eventually(config: BackendConfig, run_id: str, timeout: float = 90.0) -> Any:
    """Read a run that is still open; W&B writes its offline log lazily, so give it time."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return config.read(run_id)
        except (ValueError, FileNotFoundError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.e2e_floor
@pytest.mark.framework_only("torch")  # backend behaviour: once per backend, not per framework set
@pytest.mark.e2e_basic
@pytest.mark.requires("mlflow")
def test_mlflow_batches_with_log_batch(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Delivery uses log_batch with at most 1000 metrics per call, never one call per point.

    The calls happen in the delivery agent, so they are counted there (by a subclass of the
    real backend that writes each call's size to a file) and the points are read back from
    the store.
    """
    from tests.e2e.agent_backends import ENV_CALLS_FILE, extra_backends_env

    calls_file = isolated_env / "log_batch_calls.jsonl"
    monkeypatch.setenv("TRACELET_EXTRA_BACKENDS", extra_backends_env())
    monkeypatch.setenv(ENV_CALLS_FILE, str(calls_file))
    with e2e_framework.backend_environment("mlflow", project="batching") as config:
        exp = tracelet.start_logging(
            exp_name="batching",
            project="batching",
            backend="mlflow-counting",
            backend_options={"mlflow-counting": config.backend_options["mlflow"]},
        )
        for i in range(5000):
            exp.log_metric("loss", float(i), i)
        report = tracelet.stop_logging()
        assert report.ok
        calls = [json.loads(line) for line in calls_file.read_text().splitlines()]
        sizes = [c["metrics"] for c in calls]
        assert sum(sizes) == 5000
        assert max(sizes) <= 1000
        assert len(sizes) <= 10
        if os.environ.get("TRACELET_DELIVERY", "agent") == "agent":
            assert {c["pid"] for c in calls} != {os.getpid()}  # delivered by the agent, not the trainer
        record = config.read(exp.runs["mlflow-counting"])
        assert record.metrics["loss"] == [(i, float(i)) for i in range(5000)]


@pytest.mark.e2e_floor
@pytest.mark.e2e_basic
@pytest.mark.requires("mlflow")
def test_the_static_param_limit_is_the_installed_mlflows() -> None:
    """The trainer checks param lengths against a static table (it never imports MLflow): keep it true."""
    from mlflow.utils import validation

    from tracelet.backends.mlflow import MLflowBackend

    assert MLflowBackend().param_value_limit() == validation.MAX_PARAM_VAL_LENGTH


@pytest.mark.e2e_floor
@pytest.mark.e2e_basic
@pytest.mark.requires("clearml")
def test_clearml_private_settings_still_exist() -> None:
    """tracelet's quiet ClearML defaults rely on private attributes; fail loudly when ClearML renames them."""
    from clearml import Task

    from tracelet.backends import clearml as backend

    for attr in backend.PRIVATE_TASK_ATTRIBUTES:
        assert hasattr(Task, attr), f"clearml.Task.{attr} is gone: update tracelet.backends.clearml"


@pytest.mark.e2e_floor
@pytest.mark.framework_only("torch")  # backend behaviour: once per backend, not per framework set
@pytest.mark.e2e_basic
@pytest.mark.requires("mlflow")
@pytest.mark.platform_only("linux", "darwin")
def test_mlflow_server_leaves_no_process(tmp_path: Path) -> None:
    server = own_mlflow_server(tmp_path)
    assert server.group_alive()
    server.stop()
    assert not server.group_alive()


@pytest.mark.e2e_floor
@pytest.mark.e2e_basic
@pytest.mark.parametrize("backend", ["mlflow", "wandb", "clearml"])
def test_backend_availability_matches_install_set(
    backend: str, install_set: frozenset[str], isolated_env: Path
) -> None:
    """An absent backend raises BackendNotInstalledError naming its extra; a present one is importable."""
    if backend in install_set:
        cls = tracelet.backends.registry.get_backend_class(backend)
        cls.ensure_installed()
        assert cls.is_installed()
    else:
        with pytest.raises(
            tracelet.BackendNotInstalledError, match=rf'pip install "tracelet\[{EXTRAS[backend]}\]"'
        ) as err:
            tracelet.start_logging(backend=backend)
        assert isinstance(err.value, ImportError)
        assert err.value.name == backend
        assert tracelet.get_active_experiment() is None


@pytest.mark.e2e_floor
@pytest.mark.e2e_basic
def test_import_tracelet_imports_no_optional_package() -> None:
    code = (
        "import sys, json, tracelet, tracelet.testing; "
        f"print(json.dumps([m for m in {OPTIONAL_PACKAGES!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


@pytest.mark.e2e_floor
@pytest.mark.e2e_basic
def test_doctor_reports_exactly_the_install_set(install_set: frozenset[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tracelet", "doctor", "--json"], capture_output=True, text=True, check=True
    ).stdout
    report = json.loads(out)
    installed = {
        n for n, v in {**report["backends"], **report["integrations"]}.items() if v and v != "built-in"
    }
    assert installed & set(OPTIONAL_PACKAGES) == set(install_set)


EXIT_SCRIPT = """
import json, sys, tracelet
options = json.loads(sys.argv[1])
exp = tracelet.start_logging(exp_name="forgotten", project="exit", backend=options["backend"],
                             backend_options=options["backend_options"])
for i in range(2000):
    exp.log_metric("loss", 1.0 / (i + 1), i)
print("RUNS", json.dumps(exp.runs), flush=True)
# no stop_logging(): tracelet's exit hook must flush before the backend's own hooks close the run
"""


@pytest.mark.e2e_floor
@pytest.mark.framework_only("torch")  # backend behaviour: once per backend, not per framework set
@pytest.mark.e2e_advanced
@pytest.mark.parametrize("environment", environments())
def test_forgotten_stop_is_flushed_before_the_backend_exits(environment: str, isolated_env: Path) -> None:
    with e2e_framework.backend_environment(environment, project="exit") as config:
        argument = json.dumps({"backend": config.backend_name, "backend_options": config.backend_options})
        done = subprocess.run(
            [sys.executable, "-c", EXIT_SCRIPT, argument], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        line = next(x for x in done.stdout.splitlines() if x.startswith("RUNS "))  # stores print too
        run_id = json.loads(line.removeprefix("RUNS "))[config.backend_name]
        record = config.read(run_id)
        assert record.metrics["loss"] == [(i, 1.0 / (i + 1)) for i in range(2000)]
        assert record.status == "finished"


#: Written into the test repository's remote URL; it must land nowhere.
GIT_SECRET = "s3cr3t-t0ken-8f2a"


def _git_repo(path: Path) -> dict[str, str]:
    """A real repository with a credential in its remote and an uncommitted change."""
    path.mkdir()

    def git(*args: str) -> str:
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid"}
        env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid")
        return subprocess.run(
            ["git", *args], cwd=path, env=env, check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q", "-b", "feature/e2e")
    git("remote", "add", "origin", f"https://tracelet-bot:{GIT_SECRET}@git.example.invalid/org/repo.git")
    (path / "train.py").write_text("print('v1')\n")
    git("add", "train.py")
    git("commit", "-q", "-m", "first")
    (path / "train.py").write_text("print('v2')\n")  # tracked and modified: dirty
    return {"commit": git("rev-parse", "HEAD")}


@pytest.mark.e2e_floor
@pytest.mark.e2e_basic
@pytest.mark.parametrize("environment", environments())
def test_git_and_environment_are_recorded_without_credentials(
    environment: str,
    isolated_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Commit, branch, dirty flag, the remote without its token, and the versions, read back from the store.

    The token in the remote URL is then searched for in every file the store, the spool
    and the logs (tracelet's at DEBUG, the agent's stderr) hold: it is in none of them.
    """
    import importlib.metadata
    import logging
    import platform

    import torch  # imported before the run starts, as training code does: CUDA is read from it

    repo = _git_repo(tmp_path / "repo")
    monkeypatch.chdir(tmp_path / "repo")
    monkeypatch.setenv("TRACELET_LOG_LEVEL", "DEBUG")  # the agent logs at DEBUG too, to stderr
    caplog.set_level(logging.DEBUG, logger="tracelet")
    with e2e_framework.backend_environment(environment, project="provenance") as config:
        env = config.store
        exp = _start(config, "git-run")
        exp.log_metric("loss", 0.5, 0)
        assert exp.flush(30)
        in_flight = files_holding([GIT_SECRET], [tmp_path / "spool"])
        report = tracelet.stop_logging()
        assert report.ok, report.format()
        record = config.read(exp.runs[config.backend_name])
        leaked = {**in_flight, **files_holding([GIT_SECRET], [*env.stored_roots(), tmp_path / "spool"])}
    fields = record.system_tags
    assert fields["tracelet.git.commit"] == repo["commit"]
    assert fields["tracelet.git.branch"] == "feature/e2e"
    assert fields["tracelet.git.dirty"] == "true"
    assert fields["tracelet.git.remote"] == "https://git.example.invalid/org/repo.git"
    assert fields["tracelet.python"] == platform.python_version()
    assert fields["tracelet.platform"] == platform.platform()
    assert fields["tracelet.torch"] == importlib.metadata.version("torch")
    assert fields.get("tracelet.cuda") == torch.version.cuda  # None for a CPU build: no field
    assert record.params == {}, "tracelet's own fields are kept apart from the user's params"
    assert record.tags == {}
    if isinstance(env, MLflowEnvironment):
        tags = env.client().get_run(record.run_id).data.tags
        assert tags["mlflow.source.git.commit"] == repo["commit"]
        assert tags["mlflow.source.git.repoURL"] == "https://git.example.invalid/org/repo.git"
    assert leaked == {}
    assert "delivered" in caplog.text  # the log was captured, and holds no secret
    out, err = capfd.readouterr()
    assert GIT_SECRET not in caplog.text + out + err


@pytest.mark.e2e_floor
@pytest.mark.e2e_basic
@pytest.mark.parametrize("environment", environments())
def test_a_run_that_logs_nothing_still_records_its_git_state(
    environment: str, isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The git state is read while the store opens the run; a store that writes it with the
    run's first batch (MLflow) writes it at the close when nothing was logged."""
    repo = _git_repo(tmp_path / "repo")
    monkeypatch.chdir(tmp_path / "repo")
    with e2e_framework.backend_environment(environment, project="empty-run") as config:
        exp = _start(config, "nothing-logged")
        report = tracelet.stop_logging()
        assert report.ok, report.format()
        record = config.read(exp.runs[config.backend_name])
    assert record.system_tags["tracelet.git.commit"] == repo["commit"]
    assert record.system_tags["tracelet.git.branch"] == "feature/e2e"
    assert record.metrics == {}

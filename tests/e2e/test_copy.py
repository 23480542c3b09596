"""``tracelet copy``: a run moved between real stores, read back from the target and compared point by point.

Every ordered pair of the four stores runs in ``e2e-all-torch`` (``e2e_together``: the only cell where
all of them are installed). The copy runs as a user runs it: the ``tracelet copy`` command, in a
process of its own.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import tracelet
from tests.e2e.environments import BackendEnvironment, child_env
from tests.e2e.framework import e2e_framework
from tests.e2e.params import BACKEND_ENVIRONMENTS, environments
from tracelet.testing import read_run
from tracelet.testing.equivalence import compare

STORES = ("local", "mlflow", "wandb", "clearml")
PAIRS = [(a, b) for a in STORES for b in STORES if a != b]
ALL_THREE = ("mlflow", "wandb", "clearml")


def _pair(source: str, target: str) -> Any:
    """Every pair needs all three packages: the pairs run together in ``e2e-all-torch``, while a single
    store's cell copies local to its store and back (below)."""
    return pytest.param(source, target, marks=pytest.mark.requires(*ALL_THREE), id=f"{source}-to-{target}")


@contextmanager
def _store(name: str) -> Iterator[BackendEnvironment]:
    env = e2e_framework.environments[name]()
    env.setup()
    try:
        yield env
    finally:
        env.teardown()


def _log_source_run(env: BackendEnvironment, tmp_path: Path) -> str:
    """A run with nested params, two keys (one with steps going backwards), a tag, an artifact and two
    images."""
    import numpy as np

    exp = tracelet.start_logging(
        exp_name="to-copy",
        project="copies",
        backend=env.backend,
        backend_options={env.backend: env.options()},
    )
    exp.log_params({"lr": 0.01, "model": {"depth": 4, "act": "relu"}})
    exp.set_tags({"team": "vision"})
    for i in range(600):
        exp.log_metric("train/loss", 1 / (i + 1), i)
        exp.log_metric("val/acc", i / 600, 599 - i)  # backwards: order is kept, never sorted
    weights = tmp_path / "weights.bin"
    weights.write_bytes(bytes(range(256)) * 64)
    exp.log_artifact(weights, "model")
    for step in (0, 5):
        exp.log_image("samples/grid", np.full((6, 8, 3), 40 * step, dtype=np.uint8), step)
    report = tracelet.stop_logging()
    assert report.ok, report.format()
    run_id = exp.runs[env.backend]
    assert run_id is not None
    return run_id


def _source_address(env: BackendEnvironment, run_id: str) -> str:
    options = env.reader_options()
    if env.backend == "local":
        return f"local:{options['root']}#{run_id}"
    if env.backend == "mlflow":
        return f"mlflow:{options['tracking_uri']}#{run_id}"
    if env.backend == "wandb":  # the run's own folder, as `wandb sync` takes it
        (folder,) = {p.parent for p in env.root.rglob(f"run-{run_id}.wandb")}
        return f"wandb:{folder}"
    (session,) = [p.parent for p in env.root.rglob("task.json") if json.loads(p.read_text())["id"] == run_id]
    return f"clearml:{session}"


def _target_address(env: BackendEnvironment) -> str:
    if env.backend == "local":
        return f"local:{env.reader_options()['root']}"
    if env.backend == "mlflow":
        return f"mlflow:{env.reader_options()['tracking_uri']}"
    if env.backend == "wandb":
        return f"wandb:{env.root}"
    return f"clearml:{env.root / 'cache'}"


def _copy(source: str, target: str, cwd: Path, *extra: str) -> tuple[int, list[dict[str, Any]], str]:
    done = subprocess.run(
        [sys.executable, "-m", "tracelet", "copy", source, target, "--json", *extra],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, lines, done.stderr


@pytest.mark.e2e_together
@pytest.mark.requires("torch")  # numpy, for the images, comes with it
@pytest.mark.parametrize(("source", "target"), [_pair(a, b) for a, b in PAIRS])
def test_a_run_copies_between_every_pair_of_stores_exactly_once(
    source: str, target: str, isolated_env: Path, tmp_path: Path
) -> None:
    """Copied, the target holds what the source holds (only inherent differences forgiven); again, nothing."""
    with _store(source) as src, _store(target) as dst:
        run_id = _log_source_run(src, tmp_path)
        original = src.read(run_id)
        code, lines, stderr = _copy(_source_address(src, run_id), _target_address(dst), tmp_path)
        assert code == 0, stderr
        (result,) = lines
        assert result["verified"] is True
        assert result["points"] == 1200, result
        assert result["new_points"] == 1200, result
        assert result["artifacts"] == 1, result
        assert result["source"] == _source_address(src, run_id)
        new_id = result["target"].rpartition("#")[2]
        assert result["target"].startswith(_target_address(dst)), result["target"]
        assert dst.run_ids() == [new_id], "the target holds exactly the one copied run"
        copied = dst.read(new_id)
        # read back here, independently of the command's own verification
        assert compare(original, copied) == []
        assert [(i.name, i.step, i.width, i.height) for i in copied.images] == [
            ("samples/grid", 0, 8, 6),
            ("samples/grid", 5, 8, 6),
        ]
        assert (copied.project, copied.run_name, copied.status) == ("copies", "to-copy", "finished")
        assert copied.metrics["val/acc"][0] == (599, 0.0), "a key's order is the source's, not sorted"
        assert copied.system_tags["tracelet.copied_from"] == result["source"]
        assert copied.artifact("model/weights.bin").sha256 == original.artifact("model/weights.bin").sha256

        code, again, stderr = _copy(_source_address(src, run_id), _target_address(dst), tmp_path)
        assert code == 0, stderr
        assert again[0]["new_points"] == 0, again
        assert again[0]["target"] == result["target"], again
        assert dst.run_ids() == [new_id], "copying again added a run"
        assert compare(original, dst.read(new_id)) == []


@pytest.mark.e2e_floor
@pytest.mark.framework_only("torch")  # store behaviour: once per store, not per framework set
@pytest.mark.parametrize("environment", environments(BACKEND_ENVIRONMENTS))
def test_local_to_this_store_and_back(environment: str, isolated_env: Path, tmp_path: Path) -> None:
    """A local run copied to this session's store, and from there to a new local store: equal throughout."""
    with _store("local") as local, e2e_framework.backend_environment(environment, project="copies") as config:
        store = config.store
        run_id = _log_source_run(local, tmp_path)
        original = local.read(run_id)
        code, lines, stderr = _copy(_source_address(local, run_id), _target_address(store), tmp_path)
        assert code == 0, stderr
        there_id = lines[0]["target"].rpartition("#")[2]
        assert compare(original, store.read(there_id)) == []
        back = tmp_path / "back"
        code, lines, stderr = _copy(_source_address(store, there_id), f"local:{back}", tmp_path)
        assert code == 0, stderr
        assert lines[0]["verified"] is True
        returned = read_run("local", lines[0]["target"].rpartition("#")[2], root=back)
    assert compare(original, returned) == []
    assert (returned.project, returned.run_name, returned.status) == ("copies", "to-copy", "finished")


def _native_mlflow_run(env: BackendEnvironment, tmp_path: Path) -> str:
    """A run as MLflow's own client writes it: metrics with steps and times, params, tags, an artifact."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env.reader_options()["tracking_uri"])
    experiment = client.get_experiment_by_name("native") or client.get_experiment(
        client.create_experiment("native")
    )
    run = client.create_run(experiment.experiment_id, run_name="by-mlflow")
    start = 1_700_000_000_000
    points = [Metric("loss", 1 / (i + 1), start + 10 * i, i) for i in range(300)]
    points += [Metric("eval/acc", i / 30, start + 100 * i, 30 - i) for i in range(30)]
    for first in range(0, len(points), 1000):
        client.log_batch(run.info.run_id, metrics=points[first : first + 1000])
    client.log_batch(run.info.run_id, params=[Param("lr", "0.01")], tags=[RunTag("team", "nlp")])
    model = tmp_path / "model.bin"
    model.write_bytes(b"\x00\x01" * 5000)
    client.log_artifact(run.info.run_id, str(model), "weights")
    client.set_terminated(run.info.run_id, "FINISHED")
    # a nested run: no reader carries it, so the copy must say it is left behind
    child = client.create_run(
        experiment.experiment_id, run_name="child", tags={"mlflow.parentRunId": run.info.run_id}
    )
    client.set_terminated(child.info.run_id, "FINISHED")
    return str(run.info.run_id)


def _native_wandb_run(env: BackendEnvironment, tmp_path: Path) -> str:
    """A run as W&B's own SDK writes it offline: rows by ``step=``, a config, tags, a saved file."""
    import wandb

    run = wandb.init(
        project="native",
        name="by-wandb",
        mode="offline",
        dir=str(env.root),
        config={"lr": 0.01, "layers": 4},
        tags=["nlp"],
        reinit="create_new",
    )
    for i in range(300):
        run.log({"loss": 1 / (i + 1), **({"eval/acc": i / 300} if i % 10 == 0 else {})}, step=i)
    # a table: no reader carries it, so the copy must say it is left behind
    run.log({"preds": wandb.Table(columns=["x", "y"], data=[[1, 2], [3, 4]])}, step=300)
    model = Path(run.dir) / "model.bin"
    model.write_bytes(b"\x00\x01" * 5000)
    run.save(str(model), base_path=run.dir, policy="now")
    # two W&B Artifacts of W&B's own: their files wait in its staging cache until synced; the second
    # one's is gone from there, as after a sync, so the copy must say it is left behind
    staged = []
    for name in ("checkpoint", "synced"):
        file = tmp_path / f"{name}.pt"
        file.write_bytes(name.encode() * 1000)
        artifact = wandb.Artifact(name, type="model")
        artifact.add_file(str(file), name=f"{name}/{file.name}")
        run.log_artifact(artifact)
        staged += [Path(entry.local_path) for entry in artifact.manifest.entries.values()]
    run.finish()
    # finish() returns before wandb-core has flushed the run's log to disk (tracelet's W&B backend
    # waits for the exit record; a user's script does not): wait for it as `wandb sync` would need
    deadline = time.monotonic() + 60
    while env.read(str(run.id)).status == "running":
        assert time.monotonic() < deadline, "W&B never wrote the run's exit record"
        time.sleep(0.1)
    synced = [file for file in staged if "synced" in file.read_bytes().decode(errors="replace")]
    assert len(synced) == 1, staged
    synced[0].unlink()
    return str(run.id)


@pytest.mark.e2e_floor
@pytest.mark.framework_only("torch")
@pytest.mark.parametrize("environment", environments(["mlflow", "wandb"]))
def test_a_run_of_the_stores_own_client_copies_to_local_and_back(
    environment: str, isolated_env: Path, tmp_path: Path
) -> None:
    """Runs tracelet never wrote: read as the store holds them, copied to local, and from there back."""
    with e2e_framework.backend_environment(environment, project="native") as config:
        store = config.store
        write = _native_mlflow_run if environment == "mlflow" else _native_wandb_run
        run_id = write(store, tmp_path)
        native = store.read(run_id)
        assert sum(map(len, native.metrics.values())) == 330, native.metrics.keys()
        local = tmp_path / "local"
        code, lines, stderr = _copy(_source_address(store, run_id), f"local:{local}", tmp_path)
        assert code == 0, stderr
        left_behind = {
            "mlflow": ["MLflow nested runs (runs whose parent is this one): 1"],
            "wandb": [
                "W&B table-file values ('preds'): 1",
                "W&B artifact files no longer on disk ('synced'): 1",
            ],
        }[environment]
        assert lines[0]["not_copied"] == left_behind, lines[0]
        assert all(line in stderr for line in left_behind)  # said, not only in --json
        if environment == "wandb":  # the Artifact whose file is still staged is read, and copied
            assert {a.path for a in native.artifacts} >= {"model.bin", "checkpoint/checkpoint.pt"}
        copied = read_run("local", lines[0]["target"].rpartition("#")[2], root=local)
        assert compare(native, copied) == []
        if environment == "mlflow":  # MLflow keeps each point's time: so does the copy
            assert copied.timestamps["loss"][:2] == [1_700_000_000.0, 1_700_000_000.01]
        code, lines, stderr = _copy(
            f"local:{local}#{lines[0]['target'].rpartition('#')[2]}", _target_address(store), tmp_path
        )
        assert code == 0, stderr
        back = store.read(lines[0]["target"].rpartition("#")[2])
    assert compare(native, back) == []
    assert (back.project, back.run_name) == ("native", native.run_name)


def _big_local_run(local: BackendEnvironment, points: int) -> str:
    exp = tracelet.start_logging(
        exp_name="big",
        project="copies",
        backend="local",
        backend_options={"local": {"root": local.reader_options()["root"]}},
    )
    exp.log_params({"lr": 0.01})
    for i in range(points):
        exp.log_metric(f"k{i % 10}", math.sin(0.001 * i), i // 10)
    report = tracelet.stop_logging()
    assert report.ok, report.format()
    run_id = exp.runs["local"]
    assert run_id is not None
    return run_id


@pytest.mark.e2e_together
@pytest.mark.requires(*ALL_THREE)
@pytest.mark.parametrize("target", ["local", "mlflow", "wandb", "clearml"])
def test_a_copy_killed_halfway_then_run_again_lands_every_point_once(
    target: str, isolated_env: Path, tmp_path: Path
) -> None:
    """The copier's process group SIGKILLed after its first batch: run again, the target ends with one
    run holding every point once (MLflow and local resume it; W&B and ClearML copy it again)."""
    points = 100_000
    with _store("local") as src, _store(target) as dst:
        run_id = _big_local_run(src, points)
        source, into = _source_address(src, run_id), _target_address(dst)
        copier = subprocess.Popen(
            [sys.executable, "-m", "tracelet", "copy", source, into, "--json"],
            cwd=tmp_path,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own group: the store's helpers (wandb-core) die with it
        )
        assert copier.stderr is not None
        for line in copier.stderr:  # the first progress line comes after the first batch is stored
            if line.startswith("copied "):
                os.killpg(copier.pid, signal.SIGKILL)
                break
        copier.wait(timeout=60)
        assert copier.returncode == -signal.SIGKILL
        (partial,) = dst.run_ids()
        held = sum(map(len, dst.read(partial).metrics.values())) if dst.backend != "wandb" else None
        if held is not None:  # a W&B run cut short may not read at all: it is removed, not read
            # ClearML's offline reporter writes its points when the task closes: a killed copy's session
            # holds the run and none of them; the other stores hold the batches sent before the kill
            low = 0 if dst.backend == "clearml" else 1
            assert low <= held < points, f"the kill did not land halfway: the target held {held} points"

        code, lines, stderr = _copy(source, into, tmp_path)
        assert code == 0, stderr
        (copied_id,) = dst.run_ids()
        record = dst.read(copied_id)
        expected = src.read(run_id)
    assert compare(expected, record) == []  # every point, once, in order
    assert lines[0]["verified"] is True
    if target in ("local", "mlflow"):
        assert "resuming the unfinished copy" in stderr
        assert copied_id == partial
        assert held is not None
        assert lines[0]["new_points"] == points - held
    else:
        assert "removed, copied again" in stderr
        assert lines[0]["new_points"] == points

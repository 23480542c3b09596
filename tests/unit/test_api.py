"""The public API: validation on the caller's thread, lifecycle, configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tracelet
from tests.unit.fakes import RunView, all_runs, run_view
from tracelet.events import Artifact, Image, Metric, Params, Status, Tags
from tracelet.testing import read_run

pytestmark = pytest.mark.usefixtures("delivery_mode")


def memory_run(**kwargs: object) -> tuple[tracelet.Experiment, RunView]:
    exp = tracelet.start_logging(exp_name="run", project="proj", backend="memory", **kwargs)  # type: ignore[arg-type]
    return exp, run_view(exp.runs["memory"])


def test_names_and_mapping_reach_the_backend() -> None:
    exp, backend = memory_run(config={"lr": 0.1, "model": {"depth": 3}}, tags={"team": "a"})
    assert exp.runs == {"memory": backend.run_id}
    assert (backend.project, backend.run_name) == ("proj", "run")
    assert backend.system_tags["tracelet.version"] == tracelet.__version__
    tracelet.stop_logging()
    assert backend.events[0] == Params({"lr": "0.1", "model/depth": "3"})
    assert backend.events[1] == Tags({"team": "a"}, system=False)
    assert backend.status == "finished"


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("", ValueError),
        ("a b", ValueError),
        ("/x", ValueError),
        ("a//b", ValueError),
        ("a/", ValueError),
        ("..", ValueError),
        ("a/../b", ValueError),
        ("a/./b", ValueError),
        ("a/..", ValueError),
        ("lösung", ValueError),
        ("x" * 251, ValueError),
        ("tracelet/step", ValueError),
        (3, TypeError),
    ],
)
def test_bad_metric_names_raise_naming_the_metric(name: object, error: type[Exception]) -> None:
    exp, backend = memory_run()
    with pytest.raises(error, match="metric name"):
        exp.log_metric(name, 1.0)  # type: ignore[arg-type]
    tracelet.stop_logging()
    assert backend.events == []


def test_names_with_dots_inside_a_segment_are_names() -> None:
    """Only whole '.' and '..' segments are paths; dots inside a segment are ordinary characters."""
    exp, backend = memory_run()
    names = ["a/..b", "a/b.", "a/.b", "v1.2/loss", "x" * 250]
    for name in names:
        exp.log_metric(name, 1.0, 0)
    tracelet.stop_logging()
    assert [e.name for e in backend.events if isinstance(e, Metric)] == names


@pytest.mark.parametrize("value", ["1.0", None, [1.0], {"a": 1}, 1j])
def test_bad_values_raise_naming_the_argument_and_type(value: object) -> None:
    exp, _ = memory_run()
    with pytest.raises(TypeError, match=rf"metric 'loss': value must be .*not {type(value).__name__}"):
        exp.log_metric("loss", value)


@pytest.mark.parametrize(("iteration", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_iterations(iteration: object, error: type[Exception]) -> None:
    exp, _ = memory_run()
    with pytest.raises(error, match="iteration"):
        exp.log_metric("loss", 1.0, iteration)  # type: ignore[arg-type]


def test_accepted_values_and_the_per_key_counter() -> None:
    np = pytest.importorskip("numpy")
    exp, backend = memory_run()
    exp.log_metric("a", 1)
    exp.log_metric("a", True)
    exp.log_metric("a", np.float32(0.5))
    exp.log_metric("a", np.int64(7), 10)
    exp.log_metric("a", 2.0)  # one past the key's previous step
    exp.log_metric("b", 3.0)  # each key has its own counter
    tracelet.stop_logging()
    points = [(e.name, e.step, e.value) for e in backend.events if isinstance(e, Metric)]
    assert points == [
        ("a", 0, 1.0),
        ("a", 1, 1.0),
        ("a", 2, 0.5),
        ("a", 10, 7.0),
        ("a", 11, 2.0),
        ("b", 0, 3.0),
    ]


def test_log_metrics_is_all_or_nothing() -> None:
    exp, backend = memory_run()
    with pytest.raises(TypeError, match="metric 'bad'"):
        exp.log_metrics({"good": 1.0, "bad": "x"}, iteration=0)
    exp.log_metrics({"x": 1.0, "y": 2.0}, iteration=4)
    tracelet.stop_logging()
    assert len(backend.events) == 2  # the refused call left nothing
    assert [(e.name, e.step) for e in backend.metrics] == [("x", 4), ("y", 4)]


def test_params_are_immutable_and_bounded() -> None:
    exp, backend = memory_run(backend_options={"memory": {"limit": 10}})
    exp.log_params({"a": 1, "nested": {"b": "x"}})
    exp.log_params({"a": 1})  # same value again: accepted, not re-sent
    with pytest.raises(ValueError, match="param 'a' was already logged as '1'"):
        exp.log_params({"c": 2, "a": 2})
    with pytest.raises(ValueError, match="param 'long' is 11 characters long; memory accepts at most 10"):
        exp.log_params({"long": "x" * 11})
    with pytest.raises(ValueError, match="invalid param name 'bad key'"):
        exp.log_params({"bad key": 1})
    tracelet.stop_logging()
    assert [e for e in backend.events if isinstance(e, Params)] == [Params({"a": "1", "nested/b": "x"})]


def test_tags_validate_keys() -> None:
    exp, _ = memory_run()
    with pytest.raises(ValueError, match="invalid tag name 'a=b'"):
        exp.set_tags({"a=b": "c"})
    with pytest.raises(ValueError, match="reserved"):
        exp.set_tags({"tracelet.version": "x"})


def test_artifact_bytes_are_taken_at_call_time(tmp_path: Path) -> None:
    exp, backend = memory_run()
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"epoch-1")
    exp.log_artifact(ckpt, "checkpoints")
    ckpt.write_bytes(b"epoch-2, overwritten")
    folder = tmp_path / "dir"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "b.txt").write_text("bb")
    exp.log_artifact(folder)
    exp.flush(5)
    arts = [e for e in backend.events if isinstance(e, Artifact)]
    assert [a.artifact_path for a in arts] == ["checkpoints/model.pt", "a.txt", "sub/b.txt"]
    assert Path(arts[0].local_path).read_bytes() == b"epoch-1"
    assert arts[0].size == 7
    tracelet.stop_logging()


def test_artifact_errors_name_the_argument(tmp_path: Path) -> None:
    exp, _ = memory_run()
    with pytest.raises(FileNotFoundError, match=r"log_artifact: path .*missing"):
        exp.log_artifact(tmp_path / "missing")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="artifact_path must be a relative path"):
        exp.log_artifact(tmp_path / "f", "../escape")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no files"):
        exp.log_artifact(tmp_path / "empty")


def test_images_are_encoded_and_checked() -> None:
    np = pytest.importorskip("numpy")
    exp, backend = memory_run()
    exp.log_image("sample", np.zeros((4, 6), dtype=np.uint8))
    exp.log_image("sample", np.ones((5, 7, 3)))
    with pytest.raises(ValueError, match=r"image must have shape"):
        exp.log_image("sample", np.zeros((2, 2, 2)))
    with pytest.raises(TypeError, match="image must be a numpy array"):
        exp.log_image("sample", "not an image")
    tracelet.stop_logging()
    images = [(e.name, e.step, e.width, e.height) for e in backend.events if isinstance(e, Image)]
    assert images == [("sample", 0, 6, 4), ("sample", 1, 7, 5)]


def test_second_start_raises_and_stop_is_idempotent() -> None:
    exp, _ = memory_run()
    with pytest.raises(tracelet.ExperimentActiveError, match="still active"):
        tracelet.start_logging(backend="memory")
    assert tracelet.get_active_experiment() is exp
    first = tracelet.stop_logging()
    assert exp.stop() is first
    assert tracelet.get_active_experiment() is None
    with pytest.raises(tracelet.TraceletError, match="is stopped"):
        exp.log_metric("loss", 1.0)
    with pytest.raises(RuntimeError, match="no active tracelet experiment"):
        tracelet.stop_logging()


def test_context_manager_marks_failures() -> None:
    with pytest.raises(ZeroDivisionError), tracelet.start_logging(backend="memory"):
        _ = 1 / 0
    assert all_runs()[-1].status == "failed"
    with tracelet.start_logging(backend="memory") as exp:
        exp.log_metric("x", 1.0)
    assert all_runs()[-1].status == "finished"
    with pytest.raises(KeyboardInterrupt), tracelet.start_logging(backend="memory"):
        raise KeyboardInterrupt
    assert all_runs()[-1].status == "killed"


def test_environment_fills_what_the_call_leaves_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACELET_BACKEND", "memory, local")
    monkeypatch.setenv("TRACELET_PROJECT", "env-project")
    monkeypatch.setenv("TRACELET_EXPERIMENT_NAME", "env-run")
    exp = tracelet.start_logging()
    assert list(exp.runs) == ["memory", "local"]
    assert (exp.project, exp.name) == ("env-project", "env-run")
    tracelet.stop_logging()
    exp = tracelet.start_logging(exp_name="call", project="p", backend="local")
    assert list(exp.runs) == ["local"]
    assert exp.name == "call"
    tracelet.stop_logging()


def test_default_backend_is_local_and_lands_on_disk() -> None:
    exp = tracelet.start_logging(exp_name="default-run")
    exp.log_metric("loss", 0.5)
    tracelet.stop_logging()
    record = read_run("local", exp.runs["local"])  # type: ignore[arg-type]
    assert record.metrics == {"loss": [(0, 0.5)]}
    assert (record.project, record.run_name, record.status) == ("default", "default-run", "finished")


def test_backend_options_are_checked() -> None:
    with pytest.raises(TypeError, match=r"backend_options\['memory'\] got unknown key\(s\) \['colour'\]"):
        tracelet.start_logging(backend="memory", backend_options={"memory": {"colour": "red"}})
    with pytest.raises(TypeError, match="not one of the selected backends"):
        tracelet.start_logging(backend="memory", backend_options={"mlflow": {}})
    assert tracelet.get_active_experiment() is None


@pytest.mark.parametrize(
    ("var", "value", "match"),
    [
        ("TRACELET_STRICT", "maybe", "TRACELET_STRICT='maybe' is not a boolean"),
        ("TRACELET_FLUSH_TIMEOUT", "soon", "TRACELET_FLUSH_TIMEOUT='soon'"),
    ],
)
def test_bad_environment_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, match: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=match):
        tracelet.start_logging(backend="memory")


def test_log_level_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    monkeypatch.setenv("TRACELET_LOG_LEVEL", "debug")
    tracelet.start_logging(backend="memory")
    assert logging.getLogger("tracelet").level == logging.DEBUG
    tracelet.stop_logging()
    logging.getLogger("tracelet").setLevel(logging.NOTSET)


def test_non_zero_rank_does_not_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    exp = tracelet.start_logging(backend="memory")
    exp.log_metric("loss", 1.0)
    assert exp.runs == {}
    assert all_runs() == []
    assert tracelet.get_active_experiment() is None
    # the same training script runs on every rank: its stop_logging() closes the do-nothing run
    report = tracelet.stop_logging()
    assert report.backends == {}
    assert exp.closed
    with pytest.raises(RuntimeError, match="no active tracelet experiment"):
        tracelet.stop_logging()


def test_figure_like_objects_are_rendered_with_savefig() -> None:
    """A matplotlib figure is anything with ``savefig`` and ``canvas``; its PNG is used as is."""
    np = pytest.importorskip("numpy")
    from tracelet.images import encode_png

    class Figure:
        canvas = object()

        def savefig(self, buffer: Any, format: str) -> None:
            assert format == "png"
            buffer.write(encode_png(np.zeros((3, 9, 4), dtype=np.uint8)))

    exp, backend = memory_run()
    exp.log_image("plot", Figure(), 7)
    tracelet.stop_logging()
    images = [e for e in backend.events if isinstance(e, Image)]
    assert [(i.name, i.step, i.width, i.height) for i in images] == [("plot", 7, 9, 3)]


@pytest.mark.usefixtures("delivery_mode")
def test_show_status_reaches_the_store_in_order_and_the_run_stays_open() -> None:
    exp, backend = memory_run()
    exp.log_metric("fit", 1.0, 0)
    exp.show_status("failed")
    with pytest.raises(ValueError, match="status must be one of"):
        exp.show_status("done")
    exp.log_metric("test", 2.0, 0)  # logged after the status: it still lands
    assert tracelet.stop_logging(status="finished").ok
    kinds = [type(e).__name__ for e in backend.events if not isinstance(e, (Params, Tags))]
    assert kinds == ["Metric", "Status", "Metric"]
    assert Status("failed") in backend.events
    assert backend.status == "finished"  # the close has the last word


def test_show_status_shows_in_the_local_store_while_the_run_is_open() -> None:
    exp = tracelet.start_logging(backend="local")
    exp.log_metric("x", 1.0, 0)
    exp.show_status("failed")
    assert exp.flush(10)
    assert read_run("local", exp.runs["local"]).status == "failed"  # type: ignore[arg-type]
    exp.log_metric("x", 2.0, 1)
    assert tracelet.stop_logging().ok
    record = read_run("local", exp.runs["local"])  # type: ignore[arg-type]
    assert (record.status, record.metrics["x"]) == ("finished", [(0, 1.0), (1, 2.0)])

"""Bad and edge inputs to the public API: each row of ``docs/bad-input.md`` is one test here.

The table in the docs is generated from :data:`CASES` (``python -m tests.unit.test_bad_input``
prints it); ``test_the_docs_table_is_this_table`` fails when the two differ, so the
documented outcome is always the tested one. Rows that need numpy or torch run in the
E2E suite (``tests/e2e/test_bad_input.py``), where those packages are installed.

Every row runs against a real run (the ``memory`` fake records what the store got):
an input that raises must raise on the caller's thread, naming what was wrong, and
leave nothing of that call in the store; an input that lands is read back.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import tracelet
from tests.unit.fakes import run_view
from tracelet.events import Metric, Params, Tags

DOCS = Path(__file__).resolve().parents[2] / "docs" / "bad-input.md"
BEGIN, END = "<!-- begin: generated from tests/unit/test_bad_input.py -->", "<!-- end -->"


@dataclass(frozen=True)
class Case:
    """One row: what is called, with what, and what happens."""

    id: str
    group: str
    call: str  # as the docs show it
    outcome: str  # as the docs say it
    run: Callable[[tracelet.Experiment, Path], Any]
    raises: type[BaseException] | None = None
    match: str = ""
    landed: Callable[[list[Any]], bool] | None = None  # checks the events of the call, when it lands
    needs: tuple[str, ...] = field(default=())  # optional packages (those rows run in the E2E suite)


def _metric(name: str, value: float, step: int) -> Callable[[list[Any]], bool]:
    def check(events: list[Any]) -> bool:
        got = [(e.name, e.value, e.step) for e in events if isinstance(e, Metric)]
        if len(got) != 1 or got[0][0] != name or got[0][2] != step:
            return False
        v = float(got[0][1])
        return (math.isnan(v) and math.isnan(value)) or v == value

    return check


def _param(key: str, value: str) -> Callable[[list[Any]], bool]:
    return lambda events: any(isinstance(e, Params) and e.values.get(key) == value for e in events)


def _tag(key: str, value: str) -> Callable[[list[Any]], bool]:
    return lambda events: any(isinstance(e, Tags) and e.values.get(key) == value for e in events)


def _bad_name(name: Any, error: type[BaseException], match: str, outcome: str) -> Case:
    return Case(
        f"name-{name!r}"[:40],
        "names",
        f"log_metric({name!r}, 1.0, 0)"
        if len(repr(name)) < 30
        else f"log_metric({repr(name)[:12]}…, 1.0, 0)",
        outcome,
        lambda exp, _: exp.log_metric(name, 1.0, 0),
        error,
        match,
    )


def _symlink_out(exp: tracelet.Experiment, tmp: Path) -> None:
    (tmp / "outside.txt").write_text("secret")
    folder = tmp / "logged"
    folder.mkdir()
    (folder / "ok.txt").write_text("ok")
    (folder / "link.txt").symlink_to(tmp / "outside.txt")
    exp.log_artifact(folder)


def _empty_dir(exp: tracelet.Experiment, tmp: Path) -> None:
    (tmp / "empty").mkdir()
    exp.log_artifact(tmp / "empty")


def _file(tmp: Path) -> Path:
    path = tmp / "weights.bin"
    path.write_bytes(b"w")
    return path


def _second_start(exp: tracelet.Experiment, tmp: Path) -> None:
    tracelet.start_logging(backend="memory")


def _with_env(name: str, value: str) -> Callable[[tracelet.Experiment, Path], Any]:
    def run(exp: tracelet.Experiment, tmp: Path) -> None:
        old = os.environ.get(name)
        os.environ[name] = value
        try:
            tracelet.stop_logging()  # one run at a time: this row is about the next start
            tracelet.start_logging(backend=None)
        finally:
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old

    return run


LONG = "x" * 300

CASES: list[Case] = [
    # -- values --------------------------------------------------------------------------------
    Case(
        "nan",
        "values",
        "log_metric('v', float('nan'), 0)",
        "lands as NaN (ClearML stores it as 0)",
        lambda e, _: e.log_metric("v", float("nan"), 0),
        landed=_metric("v", math.nan, 0),
    ),
    Case(
        "inf",
        "values",
        "log_metric('v', float('inf'), 0)",
        "lands as +inf (MLflow stores 1.797e308, ClearML 0)",
        lambda e, _: e.log_metric("v", math.inf, 0),
        landed=_metric("v", math.inf, 0),
    ),
    Case(
        "-inf",
        "values",
        "log_metric('v', -math.inf, 0)",
        "lands as -inf (MLflow stores -1.797e308, ClearML 0)",
        lambda e, _: e.log_metric("v", -math.inf, 0),
        landed=_metric("v", -math.inf, 0),
    ),
    Case(
        "none",
        "values",
        "log_metric('v', None, 0)",
        "`TypeError` naming the metric and the type",
        lambda e, _: e.log_metric("v", None, 0),
        TypeError,
        "metric 'v'.*NoneType",
    ),
    Case(
        "str",
        "values",
        "log_metric('v', '0.5', 0)",
        "`TypeError`: strings are not parsed",
        lambda e, _: e.log_metric("v", "0.5", 0),
        TypeError,
        "metric 'v'.*str",
    ),
    Case(
        "list",
        "values",
        "log_metric('v', [0.5], 0)",
        "`TypeError` naming the metric",
        lambda e, _: e.log_metric("v", [0.5], 0),
        TypeError,
        "metric 'v'.*list",
    ),
    Case(
        "complex",
        "values",
        "log_metric('v', 1+2j, 0)",
        "`TypeError`: stores keep real numbers",
        lambda e, _: e.log_metric("v", 1 + 2j, 0),
        TypeError,
        "metric 'v'.*complex",
    ),
    Case(
        "big-int",
        "values",
        "log_metric('v', 2**70, 0)",
        "lands as the float 1.1805916207174113e+21",
        lambda e, _: e.log_metric("v", 2**70, 0),
        landed=_metric("v", float(2**70), 0),
    ),
    Case(
        "bool",
        "values",
        "log_metric('v', True, 0)",
        "lands as 1",
        lambda e, _: e.log_metric("v", True, 0),
        landed=_metric("v", 1.0, 0),
    ),
    Case(
        "tensor-2",
        "values",
        "log_metric('v', torch.ones(2), 0)",
        "`TypeError`: one-element tensors only",
        lambda e, _: e.log_metric("v", __import__("torch").ones(2), 0),
        TypeError,
        "one-element tensor",
        needs=("torch",),
    ),
    Case(
        "numpy-float",
        "values",
        "log_metric('v', np.float32(0.5), 0)",
        "lands as 0.5",
        lambda e, _: e.log_metric("v", __import__("numpy").float32(0.5), 0),
        landed=_metric("v", 0.5, 0),
        needs=("numpy",),
    ),
    # -- steps ---------------------------------------------------------------------------------
    Case(
        "step-negative",
        "steps",
        "log_metric('v', 1.0, -1)",
        "`ValueError`: steps are >= 0",
        lambda e, _: e.log_metric("v", 1.0, -1),
        ValueError,
        "iteration must be >= 0",
    ),
    Case(
        "step-float",
        "steps",
        "log_metric('v', 1.0, 1.5)",
        "`TypeError`: steps are integers",
        lambda e, _: e.log_metric("v", 1.0, 1.5),  # type: ignore[arg-type]  # the bad call under test
        TypeError,
        "iteration must be an int",
    ),
    Case(
        "step-str",
        "steps",
        "log_metric('v', 1.0, '3')",
        "`TypeError`",
        lambda e, _: e.log_metric("v", 1.0, "3"),  # type: ignore[arg-type]  # the bad call under test
        TypeError,
        "iteration must be an int",
    ),
    Case(
        "step-bool",
        "steps",
        "log_metric('v', 1.0, True)",
        "`TypeError`: a bool is not a step",
        lambda e, _: e.log_metric("v", 1.0, True),
        TypeError,
        "iteration must be an int",
    ),
    Case(
        "step-none",
        "steps",
        "log_metric('v', 1.0) twice",
        "lands at steps 0 then 1 (one past the key's last)",
        lambda e, _: (e.log_metric("v", 1.0), e.log_metric("v", 2.0)),  # type: ignore[func-returns-value]
        landed=lambda ev: [(m.step, m.value) for m in ev if isinstance(m, Metric)] == [(0, 1.0), (1, 2.0)],
    ),
    Case(
        "step-numpy",
        "steps",
        "log_metric('v', 1.0, np.int64(3))",
        "lands at step 3",
        lambda e, _: e.log_metric("v", 1.0, __import__("numpy").int64(3)),
        landed=_metric("v", 1.0, 3),
        needs=("numpy",),
    ),
    # -- names ---------------------------------------------------------------------------------
    _bad_name(
        "a b", ValueError, "invalid metric name 'a b'", "`ValueError`: letters, digits, `_ . -` and `/`"
    ),
    _bad_name("lossé", ValueError, "invalid metric name", "`ValueError`: ASCII only, as MLflow accepts"),
    _bad_name("", ValueError, "invalid metric name ''", "`ValueError`"),
    _bad_name(LONG, ValueError, "at most 250 characters", "`ValueError`: at most 250 characters"),
    _bad_name("..", ValueError, "invalid metric name", "`ValueError`: a path step, not a name"),
    _bad_name(
        "a/../b", ValueError, "path step", "`ValueError`: MLflow would refuse it, with its whole batch"
    ),
    _bad_name("a/./b", ValueError, "path step", "`ValueError`"),
    _bad_name("/a", ValueError, "invalid metric name", "`ValueError`: no leading `/`"),
    _bad_name("a/", ValueError, "invalid metric name", "`ValueError`: no trailing `/`"),
    _bad_name("a//b", ValueError, "invalid metric name", "`ValueError`: no empty segment"),
    _bad_name("tracelet/x", ValueError, "reserved", "`ValueError`: the prefix `tracelet` is tracelet's own"),
    _bad_name(
        "system/gpu0/power_w",
        ValueError,
        "reserved for the system metrics",
        "`ValueError`: `system/` is the prefix of the system metrics tracelet samples",
    ),
    _bad_name(5, TypeError, "metric name must be a str", "`TypeError`"),
    Case(
        "name-edge",
        "names",
        "log_metric('a/..b', 1.0, 0)",
        "lands as spelled (`..b` is a name, not a step)",
        lambda e, _: e.log_metric("a/..b", 1.0, 0),
        landed=_metric("a/..b", 1.0, 0),
    ),
    # -- params and tags -----------------------------------------------------------------------
    Case(
        "tag-int",
        "params",
        "set_tags({'k': 3})",
        "lands as the string '3'",
        lambda e, _: e.set_tags({"k": 3}),
        landed=_tag("k", "3"),
    ),
    Case(
        "param-list",
        "params",
        "log_params({'layers': [1, 2]})",
        "lands as '[1, 2]'",
        lambda e, _: e.log_params({"layers": [1, 2]}),
        landed=_param("layers", "[1, 2]"),
    ),
    Case(
        "param-none",
        "params",
        "log_params({'p': None})",
        "lands as 'None'",
        lambda e, _: e.log_params({"p": None}),
        landed=_param("p", "None"),
    ),
    Case(
        "param-set",
        "params",
        "log_params({'p': {1}})",
        "lands as '{1}'",
        lambda e, _: e.log_params({"p": {1}}),
        landed=_param("p", "{1}"),
    ),
    Case(
        "param-nested",
        "params",
        "log_params({'opt': {'lr': 0.1}})",
        "lands as 'opt/lr' = '0.1'",
        lambda e, _: e.log_params({"opt": {"lr": 0.1}}),
        landed=_param("opt/lr", "0.1"),
    ),
    Case(
        "param-too-long",
        "params",
        "log_params({'p': 'x' * 7000}) (MLflow: 6000 at most)",
        "`ValueError` naming the param, its length and the backend's limit",
        lambda e, _: e.log_params({"p": "x" * 7000}),
        ValueError,
        "param 'p' is 7000 characters long; memory",
    ),
    Case(
        "param-changes",
        "params",
        "log_params({'lr': 0.1}) then {'lr': 0.2}",
        "`ValueError`: params are immutable (as in MLflow); the first value stays",
        lambda e, _: (e.log_params({"lr": 0.1}), e.log_params({"lr": 0.2})),  # type: ignore[func-returns-value]
        ValueError,
        "param 'lr' was already logged",
    ),
    Case(
        "param-empty-group",
        "params",
        "log_params({'opt': {}})",
        "`ValueError`: nothing to log",
        lambda e, _: e.log_params({"opt": {}}),
        ValueError,
        "empty dict",
    ),
    Case(
        "param-key-int",
        "params",
        "log_params({1: 2})",
        "`TypeError`: names are strings",
        lambda e, _: e.log_params({1: 2}),  # type: ignore[dict-item]  # the bad call under test
        TypeError,
        "param names must be str",
    ),
    Case(
        "param-secret",
        "params",
        "log_params({'api_key': 'sk-…'})",
        "lands as '***' (see Secrets)",
        lambda e, _: e.log_params({"api_key": "sk-live"}),
        landed=_param("api_key", "***"),
    ),
    # -- artifacts -----------------------------------------------------------------------------
    Case(
        "artifact-up",
        "artifacts",
        "log_artifact(f, artifact_path='../x')",
        "`ValueError`: inside the run only",
        lambda e, t: e.log_artifact(_file(t), "../x"),
        ValueError,
        "artifact_path must be a relative path",
    ),
    Case(
        "artifact-abs",
        "artifacts",
        "log_artifact(f, artifact_path='/x')",
        "`ValueError`",
        lambda e, t: e.log_artifact(_file(t), "/x"),
        ValueError,
        "artifact_path must be a relative path",
    ),
    Case(
        "artifact-missing",
        "artifacts",
        "log_artifact('missing.bin')",
        "`FileNotFoundError` naming the path",
        lambda e, t: e.log_artifact(t / "missing.bin"),
        FileNotFoundError,
        "missing.bin",
    ),
    Case(
        "artifact-empty-dir",
        "artifacts",
        "log_artifact(empty_dir)",
        "`ValueError`: holds no files",
        _empty_dir,
        ValueError,
        "holds no files",
    ),
    Case(
        "artifact-symlink-out",
        "artifacts",
        "log_artifact(dir) with a link to a file outside it",
        "`ValueError` naming the link; no file of the directory is logged",
        _symlink_out,
        ValueError,
        "is a link to",
    ),
    # -- lifecycle -----------------------------------------------------------------------------
    Case(
        "after-stop",
        "lifecycle",
        "exp.log_metric(...) after stop_logging()",
        "`TraceletError`: start a new run",
        lambda e, _: (tracelet.stop_logging(), e.log_metric("v", 1.0, 0)),  # type: ignore[func-returns-value]
        tracelet.TraceletError,
        "is stopped",
    ),
    Case(
        "second-start",
        "lifecycle",
        "start_logging() while a run is active",
        "`ExperimentActiveError`",
        _second_start,
        tracelet.ExperimentActiveError,
        "still active",
    ),
    Case(
        "unknown-backend",
        "lifecycle",
        "start_logging(backend='nope')",
        "`UnknownBackendError` listing the known",
        lambda e, _: (tracelet.stop_logging(), tracelet.start_logging(backend="nope")),
        ValueError,
        "unknown backend 'nope'",
    ),
    Case(
        "unknown-option",
        "lifecycle",
        "backend_options={'memory': {'colour': 1}}",
        "`TypeError` naming the key and the accepted ones",
        lambda e, _: (
            tracelet.stop_logging(),
            tracelet.start_logging(backend="memory", backend_options={"memory": {"colour": 1}}),
        ),
        TypeError,
        r"unknown key\(s\) \['colour'\]",
    ),
    Case(
        "strict-maybe",
        "lifecycle",
        "TRACELET_STRICT=maybe",
        "`ValueError` naming the variable",
        _with_env("TRACELET_STRICT", "maybe"),
        ValueError,
        "TRACELET_STRICT='maybe' is not a boolean",
    ),
    Case(
        "backend-commas",
        "lifecycle",
        "TRACELET_BACKEND=',,'",
        "`ValueError`: it names no backend",
        _with_env("TRACELET_BACKEND", ",,"),
        ValueError,
        "TRACELET_BACKEND=',,' names no backend",
    ),
    Case(
        "metrics-one-bad",
        "lifecycle",
        "log_metrics({'a': 1.0, 'b': 'x'})",
        "`TypeError` naming 'b'; nothing of that call lands (not even 'a')",
        lambda e, _: e.log_metrics({"a": 1.0, "b": "x"}, iteration=0),
        TypeError,
        "metric 'b'",
    ),
    Case(
        "metrics-one-bad-name",
        "lifecycle",
        "log_metrics({'a': 1.0, 'b c': 2.0})",
        "`ValueError` naming 'b c'; nothing of that call lands",
        lambda e, _: e.log_metrics({"a": 1.0, "b c": 2.0}, iteration=0),
        ValueError,
        "'b c'",
    ),
]


def markdown() -> str:
    """The docs table, row by row."""
    lines = ["| # | group | call | outcome |", "|---|---|---|---|"]
    for number, case in enumerate(CASES, 1):
        call = case.call.replace("|", "\\|")
        lines.append(f"| {number} | {case.group} | `{call}` | {case.outcome} |")
    return "\n".join(lines)


def run_case(case: Case, tmp_path: Path) -> None:
    """Run one row on a fresh run: it raises as documented and leaves nothing, or lands as documented."""
    exp = tracelet.start_logging(
        exp_name="bad-input", backend="memory", backend_options={"memory": {"limit": 6000}}
    )
    exp.log_metric("before", 0.0, 0)
    assert exp.flush(10)
    run_id = exp.runs["memory"]
    if case.raises is not None:
        with pytest.raises(case.raises, match=case.match):
            case.run(exp, tmp_path)
    else:
        case.run(exp, tmp_path)
    if tracelet.get_active_experiment() is not None:
        assert tracelet.stop_logging().ok
    events = [e for e in run_view(run_id).events if not (isinstance(e, Metric) and e.name == "before")]
    events = [e for e in events if not (isinstance(e, Tags) and e.system)]
    if case.raises is not None:
        if case.id == "param-changes":  # the first value stays; the second never lands
            assert [e.values for e in events if isinstance(e, Params)] == [{"lr": "0.1"}]
        else:
            assert events == [], f"{case.id}: the refused call left {events}"
    else:
        assert case.landed is not None
        assert case.landed(events), f"{case.id}: landed {events}"


@pytest.mark.parametrize("case", [c for c in CASES if not c.needs], ids=lambda c: c.id)
def test_bad_input(case: Case, tmp_path: Path) -> None:
    run_case(case, tmp_path)


def test_the_table_covers_the_floor() -> None:
    assert len(CASES) >= 35
    assert len({c.id for c in CASES}) == len(CASES)


def test_the_docs_table_is_this_table() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert BEGIN in text, f"{DOCS} has lost its generated-table markers"
    assert END in text, f"{DOCS} has lost its generated-table markers"
    table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert table == markdown(), "docs/bad-input.md is stale: python -m tests.unit.test_bad_input > table"


if __name__ == "__main__":
    print(markdown())

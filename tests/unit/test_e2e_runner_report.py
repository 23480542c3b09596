"""Unit tests for the report building of tests/e2e/test_runner.py, without running pytest.

The runner is a CLI living in tests/e2e; it is imported here by file path so the e2e package
(and its conftest, which insists on an install set) stays out of the unit session.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    name = "tracelet_e2e_runner_cli"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "e2e" / "test_runner.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


runner = _load()

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites name="pytest tests"><testsuite name="e2e-runner" tests="7">
  <testcase classname="tests.e2e.test_basic_workflows" name="test_pytorch[mlflow-simple_pytorch]" time="4.0">
    <properties><property name="workflow" value="simple_pytorch"/>
      <property name="backend" value="mlflow"/></properties>
  </testcase>
  <testcase classname="tests.e2e.test_basic_workflows" name="test_pytorch[wandb-simple_pytorch]" time="3.0">
    <properties><property name="workflow" value="simple_pytorch"/>
      <property name="backend" value="wandb"/></properties>
    <failure message="FileNotFoundError: no W&amp;B run 'ab12cd34' under /tmp/e2e-x1/wandb">trace
tests/e2e/framework.py:88: FileNotFoundError</failure>
  </testcase>
  <testcase classname="tests.e2e.test_basic_workflows" name="test_lightning[wandb-lightning]" time="2.0">
    <properties><property name="workflow" value="lightning"/>
      <property name="backend" value="wandb"/></properties>
    <failure message="FileNotFoundError: no W&amp;B run 'zz99yy88' under /tmp/e2e-y2/wandb">trace
tests/e2e/framework.py:88: FileNotFoundError</failure>
  </testcase>
  <testcase classname="tests.e2e.test_backends" name="test_server_stops" time="1.0">
    <properties><property name="workflow" value="lifecycle"/>
      <property name="backend" value="mlflow_server"/></properties>
    <failure message="assert not True">def test_server_stops():
&gt;       assert not True
E       assert not True

tests/e2e/test_backends.py:120: AssertionError</failure>
  </testcase>
  <testcase classname="tests.e2e.test_basic_workflows" name="test_vision[clearml-vision]" time="0.0">
    <skipped type="pytest.skip" message="torchvision not installed">x.py:1: skip</skipped>
  </testcase>
  <testcase classname="tests.e2e.test_advanced_workflows" name="test_comprehensive" time="6.0">
    <properties><property name="workflow" value="simple_pytorch,lightning"/>
      <property name="backend" value="mlflow,local"/></properties>
  </testcase>
  <testcase classname="tests.e2e.test_backends" name="test_port" time="0.5">
    <properties><property name="workflow" value="time_series"/>
      <property name="backend" value="local"/></properties>
    <error message="failed on setup with &quot;RuntimeError: port 5123 busy&quot;">trace</error>
  </testcase>
</testsuite></testsuites>
"""


@pytest.fixture
def report(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT, encoding="utf-8")
    records = runner.parse_junit(path)
    built: dict[str, Any] = runner.build_report(
        records, exit_code=1, wall_time_s=20.0, backends=["mlflow", "wandb"], workflows=[]
    )
    return built


def test_parse_junit_reads_outcomes_and_properties(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT, encoding="utf-8")
    records = {r.test_id: r for r in runner.parse_junit(path)}

    ok = records["tests.e2e.test_basic_workflows::test_pytorch[mlflow-simple_pytorch]"]
    assert (ok.outcome, ok.backend, ok.workflow, ok.time) == ("passed", "mlflow", "simple_pytorch", 4.0)
    bare_assert = records["tests.e2e.test_backends::test_server_stops"]
    assert (bare_assert.outcome, bare_assert.exception) == ("failed", "AssertionError")
    assert bare_assert.detail.splitlines()[2] == "E       assert not True"  # the whole text is kept
    skipped = records["tests.e2e.test_basic_workflows::test_vision[clearml-vision]"]
    assert (skipped.outcome, skipped.backend, skipped.message) == (
        "skipped",
        "unknown",
        "torchvision not installed",
    )
    assert (ok.detail, skipped.detail) == ("", "")
    assert records["tests.e2e.test_backends::test_port"].outcome == "error"


def test_totals_and_pass_rate_count_executed_tests_only(report: dict[str, Any]) -> None:
    assert report["totals"] == {
        "tests": 7,
        "passed": 2,
        "failed": 3,
        "errors": 1,
        "skipped": 1,
        "pass_rate": 33.3,
    }
    assert report["exit_code"] == 1
    assert report["time"] == {"wall_s": 20.0, "tests_s": 16.5}
    assert report["selection"] == {"backends": ["mlflow", "wandb"], "workflows": []}
    assert report["per_test"][0]["test_id"] == "tests.e2e.test_advanced_workflows::test_comprehensive"


def test_time_and_counts_per_backend(report: dict[str, Any]) -> None:
    per_backend = report["per_backend"]
    assert per_backend["wandb"]["failed"] == 2
    assert per_backend["wandb"]["time_s"] == 5.0
    # the comprehensive test covers mlflow and local: it counts in both, its 6s shared out
    assert per_backend["mlflow"] == {
        "passed": 2,
        "failed": 0,
        "skipped": 0,
        "total": 2,
        "time_s": 7.0,
        "success_rate": 100.0,
    }
    assert per_backend["local"]["time_s"] == 3.5
    assert per_backend["unknown"]["skipped"] == 1
    assert round(sum(g["time_s"] for g in per_backend.values()), 3) == report["time"]["tests_s"]


def test_per_workflow_success(report: dict[str, Any]) -> None:
    per_workflow = report["per_workflow"]
    assert per_workflow["simple_pytorch"]["passed"] == 2
    assert per_workflow["simple_pytorch"]["failed"] == 1
    assert per_workflow["simple_pytorch"]["success_rate"] == 66.7
    assert per_workflow["lightning"]["success_rate"] == 50.0
    assert per_workflow["lifecycle"]["success_rate"] == 0.0
    assert per_workflow["unknown"]["success_rate"] is None  # only skipped: no rate


def test_error_patterns_group_similar_failures(report: dict[str, Any]) -> None:
    patterns = report["error_patterns"]
    assert patterns[0]["exception"] == "FileNotFoundError"
    assert patterns[0]["count"] == 2  # different run ids and temp dirs, same problem
    assert patterns[0]["pattern"] == "FileNotFoundError: no W&B run '…' under <path>"
    by_type = {p["exception"]: p for p in patterns}
    assert by_type["AssertionError"]["pattern"] == "assert not True"
    assert by_type["RuntimeError"]["pattern"] == "RuntimeError: port N busy"
    assert by_type["RuntimeError"]["tests"] == ["tests.e2e.test_backends::test_port"]


def test_markdown_and_saved_files(report: dict[str, Any], tmp_path: Path) -> None:
    json_path, md_path = runner.save_report(report, tmp_path / "out", "20250101_120000")
    assert json_path.name == "e2e_report_20250101_120000.json"
    assert md_path.name == "e2e_summary_20250101_120000.md"
    assert json.loads(json_path.read_text(encoding="utf-8"))["totals"]["tests"] == 7
    markdown = md_path.read_text(encoding="utf-8")
    assert "pass rate 33.3%" in markdown
    assert "| wandb | 0 | 2 | 0 | 0.0% | 5.0s |" in markdown
    assert "- **2 x FileNotFoundError**: `FileNotFoundError: no W&B run '…' under <path>`" in markdown
    assert "## Time per test" in markdown


def test_progress_lines_and_command() -> None:
    assert runner.parse_progress_line(
        "tests/e2e/test_basic_workflows.py::test_pytorch[mlflow-simple_pytorch] PASSED     [ 12%]"
    ) == ("tests/e2e/test_basic_workflows.py::test_pytorch[mlflow-simple_pytorch]", "PASSED", None)
    assert runner.parse_progress_line(
        "tests/e2e/t.py::test_v SKIPPED (torchvision not installed) [ 50%]"
    ) == (
        "tests/e2e/t.py::test_v",
        "SKIPPED",
        "torchvision not installed",
    )
    assert runner.parse_progress_line("FAILED tests/e2e/t.py::test_v - AssertionError") is None
    assert runner.parse_progress_line("collecting ... collected 46 items") is None

    cmd = runner.build_command(Path("j.xml"), ["mlflow", "wandb"], ["simple_pytorch"], ["-x"])
    assert cmd[1:4] == ["-m", "pytest", "tests/e2e"]
    assert "--e2e-backends=mlflow,wandb" in cmd
    assert "--e2e-workflows=simple_pytorch" in cmd
    assert "--e2e-only-workflows" in cmd  # workflows asked for: their tests only
    assert "-n" not in cmd  # no workers unless asked
    with_workers = runner.build_command(Path("j.xml"), None, None, [], workers="auto")
    assert with_workers[with_workers.index("-n") + 1] == "auto"
    assert "-n" not in runner.build_command(Path("j.xml"), None, None, ["-n0"], workers="auto")[:-1]
    assert "--junitxml=j.xml" in cmd
    assert cmd[cmd.index("-p") + 1] == "no:cacheprovider"
    assert cmd[-1] == "-x"
    assert not any(a.startswith("--e2e-") for a in runner.build_command(Path("j.xml")))


def test_module_is_not_collected_by_pytest() -> None:
    assert runner.__test__ is False
    assert not [name for name in vars(runner) if name.startswith(("test_", "Test"))]


def test_node_ids_from_xunit1_file_attribute() -> None:
    assert (
        runner.junit_test_id("tests.e2e.test_backends", "test_x[mlflow]", "tests/e2e/test_backends.py")
        == "tests/e2e/test_backends.py::test_x[mlflow]"
    )
    assert (
        runner.junit_test_id("tests.e2e.test_b.TestK", "test_m", "tests\\e2e\\test_b.py")
        == "tests/e2e/test_b.py::TestK::test_m"
    )
    assert runner.junit_test_id("tests.e2e.test_b", "test_m") == "tests.e2e.test_b::test_m"
    assert runner.junit_test_id("", "tests.e2e.test_b") == "tests.e2e.test_b"  # collection error

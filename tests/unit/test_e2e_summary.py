"""Unit tests for tools/e2e_summary.py on small synthetic session reports.

The summary is what people read when the E2E matrix is red, so these tests focus on the red
cases: a failed session, a crashed one without junit.xml, one that never ran, repeated CI
variants in the nested artifact layout, and a failed skip audit; plus --strict's exit code.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any
from xml.sax.saxutils import quoteattr

import pytest
from coverage import CoverageData
from junitparser import JUnitXml
from tools.summary_tables.base import MatrixAxes, SummaryInput
from tools.summary_tables.failures import failures
from tools.summary_tables.faults import FaultsTable
from tools.summary_tables.workflows import WorkflowsTable

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ["mlflow", "wandb", "clearml", "none"]
FRAMEWORKS = ["torch", "lightning", "vision"]
ALL_SESSIONS = [f"e2e-{b}-{f}" for b in BACKENDS for f in FRAMEWORKS]


def _load() -> ModuleType:
    """Import the script by path so the test does not depend on tools/ being a package."""
    name = "tracelet_tools_e2e_summary"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / "e2e_summary.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


summary = _load()

Case = tuple[str, str, str, str, str]  # name, outcome, workflow, backend, message


def _junit(suite: str, cases: Sequence[Case], hostname: str = "host") -> str:
    body = []
    for name, outcome, workflow, backend, message in cases:
        props = (
            "<properties>"
            f'<property name="workflow" value="{workflow}"/><property name="backend" value="{backend}"/>'
            "</properties>"
        )
        result = ""
        if outcome == "failed":
            result = f"<failure message={quoteattr(message)}>traceback</failure>"
        elif outcome == "error":
            result = f"<error message={quoteattr(message)}>traceback</error>"
        elif outcome == "skipped":
            result = f'<skipped type="pytest.skip" message={quoteattr(message)}>x.py:1: skip</skipped>'
        body.append(
            f'<testcase classname="tests.e2e.test_basic" name="{name}" time="1.5">{props}{result}</testcase>'
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests">'
        f'<testsuite name="{suite}" hostname="{hostname}" timestamp="2025-01-01T00:00:00">'
        + "".join(body)
        + "</testsuite></testsuites>"
    )


DEFAULT_CASES: list[Case] = [
    ("test_metrics[mlflow]", "passed", "simple_pytorch", "mlflow", ""),
    ("test_params[mlflow]", "passed", "lightning", "mlflow", ""),
    ("test_images[wandb]", "skipped", "vision", "wandb", "wandb not installed"),
]


def write_session(
    root: Path,
    session: str,
    *,
    status: str = "passed",
    cases: Sequence[Case] = DEFAULT_CASES,
    junit: bool = True,
    platform: str = "linux",
    python: str = "3.11.7",
    duration: float = 41.2,
    verdict: str = "pass",
    problems: Sequence[str] = (),
    folder: Path | None = None,
    with_session_key: bool = True,
    versions: str | None = None,
    installed: dict[str, str] | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write one session report folder the way the e2e nox sessions do."""
    directory = folder if folder is not None else root / session
    directory.mkdir(parents=True, exist_ok=True)
    _, backend, framework = session.split("-")[:3]
    meta: dict[str, object] = {
        "backend": backend,
        "framework": framework,
        "declared": [backend, framework],
        "installed": installed if installed is not None else {framework: "1.0"},
        "python": python,
        "platform": platform,
        "duration_s": duration,
        "status": status,
        "audit": {
            "verdict": verdict,
            "problems": list(problems),
            "expected_skips": 1,
            "observed_skips": 1,
        },
    }
    if with_session_key:
        meta["session"] = session
    if versions is not None:
        meta["versions"] = versions
        meta["notes"] = list(notes)
    (directory / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    if junit:
        (directory / "junit.xml").write_text(_junit(session, cases, hostname=platform), encoding="utf-8")
    return directory


def full_matrix(root: Path, skip: Sequence[str] = ()) -> None:
    for session in ALL_SESSIONS:
        if session not in skip:
            write_session(root, session)


def axes(
    backends: Sequence[str] = BACKENDS,
    frameworks: Sequence[str] = FRAMEWORKS,
    cells: Sequence[str] | None = None,
) -> MatrixAxes:
    """The matrix of these tests (every pair a cell, unless ``cells`` says which)."""
    every = [f"e2e-{b}-{f}" for b in backends for f in frameworks]
    return MatrixAxes(tuple(backends), tuple(frameworks), tuple(every if cells is None else cells))


def render(results: Sequence[Any], matrix: MatrixAxes | None = None, coverage: Any = None) -> str:
    """summary.md for ``results``: every section built once, as main() does."""
    return str(
        summary.render_markdown(
            summary.build_summary(SummaryInput(results, matrix or axes(), None, coverage))
        )
    )


def run_main(reports: Path, *extra: str) -> int:
    """main() against a noxfile that declares this test's matrix (as data, as the real one does)."""
    noxfile = reports.parent / f"{reports.name}-noxfile.py"
    noxfile.write_text(
        f"BACKENDS = {dict.fromkeys(BACKENDS, ())!r}\nFRAMEWORKS = {dict.fromkeys(FRAMEWORKS, ())!r}\n",
        encoding="utf-8",
    )
    return int(summary.main(["--reports", str(reports), "--noxfile", str(noxfile), *extra]))


def matrix_rows(markdown: str) -> dict[str, list[str]]:
    """{backend: [cell per framework]} parsed back out of the markdown matrix table."""
    rows = {}
    for line in markdown.splitlines():
        for backend in BACKENDS:
            if line.startswith(f"| **{backend}** |"):
                rows[backend] = [c.strip() for c in line.strip().strip("|").split(" | ")[1:]]
    return rows


def test_full_matrix_all_green(tmp_path: Path) -> None:
    full_matrix(tmp_path)

    results = summary.collect(tmp_path)
    assert sorted(r.session for r in results) == sorted(ALL_SESSIONS)
    assert run_main(tmp_path, "--strict") == 0

    markdown = (tmp_path / "summary.md").read_text(encoding="utf-8")
    rows = matrix_rows(markdown)
    assert list(rows) == BACKENDS
    assert all(cell == "✅ 2/0/1 · 41s" for row in rows.values() for cell in row)
    assert "| backend | torch | lightning | vision |" in markdown
    assert "all 12 cells passed" in markdown
    assert "No failures." in markdown
    assert "No coverage data found." in markdown

    data = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert data["ok"] is True
    assert len(data["cells"]) == 12
    assert {c["state"] for c in data["cells"]} == {"passed"}

    merged = JUnitXml.fromfile(str(tmp_path / "junit.xml"))
    assert sorted(s.name for s in merged) == sorted(ALL_SESSIONS)
    assert merged.tests == 36


def test_workflow_table_counts_cases_by_workflow_and_backend(tmp_path: Path) -> None:
    write_session(tmp_path, "e2e-mlflow-torch")
    write_session(
        tmp_path,
        "e2e-wandb-torch",
        status="failed",
        cases=[
            ("test_a", "passed", "simple_pytorch", "wandb", ""),
            ("test_b", "failed", "simple_pytorch", "wandb", "AssertionError: x"),
            ("test_c", "error", "time_series", "mlflow_server", "RuntimeError: y"),
        ],
    )
    table = WorkflowsTable().build(SummaryInput(summary.collect(tmp_path), axes()))
    assert table["simple_pytorch"]["mlflow"] == {"passed": 1, "failed": 0, "skipped": 0}
    assert table["simple_pytorch"]["wandb"] == {"passed": 1, "failed": 1, "skipped": 0}
    assert table["vision"]["wandb"] == {"passed": 0, "failed": 0, "skipped": 1}
    assert table["time_series"]["mlflow_server"] == {"passed": 0, "failed": 1, "skipped": 0}

    markdown = render(summary.collect(tmp_path))
    assert "| workflow | mlflow | mlflow_server | wandb |" in markdown
    assert "| simple_pytorch | 1/0/0 | — | 1/1/0 |" in markdown


def test_failed_session_is_red_and_lists_failures(tmp_path: Path) -> None:
    full_matrix(tmp_path, skip=["e2e-wandb-lightning"])
    write_session(
        tmp_path,
        "e2e-wandb-lightning",
        status="failed",
        cases=[
            ("test_ok", "passed", "lightning", "wandb", ""),
            ("test_bad", "failed", "lightning", "wandb", "ValueError: boom\nsecond line"),
        ],
        duration=75,
    )

    assert run_main(tmp_path) == 0  # not strict: a red matrix still yields a summary, exit 0
    markdown = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert matrix_rows(markdown)["wandb"][1] == "❌ 1/1/0 · 1m15s"
    assert "- `e2e-wandb-lightning` (linux/py3.11) `tests.e2e.test_basic::test_bad` — ValueError: boom" in (
        markdown.splitlines()
    )
    assert "second line" not in markdown
    assert "11/12 cells passed, 1 failed, 0 not run" in markdown

    assert run_main(tmp_path, "--strict") == 1


def test_crashed_session_without_junit(tmp_path: Path) -> None:
    write_session(tmp_path, "e2e-clearml-vision", status="failed", junit=False, verdict="missing")

    results = summary.collect(tmp_path)
    assert len(results) == 1
    assert results[0].junit_path is None
    assert not results[0].ok
    markdown = render(results)
    assert matrix_rows(markdown)["clearml"][2] == "❌ failed, no junit.xml · 41s"
    assert "`e2e-clearml-vision` (linux/py3.11) `(session)` — no junit.xml" in markdown


def test_never_ran_session(tmp_path: Path) -> None:
    full_matrix(tmp_path, skip=["e2e-none-vision"])

    assert run_main(tmp_path) == 0
    markdown = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert matrix_rows(markdown)["none"] == ["✅ 2/0/1 · 41s", "✅ 2/0/1 · 41s", "— not run"]
    data = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    cell = next(c for c in data["cells"] if c["session"] == "e2e-none-vision")
    assert cell["state"] == "not_run"
    assert data["problems"] == ["e2e-none-vision: never ran"]
    assert run_main(tmp_path, "--strict") == 1


def test_nested_ci_layout_with_two_variants(tmp_path: Path) -> None:
    # upload-artifact of a single folder puts its contents at the artifact root ...
    write_session(
        tmp_path,
        "e2e-wandb-torch",
        folder=tmp_path / "reports-e2e-wandb-torch-ubuntu-latest-py3.12",
        python="3.12.4",
        duration=30,
        with_session_key=False,  # the name then comes from the artifact folder
    )
    # ... while other layouts keep the session folder one level deeper.
    write_session(
        tmp_path,
        "e2e-wandb-torch",
        folder=tmp_path / "reports-e2e-wandb-torch-macos-latest-py3.11" / "e2e-wandb-torch",
        platform="darwin",
        status="failed",
        cases=[("test_x", "failed", "simple_pytorch", "wandb", "OSError: disk")],
        duration=52,
    )

    results = summary.collect(tmp_path)
    assert [r.session for r in results] == ["e2e-wandb-torch", "e2e-wandb-torch"]
    markdown = render(results)
    cell = matrix_rows(markdown)["wandb"][0]
    assert cell == "darwin/py3.11: ❌ 0/1/0 · 52s<br>linux/py3.12: ✅ 2/0/1 · 30s"

    assert summary.merge_junit(results, tmp_path / "junit.xml") == 2
    merged = JUnitXml.fromfile(str(tmp_path / "junit.xml"))
    assert [s.name for s in merged] == ["e2e-wandb-torch", "e2e-wandb-torch"]
    assert merged.tests == 4


def test_audit_failure_is_shown_and_fails_strict(tmp_path: Path) -> None:
    full_matrix(tmp_path, skip=["e2e-mlflow-vision"])
    write_session(
        tmp_path,
        "e2e-mlflow-vision",
        verdict="fail",
        problems=["test_images[mlflow] skipped: 'torchvision not installed' but torchvision is declared"],
    )

    assert run_main(tmp_path) == 0
    markdown = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "| e2e-mlflow-vision | linux/py3.11 | ❌ fail | 1 | 1 |" in markdown
    assert "- `e2e-mlflow-vision` (linux/py3.11): test_images[mlflow] skipped:" in markdown
    assert "all 12 cells passed" in markdown  # the tests passed; only the audit is red
    data = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert data["problems"] == ["e2e-mlflow-vision (linux/py3.11): skip audit fail"]
    assert run_main(tmp_path, "--strict") == 1


def test_unreadable_meta_is_a_failed_result_not_a_crash(tmp_path: Path) -> None:
    folder = tmp_path / "e2e-none-torch"
    folder.mkdir()
    (folder / "meta.json").write_text("{not json", encoding="utf-8")

    (result,) = summary.collect(tmp_path)
    assert result.session == "e2e-none-torch"
    assert result.status == "failed"
    assert result.audit.verdict == "missing"
    assert any("meta.json unreadable" in n for n in result.notes)


def test_coverage_is_combined_with_pyproject_paths(tmp_path: Path) -> None:
    folder = write_session(tmp_path, "e2e-mlflow-torch")
    data = CoverageData(basename=str(folder / ".coverage"), suffix="runner.1.2")
    # An installed-package path as CI produces it; [tool.coverage.paths] maps it onto src/tracelet.
    data.add_lines({"/opt/venv/lib/python3.12/site-packages/tracelet/errors.py": [1, 2, 3]})
    data.write()

    results = summary.collect(tmp_path)
    assert [p.name for p in results[0].coverage_files] == [".coverage.runner.1.2"]
    cov = summary.combine_coverage(results, tmp_path, ROOT)
    assert cov.total is not None
    assert 0 < cov.total <= 100
    assert (tmp_path / "coverage.xml").is_file()
    assert "src/tracelet/errors.py" in (tmp_path / "coverage.xml").read_text(encoding="utf-8").replace(
        "\\", "/"
    )
    assert (tmp_path / "htmlcov" / "index.html").is_file()
    assert (folder / ".coverage.runner.1.2").is_file()  # keep=True: inputs survive
    assert "**Total:" in render(results, coverage=cov)


def test_step_summary_is_appended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    step = tmp_path / "step_summary.md"
    step.write_text("earlier step\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    reports = tmp_path / "reports"
    write_session(reports, "e2e-mlflow-torch")

    assert run_main(reports, "--no-coverage") == 0
    text = step.read_text(encoding="utf-8")
    assert text.startswith("earlier step\n# Tracelet E2E matrix")
    assert text.count("— not run") == 11


def test_empty_reports_dir_still_summarises(tmp_path: Path) -> None:
    assert run_main(tmp_path / "reports") == 0
    markdown = (tmp_path / "reports" / "summary.md").read_text(encoding="utf-8")
    assert markdown.count("— not run") == 12
    assert run_main(tmp_path / "reports", "--strict") == 1


def test_failure_ids_use_the_xunit1_file_attribute(tmp_path: Path) -> None:
    folder = write_session(tmp_path, "e2e-none-torch", status="failed", cases=[])
    (folder / "junit.xml").write_text(
        '<testsuites><testsuite name="e2e-none-torch">'
        '<testcase classname="tests.e2e.test_backends.TestK" name="test_m[local]" '
        'file="tests/e2e/test_backends.py" line="3" time="0.1">'
        '<failure message="KeyError: &apos;x&apos;">trace</failure></testcase>'
        "</testsuite></testsuites>",
        encoding="utf-8",
    )
    (result,) = summary.collect(tmp_path)
    assert [f.test_id for f in failures([result])] == ["tests/e2e/test_backends.py::TestK::test_m[local]"]


def test_faults_table_shows_each_fault_each_backend_and_what_was_lost(tmp_path: Path) -> None:
    def case(name: str, outcome: str, backend: str, fault: str, lost: int) -> str:
        props = (
            f'<properties><property name="backend" value="{backend}"/>'
            f'<property name="fault" value="{fault}"/><property name="lost" value="{lost}"/></properties>'
        )
        failure = '<failure message="lost points">x</failure>' if outcome == "failed" else ""
        return (
            f'<testcase classname="tests.e2e.test_faults" name="{name}" time="1">{props}{failure}</testcase>'
        )

    write_session(tmp_path, "e2e-mlflow-torch")
    junit = (
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="e2e-mlflow-torch">'
        + case("t[mlflow-sigterm]", "passed", "mlflow", "trainer ended by sigterm", 0)
        + case("t[local-sigterm]", "failed", "local", "trainer ended by sigterm", 3)
        + case("t[mlflow-sigkill]", "passed", "mlflow", "trainer ended by sigkill", 0)
        + case("t[mlflow-threads]", "passed", "mlflow", "8 threads, forked workers", 0)
        + "</testsuite></testsuites>"
    )
    (tmp_path / "e2e-mlflow-torch" / "junit.xml").write_text(junit, encoding="utf-8")
    results = summary.collect(tmp_path)
    table = FaultsTable().build(SummaryInput(results, axes()))
    assert table["trainer ended by sigterm"]["mlflow"] == {"runs": 1, "failed": 0, "lost": 0}
    assert table["trainer ended by sigterm"]["local"] == {"runs": 1, "failed": 1, "lost": 3}
    markdown = render(results)
    assert "| fault | mlflow | local |" in markdown
    assert "| trainer ended by sigterm | ✅ 0 lost | ❌ 3 lost |" in markdown
    assert "| trainer ended by sigkill | ✅ 0 lost | — |" in markdown
    # a fault's name is kept whole: only workflow and backend properties are comma lists
    assert table["8 threads, forked workers"]["mlflow"] == {"runs": 1, "failed": 0, "lost": 0}
    # points lost are a problem of the summary itself, with or without --strict
    assert FaultsTable().problems(table) == ["fault 'trainer ended by sigterm' on local: 3 points lost"]


def test_a_pair_the_matrix_leaves_out_is_absent_not_missing(tmp_path: Path) -> None:
    """``all`` runs with ``torch`` only: its other columns are not cells, so they never count as not run."""
    write_session(tmp_path, "e2e-all-torch")
    cells = ["e2e-all-torch", "e2e-mlflow-torch"]
    results = summary.collect(tmp_path)
    built = summary.build_summary(
        SummaryInput(results, axes(["mlflow", "all"], ["torch", "lightning"], cells))
    )
    data = summary.render_json(built)
    assert [c["session"] for c in data["cells"]] == cells[::-1]
    assert data["problems"] == ["e2e-mlflow-torch: never ran"]
    markdown = summary.render_markdown(built)
    assert "| **all** | ✅" in markdown
    assert markdown.split("| **all** |")[1].splitlines()[0].endswith("| · |")
    assert "1/2 cells passed, 0 failed, 1 not run" in markdown


def test_every_section_is_built_once_for_both_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """summary.md and summary.json come from one build of each section (the equivalence table compares
    every store's records: building it twice doubled the summary's slowest part)."""
    from tools.summary_tables import TABLES

    full_matrix(tmp_path)
    builds = dict.fromkeys((table.key for table in TABLES), 0)
    for table in TABLES:

        def counted(summary_input: SummaryInput, build: Any = table.build, key: str = table.key) -> Any:
            builds[key] += 1
            return build(summary_input)

        monkeypatch.setattr(table, "build", counted)
    assert run_main(tmp_path) == 0
    assert builds == dict.fromkeys(builds, 1)
    # matrix, versions, workflows, equivalence, faults, bench, audit, coverage, failures
    assert len(builds) == 9
    data = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert {"cells", "workflows", "equivalence", "faults", "coverage", "failures"} <= set(data)


def test_the_versions_table_shows_every_cell_and_fails_strict_on_a_red_floor(tmp_path: Path) -> None:
    """Floor and newest cells: in the versions table with what they ran, never in the matrix."""
    full_matrix(tmp_path)
    write_session(tmp_path, "e2e-mlflow-torch-oldest", versions="oldest", installed={"mlflow": "2.12.0"})
    write_session(
        tmp_path,
        "e2e-wandb-torch-latest",
        versions="latest",
        installed={"wandb": "0.31.0"},
        notes=[
            "wandb 9.9.9, the newest release, cannot be installed here: no wheel",
            "ran wandb 0.31.0, the newest release that can be installed here",
        ],
    )
    assert run_main(tmp_path, "--strict") == 0
    markdown = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "all 12 cells passed" in markdown
    assert "Sessions outside the matrix" not in markdown
    versions = markdown.split("## Versions", 1)[1].split("\n## ", 1)[0]
    rows = {
        line.split(" | ")[0].strip("| "): line for line in versions.splitlines() if line.startswith("| e2e-")
    }
    header = next(line for line in versions.splitlines() if line.startswith("| session |"))
    # the stores first, then every other package the cells recorded, in the order recorded
    assert header.endswith("| variant: result | mlflow | wandb | lightning | torch | vision |")
    assert rows["e2e-mlflow-torch-oldest"].startswith(
        "| e2e-mlflow-torch-oldest | oldest | linux/py3.11: ✅ 2/0/1"
    )
    assert rows["e2e-mlflow-torch-oldest"].endswith("| 2.12.0 | — | — | — | — |")
    assert rows["e2e-wandb-torch-latest"].startswith("| e2e-wandb-torch-latest | latest | linux/py3.11: ✅")
    assert rows["e2e-wandb-torch-latest"].endswith("| — | 0.31.0 | — | — | — |")
    assert rows["e2e-mlflow-torch"].endswith("| — | — | — | 1.0 | — |")  # this test's cells record torch
    assert "wandb 9.9.9, the newest release, cannot be installed here: no wheel" in versions
    assert "ran wandb 0.31.0, the newest release that can be installed here" in versions
    data = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert {v["session"]: v["versions"] for v in data["versions"]}["e2e-mlflow-torch-oldest"] == "oldest"

    red: list[Case] = [("test_a", "failed", "simple_pytorch", "mlflow", "mlflow 2.12 broke it")]
    write_session(tmp_path, "e2e-mlflow-torch-oldest", versions="oldest", status="failed", cases=red)
    assert run_main(tmp_path) == 0
    assert run_main(tmp_path, "--strict") == 1
    data = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert "e2e-mlflow-torch-oldest (linux/py3.11): failed" in data["problems"]
    assert not any("e2e-wandb-torch-latest" in p for p in data["problems"])


def test_the_matrix_axes_are_the_noxfiles() -> None:
    """Read from noxfile.py's data, never copied: the cells are the sessions nox runs."""
    from tools.summary_tables.base import noxfile_axes

    matrix = noxfile_axes()
    assert "mlflow" in matrix.backends
    assert "torch" in matrix.frameworks
    assert "e2e-mlflow-torch" in matrix.cells
    assert "e2e-all-lightning" not in matrix.cells  # `all` runs with torch only (ONLY_WITH)
    assert len(matrix.cells) == 17

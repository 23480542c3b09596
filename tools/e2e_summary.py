#!/usr/bin/env python
"""Fold the per-session E2E reports into one matrix summary.

Every ``e2e-<backend>-<framework>`` nox session leaves ``meta.json``, ``junit.xml`` and coverage
data in its own report folder. In CI those folders come back as artifacts (nested one level
deeper, and the same session several times for different OS/Python variants), so a reader needs
one place that says which cell of the backend x framework matrix is green, which one failed and
which one never ran. This script builds that view:

* ``<reports>/junit.xml``   - all JUnit suites merged (suite names kept, variant as properties);
* ``<reports>/.coverage``, ``coverage.xml``, ``htmlcov/`` - combined coverage;
* ``<reports>/summary.md`` and ``summary.json`` - the matrix, then the tables of
  :mod:`tools.summary_tables` (workflows, cross-backend equivalence, faults), the skip audit,
  the coverage total and the failures; the markdown is also appended to ``$GITHUB_STEP_SUMMARY``.

The results themselves are read by :mod:`tools.e2e_results`.

Usage::

    python tools/e2e_summary.py --reports reports \
        --backends mlflow,wandb,clearml,none --frameworks torch,lightning,vision [--strict]

The summary is always written, red matrix or not: that is its whole point. The exit code is 1 when
a table finds a problem (stores that disagree beyond their documented differences, points a fault
lost), or, with ``--strict``, when a cell failed, never ran, or a skip audit did not pass.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from junitparser import JUnitXml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as `python tools/e2e_summary.py`: import tools.* from the project root
    sys.path.insert(0, str(PROJECT_ROOT))

from tools.e2e_results import SessionResult, collect, session_name  # noqa: E402
from tools.summary_tables import TABLES  # noqa: E402
from tools.summary_tables.base import ICON_FAIL, ICON_OK  # noqa: E402

DEFAULT_BACKENDS: tuple[str, ...] = ("mlflow", "wandb", "clearml", "all", "none")
DEFAULT_FRAMEWORKS: tuple[str, ...] = ("torch", "lightning", "pytorch_lightning", "vision")
NOT_RUN = "— not run"
ABSENT = "·"


@dataclass
class CellResult:
    """A backend x framework cell of the matrix with all its variants."""

    backend: str
    framework: str
    session: str
    results: list[SessionResult]
    #: False for a backend x framework pair the matrix leaves out (``all`` runs with ``torch`` only)
    in_matrix: bool = True

    @property
    def state(self) -> str:
        if not self.in_matrix and not self.results:
            return "absent"
        if not self.results:
            return "not_run"
        return "passed" if all(r.ok for r in self.results) else "failed"


@dataclass
class CoverageSummary:
    """Outcome of combining coverage; ``total`` is None when there was nothing to combine."""

    total: float | None
    data_files: int
    xml_path: Path | None = None
    html_dir: Path | None = None
    note: str = ""


def build_matrix(
    results: Sequence[SessionResult],
    backends: Sequence[str],
    frameworks: Sequence[str],
    cells: Sequence[str] | None = None,
) -> list[list[CellResult]]:
    """Rows are backends, columns framework sets; a cell holds every variant of its session.

    ``cells`` names the sessions the matrix has (default: every pair); any other pair is absent.
    """
    rows: list[list[CellResult]] = []
    for backend in backends:
        row = []
        for framework in frameworks:
            name = session_name(backend, framework)
            in_matrix = cells is None or name in cells
            row.append(
                CellResult(backend, framework, name, [r for r in results if r.session == name], in_matrix)
            )
        rows.append(row)
    return rows


def outside_matrix(
    results: Sequence[SessionResult],
    backends: Sequence[str],
    frameworks: Sequence[str],
    cells: Sequence[str] | None = None,
) -> list[SessionResult]:
    """Results whose session is not a cell of the requested matrix (e.g. a renamed session)."""
    names = {session_name(b, f) for b in backends for f in frameworks}
    if cells is not None:
        names &= set(cells)
    return [r for r in results if r.session not in names]


# --------------------------------------------------------------------------------------------
# Merging
# --------------------------------------------------------------------------------------------


def merge_junit(results: Sequence[SessionResult], out_path: Path) -> int:
    """Merge all sessions' suites into one file; returns the number of suites written.

    Suites keep their names (the session, via ``junit_suite_name``); the variant goes into suite
    properties, which also stops junitparser from folding two variants of a session together.
    """
    merged = JUnitXml(name="tracelet e2e")
    count = 0
    for result in results:
        if result.junit_path is None:
            continue
        xml = JUnitXml.fromfile(str(result.junit_path))
        for suite in xml:
            copy = deepcopy(suite)
            copy.add_property("session", result.session)
            copy.add_property("platform", result.platform)
            copy.add_property("python", result.python)
            copy.add_property("source", str(result.junit_path))
            merged.add_testsuite(copy)
            count += 1
    merged.update_statistics()  # type: ignore[no-untyped-call]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    merged.write(str(out_path), pretty=True)
    return count


@contextmanager
def _cwd(path: Path) -> Iterator[None]:
    # coverage maps [tool.coverage.paths] onto the first (relative) entry, resolved against the
    # working directory, and reads sources from there: run it from the project root.
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def combine_coverage(
    results: Sequence[SessionResult], out_dir: Path, project_root: Path = PROJECT_ROOT, html: bool = True
) -> CoverageSummary:
    """Combine every session's coverage data into ``out_dir`` and report it.

    Inputs are kept (``keep=True``) so re-running the summary gives the same answer, and the
    output data file is erased first for the same reason. Never raises for missing data.
    """
    from coverage import Coverage
    from coverage.exceptions import ConfigError, CoverageException, NoDataError

    files = [str(p.resolve()) for r in results for p in r.coverage_files]
    if not files:
        return CoverageSummary(total=None, data_files=0, note="No coverage data found.")

    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    pyproject = project_root / "pyproject.toml"
    note = ""
    with _cwd(project_root):
        try:
            cov = Coverage(
                data_file=str(out_dir / ".coverage"),
                config_file=str(pyproject) if pyproject.is_file() else True,
            )
        except ConfigError as exc:  # e.g. Python 3.10 without tomli: coverage[toml] missing
            note = f"pyproject.toml not readable by coverage ({exc}); paths were not remapped. "
            cov = Coverage(data_file=str(out_dir / ".coverage"), config_file=False)
        try:
            cov.erase()
            cov.combine(files, keep=True)
            cov.save()
            total = cov.report(file=io.StringIO(), ignore_errors=True)
            xml_path = out_dir / "coverage.xml"
            cov.xml_report(outfile=str(xml_path), ignore_errors=True)
            html_dir: Path | None = None
            if html:
                html_dir = out_dir / "htmlcov"
                cov.html_report(directory=str(html_dir), ignore_errors=True)
        except NoDataError as exc:
            return CoverageSummary(total=None, data_files=len(files), note=f"{note}No coverage data: {exc}")
        except CoverageException as exc:
            return CoverageSummary(total=None, data_files=len(files), note=f"{note}Coverage failed: {exc}")
    return CoverageSummary(
        total=float(total), data_files=len(files), xml_path=xml_path, html_dir=html_dir, note=note.strip()
    )


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def format_result(result: SessionResult) -> str:
    """Cell text like "✅ 14/2/9 · 41s" (passed/failed/skipped · duration); ❌ when red."""
    icon = ICON_OK if result.ok else ICON_FAIL
    duration = format_duration(result.duration_s)
    if result.junit_path is None:
        return f"{icon} {result.status}, no junit.xml · {duration}"
    return f"{icon} {result.passed}/{result.failed}/{result.skipped} · {duration}"


def format_cell(cell: CellResult) -> str:
    if cell.state == "absent":
        return ABSENT
    if not cell.results:
        return NOT_RUN
    if len(cell.results) == 1:
        return format_result(cell.results[0])
    return "<br>".join(f"{r.label}: {format_result(r)}" for r in cell.results)


def _failure(result: SessionResult, test_id: str, message: str) -> dict[str, str]:
    return {"session": result.session, "variant": result.label, "test_id": test_id, "message": message}


def failures(results: Sequence[SessionResult]) -> list[dict[str, str]]:
    """Failed/errored tests, plus sessions that failed without a junit.xml to show for it."""
    out: list[dict[str, str]] = []
    for r in results:
        if r.junit_path is None and not r.ok:
            out.append(_failure(r, "(session)", "; ".join(r.notes)))
        elif r.status != "passed" and r.failed == 0:
            out.append(_failure(r, "(session)", f"session status {r.status!r} although no test failed"))
        for case in r.cases:
            if case.is_failure:
                out.append(_failure(r, case.test_id, case.message))
    return out


def strict_problems(matrix: Sequence[Sequence[CellResult]], results: Sequence[SessionResult]) -> list[str]:
    """Reasons ``--strict`` fails: red or missing cells and audits that did not pass."""
    problems: list[str] = []
    for row in matrix:
        for cell in row:
            if cell.state == "not_run":
                problems.append(f"{cell.session}: never ran")
            elif cell.state == "failed":
                bad = ", ".join(r.label for r in cell.results if not r.ok)
                problems.append(f"{cell.session}: failed ({bad})")
    for r in results:
        if r.audit.verdict != "pass":
            problems.append(f"{r.session} ({r.label}): skip audit {r.audit.verdict}")
    return problems


def render_markdown(
    results: Sequence[SessionResult],
    backends: Sequence[str],
    frameworks: Sequence[str],
    coverage: CoverageSummary | None = None,
    cells_in_matrix: Sequence[str] | None = None,
    reports: Path | None = None,
) -> str:
    """The human summary: matrix, tables, skip audit, coverage, failures."""
    matrix = build_matrix(results, backends, frameworks, cells_in_matrix)
    cells = [c for row in matrix for c in row if c.state != "absent"]
    n_failed = sum(1 for c in cells if c.state == "failed")
    n_missing = sum(1 for c in cells if c.state == "not_run")
    lines: list[str] = ["# Tracelet E2E matrix", ""]
    if n_failed or n_missing:
        lines.append(
            f"**{ICON_FAIL} {len(cells) - n_failed - n_missing}/{len(cells)} cells passed, "
            f"{n_failed} failed, {n_missing} not run.**"
        )
    else:
        lines.append(f"**{ICON_OK} all {len(cells)} cells passed.**")
    lines += [
        "",
        "## Matrix",
        "",
        f"Each cell: passed/failed/skipped · duration; one line per OS/Python variant; {ABSENT}: not a cell.",
        "",
        "| backend | " + " | ".join(frameworks) + " |",
        "|---|" + "---|" * len(frameworks),
    ]
    for backend, row in zip(backends, matrix, strict=True):
        lines.append(f"| **{backend}** | " + " | ".join(format_cell(c) for c in row) + " |")

    extra = outside_matrix(results, backends, frameworks, cells_in_matrix)
    if extra:
        lines += ["", "Sessions outside the matrix:", ""]
        lines += [f"- `{r.session}` ({r.label}): {format_result(r)}" for r in extra]

    for table in TABLES:
        data = table.build(results, reports)
        if data is not None:
            lines += ["", f"## {table.title}", "", *table.markdown(data)]

    lines += [
        "",
        "## Skip audit",
        "",
        "| session | variant | verdict | expected skips | observed skips |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        icon = ICON_OK if r.audit.verdict == "pass" else ICON_FAIL
        exp = "—" if r.audit.expected_skips is None else str(r.audit.expected_skips)
        obs = "—" if r.audit.observed_skips is None else str(r.audit.observed_skips)
        lines.append(f"| {r.session} | {r.label} | {icon} {r.audit.verdict} | {exp} | {obs} |")
    if not results:
        lines.append("| — | — | no sessions found | — | — |")
    audit_problems = [(r, p) for r in results for p in r.audit.problems]
    if audit_problems:
        lines += ["", "Audit problems:", ""]
        lines += [f"- `{r.session}` ({r.label}): {p}" for r, p in audit_problems]

    lines += ["", "## Coverage", ""]
    if coverage is None:
        lines.append("Coverage not combined.")
    elif coverage.total is None:
        lines.append(coverage.note or "No coverage data found.")
    else:
        files = "data file" if coverage.data_files == 1 else "data files"
        lines.append(f"**Total: {coverage.total:.1f}%** ({coverage.data_files} {files} combined)")
        if coverage.note:
            lines += ["", coverage.note]

    lines += ["", "## Failures", ""]
    fails = failures(results)
    if fails:
        lines += [f"- `{f['session']}` ({f['variant']}) `{f['test_id']}` — {f['message']}" for f in fails]
    else:
        lines.append("No failures.")
    return "\n".join(lines) + "\n"


def _result_json(r: SessionResult) -> dict[str, Any]:
    return {
        "session": r.session,
        "backend": r.backend,
        "framework": r.framework,
        "variant": r.label,
        "platform": r.platform,
        "python": r.python,
        "directory": str(r.directory),
        "status": r.status,
        "ok": r.ok,
        "duration_s": r.duration_s,
        "junit": str(r.junit_path) if r.junit_path else None,
        "passed": r.passed,
        "failed": r.failed,
        "skipped": r.skipped,
        "audit": {
            "verdict": r.audit.verdict,
            "problems": r.audit.problems,
            "expected_skips": r.audit.expected_skips,
            "observed_skips": r.audit.observed_skips,
        },
        "coverage_files": len(r.coverage_files),
        "notes": r.notes,
    }


def render_json(
    results: Sequence[SessionResult],
    backends: Sequence[str],
    frameworks: Sequence[str],
    coverage: CoverageSummary | None = None,
    cells_in_matrix: Sequence[str] | None = None,
    reports: Path | None = None,
) -> dict[str, Any]:
    """Machine-readable twin of the markdown (same facts, for dashboards and tests)."""
    matrix = build_matrix(results, backends, frameworks, cells_in_matrix)
    tables = {table.key: table.build(results, reports) for table in TABLES}
    problems = strict_problems(matrix, results)
    table_problems = [
        p for table in TABLES if tables[table.key] is not None for p in table.problems(tables[table.key])
    ]
    return {
        "backends": list(backends),
        "frameworks": list(frameworks),
        "cells": [
            {
                "backend": c.backend,
                "framework": c.framework,
                "session": c.session,
                "state": c.state,
                "text": format_cell(c),
                "results": [_result_json(r) for r in c.results],
            }
            for row in matrix
            for c in row
            if c.state != "absent"
        ],
        "outside_matrix": [
            _result_json(r) for r in outside_matrix(results, backends, frameworks, cells_in_matrix)
        ],
        **tables,
        "coverage": None
        if coverage is None
        else {
            "total": coverage.total,
            "data_files": coverage.data_files,
            "xml": str(coverage.xml_path) if coverage.xml_path else None,
            "html": str(coverage.html_dir) if coverage.html_dir else None,
            "note": coverage.note,
        },
        "failures": failures(results),
        "problems": problems,
        "table_problems": table_problems,
        "ok": not problems and not table_problems,
    }


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _csv(value: str) -> list[str]:
    return [v for v in re.split(r"[,\s]+", value) if v]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="folder with session reports")
    parser.add_argument("--backends", type=_csv, default=list(DEFAULT_BACKENDS), help="comma list (rows)")
    parser.add_argument(
        "--frameworks", type=_csv, default=list(DEFAULT_FRAMEWORKS), help="comma list (columns)"
    )
    parser.add_argument(
        "--project-root", type=Path, default=PROJECT_ROOT, help="where pyproject.toml and src/ live"
    )
    parser.add_argument(
        "--cells", type=_csv, default=None, help="comma list of the matrix's sessions (default: every pair)"
    )
    parser.add_argument("--no-coverage", action="store_true", help="skip combining coverage")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 if a cell failed/never ran or an audit did not pass"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    reports: Path = args.reports
    reports.mkdir(parents=True, exist_ok=True)
    results = collect(reports)

    suites = merge_junit(results, reports / "junit.xml")
    coverage = None if args.no_coverage else combine_coverage(results, reports, args.project_root.resolve())

    markdown = render_markdown(results, args.backends, args.frameworks, coverage, args.cells, reports)
    data = render_json(results, args.backends, args.frameworks, coverage, args.cells, reports)
    (reports / "summary.md").write_text(markdown, encoding="utf-8")
    (reports / "summary.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as fh:
            fh.write(markdown)

    print(f"{len(results)} session reports, {suites} junit suites merged -> {reports / 'junit.xml'}")
    if coverage is not None:
        total = f"{coverage.total:.1f}%" if coverage.total is not None else coverage.note
        print(f"coverage: {total}")
    print(f"summary: {reports / 'summary.md'}, {reports / 'summary.json'}")
    for problem in data["problems"] + data["table_problems"]:
        print(f"  problem: {problem}")
    return 1 if data["table_problems"] or (args.strict and data["problems"]) else 0


if __name__ == "__main__":
    sys.exit(main())

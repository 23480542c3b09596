#!/usr/bin/env python
"""Fold the per-session E2E reports into one matrix summary.

Every ``e2e-<backend>-<framework>`` nox session leaves ``meta.json``, ``junit.xml`` and coverage
data in its own report folder. In CI those folders come back as artifacts (nested one level
deeper, and the same session several times for different OS/Python variants), so a reader needs
one place that says which cell of the backend x framework matrix is green, which one failed and
which one never ran. This script builds that view:

* ``<reports>/junit.xml``   - all JUnit suites merged (suite names kept, variant as properties);
* ``<reports>/.coverage``, ``coverage.xml``, ``htmlcov/`` - combined coverage;
* ``<reports>/summary.md`` and ``summary.json`` - the sections of :mod:`tools.summary_tables` (the
  matrix, workflows, cross-backend equivalence, faults, benchmarks, skip audit, coverage, failures),
  each built once and rendered into both; the markdown is also appended to ``$GITHUB_STEP_SUMMARY``.

The matrix's axes are read from ``noxfile.py``'s data, the workflows and stores from the E2E
framework's registries: nothing here lists them again.

The results themselves are read by :mod:`tools.e2e_results`.

Usage::

    python tools/e2e_summary.py --reports reports \
        [--noxfile noxfile.py] [--strict]

The summary is always written, red matrix or not: that is its whole point. The exit code is 1 when
a table finds a problem (stores that disagree beyond their documented differences, points a fault
lost), or, with ``--strict``, when a cell failed, never ran, or a skip audit did not pass.
"""

from __future__ import annotations

import argparse
import io
import json
import os
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

from tools.e2e_results import SessionResult, collect  # noqa: E402
from tools.summary_tables import TABLES, SummaryInput, SummaryTable  # noqa: E402
from tools.summary_tables.base import CoverageSummary, noxfile_axes  # noqa: E402
from tools.summary_tables.matrix import MatrixTable  # noqa: E402

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
# One pass: every section built once, both files rendered from it
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    table: SummaryTable[Any]
    data: Any


@dataclass(frozen=True)
class Summary:
    """Every section's data, built once; ``summary.md`` and ``summary.json`` are rendered from it."""

    sections: list[Section]

    def __getitem__(self, key: str) -> Any:
        """The data of the section named ``key`` (``None`` when the section was left out)."""
        return next((s.data for s in self.sections if s.table.key == key), None)

    @property
    def strict_problems(self) -> list[str]:
        """What fails the summary under ``--strict``: red or missing cells, audits that did not pass."""
        return [p for s in self.sections if s.table.strict_only for p in s.table.problems(s.data)]

    @property
    def table_problems(self) -> list[str]:
        """What always fails the summary: stores that disagree, points a fault lost."""
        return [p for s in self.sections if not s.table.strict_only for p in s.table.problems(s.data)]


def build_summary(summary_input: SummaryInput) -> Summary:
    """Build each section once (a section whose data is ``None`` is left out)."""
    built = [Section(table, table.build(summary_input)) for table in TABLES]
    return Summary([s for s in built if s.data is not None])


def render_markdown(summary: Summary) -> str:
    """The human summary: the headline, then every section under its heading."""
    lines = ["# Tracelet E2E matrix", "", MatrixTable().headline(summary["matrix"])]
    for section in summary.sections:
        lines += ["", f"## {section.table.title}", "", *section.table.markdown(section.data)]
    return "\n".join(lines) + "\n"


def render_json(summary: Summary) -> dict[str, Any]:
    """Machine-readable twin of the markdown (same facts, for dashboards and tests)."""
    data: dict[str, Any] = {}
    for section in summary.sections:
        data.update(section.table.to_json(section.data))
    problems, table_problems = summary.strict_problems, summary.table_problems
    return {
        **data,
        "problems": problems,
        "table_problems": table_problems,
        "ok": not problems and not table_problems,
    }


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="folder with session reports")
    parser.add_argument(
        "--noxfile",
        type=Path,
        default=PROJECT_ROOT / "noxfile.py",
        help="the noxfile whose matrix data to read",
    )
    parser.add_argument(
        "--project-root", type=Path, default=PROJECT_ROOT, help="where pyproject.toml and src/ live"
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

    built = build_summary(SummaryInput(results, noxfile_axes(args.noxfile), reports, coverage))
    markdown = render_markdown(built)
    data = render_json(built)
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

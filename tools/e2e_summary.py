#!/usr/bin/env python
"""Fold the per-session E2E reports into one matrix summary.

Every ``e2e-<backend>-<framework>`` nox session leaves ``meta.json``, ``junit.xml`` and coverage
data in its own report folder. In CI those folders come back as artifacts (nested one level
deeper, and the same session several times for different OS/Python variants), so a reader needs
one place that says which cell of the backend x framework matrix is green, which one failed and
which one never ran. This script builds that view:

* ``<reports>/junit.xml``   - all JUnit suites merged (suite names kept, variant as properties);
* ``<reports>/.coverage``, ``coverage.xml``, ``htmlcov/`` - combined coverage;
* ``<reports>/summary.md`` and ``summary.json`` - matrix, per-workflow table, skip audit,
  coverage total and failures; the markdown is also appended to ``$GITHUB_STEP_SUMMARY``.

Usage::

    python tools/e2e_summary.py --reports reports \
        --backends mlflow,wandb,clearml,none --frameworks torch,lightning,vision [--strict]

The exit code is 0 unless ``--strict`` is given and a cell failed, never ran, or a skip audit
did not pass; a summary must still be produced when the matrix is red, that is its whole point.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from junitparser import Error, Failure, JUnitXml, Properties, Skipped, TestCase

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BACKENDS: tuple[str, ...] = ("mlflow", "wandb", "clearml", "none")
DEFAULT_FRAMEWORKS: tuple[str, ...] = ("torch", "lightning", "pytorch_lightning", "vision")
# Orders used for the per-workflow table so it reads the same from run to run; unknown values
# follow alphabetically.
KNOWN_WORKFLOWS: tuple[str, ...] = (
    "simple_pytorch",
    "lightning",
    "pytorch_lightning",
    "vision",
    "time_series",
)
KNOWN_CASE_BACKENDS: tuple[str, ...] = ("mlflow", "mlflow_server", "wandb", "clearml", "local")
UNLABELLED = "(unlabelled)"
MESSAGE_LIMIT = 200
_COVERAGE_FILE = re.compile(r"^\.coverage(\..+)?$")
_SESSION_NAME = re.compile(r"e2e-[A-Za-z0-9_]+-[A-Za-z0-9_]+")

ICON_OK = "✅"
ICON_FAIL = "❌"
NOT_RUN = "— not run"


@dataclass
class CaseResult:
    """One JUnit testcase, reduced to what the summary tables need."""

    test_id: str
    outcome: str  # "passed" | "failed" | "error" | "skipped"
    time: float
    workflow: str | None = None
    backend: str | None = None
    message: str = ""
    #: fault tests (marker ``e2e_faults``) record the fault they survived and how much it lost
    fault: str | None = None
    lost: int | None = None

    @property
    def is_failure(self) -> bool:
        """Errors (setup/teardown) count as failures: both mean the cell is red."""
        return self.outcome in ("failed", "error")


@dataclass
class Audit:
    """The skip audit the e2e session recorded: did exactly the expected tests skip?"""

    verdict: str = "missing"
    problems: list[str] = field(default_factory=list)
    expected_skips: int | None = None
    observed_skips: int | None = None


@dataclass
class SessionResult:
    """One run of one nox session on one OS/Python variant (one meta.json)."""

    session: str
    backend: str
    framework: str
    directory: Path
    platform: str
    python: str
    status: str
    duration_s: float | None
    junit_path: Path | None
    cases: list[CaseResult]
    audit: Audit
    coverage_files: list[Path]
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Variant label ("linux/py3.12") that tells repeated runs of one session apart."""
        return f"{self.platform}/py{_short_python(self.python)}"

    @property
    def passed(self) -> int:
        return sum(1 for c in self.cases if c.outcome == "passed")

    @property
    def failed(self) -> int:
        return sum(1 for c in self.cases if c.is_failure)

    @property
    def skipped(self) -> int:
        return sum(1 for c in self.cases if c.outcome == "skipped")

    @property
    def ok(self) -> bool:
        """Green only if nox said so *and* the JUnit agrees: a crash leaves no junit.xml."""
        return self.status == "passed" and self.junit_path is not None and self.failed == 0


@dataclass
class CellResult:
    """A backend x framework cell of the matrix with all its variants."""

    backend: str
    framework: str
    session: str
    results: list[SessionResult]

    @property
    def state(self) -> str:
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


# --------------------------------------------------------------------------------------------
# Collection
# --------------------------------------------------------------------------------------------


def _short_python(version: str) -> str:
    parts = version.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else version


def _first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= MESSAGE_LIMIT else line[: MESSAGE_LIMIT - 1] + "…"
    return ""


def session_name(backend: str, framework: str) -> str:
    """The nox session name for a cell; the noxfile uses the same scheme."""
    return f"e2e-{backend}-{framework}"


def _split_session(name: str) -> tuple[str, str]:
    parts = name.split("-")
    if len(parts) >= 3 and parts[0] == "e2e":
        return parts[1], "-".join(parts[2:])
    return "", ""


def split_values(value: str | None) -> list[str]:
    """Property values may be comma lists: a test covering several backends/workflows."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _case_properties(case: TestCase) -> dict[str, str]:
    """Properties of a testcase; a name recorded several times keeps all values, comma-joined."""
    props = case.child(Properties)  # type: ignore[no-untyped-call]
    if props is None:
        return {}
    merged: dict[str, list[str]] = {}
    for prop in props:
        if prop.name is None or prop.value is None:
            continue
        values = merged.setdefault(prop.name, [])
        values += [v for v in split_values(prop.value) if v not in values]
    return {name: ",".join(values) for name, values in merged.items()}


def _case_outcome(case: TestCase) -> tuple[str, str]:
    results = case.result
    for kind, name in ((Error, "error"), (Failure, "failed"), (Skipped, "skipped")):
        for res in results:
            if isinstance(res, kind):
                return name, _first_line(res.message) or _first_line(res.text)
    return "passed", ""


def case_id(case: TestCase) -> str:
    """Pytest node id when the JUnit carries ``file`` (junit_family xunit1), else classname::name."""
    classname = case.classname or ""
    name = str(case.name)
    file = case._elem.get("file")  # junitparser has no accessor for pytest's xunit1 attribute
    if file:
        path = str(file).replace("\\", "/")
        module = path[:-3].replace("/", ".") if path.endswith(".py") else ""
        if module and (classname == module or classname.startswith(module + ".")):
            inner = [part for part in classname[len(module) :].split(".") if part]
            return "::".join([path, *inner, name])
    return f"{classname}::{name}" if classname else name


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def parse_junit(path: Path) -> list[CaseResult]:
    """Read every testcase of a pytest JUnit file (all suites, nested ones too)."""
    xml = JUnitXml.fromfile(str(path))
    cases: list[CaseResult] = []
    for suite in xml:
        for case in suite:
            outcome, message = _case_outcome(case)
            props = _case_properties(case)
            cases.append(
                CaseResult(
                    test_id=case_id(case),
                    outcome=outcome,
                    time=float(case.time or 0.0),
                    workflow=props.get("workflow"),
                    backend=props.get("backend"),
                    message=message,
                    fault=props.get("fault"),
                    lost=_int_or_none(props.get("lost")),
                )
            )
    return cases


def _coverage_files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file()
        and _COVERAGE_FILE.match(p.name)
        and p.name != ".coveragerc"
        and not p.name.endswith(("-journal", "-wal", "-shm"))
    )


def _audit_from(meta: dict[str, Any]) -> Audit:
    raw = meta.get("audit")
    if not isinstance(raw, dict):
        return Audit(verdict="missing", problems=["meta.json has no skip audit"])
    problems = raw.get("problems") or []
    return Audit(
        verdict=str(raw.get("verdict") or "missing"),
        problems=[str(p) for p in problems] if isinstance(problems, list) else [str(problems)],
        expected_skips=raw.get("expected_skips"),
        observed_skips=raw.get("observed_skips"),
    )


def load_session(meta_path: Path) -> SessionResult:
    """Build a SessionResult from one meta.json and the junit.xml beside it.

    Unreadable files become notes on a failed result rather than exceptions: a half-written
    report from a crashed job is exactly the case the summary has to show.
    """
    directory = meta_path.parent
    notes: list[str] = []
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("top level is not an object")
    except (OSError, ValueError) as exc:
        meta = {}
        notes.append(f"meta.json unreadable: {exc}")

    name = str(meta.get("session") or "")
    if not name:
        match = _SESSION_NAME.search(directory.name)
        name = match.group(0) if match else directory.name
    backend, framework = _split_session(name)
    backend = str(meta.get("backend") or backend)
    framework = str(meta.get("framework") or framework)

    junit_file = directory / "junit.xml"
    junit_path: Path | None = None
    cases: list[CaseResult] = []
    if junit_file.is_file():
        try:
            cases = parse_junit(junit_file)
            junit_path = junit_file
        except Exception as exc:  # junitparser raises several types for broken XML
            notes.append(f"junit.xml unreadable: {exc}")
    else:
        notes.append("no junit.xml (the session crashed before or while running pytest)")

    duration = meta.get("duration_s")
    status = str(meta.get("status") or "failed")
    return SessionResult(
        session=name,
        backend=backend,
        framework=framework,
        directory=directory,
        platform=str(meta.get("platform") or "?"),
        python=str(meta.get("python") or "?"),
        status=status,
        duration_s=float(duration) if isinstance(duration, (int, float)) else None,
        junit_path=junit_path,
        cases=cases,
        audit=_audit_from(meta),
        coverage_files=_coverage_files(directory),
        notes=notes,
        meta=meta,
    )


def collect(reports_dir: Path) -> list[SessionResult]:
    """Every session result under ``reports_dir``, at any depth, in a stable order."""
    results = [load_session(p) for p in sorted(Path(reports_dir).rglob("meta.json")) if p.is_file()]
    return sorted(results, key=lambda r: (r.session, r.platform, r.python, str(r.directory)))


def build_matrix(
    results: Sequence[SessionResult], backends: Sequence[str], frameworks: Sequence[str]
) -> list[list[CellResult]]:
    """Rows are backends, columns framework sets; a cell holds every variant of its session."""
    rows: list[list[CellResult]] = []
    for backend in backends:
        row = []
        for framework in frameworks:
            name = session_name(backend, framework)
            row.append(CellResult(backend, framework, name, [r for r in results if r.session == name]))
        rows.append(row)
    return rows


def outside_matrix(
    results: Sequence[SessionResult], backends: Sequence[str], frameworks: Sequence[str]
) -> list[SessionResult]:
    """Results whose session is not a cell of the requested matrix (e.g. a renamed session)."""
    names = {session_name(b, f) for b in backends for f in frameworks}
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
    if not cell.results:
        return NOT_RUN
    if len(cell.results) == 1:
        return format_result(cell.results[0])
    return "<br>".join(f"{r.label}: {format_result(r)}" for r in cell.results)


def _ordered(values: set[str], known: Sequence[str]) -> list[str]:
    first = [v for v in known if v in values]
    rest = sorted(v for v in values if v not in known and v != UNLABELLED)
    tail = [UNLABELLED] if UNLABELLED in values else []
    return first + rest + tail


def workflow_table(results: Sequence[SessionResult]) -> dict[str, dict[str, dict[str, int]]]:
    """{workflow: {case backend: {"passed", "failed", "skipped"}}} over all sessions/variants.

    A test recorded for several workflows/backends (comma lists) counts once in each pair.
    """
    table: dict[str, dict[str, dict[str, int]]] = {}
    for result in results:
        for case in result.cases:
            key = "failed" if case.is_failure else case.outcome
            for wf in split_values(case.workflow) or [UNLABELLED]:
                for be in split_values(case.backend) or [UNLABELLED]:
                    counts = table.setdefault(wf, {}).setdefault(be, {"passed": 0, "failed": 0, "skipped": 0})
                    counts[key] = counts.get(key, 0) + 1
    return table


def faults_table(results: Sequence[SessionResult]) -> dict[str, dict[str, dict[str, int]]]:
    """fault -> backend -> {"runs", "failed", "lost"}: what each fault test survived, and what it lost."""
    table: dict[str, dict[str, dict[str, int]]] = {}
    for result in results:
        for case in result.cases:
            if case.fault is None or case.outcome == "skipped":
                continue
            cell = table.setdefault(case.fault, {}).setdefault(
                case.backend or UNLABELLED, {"runs": 0, "failed": 0, "lost": 0}
            )
            cell["runs"] += 1
            cell["failed"] += int(case.is_failure)
            cell["lost"] += case.lost or 0
    return table


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


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(
    results: Sequence[SessionResult],
    backends: Sequence[str],
    frameworks: Sequence[str],
    coverage: CoverageSummary | None = None,
) -> str:
    """The human summary: matrix, workflows, skip audit, coverage, failures."""
    matrix = build_matrix(results, backends, frameworks)
    cells = [c for row in matrix for c in row]
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
        "Each cell: passed/failed/skipped · duration; one line per OS/Python variant.",
        "",
        "| backend | " + " | ".join(frameworks) + " |",
        "|---|" + "---|" * len(frameworks),
    ]
    for backend, row in zip(backends, matrix, strict=True):
        lines.append(f"| **{backend}** | " + " | ".join(format_cell(c) for c in row) + " |")

    extra = outside_matrix(results, backends, frameworks)
    if extra:
        lines += ["", "Sessions outside the matrix:", ""]
        lines += [f"- `{r.session}` ({r.label}): {format_result(r)}" for r in extra]

    lines += ["", "## Workflows", ""]
    table = workflow_table(results)
    if table:
        case_backends = _ordered({b for per in table.values() for b in per}, KNOWN_CASE_BACKENDS)
        lines.append("| workflow | " + " | ".join(case_backends) + " |")
        lines.append("|---|" + "---|" * len(case_backends))
        for wf in _ordered(set(table), KNOWN_WORKFLOWS):
            row_cells = []
            for be in case_backends:
                c = table[wf].get(be)
                row_cells.append(f"{c['passed']}/{c['failed']}/{c['skipped']}" if c else "—")
            lines.append(f"| {_md_escape(wf)} | " + " | ".join(row_cells) + " |")
        lines += ["", "Counts are passed/failed/skipped over all sessions and variants."]
    else:
        lines.append("No test results.")

    lines += ["", "## Faults", ""]
    faults = faults_table(results)
    if faults:
        fault_backends = _ordered({b for per in faults.values() for b in per}, KNOWN_CASE_BACKENDS)
        lines.append("| fault | " + " | ".join(fault_backends) + " |")
        lines.append("|---|" + "---|" * len(fault_backends))
        for fault in sorted(faults):
            row_cells = []
            for be in fault_backends:
                c = faults[fault].get(be)
                if c is None:
                    row_cells.append("—")
                else:
                    icon = ICON_FAIL if c["failed"] or c["lost"] else ICON_OK
                    row_cells.append(f"{icon} {c['lost']} lost")
            lines.append(f"| {_md_escape(fault)} | " + " | ".join(row_cells) + " |")
        lines += [
            "",
            "Points lost over all runs of each fault test (0 expected); ❌ also marks a failed run.",
        ]
    else:
        lines.append("No fault test ran.")

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
) -> dict[str, Any]:
    """Machine-readable twin of the markdown (same facts, for dashboards and tests)."""
    matrix = build_matrix(results, backends, frameworks)
    problems = strict_problems(matrix, results)
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
        ],
        "outside_matrix": [_result_json(r) for r in outside_matrix(results, backends, frameworks)],
        "workflows": workflow_table(results),
        "faults": faults_table(results),
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
        "ok": not problems,
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

    markdown = render_markdown(results, args.backends, args.frameworks, coverage)
    data = render_json(results, args.backends, args.frameworks, coverage)
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
    for problem in data["problems"]:
        print(f"  problem: {problem}")
    return 1 if args.strict and data["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())

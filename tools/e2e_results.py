"""The E2E sessions' results, as the summary reads them from the report folders.

Every ``e2e-<backend>-<framework>`` nox session leaves ``meta.json``, ``junit.xml``, coverage data
and its normalized run records in its own folder; :func:`collect` finds them at any depth (CI nests
them one level deeper) and turns each ``meta.json`` into a :class:`SessionResult`. Unreadable files
become notes on a failed result, never exceptions: a half-written report is exactly what the
summary must show.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from junitparser import Error, Failure, JUnitXml, Properties, Skipped, TestCase

UNLABELLED = "(unlabelled)"
MESSAGE_LIMIT = 200
#: testcase properties that hold comma lists (a test covering several workflows or backends)
LIST_PROPERTIES = frozenset({"workflow", "backend"})
_COVERAGE_FILE = re.compile(r"^\.coverage(\..+)?$")
_SESSION_NAME = re.compile(r"e2e-[A-Za-z0-9_]+-[A-Za-z0-9_]+")


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
    def versions(self) -> str:
        """``pinned`` (a cell of the matrix), ``oldest`` (a floor cell) or ``latest`` (a newest cell)."""
        return str(self.meta.get("versions") or "pinned")

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
    """Properties of a testcase. ``workflow`` and ``backend`` are comma lists (a name recorded several
    times keeps all values); any other property keeps its value whole (a fault's name may hold commas)."""
    props = case.child(Properties)  # type: ignore[no-untyped-call]
    if props is None:
        return {}
    merged: dict[str, list[str]] = {}
    for prop in props:
        if prop.name is None or prop.value is None:
            continue
        values = merged.setdefault(prop.name, [])
        new = split_values(prop.value) if prop.name in LIST_PROPERTIES else [prop.value]
        values += [v for v in new if v not in values]
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

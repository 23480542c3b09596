#!/usr/bin/env python
"""Run the tracelet E2E suite locally and write a readable report.

This is a command-line tool, not a test module: it lives next to the suite so it is found where
people look for it, and ``__test__ = False`` keeps pytest from collecting anything here.

Usage::

    python tests/e2e/test_runner.py [--backends mlflow wandb ...] [--workflows simple_pytorch ...]
                                    [--output-dir DIR] [--no-save] [--verbose] [-- PYTEST_ARGS...]

It runs ``python -m pytest tests/e2e`` in a subprocess (so the suite sees exactly the options
and plugins CI uses), streams one ``[n] OUTCOME test-id`` line per test as results arrive, and
then writes ``e2e_report_<timestamp>.json`` and ``e2e_summary_<timestamp>.md`` with the pass
rate, timings per test and per backend, per-workflow success and grouped failure patterns. The
report is built from the JUnit XML pytest writes, using the ``workflow`` and ``backend``
properties the tests record. ``TRACELET_E2E_INSTALL_SET`` is passed through to pytest when set;
without it the suite takes the importable packages as the set. The exit code is pytest's.

Only the standard library is used, so this runs in any environment that can run the suite.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

__test__ = False  # a CLI living in tests/e2e: pytest must not collect anything from this module

REPO_ROOT = Path(__file__).resolve().parents[2]
SUITE_DIR = "tests/e2e"
INSTALL_SET_ENV = "TRACELET_E2E_INSTALL_SET"
DEFAULT_OUTPUT_DIR = "e2e_test_results"
UNKNOWN = "unknown"
PATTERN_LIMIT = 160

# pytest -v result lines: "tests/e2e/test_x.py::test_a[mlflow] PASSED   [ 20%]", optionally with a
# skip/xfail reason in parentheses. The id may contain spaces inside [...] parameters.
_OUTCOMES = r"(?P<outcome>PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)"
_PROGRESS = re.compile(
    r"^(?P<nodeid>\S.*?::\S.*?)\s+" + _OUTCOMES + r"(?:\s+\((?P<reason>.*?)\))?(?:\s+\[\s*\d+%\])?\s*$"
)
# The same with pytest-xdist: "[gw0] [ 50%] PASSED tests/e2e/test_x.py::test_a".
_PROGRESS_XDIST = re.compile(
    r"^\[gw\d+\] \[\s*\d+%\] " + _OUTCOMES + r" (?P<nodeid>\S.*?::\S.*?)(?:\s+\((?P<reason>.*?)\))?\s*$"
)
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_PATH = re.compile(r"(?:[A-Za-z]:)?[\w.~-]*(?:[/\\][\w.~-]+){2,}[/\\]?")
_TRACEBACK_TAIL = re.compile(r":\d+: (?P<type>[A-Za-z_][\w.]*)\s*$")
_RANDOM_ID = re.compile(r"\b(?=[A-Za-z0-9]*\d)(?=[A-Za-z0-9]*[A-Za-z])[A-Za-z0-9]{8,}\b")
_NUMBER = re.compile(r"(?<![A-Za-z_])\d+(?:\.\d+)?")
_QUOTED_EXC = re.compile(r'^failed on (?:setup|teardown|call) with "(?P<inner>.*)"$', re.DOTALL)
_EXC_TYPE = re.compile(
    r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exit|Failed|Interrupt|Warning|Skipped))\b"
)


@dataclass
class CaseRecord:
    """One test as the report sees it."""

    test_id: str
    outcome: str  # "passed" | "failed" | "error" | "skipped"
    time: float
    backend: str
    workflow: str
    message: str = ""
    exception: str = ""  # from the traceback's last line ("file.py:12: ValueError") when present
    #: pytest's whole failure text (the assertion's diff, the traceback) of a failed or errored test:
    #: the one-line message cannot say which element of two long lists differed
    detail: str = ""


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def parse_progress_line(line: str) -> tuple[str, str, str | None] | None:
    """(node id, OUTCOME, reason) for a pytest -v result line, None for any other line."""
    match = _PROGRESS.match(line.rstrip()) or _PROGRESS_XDIST.match(line.rstrip())
    if match is None:
        return None
    return match["nodeid"], match["outcome"], match["reason"]


def _first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def junit_test_id(classname: str, name: str, file: str | None = None) -> str:
    """Pytest node id when the JUnit carries ``file`` (junit_family xunit1), else classname::name."""
    if file:
        path = file.replace("\\", "/")
        module = path[:-3].replace("/", ".") if path.endswith(".py") else ""
        if module and (classname == module or classname.startswith(module + ".")):
            inner = [part for part in classname[len(module) :].split(".") if part]
            return "::".join([path, *inner, name])
    return f"{classname}::{name}" if classname else name


def split_values(value: str) -> list[str]:
    """Property values may be comma lists (a test covering several backends or workflows)."""
    return [v.strip() for v in value.split(",") if v.strip()] or [UNKNOWN]


def _property(case: ET.Element, name: str) -> str:
    # record_property may be called more than once for a name: keep every value, in order.
    values: list[str] = []
    for prop in case.findall("properties/property"):
        if prop.get("name") == name:
            values += [v for v in split_values(prop.get("value") or "") if v not in values and v != UNKNOWN]
    return ",".join(values) or UNKNOWN


def parse_junit(path: Path) -> list[CaseRecord]:
    """Every testcase of a pytest JUnit XML file (suites at any depth)."""
    root = ET.parse(path).getroot()
    records: list[CaseRecord] = []
    for case in root.iter("testcase"):
        outcome, message, exception, detail = "passed", "", "", ""
        for tag, name in (("error", "error"), ("failure", "failed"), ("skipped", "skipped")):
            element = case.find(tag)
            if element is not None:
                outcome = name
                message = _first_line(element.get("message")) or _first_line(element.text)
                detail = (element.text or "").strip() if name != "skipped" else ""
                found = _TRACEBACK_TAIL.search(detail.splitlines()[-1]) if detail else None
                exception = found["type"] if found else ""
                break
        test_id = junit_test_id(case.get("classname") or "", case.get("name") or "?", case.get("file"))
        records.append(
            CaseRecord(
                test_id=test_id,
                outcome=outcome,
                time=float(case.get("time") or 0.0),
                backend=_property(case, "backend"),
                workflow=_property(case, "workflow"),
                message=message,
                exception=exception,
                detail=detail,
            )
        )
    return records


def error_pattern(message: str, exception: str = "") -> tuple[str, str]:
    """(exception type, normalised first line) used to group similar failures together.

    Quoted strings, paths, addresses and numbers are blanked so "run 'ab12' timed out after
    30.1s" and "run 'cd34' timed out after 29.8s" land in one group; pytest's 'failed on setup
    with "X: y"' wrapper is unwrapped to X: y. ``exception`` (from the traceback) wins over a
    type guessed from the message, which a bare ``assert`` does not carry.
    """
    line = _first_line(message)
    quoted = _QUOTED_EXC.match(line)
    if quoted:
        line = quoted["inner"]
    exc = _EXC_TYPE.match(line)
    exc_type = exception or (exc["type"] if exc else "Failure")
    normalised = _QUOTED.sub("'…'", line)
    normalised = _PATH.sub("<path>", normalised)
    normalised = _ADDRESS.sub("<addr>", normalised)
    normalised = _RANDOM_ID.sub("<id>", normalised)
    normalised = _NUMBER.sub("N", normalised)
    if len(normalised) > PATTERN_LIMIT:
        normalised = normalised[: PATTERN_LIMIT - 1] + "…"
    return exc_type, normalised or "(no message)"


# --------------------------------------------------------------------------------------------
# Report building
# --------------------------------------------------------------------------------------------


def _rate(passed: int, failed: int) -> float | None:
    executed = passed + failed
    return round(100.0 * passed / executed, 1) if executed else None


def _group_counts(records: Iterable[CaseRecord], key: str) -> dict[str, dict[str, Any]]:
    """Counts and time per backend/workflow value.

    A test recorded for several values counts once in each; its time is shared out evenly so
    the per-group times still add up to the time spent in tests.
    """
    groups: dict[str, dict[str, Any]] = {}
    for r in records:
        names = split_values(getattr(r, key))
        for name in names:
            g = groups.setdefault(name, {"passed": 0, "failed": 0, "skipped": 0, "total": 0, "time_s": 0.0})
            g["total"] += 1
            g["time_s"] = round(g["time_s"] + r.time / len(names), 3)
            g["failed" if r.outcome in ("failed", "error") else r.outcome] += 1
    for g in groups.values():
        g["success_rate"] = _rate(g["passed"], g["failed"])
    return dict(sorted(groups.items()))


def build_report(
    records: Sequence[CaseRecord],
    *,
    exit_code: int,
    wall_time_s: float,
    backends: Sequence[str] | None = None,
    workflows: Sequence[str] | None = None,
    started_at: str | None = None,
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The JSON report. Pass rates count executed tests only: skips say nothing either way."""
    passed = sum(1 for r in records if r.outcome == "passed")
    failed = sum(1 for r in records if r.outcome == "failed")
    errors = sum(1 for r in records if r.outcome == "error")
    skipped = sum(1 for r in records if r.outcome == "skipped")

    patterns: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        if r.outcome not in ("failed", "error"):
            continue
        exc_type, text = error_pattern(r.message, r.exception)
        entry = patterns.setdefault(
            (exc_type, text), {"exception": exc_type, "pattern": text, "count": 0, "tests": []}
        )
        entry["count"] += 1
        entry["tests"].append(r.test_id)

    return {
        "started_at": started_at,
        "command": list(command) if command else None,
        "install_set": os.environ.get(INSTALL_SET_ENV),
        "selection": {"backends": list(backends or []), "workflows": list(workflows or [])},
        "exit_code": exit_code,
        "totals": {
            "tests": len(records),
            "passed": passed,
            "failed": failed,
            "errors": errors,
            "skipped": skipped,
            "pass_rate": _rate(passed, failed + errors),
        },
        "time": {
            "wall_s": round(wall_time_s, 3),
            "tests_s": round(sum(r.time for r in records), 3),
        },
        "per_test": [asdict(r) for r in sorted(records, key=lambda r: (-r.time, r.test_id))],
        "per_backend": _group_counts(records, "backend"),
        "per_workflow": _group_counts(records, "workflow"),
        "error_patterns": sorted(
            patterns.values(), key=lambda p: (-p["count"], p["exception"], p["pattern"])
        ),
    }


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}%"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    """Human-readable twin of the JSON report."""
    t = report["totals"]
    icon = "✅" if report["exit_code"] == 0 else "❌"
    lines = [
        "# Tracelet E2E run",
        "",
        f"{icon} pytest exit code {report['exit_code']} · {t['tests']} tests: {t['passed']} passed, "
        f"{t['failed']} failed, {t['errors']} errors, {t['skipped']} skipped · "
        f"pass rate {_pct(t['pass_rate'])} (of executed tests)",
        "",
        f"Total time: {report['time']['wall_s']:.1f}s wall, {report['time']['tests_s']:.1f}s in tests.",
    ]
    sel = report["selection"]
    lines.append(
        f"Backends: {', '.join(sel['backends']) or 'all'} · workflows: {', '.join(sel['workflows']) or 'all'}"
        + (f" · install set: {report['install_set']}" if report.get("install_set") else "")
    )

    for title, key in (("Per backend", "per_backend"), ("Per workflow", "per_workflow")):
        lines += [
            "",
            f"## {title}",
            "",
            "| name | passed | failed | skipped | success | time |",
            "|---|---|---|---|---|---|",
        ]
        for name, g in report[key].items():
            lines.append(
                f"| {_md(name)} | {g['passed']} | {g['failed']} | {g['skipped']} | "
                f"{_pct(g['success_rate'])} | {g['time_s']:.1f}s |"
            )

    lines += ["", "## Error patterns", ""]
    if report["error_patterns"]:
        for p in report["error_patterns"]:
            lines.append(f"- **{p['count']} x {_md(p['exception'])}**: `{p['pattern']}`")
            lines += [f"  - `{test}`" for test in p["tests"]]
    else:
        lines.append("No failures.")

    lines += [
        "",
        "## Time per test",
        "",
        "| test | outcome | backend | workflow | time |",
        "|---|---|---|---|---|",
    ]
    for r in report["per_test"]:
        lines.append(
            f"| `{_md(r['test_id'])}` | {r['outcome']} | {_md(r['backend'])} | {_md(r['workflow'])} | "
            f"{r['time']:.2f}s |"
        )
    return "\n".join(lines) + "\n"


def save_report(report: dict[str, Any], output_dir: Path, stamp: str) -> tuple[Path, Path]:
    """Write the JSON and markdown reports; returns their paths."""
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / f"e2e_report_{stamp}.json"
    md_path = output_dir / f"e2e_summary_{stamp}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(report), encoding="utf-8")
    return json_path, md_path


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def _flatten(values: Sequence[str] | None) -> list[str]:
    """Accept both "--backends mlflow wandb" and "--backends mlflow,wandb"."""
    return [v for value in values or [] for v in re.split(r"[,\s]+", value) if v]


def build_command(
    junit_path: Path,
    backends: Sequence[str] | None = None,
    workflows: Sequence[str] | None = None,
    extra: Sequence[str] = (),
    workers: str | None = None,
) -> list[str]:
    """The pytest command line; selection options are omitted to let the conftest default.

    Asking for workflows runs those workflows' tests only (not the lifecycle, fault and secret
    tests beside them); ``workers`` is pytest-xdist's ``-n``, left out when it is None.
    """
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        SUITE_DIR,
        "-v",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit_path}",
        "-o",
        "junit_suite_name=e2e-runner",
        "-o",
        "junit_family=xunit1",  # adds file= to testcases (real node ids) and suits record_property
    ]
    if backends:
        cmd.append(f"--e2e-backends={','.join(backends)}")
    if workflows:
        cmd += [f"--e2e-workflows={','.join(workflows)}", "--e2e-only-workflows"]
    if workers is not None and not any(a == "-n" or a.startswith(("-n", "--numprocesses")) for a in extra):
        cmd += ["-n", workers]
    return cmd + list(extra)


def xdist_workers() -> str | None:
    """``auto`` (one worker per CPU) when pytest-xdist is installed; None, and a note, when it is not."""
    if importlib.util.find_spec("xdist") is not None:
        return "auto"
    print(
        "note: pytest-xdist is not installed, so the tests run one after another (pip install pytest-xdist)"
    )
    return None


def run_pytest(cmd: Sequence[str], out: TextIO = sys.stdout, verbose: bool = False) -> int:
    """Run pytest, echo one line per result as it arrives, and pytest's summary at the end."""
    env = dict(os.environ)  # with TRACELET_E2E_INSTALL_SET, if set: the suite checks it
    env["PYTHONUNBUFFERED"] = "1"  # otherwise the piped output arrives in one block at the end
    env.setdefault("PYTHONIOENCODING", "utf-8")
    rest: list[str] = []
    count = 0
    with subprocess.Popen(
        list(cmd),
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                progress = parse_progress_line(line)
                if progress is not None:
                    count += 1
                    nodeid, outcome, reason = progress
                    out.write(f"[{count}] {outcome} {nodeid}" + (f" ({reason})" if reason else "") + "\n")
                    out.flush()
                elif verbose:
                    out.write(line + "\n")
                    out.flush()
                else:
                    rest.append(line)
        except KeyboardInterrupt:
            # Ctrl-C reaches pytest too; let it write its JUnit file so the partial report is kept.
            out.write("\ninterrupted: waiting for pytest to finish writing its report...\n")
        code = proc.wait()
    if not verbose:
        out.write("\n".join(_tail(rest, code)) + "\n")
    return code


def _tail(lines: list[str], code: int) -> list[str]:
    """What to show of pytest's own output: the short summary, or everything on a usage error."""
    if code not in (0, 1):  # interrupted, internal/usage error, nothing collected: show why
        return lines[-200:]
    for i, line in enumerate(lines):
        if "short test summary info" in line:
            return lines[i:]
    return lines[-1:]


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description="Run the tracelet E2E suite and write JSON/markdown reports.",
        epilog="Arguments after '--' are passed to pytest unchanged.",
    )
    parser.add_argument("--backends", nargs="+", help="backends to test (default: the conftest's choice)")
    parser.add_argument("--workflows", nargs="+", help="workflows to run (default: all)")
    parser.add_argument("--output-dir", type=Path, default=Path(DEFAULT_OUTPUT_DIR), help="report folder")
    parser.add_argument("--no-save", action="store_true", help="do not write report files")
    parser.add_argument("--verbose", action="store_true", help="stream pytest's whole output")
    args, extra = parser.parse_known_args(argv)
    if extra and extra[0] == "--":
        extra = extra[1:]
    return args, extra


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = parse_args(argv)
    backends, workflows = _flatten(args.backends), _flatten(args.workflows)
    if os.environ.get(INSTALL_SET_ENV) is None:
        print(f"note: {INSTALL_SET_ENV} is not set; the suite takes the importable packages as the set.")

    started = datetime.now()
    with tempfile.TemporaryDirectory(prefix="tracelet-e2e-") as tmp:
        junit_path = Path(tmp) / "junit.xml"
        cmd = build_command(junit_path, backends, workflows, extra, workers=xdist_workers())
        print("$ " + " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        code = run_pytest(cmd, verbose=args.verbose)
        wall = time.perf_counter() - t0
        records = parse_junit(junit_path) if junit_path.is_file() else []

    report = build_report(
        records,
        exit_code=code,
        wall_time_s=wall,
        backends=backends,
        workflows=workflows,
        started_at=started.isoformat(timespec="seconds"),
        command=cmd,
    )
    t = report["totals"]
    print(
        f"\n{t['tests']} tests: {t['passed']} passed, {t['failed']} failed, {t['errors']} errors, "
        f"{t['skipped']} skipped; pass rate {_pct(t['pass_rate'])}; {wall:.1f}s"
    )
    if not args.no_save:
        json_path, md_path = save_report(report, args.output_dir, started.strftime("%Y%m%d_%H%M%S"))
        print(f"report: {json_path}\nsummary: {md_path}")
    return code


if __name__ == "__main__":
    sys.exit(main())

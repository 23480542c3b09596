"""The matrix: one cell per ``e2e-<backend>-<framework>`` session, with every OS/Python variant of it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tools.e2e_results import SessionResult, session_name
from tools.summary_tables.base import ICON_FAIL, ICON_OK, MatrixAxes, SummaryInput, header

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


@dataclass(frozen=True)
class Matrix:
    axes: MatrixAxes
    #: rows are backends, columns framework sets
    rows: list[list[CellResult]]
    #: results whose session is not a cell (a renamed session, say)
    outside: list[SessionResult] = field(default_factory=list)

    @property
    def cells(self) -> list[CellResult]:
        return [c for row in self.rows for c in row if c.state != "absent"]


def build_matrix(results: Sequence[SessionResult], axes: MatrixAxes) -> Matrix:
    """Every pair of the axes; a pair that is not one of ``axes.cells`` is absent."""
    rows = [
        [
            CellResult(
                b,
                f,
                (name := session_name(b, f)),
                [r for r in results if r.session == name],
                name in axes.cells,
            )
            for f in axes.frameworks
        ]
        for b in axes.backends
    ]
    names = {session_name(b, f) for b in axes.backends for f in axes.frameworks} & set(axes.cells)
    # the floor and newest cells have a table of their own (tools.summary_tables.versions)
    outside = [r for r in results if r.session not in names and r.versions == "pinned"]
    return Matrix(axes, rows, outside)


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


def result_json(r: SessionResult) -> dict[str, Any]:
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


class MatrixTable:
    key = "matrix"
    title = "Matrix"
    strict_only = True

    def build(self, summary_input: SummaryInput) -> Matrix | None:
        """The matrix; left out when only floor or newest cells ran (the weekly newest run)."""
        results = summary_input.results
        if results and all(r.versions != "pinned" for r in results):
            return None
        return build_matrix(results, summary_input.axes)

    def headline(self, data: Matrix | None) -> str:
        """The summary's first line: all green, or how many cells failed and never ran."""
        if data is None:
            return "Only floor or newest cells ran: see **Versions**."
        n_failed = sum(1 for c in data.cells if c.state == "failed")
        n_missing = sum(1 for c in data.cells if c.state == "not_run")
        if n_failed or n_missing:
            n_passed = len(data.cells) - n_failed - n_missing
            counts = f"{n_passed}/{len(data.cells)} cells passed, {n_failed} failed, {n_missing} not run"
            return f"**{ICON_FAIL} {counts}.**"
        return f"**{ICON_OK} all {len(data.cells)} cells passed.**"

    def markdown(self, data: Matrix) -> list[str]:
        lines = [
            "Each cell: passed/failed/skipped · duration; one line per OS/Python variant;"
            f" {ABSENT}: not a cell.",
            "",
            *header("backend", data.axes.frameworks),
        ]
        for backend, row in zip(data.axes.backends, data.rows, strict=True):
            lines.append(f"| **{backend}** | " + " | ".join(format_cell(c) for c in row) + " |")
        if data.outside:
            lines += ["", "Sessions outside the matrix:", ""]
            lines += [f"- `{r.session}` ({r.label}): {format_result(r)}" for r in data.outside]
        return lines

    def to_json(self, data: Matrix) -> dict[str, Any]:
        return {
            "backends": list(data.axes.backends),
            "frameworks": list(data.axes.frameworks),
            "cells": [
                {
                    "backend": c.backend,
                    "framework": c.framework,
                    "session": c.session,
                    "state": c.state,
                    "text": format_cell(c),
                    "results": [result_json(r) for r in c.results],
                }
                for c in data.cells
            ],
            "outside_matrix": [result_json(r) for r in data.outside],
        }

    def problems(self, data: Matrix) -> list[str]:
        """Red or missing cells (they fail the summary under ``--strict``)."""
        problems = []
        for cell in data.cells:
            if cell.state == "not_run":
                problems.append(f"{cell.session}: never ran")
            elif cell.state == "failed":
                bad = ", ".join(r.label for r in cell.results if not r.ok)
                problems.append(f"{cell.session}: failed ({bad})")
        return problems

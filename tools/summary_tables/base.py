"""What every section of the E2E summary is: one small interface, and the helpers they share.

A section (the matrix, the workflows, the cross-backend equivalence, the faults, the benchmarks, the skip
audit, the coverage, the failures) is a table: it builds its data once from the :class:`SummaryInput`,
and from that data gives its lines for ``summary.md``, its entries for ``summary.json`` and its problems.
The summary builds every table once and renders both files from what was built; the order is
:data:`tools.summary_tables.TABLES`. Adding a section is adding a module.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tools.e2e_results import UNLABELLED, SessionResult

ICON_OK = "✅"
ICON_FAIL = "❌"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class MatrixAxes:
    """The matrix as ``noxfile.py`` declares it: rows, columns, and the sessions that are cells."""

    backends: tuple[str, ...]
    frameworks: tuple[str, ...]
    cells: tuple[str, ...]


def noxfile_literals(names: Sequence[str], noxfile: Path = PROJECT_ROOT / "noxfile.py") -> dict[str, Any]:
    """The values of the data named ``names`` at the top of ``noxfile.py`` (those that are literals).

    Read from the file's syntax tree, so a reader needs neither nox nor a copy of the data.
    """
    values: dict[str, Any] = {}
    for node in ast.parse(noxfile.read_text(encoding="utf-8")).body:
        target: ast.expr
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in names:
            values[target.id] = ast.literal_eval(value)
    return values


def noxfile_axes(noxfile: Path = PROJECT_ROOT / "noxfile.py") -> MatrixAxes:
    """The matrix data at the top of ``noxfile.py`` (``BACKENDS``, ``FRAMEWORKS``, ``ONLY_WITH``)."""
    values = noxfile_literals(("BACKENDS", "FRAMEWORKS", "ONLY_WITH"), noxfile)
    backends, frameworks = tuple(values["BACKENDS"]), tuple(values["FRAMEWORKS"])
    only_with: dict[str, Sequence[str]] = values.get("ONLY_WITH", {})
    cells = tuple(f"e2e-{b}-{f}" for b in backends for f in frameworks if f in only_with.get(b, frameworks))
    return MatrixAxes(backends, frameworks, cells)


def known_workflows() -> tuple[str, ...]:
    """The E2E framework's workflows, in its registry's order (the order of the summary's rows)."""
    from tests.e2e.framework import e2e_framework

    return tuple(e2e_framework.workflows)


def known_environments() -> tuple[str, ...]:
    """The E2E framework's store environments, in its registry's order (the summary's columns)."""
    from tests.e2e.environments import ENVIRONMENTS

    return tuple(ENVIRONMENTS)


@dataclass(frozen=True)
class CoverageSummary:
    """Outcome of combining coverage; ``total`` is None when there was nothing to combine."""

    total: float | None
    data_files: int
    xml_path: Path | None = None
    html_dir: Path | None = None
    note: str = ""


@dataclass(frozen=True)
class SummaryInput:
    """Everything a section is built from: the sessions' results, the axes, the reports folder."""

    results: Sequence[SessionResult]
    axes: MatrixAxes
    reports: Path | None = None
    #: combined coverage (combining writes files, so it is done once, before the sections are built)
    coverage: CoverageSummary | None = None


T = TypeVar("T")


class SummaryTable(Protocol[T]):
    """One section of the summary, with its data of type ``T``."""

    #: its name (a key of ``Summary.sections``)
    key: str
    #: its heading in ``summary.md``
    title: str
    #: its problems fail the summary only under ``--strict`` (a red cell, an audit); else always
    strict_only: bool

    def build(self, summary_input: SummaryInput) -> T | None:
        """The section's data; ``None`` leaves the section out (the bench table without a bench run)."""

    def markdown(self, data: T) -> list[str]:
        """The lines under the heading."""

    def to_json(self, data: T) -> dict[str, Any]:
        """The section's entries in ``summary.json`` (JSON-ready), merged at its top level."""

    def problems(self, data: T) -> list[str]:
        """What in the data is a failure of the matrix (none for a table that only counts)."""


def ordered(values: set[str], known: Sequence[str]) -> list[str]:
    """``known`` values first in their order, then the rest alphabetically, unlabelled last."""
    first = [v for v in known if v in values]
    rest = sorted(v for v in values if v not in known and v != UNLABELLED)
    tail = [UNLABELLED] if UNLABELLED in values else []
    return first + rest + tail


def header(first: str, columns: Sequence[str]) -> list[str]:
    """The two header lines of a markdown table: ``first`` names the rows, then one column each."""
    return [f"| {first} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]


def md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")

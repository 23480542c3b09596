"""What every table of the E2E summary is: one small interface, and the helpers they share.

A table reads the collected session results (and, if it needs files beside them, the reports folder)
and gives three things: its data for ``summary.json``,
its lines for ``summary.md``, and its problems (what makes the summary fail). The summary renders the
tables in the order :data:`tools.summary_tables.TABLES` lists them; adding a table is adding a module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from tools.e2e_results import UNLABELLED, SessionResult

ICON_OK = "✅"
ICON_FAIL = "❌"
#: column orders, so a table reads the same from run to run; unknown values follow alphabetically
KNOWN_WORKFLOWS: tuple[str, ...] = (
    "simple_pytorch",
    "lightning",
    "pytorch_lightning",
    "vision",
    "time_series",
)
KNOWN_CASE_BACKENDS: tuple[str, ...] = ("mlflow", "mlflow_server", "wandb", "clearml", "local", "all")


class SummaryTable(Protocol):
    """One table of the summary."""

    #: its key in ``summary.json``
    key: str
    #: its heading in ``summary.md``
    title: str

    def build(self, results: Sequence[SessionResult], reports: Path | None = None) -> Any:
        """The table's data (JSON-ready), from every session's results and the reports folder.

        ``None`` means the table has nothing to show this time (the bench table without a bench
        run): the summary leaves its section out.
        """

    def markdown(self, data: Any) -> list[str]:
        """The lines under the heading."""

    def problems(self, data: Any) -> list[str]:
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

"""The tables of the E2E summary, one module each, in the order the summary shows them."""

from __future__ import annotations

from tools.summary_tables.base import SummaryTable
from tools.summary_tables.bench import BenchTable
from tools.summary_tables.equivalence import EquivalenceTable
from tools.summary_tables.faults import FaultsTable
from tools.summary_tables.workflows import WorkflowsTable

TABLES: tuple[SummaryTable, ...] = (WorkflowsTable(), EquivalenceTable(), FaultsTable(), BenchTable())

__all__ = ["TABLES", "SummaryTable"]

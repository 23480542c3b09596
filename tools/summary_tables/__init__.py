"""The sections of the E2E summary, one module each, in the order the summary shows them."""

from __future__ import annotations

from typing import Any

from tools.summary_tables.audit import AuditTable
from tools.summary_tables.base import SummaryInput, SummaryTable
from tools.summary_tables.bench import BenchTable
from tools.summary_tables.coverage import CoverageTable
from tools.summary_tables.equivalence import EquivalenceTable
from tools.summary_tables.failures import FailuresTable
from tools.summary_tables.faults import FaultsTable
from tools.summary_tables.matrix import MatrixTable
from tools.summary_tables.versions import VersionsTable
from tools.summary_tables.workflows import WorkflowsTable

TABLES: tuple[SummaryTable[Any], ...] = (
    MatrixTable(),
    VersionsTable(),
    WorkflowsTable(),
    EquivalenceTable(),
    FaultsTable(),
    BenchTable(),
    AuditTable(),
    CoverageTable(),
    FailuresTable(),
)

__all__ = ["TABLES", "SummaryInput", "SummaryTable"]

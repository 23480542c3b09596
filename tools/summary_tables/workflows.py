"""Workflows: how each workflow fared on each backend environment, over every session."""

from __future__ import annotations

from typing import Any

from tools.e2e_results import UNLABELLED, split_values
from tools.summary_tables.base import (
    SummaryInput,
    header,
    known_environments,
    known_workflows,
    md_escape,
    ordered,
)

Counts = dict[str, dict[str, dict[str, int]]]


class WorkflowsTable:
    key = "workflows"
    title = "Workflows"
    strict_only = False

    def build(self, summary_input: SummaryInput) -> Counts:
        """{workflow: {case backend: {"passed", "failed", "skipped"}}} over all sessions/variants.

        A test recorded for several workflows/backends (comma lists) counts once in each pair.
        """
        table: Counts = {}
        for result in summary_input.results:
            for case in result.cases:
                key = "failed" if case.is_failure else case.outcome
                for wf in split_values(case.workflow) or [UNLABELLED]:
                    for be in split_values(case.backend) or [UNLABELLED]:
                        counts = table.setdefault(wf, {}).setdefault(
                            be, {"passed": 0, "failed": 0, "skipped": 0}
                        )
                        counts[key] = counts.get(key, 0) + 1
        return table

    def markdown(self, data: Counts) -> list[str]:
        if not data:
            return ["No test results."]
        backends = ordered({b for per in data.values() for b in per}, known_environments())
        lines = header("workflow", backends)
        for wf in ordered(set(data), known_workflows()):
            cells = []
            for be in backends:
                c = data[wf].get(be)
                cells.append(f"{c['passed']}/{c['failed']}/{c['skipped']}" if c else "—")
            lines.append(f"| {md_escape(wf)} | " + " | ".join(cells) + " |")
        return [*lines, "", "Counts are passed/failed/skipped over all sessions and variants."]

    def to_json(self, data: Counts) -> dict[str, Any]:
        return {self.key: data}

    def problems(self, data: Counts) -> list[str]:
        return []  # failed tests are the matrix's and the failure list's to report

"""Faults: each fault test (marker ``e2e_faults``), each backend, and how many points it lost."""

from __future__ import annotations

from typing import Any

from tools.e2e_results import UNLABELLED
from tools.summary_tables.base import (
    ICON_FAIL,
    ICON_OK,
    SummaryInput,
    header,
    known_environments,
    md_escape,
    ordered,
)

Faults = dict[str, dict[str, dict[str, int]]]


class FaultsTable:
    key = "faults"
    title = "Faults"
    strict_only = False

    def build(self, summary_input: SummaryInput) -> Faults:
        """fault -> backend -> {"runs", "failed", "lost"}, from the ``fault``/``lost`` properties."""
        table: Faults = {}
        for result in summary_input.results:
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

    def markdown(self, data: Faults) -> list[str]:
        if not data:
            return ["No fault test ran."]
        backends = ordered({b for per in data.values() for b in per}, known_environments())
        lines = header("fault", backends)
        for fault in sorted(data):
            cells = []
            for be in backends:
                c = data[fault].get(be)
                if c is None:
                    cells.append("—")
                else:
                    icon = ICON_FAIL if c["failed"] or c["lost"] else ICON_OK
                    cells.append(f"{icon} {c['lost']} lost")
            lines.append(f"| {md_escape(fault)} | " + " | ".join(cells) + " |")
        return [
            *lines,
            "",
            "Points lost over all runs of each fault test (0 expected); ❌ also marks a failed run.",
        ]

    def to_json(self, data: Faults) -> dict[str, Any]:
        return {self.key: data}

    def problems(self, data: Faults) -> list[str]:
        return [
            f"fault {fault!r} on {backend}: {c['lost']} points lost"
            for fault, per in sorted(data.items())
            for backend, c in sorted(per.items())
            if c["lost"]
        ]

"""The skip audit: each session's verdict on its skips, against what its install set implies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tools.e2e_results import SessionResult
from tools.summary_tables.base import ICON_FAIL, ICON_OK, SummaryInput


class AuditTable:
    key = "audit"
    title = "Skip audit"
    strict_only = True

    def build(self, summary_input: SummaryInput) -> Sequence[SessionResult]:
        return summary_input.results

    def markdown(self, data: Sequence[SessionResult]) -> list[str]:
        lines = [
            "| session | variant | verdict | expected skips | observed skips |",
            "|---|---|---|---|---|",
        ]
        for r in data:
            icon = ICON_OK if r.audit.verdict == "pass" else ICON_FAIL
            expected = "—" if r.audit.expected_skips is None else str(r.audit.expected_skips)
            observed = "—" if r.audit.observed_skips is None else str(r.audit.observed_skips)
            lines.append(f"| {r.session} | {r.label} | {icon} {r.audit.verdict} | {expected} | {observed} |")
        if not data:
            lines.append("| — | — | no sessions found | — | — |")
        audit_problems = [(r, p) for r in data for p in r.audit.problems]
        if audit_problems:
            lines += ["", "Audit problems:", ""]
            lines += [f"- `{r.session}` ({r.label}): {p}" for r, p in audit_problems]
        return lines

    def to_json(self, data: Sequence[SessionResult]) -> dict[str, Any]:
        return {}  # every session's audit is in its result, under "cells"

    def problems(self, data: Sequence[SessionResult]) -> list[str]:
        """An audit that did not pass (fails the summary under ``--strict``)."""
        return [
            f"{r.session} ({r.label}): skip audit {r.audit.verdict}"
            for r in data
            if r.audit.verdict != "pass"
        ]

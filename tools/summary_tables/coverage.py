"""Coverage: the total over every session, combined before the sections are built."""

from __future__ import annotations

from typing import Any

from tools.summary_tables.base import CoverageSummary, SummaryInput


class CoverageTable:
    key = "coverage"
    title = "Coverage"
    strict_only = False

    def build(self, summary_input: SummaryInput) -> CoverageSummary:
        return summary_input.coverage or CoverageSummary(
            total=None, data_files=0, note="Coverage not combined."
        )

    def markdown(self, data: CoverageSummary) -> list[str]:
        if data.total is None:
            return [data.note or "No coverage data found."]
        files = "data file" if data.data_files == 1 else "data files"
        lines = [f"**Total: {data.total:.1f}%** ({data.data_files} {files} combined)"]
        return [*lines, "", data.note] if data.note else lines

    def to_json(self, data: CoverageSummary) -> dict[str, Any]:
        return {
            "coverage": {
                "total": data.total,
                "data_files": data.data_files,
                "xml": str(data.xml_path) if data.xml_path else None,
                "html": str(data.html_dir) if data.html_dir else None,
                "note": data.note,
            }
        }

    def problems(self, data: CoverageSummary) -> list[str]:
        return []  # coverage is reported, not judged

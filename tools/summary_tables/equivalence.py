"""Cross-backend equivalence: the same fixed-seed workflow, read back from every store, must agree.

Each E2E session writes what its workflows' runs hold, as each store returned it, to
``records/<workflow>/<environment>.json`` in its report folder. Runs are compared within one
framework column (the vision column has another torch build, so other numbers), against one
reference: the ``local`` store of the first session, else the first record. The comparison is
:func:`tracelet.testing.equivalence.compare`, which forgives only the documented
:data:`~tracelet.testing.equivalence.INHERENT_DIFFERENCES`; anything else is a problem.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tools.e2e_results import SessionResult
from tools.summary_tables.base import (
    ICON_FAIL,
    ICON_OK,
    SummaryInput,
    header,
    known_environments,
    known_workflows,
    md_escape,
    ordered,
)
from tracelet.testing import RunRecord
from tracelet.testing.equivalence import INHERENT_DIFFERENCES, compare, record_from_json

RECORDS_DIR = "records"
REFERENCE_ENVIRONMENT = "local"
#: differences listed per row in the markdown (summary.json keeps them all)
SHOWN = 5


@dataclass
class _Entry:
    source: str  # "<session> (<variant>)/<environment>"
    environment: str
    record: RunRecord


def _entries(results: Sequence[SessionResult]) -> dict[tuple[str, str], list[_Entry]]:
    rows: dict[tuple[str, str], list[_Entry]] = {}
    for result in results:
        folder = result.directory / RECORDS_DIR
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*/*.json")):
            record = record_from_json(json.loads(path.read_text(encoding="utf-8")))
            source = f"{result.session} ({result.label})/{path.stem}"
            rows.setdefault((result.framework, path.parent.name), []).append(
                _Entry(source, path.stem, record)
            )
    return rows


@dataclass
class Compared:
    """How many records an environment returned for one workflow, and how many differ from the reference."""

    records: int = 0
    differing: int = 0


@dataclass(frozen=True)
class EquivalenceRow:
    """One workflow in one framework column, compared across every store and session."""

    framework: str
    workflow: str
    #: the record every other one is compared with
    reference: str
    environments: dict[str, Compared] = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)


class EquivalenceTable:
    key = "equivalence"
    title = "Cross-backend equivalence"
    strict_only = False

    def build(self, summary_input: SummaryInput) -> list[EquivalenceRow]:
        """One row per (framework column, workflow): records and differing records per environment."""
        rows = []
        for (framework, workflow), entries in sorted(_entries(summary_input.results).items()):
            reference = next((e for e in entries if e.environment == REFERENCE_ENVIRONMENT), entries[0])
            row = EquivalenceRow(framework, workflow, reference.source)
            for entry in entries:
                cell = row.environments.setdefault(entry.environment, Compared())
                cell.records += 1
                found = [] if entry is reference else compare(reference.record, entry.record)
                if found:
                    cell.differing += 1
                    row.differences.extend(f"{entry.source}: {difference}" for difference in found)
            rows.append(row)
        return rows

    def markdown(self, data: list[EquivalenceRow]) -> list[str]:
        if not data:
            return ["No session wrote run records."]
        columns = ordered({e for row in data for e in row.environments}, known_environments())
        lines = header("workflow (framework)", columns)
        order = {w: i for i, w in enumerate(known_workflows())}
        for row in sorted(data, key=lambda r: (order.get(r.workflow, len(order)), r.workflow, r.framework)):
            cells = []
            for column in columns:
                c = row.environments.get(column)
                if c is None:
                    cells.append("—")
                elif c.differing:
                    cells.append(f"{ICON_FAIL} {c.differing}/{c.records} differ")
                else:
                    cells.append(f"{ICON_OK} {c.records}")
            lines.append(f"| {md_escape(row.workflow)} ({row.framework}) | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Each run read back from its store, compared with the reference (the `local` store's record of"
            " the same workflow in the same framework column): metric keys, steps, values"
            " (relative 1e-9), params, tags, artifact sha256, images, status. ✅ n: n records, all equal.",
            "",
            "Forgiven as each store's own doing, and nothing else:",
            "",
            *[f"- {rule.backend}: {rule.description}" for rule in INHERENT_DIFFERENCES],
        ]
        for row in data:
            if row.differences:
                lines += ["", f"Differences in {row.workflow} ({row.framework}), against {row.reference}:"]
                lines += [f"- {md_escape(d)}" for d in row.differences[:SHOWN]]
                if len(row.differences) > SHOWN:
                    lines.append(f"- … {len(row.differences) - SHOWN} more in summary.json")
        return lines

    def to_json(self, data: list[EquivalenceRow]) -> dict[str, Any]:
        return {self.key: [asdict(row) for row in data]}

    def problems(self, data: list[EquivalenceRow]) -> list[str]:
        return [
            f"{row.workflow} ({row.framework}): {len(row.differences)} differences between stores"
            for row in data
            if row.differences
        ]

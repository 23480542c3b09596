"""Benchmarks: the headline figures of ``nox -s bench``, when ``<reports>/bench/results.json`` exists.

The bench session is not part of the matrix, so this table never fails the summary: it shows, per
store, the figures a release manager looks at first (throughput and latency against the native
client, training overhead, memory), and the bench run's own verdict against its baseline. The full
tables and plots are in ``reports/bench/report.md``.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from tools.summary_tables.base import SummaryInput, header, known_environments, md_escape, ordered

#: (row label, measure, figure name, unit shown)
ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("throughput, tracelet ÷ native bulk", "throughput", "tracelet ÷ native bulk", "×"),
    ("throughput, tracelet (points/s)", "throughput", "tracelet points/s", ""),
    ("training overhead, fast loop", "overhead", "tracelet fast loop", "%"),
    ("log_metric float p50 (µs), busy", "latency", "tracelet float p50", ""),
    ("log_metric tensor p99 (µs), busy", "latency", "tracelet tensor p99", ""),
    ("memory, native ÷ tracelet", "memory", "native ÷ tracelet total", "×"),
    ("memory, tracelet total (MB)", "memory", "tracelet total peak MB", ""),
)


@dataclass(frozen=True)
class BenchRow:
    label: str
    unit: str
    #: store -> the median over the repetitions (None where the store has no such figure)
    values: dict[str, float | None]


@dataclass(frozen=True)
class BenchHeadline:
    """The headline figures of one bench run (or why its results could not be read)."""

    suite: str | None = None
    machine: dict[str, Any] = field(default_factory=dict)
    stores: list[str] = field(default_factory=list)
    rows: list[BenchRow] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    trend: dict[str, Any] = field(default_factory=dict)
    unreadable: str | None = None


class BenchTable:
    key = "bench"
    title = "Benchmarks"
    strict_only = False

    def build(self, summary_input: SummaryInput) -> BenchHeadline | None:
        """The headline medians per store, or ``None`` when no bench run left its results."""
        reports = summary_input.reports
        path = (reports / "bench" / "results.json") if reports is not None else None
        if path is None or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return BenchHeadline(unreadable=f"{path} unreadable: {exc}")
        figures = {(f["measure"], f["backend"], f["name"]): f["reps"] for f in data.get("figures", [])}
        stores = [str(s) for s in data.get("stores", [])]
        rows = []
        for label, measure, name, unit in ROWS:
            cells: dict[str, float | None] = {}
            for store in stores:
                reps = figures.get((measure, store, name)) or []
                cells[store] = statistics.median(reps) if reps else None
            rows.append(BenchRow(label, unit, cells))
        return BenchHeadline(
            suite=data.get("suite"),
            machine={k: data.get("machine", {}).get(k) for k in ("os", "cores", "python")},
            stores=stores,
            rows=rows,
            errors=list(data.get("errors") or []),
            trend=data.get("trend") or {},
        )

    def markdown(self, data: BenchHeadline) -> list[str]:
        if data.unreadable is not None:
            return [md_escape(data.unreadable)]
        machine = data.machine
        stores = ordered(set(data.stores), known_environments())
        lines = [
            f"`nox -s bench` ({data.suite} suite) on {machine['os']}, {machine['cores']} cores, "
            f"Python {machine['python']}: medians; the full report is `reports/bench/report.md`.",
            "",
            *header("figure", stores),
        ]
        for row in data.rows:
            cells = [_fmt(row.values.get(s), row.unit) for s in stores]
            lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
        trend = data.trend
        lines.append("")
        if not trend.get("has_baseline"):
            lines.append(f"Trend: no baseline for `{trend.get('key', '?')}`, nothing compared.")
        else:
            regressed = trend.get("regressed") or []
            lines.append(f"Trend against `{trend['key']}`: {len(regressed)} figure(s) regressed.")
            lines += [f"- ⚠ {md_escape(r)}" for r in regressed]
        if data.errors:
            lines += ["", f"{len(data.errors)} measurement(s) failed:"]
            lines += [f"- {md_escape(e)}" for e in data.errors]
        return lines

    def to_json(self, data: BenchHeadline) -> dict[str, Any]:
        return {self.key: asdict(data)}

    def problems(self, data: BenchHeadline) -> list[str]:
        """None: the bench session gives its own verdict (``--strict``); the matrix is judged elsewhere."""
        return []


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return f"{text} {unit}".rstrip()

"""Which version of each package every cell ran: the matrix's pins, the floors and the newest."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tools.e2e_results import SessionResult
from tools.summary_tables.base import SummaryInput
from tools.summary_tables.matrix import format_result

#: the columns shown first
STORES = ("mlflow", "wandb", "clearml")
#: the order of the kinds of cell
KINDS = ("pinned", "oldest", "latest")


def _installed(result: SessionResult) -> dict[str, str]:
    installed = result.meta.get("installed")
    return {str(k): str(v) for k, v in installed.items()} if isinstance(installed, dict) else {}


def _notes(result: SessionResult) -> list[str]:
    notes = result.meta.get("notes")
    return [str(n) for n in notes] if isinstance(notes, list) else []


class VersionsTable:
    key = "versions"
    title = "Versions"
    strict_only = True

    def build(self, summary_input: SummaryInput) -> Sequence[SessionResult] | None:
        results = sorted(summary_input.results, key=lambda r: (KINDS.index(r.versions), r.session, r.label))
        return results or None

    def markdown(self, data: Sequence[SessionResult]) -> list[str]:
        # every package a cell recorded (the noxfile's VERSION_NAMES): the stores first, then the rest
        recorded = dict.fromkeys(p for r in data for p in _installed(r) if p != "tracelet")
        shown = [p for p in STORES if p in recorded] + [p for p in recorded if p not in STORES]
        lines = [
            "What each cell ran: `pinned` is the matrix (requirements/constraints*.txt), `oldest` a"
            " floor cell (requirements/constraints-oldest.txt), `latest` the newest releases.",
            "",
            "| session | versions | variant: result | " + " | ".join(shown) + " |",
            "|---|---|---|" + "---|" * len(shown),
        ]
        # one row per session and set of versions: the OS x Python variants of a cell mostly agree
        rows: dict[tuple[str, str, tuple[str, ...]], list[SessionResult]] = {}
        for r in data:
            installed = _installed(r)
            rows.setdefault((r.session, r.versions, tuple(installed.get(p, "—") for p in shown)), []).append(
                r
            )
        for (session, kind, versions), results in rows.items():
            variants = "<br>".join(f"{r.label}: {format_result(r)}" for r in results)
            lines.append(f"| {session} | {kind} | {variants} | " + " | ".join(versions) + " |")
        noted = [(r, n) for r in data for n in _notes(r)]
        if noted:
            lines += ["", "Notes:", ""]
            lines += [f"- `{r.session}` ({r.label}): {n}" for r, n in noted]
        return lines

    def to_json(self, data: Sequence[SessionResult]) -> dict[str, Any]:
        return {
            "versions": [
                {
                    "session": r.session,
                    "variant": r.label,
                    "versions": r.versions,
                    "status": r.status,
                    "ok": r.ok,
                    "installed": _installed(r),
                    "notes": _notes(r),
                }
                for r in data
            ]
        }

    def problems(self, data: Sequence[SessionResult]) -> list[str]:
        """A floor or newest cell that failed (a newest release that cannot be installed is a note)."""
        return [f"{r.session} ({r.label}): failed" for r in data if r.versions != "pinned" and not r.ok]

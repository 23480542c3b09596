"""Failures: every failed or errored test, and every session that failed without one to show."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tools.e2e_results import SessionResult
from tools.summary_tables.base import SummaryInput


@dataclass(frozen=True)
class Failure:
    session: str
    variant: str
    test_id: str
    message: str


def failures(results: Sequence[SessionResult]) -> list[Failure]:
    """Failed/errored tests, plus sessions that failed without a junit.xml to show for it."""
    out: list[Failure] = []
    for r in results:
        if r.junit_path is None and not r.ok:
            out.append(Failure(r.session, r.label, "(session)", "; ".join(r.notes)))
        elif r.status != "passed" and r.failed == 0:
            out.append(
                Failure(
                    r.session, r.label, "(session)", f"session status {r.status!r} although no test failed"
                )
            )
        out += [
            Failure(r.session, r.label, case.test_id, case.message) for case in r.cases if case.is_failure
        ]
    return out


class FailuresTable:
    key = "failures"
    title = "Failures"
    strict_only = True

    def build(self, summary_input: SummaryInput) -> list[Failure]:
        return failures(summary_input.results)

    def markdown(self, data: list[Failure]) -> list[str]:
        if not data:
            return ["No failures."]
        return [f"- `{f.session}` ({f.variant}) `{f.test_id}` — {f.message}" for f in data]

    def to_json(self, data: list[Failure]) -> dict[str, Any]:
        return {"failures": [asdict(f) for f in data]}

    def problems(self, data: list[Failure]) -> list[str]:
        return []  # a failed test makes its cell red: the matrix reports it

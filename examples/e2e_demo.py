"""Run one training workflow on every installed backend, live, and show what each store holds.

    pip install -e ".[mlflow,torch]" rich
    python examples/e2e_demo.py [--workflow simple_pytorch] [--backends mlflow,local]

This drives the E2E framework of ``tests/e2e``: each backend gets a fresh store in a temp dir
(MLflow with sqlite and a real ``mlflow server`` on 127.0.0.1, W&B and ClearML offline, tracelet's
own ``local``), the workflow trains and logs through tracelet, and the run is read back from the
store itself. A live display shows the progress; a table at the end shows, per backend, what
landed. The exit code is 1 if any backend's run did not land whole.

``rich`` draws the live display when it is installed (it is a dependency of this demo, not of
tracelet); without it, the demo prints the same steps and table as plain lines.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the E2E framework lives in tests/e2e

if TYPE_CHECKING:  # imported for real in main(), after the path is set
    from tests.e2e.workflow import WorkflowResult

COLUMNS = ("backend", "result", "metric points", "keys", "params", "artifacts", "images", "seconds")


class PlainDisplay:
    """One line per step and a plain table: what the demo shows without ``rich``."""

    def say(self, text: str) -> None:
        print(text, flush=True)

    @contextmanager
    def progress(self, total: int) -> Iterator[Any]:
        yield self

    def step(self, environment: str, text: str) -> None:
        print(f"  {environment}: {text}", flush=True)

    def table(self, title: str, rows: list[tuple[str, ...]]) -> None:
        widths = [max(len(str(c)) for c in column) for column in zip(COLUMNS, *rows, strict=False)]
        print(title)
        for row in (COLUMNS, *rows):
            print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)))


class RichDisplay(PlainDisplay):
    """The live display: a spinner and bar per backend, then a table."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console()
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}

    def say(self, text: str) -> None:
        self.console.print(text, markup=False)

    @contextmanager
    def progress(self, total: int) -> Iterator[Any]:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
        with Progress(*columns, console=self.console) as progress:
            self._progress = progress
            yield self

    def step(self, environment: str, text: str) -> None:
        task = self._tasks.get(environment)
        if task is None:
            task = self._tasks[environment] = self._progress.add_task(environment, total=3)
        else:
            self._progress.advance(task)
        self._progress.update(task, description=f"{environment}: {text}")

    def table(self, title: str, rows: list[tuple[str, ...]]) -> None:
        from rich.table import Table

        table = Table(title=title)
        for column in COLUMNS:
            table.add_column(column, justify="left" if column in ("backend", "result") else "right")
        for row in rows:
            table.add_row(*row, style=None if row[1] == "all landed" else "red")
        self.console.print(table)


def _display() -> PlainDisplay:
    try:
        import rich  # noqa: F401
    except ImportError:
        return PlainDisplay()
    return RichDisplay()


def _row(environment: str, outcome: WorkflowResult, seconds_taken: float) -> tuple[str, ...]:
    seconds = f"{seconds_taken:.1f}"
    if not outcome.records or not outcome.success:
        error = outcome.error or "the run did not land whole"
        return (environment, f"FAILED: {error[:80]}", "", "", "", "", "", seconds)
    record = outcome.record
    points = sum(len(p) for p in record.metrics.values())
    sizes = (record.metrics, record.params, record.artifacts, record.images)
    return (environment, "all landed", str(points), *(str(len(s)) for s in sizes), seconds)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep the live display clean
    from tests.e2e.framework import e2e_framework

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflow", default=None, help="a workflow name (default: the first installed)")
    parser.add_argument(
        "--backends", default=None, help="comma list of environments (default: all installed)"
    )
    args = parser.parse_args(argv)

    display = _display()
    workflows = e2e_framework.installed_workflows()
    workflow = args.workflow or (workflows[0] if workflows else None)
    if workflow is None:
        display.say("No workflow can run here: the workflows need torch (pip install torch).")
        return 2
    environments = args.backends.split(",") if args.backends else e2e_framework.installed_environments()
    display.say(f"tracelet E2E demo: workflow {workflow} on {', '.join(environments)}")

    outcomes: dict[str, tuple[WorkflowResult, float]] = {}
    with display.progress(len(environments)):
        for environment in environments:
            display.step(environment, "setting up the store")
            with e2e_framework.backend_environment(environment, project="tracelet-demo") as config:
                display.step(environment, "training and logging")
                started = time.monotonic()
                result = e2e_framework.run_workflow(workflow, config)
                display.step(environment, "read back from the store")
                outcomes[environment] = (result, time.monotonic() - started)
            display.step(environment, "landed" if result.success else "FAILED")

    display.table(f"{workflow}: what each store holds", [_row(e, *o) for e, o in outcomes.items()])
    e2e_framework.shutdown()
    return 0 if all(result.success for result, _ in outcomes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

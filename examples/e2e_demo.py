"""Run one training workflow on every installed backend, live, and show what each store holds.

    pip install -e ".[mlflow,torch]" rich
    python examples/e2e_demo.py [--workflow simple_pytorch] [--backends mlflow,local]

This drives the E2E framework of ``tests/e2e``: each backend gets a fresh store in a temp dir
(MLflow with sqlite and a real ``mlflow server`` on 127.0.0.1, W&B and ClearML offline, tracelet's
own ``local``), the workflow trains and logs through tracelet, and the run is read back from the
store itself. A live display shows the progress; a table at the end shows, per backend, what
landed. The exit code is 1 if any backend's run did not land whole.

``rich`` draws the display; it is a dependency of this demo, not of tracelet.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the E2E framework lives in tests/e2e


def main(argv: list[str] | None = None) -> int:
    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.table import Table
    except ImportError:
        print("this demo draws with rich: pip install rich", file=sys.stderr)
        return 2

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep the live display clean
    from tests.e2e.framework import e2e_framework

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflow", default=None, help="a workflow name (default: the first installed)")
    parser.add_argument(
        "--backends", default=None, help="comma list of environments (default: all installed)"
    )
    args = parser.parse_args(argv)

    console = Console()
    workflows = e2e_framework.installed_workflows()
    workflow = args.workflow or (workflows[0] if workflows else None)
    if workflow is None:
        console.print("[red]No workflow can run here:[/] the workflows need torch (pip install torch).")
        return 2
    environments = args.backends.split(",") if args.backends else e2e_framework.installed_environments()
    console.print(f"[bold]tracelet E2E demo[/]: workflow [cyan]{workflow}[/] on {', '.join(environments)}")

    outcomes: dict[str, dict[str, object]] = {}
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        overall = progress.add_task("all backends", total=len(environments))
        for environment in environments:
            task = progress.add_task(f"{environment}: setting up the store", total=3)
            with e2e_framework.backend_environment(environment, project="tracelet-demo") as config:
                progress.update(task, advance=1, description=f"{environment}: training and logging")
                started = time.monotonic()
                result = e2e_framework.run_workflow(workflow, config)
                progress.update(task, advance=1, description=f"{environment}: read back from the store")
                outcomes[environment] = {**result, "seconds": time.monotonic() - started}
            verdict = "[green]landed[/]" if result["success"] else "[red]FAILED[/]"
            progress.update(task, advance=1, description=f"{environment}: {verdict}")
            progress.advance(overall)

    table = Table(title=f"{workflow}: what each store holds")
    for column in ("backend", "result", "metric points", "keys", "params", "artifacts", "images", "seconds"):
        table.add_column(column, justify="left" if column in ("backend", "result") else "right")
    for environment, outcome in outcomes.items():
        record = outcome.get("record")
        if record is None or not outcome["success"]:
            error = str(outcome.get("error") or "the run did not land whole")
            table.add_row(
                environment, f"[red]{escape(error[:80])}[/]", *[""] * 5, f"{outcome['seconds']:.1f}"
            )
            continue
        points = sum(len(p) for p in record.metrics.values())  # type: ignore[attr-defined]
        table.add_row(
            environment,
            "[green]all landed[/]",
            str(points),
            str(len(record.metrics)),  # type: ignore[attr-defined]
            str(len(record.params)),  # type: ignore[attr-defined]
            str(len(record.artifacts)),  # type: ignore[attr-defined]
            str(len(record.images)),  # type: ignore[attr-defined]
            f"{outcome['seconds']:.1f}",
        )
    console.print(table)
    e2e_framework.shutdown()
    return 0 if all(o["success"] for o in outcomes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

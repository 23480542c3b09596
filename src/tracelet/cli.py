"""The ``tracelet`` command: ``doctor`` (what is installed), ``sync`` (replay a spool), ``show``, ``copy``."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from tracelet.backends.registry import available_backends, get_backend_class

if TYPE_CHECKING:
    from tracelet.copying import CopyResult

INTEGRATIONS = ("torch", "lightning", "pytorch_lightning", "torchvision", "tensorboard", "matplotlib")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def doctor() -> dict[str, dict[str, str | None]]:
    """Each backend, integration and system-metrics package: its version if installed, else ``None``."""
    backends: dict[str, str | None] = {}
    for name in available_backends():
        cls = get_backend_class(name)
        if cls.package is None:
            backends[name] = "built-in"
        else:
            backends[name] = _version(cls.package) if cls.is_installed() else None
    integrations = {name: _version(name) if importlib.util.find_spec(name) else None for name in INTEGRATIONS}
    # system metrics: psutil (a dependency) and, for the GPU ones, NVML (the `gpu` extra)
    system = {distribution: _version(distribution) for distribution in ("psutil", "nvidia-ml-py")}
    return {"backends": backends, "integrations": integrations, "system metrics": system}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tracelet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p_doctor = commands.add_parser("doctor", help="list importable backends and integrations")
    p_doctor.add_argument("--json", action="store_true", help="print JSON")
    p_sync = commands.add_parser("sync", help="replay a spool into its backend, exactly once")
    p_sync.add_argument("spool_dir", type=Path)
    p_sync.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="BACKEND.KEY=VALUE",
        help="replace a stored backend option, e.g. mlflow.tracking_uri=http://127.0.0.1:5000",
    )
    p_show = commands.add_parser("show", help="read a run back from a backend and print it as JSON")
    p_show.add_argument("backend")
    p_show.add_argument("run_id")
    p_show.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="reader option, e.g. tracking_uri=sqlite:///mlflow.db",
    )
    p_copy = commands.add_parser(
        "copy",
        help="copy a run (or every run of a project) from one store to another, verified",
        description="SRC: local:<root>#<run id>, mlflow:<tracking uri>#<run id>, wandb:<offline run folder>, "
        "clearml:<offline session folder>; without a run id, with --project, every run of that project. "
        "DST: local:<root>, mlflow:<tracking uri>, wandb:<dir>, clearml:<dir> (offline runs).",
    )
    p_copy.add_argument("source", metavar="SRC")
    p_copy.add_argument("target", metavar="DST")
    p_copy.add_argument(
        "--project", help="the target's project (a source store without a run id: the project to copy)"
    )
    p_copy.add_argument("--name", help="the target run's name (default: the source run's)")
    p_copy.add_argument("--json", action="store_true", help="one JSON object per copied run on stdout")
    p_copy.add_argument("--no-verify", action="store_true", help="skip reading the target back and comparing")
    args = parser.parse_args(argv)

    if args.command == "doctor":
        report = doctor()
        if args.json:
            sys.stdout.write(json.dumps(report, indent=2) + "\n")
        else:
            for section, items in report.items():
                sys.stdout.write(f"{section}:\n")
                for name, version in items.items():
                    hint = version or "not installed"
                    if version is None and section == "backends":
                        hint += f'  (pip install "tracelet[{get_backend_class(name).extra or name}]")'
                    elif version is None and name == "nvidia-ml-py":
                        hint += '  (GPU metrics: pip install "tracelet[gpu]")'
                    sys.stdout.write(f"  {name:<12} {hint}\n")
        return 0
    if args.command == "sync":
        from tracelet.spool import sync

        overrides: dict[str, dict[str, str]] = {}
        for item in args.overrides:
            key, sep, value = item.partition("=")
            backend, dot, option = key.partition(".")
            if not sep or not dot or not backend or not option:
                sys.stderr.write(f"tracelet sync: --set {item!r} is not BACKEND.KEY=VALUE\n")
                return 2
            overrides.setdefault(backend, {})[option] = value
        try:
            replayed = sync(args.spool_dir, overrides=overrides)
        except FileNotFoundError as exc:
            sys.stderr.write(f"tracelet sync: {exc}\n")
            return 2
        for directory, count in replayed.items():
            sys.stdout.write(f"{directory}: replayed {count} event(s)\n")
        return 0
    if args.command == "show":
        from tracelet.testing import read_run

        options = dict(item.split("=", 1) for item in args.option)
        record = read_run(args.backend, args.run_id, **options)
        sys.stdout.write(json.dumps(asdict(record), indent=2) + "\n")
        return 0
    if args.command == "copy":
        return _copy(args)
    return 2  # pragma: no cover - argparse enforces a command


def _copy(args: argparse.Namespace) -> int:
    """``tracelet copy``: 0 when every run copied (and verified), 1 when one failed, 2 on bad input."""
    from tracelet.copying import CopyError, summary_table

    try:
        with _stdout_to_stderr():  # a store's client may print (ClearML does): stdout is the JSON's
            results, failed = _copy_runs(args)
    except ValueError as exc:
        sys.stderr.write(f"tracelet copy: {exc}\n")
        return 2
    except CopyError as exc:
        sys.stderr.write(f"tracelet copy: {exc}\n")
        return 1
    if args.json:
        for result in results:
            sys.stdout.write(json.dumps(result.to_json()) + "\n")
    sys.stderr.write(summary_table(results, failed) + "\n")
    return 1 if failed else 0


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what is written to stdout meanwhile (by Python, or a process started now) to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _copy_runs(args: argparse.Namespace) -> tuple[list[CopyResult], dict[str, str]]:
    """One run (a source with a run id), or every run of ``--project``; the copies, and what failed."""
    from tracelet.copying import Address, copy_project, copy_run

    source = Address.parse(args.source, role="source")
    target = Address.parse(args.target, role="target")
    verify = not args.no_verify
    if source.run_id is None and not args.project:
        raise ValueError(f"source {source.public()!r} names no run: add '#<run id>', or --project NAME")
    with _progress() as progress:
        if source.run_id is not None:
            sys.stderr.write(f"copying {source.public()} -> {target.public()}\n")
            copied = copy_run(
                source, target, project=args.project, name=args.name, verify=verify, progress=progress
            )
            return [copied], {}
        sys.stderr.write(f"copying project {args.project!r} of {source.public()} -> {target.public()}\n")
        return copy_project(source, target, args.project, name=args.name, verify=verify, progress=progress)


@contextlib.contextmanager
def _progress() -> Iterator[Callable[[int, int], None]]:
    """Points sent so far: a ``rich`` bar on a terminal when rich is installed, else a plain line
    at most every half second (and the first at once, so a log shows the copy began)."""
    if sys.stderr.isatty() and importlib.util.find_spec("rich") is not None:
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("copying points", total=None)

            def show(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            yield show
        return
    last = 0.0

    def line(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= 0.5 or done == total:
            last = now
            sys.stderr.write(f"copied {done}/{total} points\n")
            sys.stderr.flush()

    yield line


if __name__ == "__main__":
    raise SystemExit(main())

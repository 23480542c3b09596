"""The ``tracelet`` command: ``doctor`` (what is installed), ``sync`` (replay a spool), ``show``."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from tracelet.backends.registry import available_backends, get_backend_class

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
    return 2  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":
    raise SystemExit(main())

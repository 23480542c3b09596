"""The no-network check of the E2E suite: a pytest plugin around :mod:`tracelet_netaudit`.

Every process of the run (this one, and through ``tests/e2e/netaudit/sitecustomize.py``
every Python child: delivery agents, DDP workers, trainers) records its connections
outside loopback to one file per pytest process. A test during whose call anything was
recorded fails, naming the target, the process and where in the code it connected;
what was recorded outside any test fails the session. W&B's ``wandb-core`` is not
Python and is not watched: tracelet relies on W&B's offline mode there (see the README).

Loaded by the E2E conftest; ``pytest -p tests.e2e.netaudit_plugin`` loads it alone.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

SITE_DIR = Path(__file__).resolve().parent / "netaudit"
if str(SITE_DIR) not in sys.path:
    sys.path.insert(0, str(SITE_DIR))

import tracelet_netaudit  # noqa: E402

_STATE: dict[str, Any] = {"offset": 0, "stray": []}


def pytest_configure(config: pytest.Config) -> None:
    """A fresh record file for this pytest process, the hook here, and sitecustomize for children."""
    handle, path = tempfile.mkstemp(prefix="tracelet-netaudit-", suffix=".jsonl")
    os.close(handle)
    os.environ[tracelet_netaudit.ENV_FILE] = path
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(SITE_DIR) not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(SITE_DIR), *parts])
    tracelet_netaudit.install()
    _STATE["path"] = path


def _new_records() -> list[dict[str, Any]]:
    records, _STATE["offset"] = tracelet_netaudit.records_since(_STATE["path"], _STATE["offset"])
    return records


def describe(records: list[dict[str, Any]]) -> str:
    lines = []
    for r in records[:5]:
        lines.append(
            f"{r['event']} to {r['target']} from pid {r['pid']} ({r['argv']}), thread {r['thread']}:"
        )
        lines.append("    " + r["stack"].strip().replace("\n", "\n    "))
    more = f"\n... and {len(records) - 5} more" if len(records) > 5 else ""
    return "\n".join(lines) + more


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    _STATE["stray"].extend(_new_records())  # between tests: nobody's call
    result = yield
    records = _new_records()
    if records:
        raise AssertionError(
            f"{len(records)} connection(s) outside loopback during {item.nodeid} "
            f"(offline sessions stay off the network):\n{describe(records)}"
        )
    return result


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stray = _STATE["stray"] + _new_records()
    if not stray:
        Path(_STATE["path"]).unlink(missing_ok=True)
    if stray:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"{len(stray)} connection(s) outside loopback outside any test:\n{describe(stray)}"
        if reporter is not None:
            reporter.write_sep("=", "network audit", red=True)
            reporter.write_line(message)
        else:
            print(message, file=sys.stderr)

"""E2E options, markers, the install-set check and the skip audit.

Under nox, ``TRACELET_E2E_INSTALL_SET`` declares the session's optional packages (from
the matrix), and before any test the suite checks that exactly those are importable. A
plain ``pytest tests/e2e`` without it takes the importable packages as the set and says
so in its header. Either way, after the last test it audits the skips against the markers.

Under ``pytest-xdist`` the controller collects nothing and runs nothing: each worker
computes the expected skips of what it collected and hands them (and any process
that survived its shared MLflow server) to the controller through ``workeroutput``.
The controller sees every test's report, so it alone audits and writes the audit file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.audit import (
    audit,
    expected_skip,
    importable_packages,
    install_set_problems,
    mount_skip,
    parse_install_set,
)

_STATE: dict[str, object] = {}
INSTALL_SET_VAR = "TRACELET_E2E_INSTALL_SET"
#: set by the run that inferred the install set, so its workers (and the header) say so
INFERRED_VAR = "TRACELET_E2E_INSTALL_SET_INFERRED"
#: where ``-n`` lands when pytest-xdist is absent and this conftest accepts it in its place
SERIAL_FALLBACK_DEST = "tracelet_serial_numprocesses"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tracelet-e2e")
    group.addoption("--e2e-backends", default=None, help="comma list of backend environments to keep")
    group.addoption(
        "--e2e-exclude-backends", default=None, help="comma list of backend environments to deselect"
    )
    group.addoption("--e2e-workflows", default=None, help="comma list of workflows to keep")
    group.addoption("--e2e-skip-slow", action="store_true", help="deselect tests marked slow")
    group.addoption(
        "--e2e-only-workflows",
        action="store_true",
        help="keep only the tests that run a workflow (the runner passes it with --workflows)",
    )
    if importlib.util.find_spec("xdist") is None:
        # The README's `pytest tests/e2e/ -n auto` with only the seed's prerequisites (no xdist): run
        # the tests one after another and say so in the header, rather than fail on an unknown option.
        # pytest reserves lowercase short options for itself and its plugins; the group's
        # `_addoption` is how pytest-xdist registers this very `-n`, so the fallback does the same.
        group._addoption(
            "-n",
            "--numprocesses",
            dest=SERIAL_FALLBACK_DEST,
            default=None,
            help="(pytest-xdist is not installed: accepted, and the tests run one after another)",
        )


def pytest_configure(config: pytest.Config) -> None:
    from tests.e2e import netaudit_plugin

    # SIGTERM (a CI job's timeout, a `kill`) unwinds the suite as Ctrl-C does: every `with` block and
    # fixture stops what it started. A real `mlflow server` runs in its own session (so a Ctrl-C in the
    # terminal does not reach it); with SIGTERM's default action the test process died at once and
    # left the server running, orphaned.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)

    if not config.pluginmanager.is_registered(netaudit_plugin):
        # pytest_configure is a historic hook: the plugin's own runs as it registers
        config.pluginmanager.register(netaudit_plugin, "tracelet-netaudit")
    importable = importable_packages()
    if os.environ.get(INSTALL_SET_VAR) is None:
        # A plain `pytest tests/e2e ...` (the seed's commands): what is importable is the set. The
        # xdist workers start after this hook and inherit it, so every process audits the same set.
        os.environ[INSTALL_SET_VAR] = ",".join(sorted(importable))
        os.environ[INFERRED_VAR] = "1"
    _STATE["inferred"] = os.environ.get(INFERRED_VAR) == "1"
    declared = parse_install_set(os.environ[INSTALL_SET_VAR])
    _STATE["declared"] = declared
    _STATE["observed"] = {}
    _STATE["expected"] = {}
    problems = install_set_problems(declared, importable)
    if problems:
        _write_audit({"verdict": "fail", "problems": problems, "expected_skips": 0, "observed_skips": 0})
        raise pytest.UsageError(
            "the installed optional packages differ from TRACELET_E2E_INSTALL_SET="
            f"{','.join(sorted(declared))}:\n  " + "\n  ".join(problems)
        )


def pytest_report_header(config: pytest.Config) -> str:
    how = (
        f"inferred from the importable packages ({INSTALL_SET_VAR} is not set)"
        if _STATE.get("inferred")
        else f"declared by {INSTALL_SET_VAR}"
    )
    header = f"tracelet E2E install set: {','.join(sorted(declared())) or '(none)'}, {how}"
    if getattr(config.option, SERIAL_FALLBACK_DEST, None) is not None:
        header += "\npytest-xdist is not installed, so -n is ignored: the tests run one after another"
    return header


def _is_worker(config: pytest.Config) -> bool:
    """True inside an xdist worker (which reports to a controller)."""
    return hasattr(config, "workerinput")


def declared() -> frozenset[str]:
    value = _STATE["declared"]
    assert isinstance(value, frozenset)
    return value


def _param(item: pytest.Item, name: str) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    value = callspec.params.get(name)
    return value if isinstance(value, str) else None


def _markers(item: pytest.Item) -> tuple[list[str], list[str] | None, list[str] | None]:
    requires: list[str] = []
    for mark in item.iter_markers("requires"):
        requires.extend(mark.args)
    platforms: list[str] | None = None
    for mark in item.iter_markers("platform_only"):
        platforms = list(mark.args)
    frameworks: list[str] | None = None
    for mark in item.iter_markers("framework_only"):
        frameworks = list(mark.args)
    return requires, platforms, frameworks


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect by option (never skip), then attach the skip the markers imply."""
    backends = config.getoption("--e2e-backends")
    workflows = config.getoption("--e2e-workflows")
    keep_backends = set(backends.split(",")) if backends else None
    keep_workflows = set(workflows.split(",")) if workflows else None
    excluded = config.getoption("--e2e-exclude-backends")
    drop_backends = set(excluded.split(",")) if excluded else set()
    selected, deselected = [], []
    for item in items:
        env = _param(item, "environment")
        workflow = _param(item, "workflow")
        if (
            (keep_backends is not None and env is not None and env not in keep_backends)
            or (env is not None and env in drop_backends)
            or (keep_workflows is not None and workflow is not None and workflow not in keep_workflows)
            or (config.getoption("--e2e-skip-slow") and item.get_closest_marker("slow"))
            or (config.getoption("--e2e-only-workflows") and workflow is None)
        ):
            deselected.append(item)
        else:
            selected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    # The slow tests first (a stable sort: the rest keep their order). pytest-xdist hands tests
    # out in collection order, so a two-minute test collected last runs alone at the end of a
    # session while the other workers sit idle; started first, it runs beside the short ones.
    selected.sort(key=lambda item: item.get_closest_marker("slow") is None)
    items[:] = selected


def _merge_expected(expected: dict[str, str | None]) -> None:
    """Add expected skips: from this process's collection, or from an xdist worker's."""
    merged = _STATE.setdefault("expected", {})
    assert isinstance(merged, dict)
    merged.update(expected)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """After every deselection (ours, ``-k``, ``-m``): the expected skip of each selected test."""
    expected: dict[str, str | None] = {}
    for item in session.items:
        environment = _param(item, "environment")
        if environment is not None:  # labels for the summary, on skipped tests too
            name = getattr(item, "originalname", item.name)
            workflow = _param(item, "workflow") or name.removeprefix("test_")
            item.user_properties += [("workflow", workflow), ("backend", environment)]
        requires, platforms, frameworks = _markers(item)
        reason = expected_skip(requires, platforms, declared(), sys.platform, frameworks)
        if reason is None and item.get_closest_marker("mounts_tmpfs"):
            reason = mount_skip(sys.platform, os.geteuid() if hasattr(os, "geteuid") else None)
        expected[item.nodeid] = reason
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
    _merge_expected(expected)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    observed = _STATE.setdefault("observed", {})
    assert isinstance(observed, dict)
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        observed[report.nodeid] = ("skipped", reason.removeprefix("Skipped: "))
    elif report.failed:
        observed[report.nodeid] = ("failed", None)
    elif report.when == "call" and report.nodeid not in observed:
        observed[report.nodeid] = ("passed", None)


def _write_audit(data: dict[str, object]) -> None:
    target = os.environ.get("TRACELET_E2E_AUDIT_FILE")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(data, indent=2))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """Controller: merge what a finished xdist worker expected and left behind."""
    output = getattr(node, "workeroutput", None) or {}
    raw = output.get("tracelet_e2e")
    if raw is None:
        return
    data = json.loads(raw)
    _merge_expected(data["expected"])
    survivors = _STATE.setdefault("survivors", [])
    assert isinstance(survivors, list)
    survivors.extend(data["survivors"])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests.e2e.framework import e2e_framework

    config = session.config
    survivors = e2e_framework.shutdown()
    if _is_worker(config):
        workeroutput = config.workeroutput  # type: ignore[attr-defined]
        workeroutput["tracelet_e2e"] = json.dumps(
            {"expected": _STATE.get("expected", {}), "survivors": survivors}
        )
        return
    survivors += _STATE.get("survivors", [])  # type: ignore[arg-type]
    if survivors:
        sys.stderr.write("\n".join(survivors) + "\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if config.option.collectonly or "expected" not in _STATE:
        return
    expected = _STATE["expected"]
    observed = _STATE["observed"]
    assert isinstance(expected, dict)
    assert isinstance(observed, dict)
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        return
    result = audit(expected, observed)
    _STATE["audit"] = result
    _write_audit(result.to_json())
    if result.verdict != "pass" and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    result = _STATE.get("audit")
    if result is None:
        return
    terminalreporter.section("tracelet skip audit")
    terminalreporter.write_line(
        f"{'inferred' if _STATE.get('inferred') else 'declared'} install set: "
        f"{','.join(sorted(declared())) or '(none)'}; "
        f"expected skips {result.expected_skips}, observed {result.observed_skips}: "  # type: ignore[attr-defined]
        f"{str(result.verdict).upper()}"  # type: ignore[attr-defined]
    )
    for problem in result.problems:  # type: ignore[attr-defined]
        terminalreporter.write_line(f"  {problem}", red=True)


@pytest.fixture(scope="session")
def install_set() -> frozenset[str]:
    return declared()


@pytest.fixture(autouse=True)
def _no_subprocess_coverage(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``no_subprocess_coverage``, the test's child processes (its delivery agent) run untraced.

    A load test drives the same code paths as the rest of the suite, hundreds of thousands of times.
    Measured by coverage, the 8-thread test took 98 s against MLflow instead of 57 s, in each of four
    sessions, almost all of it in the traced delivery agent, for no line the other tests leave
    uncovered. Coverage reaches a child process only through ``COVERAGE_PROCESS_CONFIG`` (or
    ``COVERAGE_PROCESS_START``), which its ``patch = subprocess`` puts in the environment; without
    them the agent runs untraced (60 s). The test process itself stays traced: pausing coverage
    there and starting it again fails under torch (coverage 7.17 trips over ``torch.ops``).
    """
    if request.node.get_closest_marker("no_subprocess_coverage") is not None:
        for variable in ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START"):
            monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private spool and no TRACELET_* leaking in from outside."""
    for key in list(os.environ):
        if key.startswith("TRACELET_") and not key.startswith("TRACELET_E2E_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TRACELET_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("TRACELET_LOCAL_DIR", str(tmp_path / "runs"))
    # A test that ran W&B's own client in this worker left its wandb-core's address here
    # (wandb exports it for child processes): the next test's children would write through it.
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    yield tmp_path
    import tracelet

    active = tracelet.get_active_experiment()
    if active is not None:
        active.stop(flush_timeout=10)

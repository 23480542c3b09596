"""The E2E skip audit under ``pytest -n 2``: the controller audits from its workers' reports.

Each test runs the real E2E conftest (as a plugin, ``-p tests.e2e.conftest``) over a
small generated suite in a subprocess with two xdist workers, and reads the audit file
it writes. The generated suite stands in for tests/e2e: the audit's logic is the same,
and it runs in a second, where the real suite needs the stores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.audit import OPTIONAL_PACKAGES, importable_packages

ROOT = Path(__file__).resolve().parents[2]

SUITE = """
import pytest


@pytest.mark.platform_only("no-such-os")
def test_elsewhere_only():
    pass


@pytest.mark.parametrize("i", range(6))
def test_runs(i):
    pass
"""

SKIPS_ON_ITS_OWN = """

def test_skips_on_its_own():
    pytest.skip("flaky")
"""


def _run_suite(
    tmp_path: Path, suite: str, install_set: str | None
) -> tuple[subprocess.CompletedProcess[str], Any]:
    """Run ``suite`` under ``-n 2``; ``install_set=None`` leaves the variable unset (a plain pytest)."""
    (tmp_path / "test_generated.py").write_text(suite)
    markers = "".join(f"\n    {name}" for name in ("requires", "platform_only", "framework_only"))
    (tmp_path / "pytest.ini").write_text(f"[pytest]\nmarkers ={markers}\n")
    audit_file = tmp_path / "audit.json"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TRACELET_E2E_")},
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "TRACELET_E2E_AUDIT_FILE": str(audit_file),
    }
    if install_set is not None:
        env["TRACELET_E2E_INSTALL_SET"] = install_set
    command = [sys.executable, "-m", "pytest", "-n", "2", "-p", "tests.e2e.conftest"]
    command += ["-p", "no:cacheprovider"]
    done = subprocess.run(
        [*command, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    audit = json.loads(audit_file.read_text()) if audit_file.is_file() else None
    return done, audit


@pytest.fixture(scope="module")
def truth() -> str:
    """The install set this environment really has (the unit session has none)."""
    return ",".join(sorted(importable_packages()))


def test_the_controller_audits_every_workers_tests(tmp_path: Path, truth: str) -> None:
    done, audit = _run_suite(tmp_path, SUITE, truth)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 workers" in done.stdout, done.stdout
    assert audit == {"verdict": "pass", "problems": [], "expected_skips": 1, "observed_skips": 1}
    assert "expected skips 1, observed 1: PASS" in done.stdout


def test_a_skip_nobody_expected_fails_the_run_under_xdist(tmp_path: Path, truth: str) -> None:
    done, audit = _run_suite(tmp_path, SUITE + SKIPS_ON_ITS_OWN, truth)
    assert done.returncode == 1, done.stdout + done.stderr
    assert audit["verdict"] == "fail"
    assert audit["problems"] == [
        "test_generated.py::test_skips_on_its_own: skipped (flaky) but its install set says it must run"
    ]
    assert (audit["expected_skips"], audit["observed_skips"]) == (1, 2)


def test_a_lying_install_set_stops_the_run_before_any_worker_starts(tmp_path: Path, truth: str) -> None:
    present = set(filter(None, truth.split(",")))
    package = OPTIONAL_PACKAGES[0]
    lie = present ^ {package}  # drop it if it is installed, claim it if it is not
    done, audit = _run_suite(tmp_path, SUITE, ",".join(sorted(lie)))
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert audit["verdict"] == "fail"
    assert len(audit["problems"]) == 1
    assert audit["problems"][0].startswith(package)
    assert "test_runs" not in done.stdout


#: a test that needs a package no environment of ours has: its skip is expected
NEEDS_AN_ABSENT_PACKAGE = """

@pytest.mark.requires("{package}")
def test_needs_it():
    pass
"""


def test_without_a_declared_set_the_importable_packages_are_the_set(tmp_path: Path, truth: str) -> None:
    """A plain ``pytest tests/e2e`` (the seed's command): no usage error, the header says where the set
    came from, and the audit still holds every skip to the markers."""
    present = set(filter(None, truth.split(",")))
    absent = next(p for p in OPTIONAL_PACKAGES if p not in present)
    done, audit = _run_suite(tmp_path, SUITE + NEEDS_AN_ABSENT_PACKAGE.format(package=absent), None)
    assert done.returncode == 0, done.stdout + done.stderr
    header = f"tracelet E2E install set: {truth or '(none)'}, inferred from the importable packages"
    assert header in done.stdout
    # the platform skip and the absent package's skip, both as the markers imply
    assert audit == {"verdict": "pass", "problems": [], "expected_skips": 2, "observed_skips": 2}


def test_without_a_declared_set_a_skip_nobody_expected_still_fails(tmp_path: Path) -> None:
    done, audit = _run_suite(tmp_path, SUITE + SKIPS_ON_ITS_OWN, None)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "inferred install set" in done.stdout
    assert audit["problems"] == [
        "test_generated.py::test_skips_on_its_own: skipped (flaky) but its install set says it must run"
    ]

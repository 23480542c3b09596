"""Install-set truth and the skip audit: pure functions, unit-tested in tests/unit/test_skip_audit.py.

The expected skips are computed from each test's markers and the *declared*
install set, never from the skips observed; the audit then compares the two.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: The optional packages the matrix varies; everything else is always installed.
OPTIONAL_PACKAGES = (
    "mlflow",
    "wandb",
    "clearml",
    "torch",
    "lightning",
    "pytorch_lightning",
    "torchvision",
    "tensorboard",
)

_PROBE = """
import importlib.util, json, sys
found = {}
for name in sys.argv[1:]:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    # A namespace package (e.g. a stray ./wandb run folder) has no real origin.
    found[name] = bool(spec and spec.origin and spec.origin != "namespace")
print(json.dumps(found))
"""


def parse_install_set(raw: str | None) -> frozenset[str]:
    """``"wandb,torch"`` → {"wandb", "torch"}; unknown names are an error."""
    if raw is None:
        raise ValueError("TRACELET_E2E_INSTALL_SET is not set")
    names = frozenset(n.strip() for n in raw.split(",") if n.strip())
    unknown = sorted(names - set(OPTIONAL_PACKAGES))
    if unknown:
        raise ValueError(f"TRACELET_E2E_INSTALL_SET names unknown packages {unknown}")
    return names


def importable_packages(packages: Iterable[str] = OPTIONAL_PACKAGES) -> frozenset[str]:
    """Which packages are really importable, probed in a fresh interpreter from an empty directory."""
    with tempfile.TemporaryDirectory(prefix="tracelet-probe-") as cwd:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, *packages], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout
    found: dict[str, bool] = json.loads(out)
    return frozenset(name for name, present in found.items() if present)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pulled_in_by(package: str) -> list[str]:
    """The installed distributions that require ``package`` (with the extra that asks for it)."""
    target = _normalize(package)
    who: list[str] = []
    for dist in importlib.metadata.distributions():
        for requirement in dist.requires or []:
            name = re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0]
            if _normalize(name) == target:
                extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", requirement)
                label = dist.metadata["Name"] + (f"[{extra.group(1)}]" if extra else "")
                if label not in who:
                    who.append(label)
    return sorted(who)


def install_set_problems(declared: frozenset[str], importable: frozenset[str]) -> list[str]:
    """Every difference between the declared and the importable set, naming who pulled a package in."""
    problems = []
    for name in sorted(importable - declared):
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        parents = pulled_in_by(name) or ["nobody (installed directly)"]
        problems.append(
            f"{name} is importable but not declared (distribution {name} {version}, "
            f"pulled in by: {', '.join(parents)})"
        )
    for name in sorted(declared - importable):
        problems.append(f"{name} is declared but not importable")
    return problems


def framework_of(declared: frozenset[str]) -> str:
    """The matrix's framework column a declared set belongs to: (pytorch_)lightning, vision, torch or none."""
    if "lightning" in declared:
        return "lightning"
    if "pytorch_lightning" in declared:
        return "pytorch_lightning"
    if "torchvision" in declared:
        return "vision"
    return "torch" if "torch" in declared else "none"


def expected_skip(
    requires: Iterable[str],
    platforms: Iterable[str] | None,
    declared: frozenset[str],
    platform: str,
    frameworks: Iterable[str] | None = None,
) -> str | None:
    """The one skip reason a test *should* get, from its markers alone (None: it must run).

    ``frameworks`` (marker ``framework_only``) keeps a test that does not depend on the
    framework set (fault tests) to one column of the matrix, so it runs once per backend.
    """
    allowed = list(platforms or [])
    if allowed and platform not in allowed:
        return f"not supported on {platform}"
    for package in requires:
        if package not in declared:
            return f"{package} not installed"
    columns = list(frameworks or [])
    if columns and framework_of(declared) not in columns:
        return f"runs in the {'/'.join(columns)} column only (this is {framework_of(declared)})"
    return None


#: The expected skip of a test marked ``mounts_tmpfs`` where this process cannot mount one.
MOUNT_REASON = "mounting a tmpfs needs root on Linux"


def mount_skip(platform: str, euid: int | None) -> str | None:
    """The skip a ``mounts_tmpfs`` test should get here (None: it must run): it mounts a small tmpfs."""
    return None if platform.startswith("linux") and euid == 0 else MOUNT_REASON


@dataclass
class AuditResult:
    verdict: str
    problems: list[str] = field(default_factory=list)
    expected_skips: int = 0
    observed_skips: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "verdict": self.verdict,
            "problems": self.problems,
            "expected_skips": self.expected_skips,
            "observed_skips": self.observed_skips,
        }


def audit(expected: Mapping[str, str | None], observed: Mapping[str, tuple[str, str | None]]) -> AuditResult:
    """Compare expected skips (test id → reason or None) with outcomes (test id → (outcome, reason)).

    Fails on a skip nobody expected, a skip with another reason, an expected skip
    that ran, and a selected test that produced no outcome at all.
    """
    problems = []
    for test_id, reason in expected.items():
        if test_id not in observed:
            problems.append(f"{test_id}: selected but never ran")
            continue
        outcome, got = observed[test_id]
        if reason is None and outcome == "skipped":
            problems.append(f"{test_id}: skipped ({got}) but its install set says it must run")
        elif reason is not None and outcome != "skipped":
            problems.append(f"{test_id}: expected to skip ({reason}) but {outcome}")
        elif reason is not None and got != reason:
            problems.append(f"{test_id}: skipped with {got!r}, expected {reason!r}")
    for test_id in observed:
        if test_id not in expected:
            problems.append(f"{test_id}: ran but was not among the selected tests")
    return AuditResult(
        verdict="fail" if problems else "pass",
        problems=problems,
        expected_skips=sum(1 for r in expected.values() if r is not None),
        observed_skips=sum(1 for o, _ in observed.values() if o == "skipped"),
    )

"""The version ranges we declare, the pins we test with and the floors the floor cells run agree.

The extras (``requirements/backend-*.txt``, ...) and ``pyproject.toml`` declare ranges; the matrix
installs ``constraints*.txt``; the floor cells install ``constraints-oldest.txt``. A range whose
lower bound is below its floor promises versions no session ran; a pin outside its range tests a
version no user can install.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from tools.summary_tables.base import noxfile_literals

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself requires tomli before 3.11
    import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements"
FLOORS = noxfile_literals(("FLOOR_BACKENDS", "FLOOR_HOLDS", "UNIT_FLOORS", "OLDEST_CONSTRAINTS"))


def _requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


def _pins(path: Path) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for requirement in _requirements(path):
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{path.name}: {requirement} is not an exact pin"
        pins[canonicalize_name(requirement.name)] = Version(spec.version)
    return pins


def _declared_ranges() -> dict[str, list[Requirement]]:
    """Every range a user's install honours: tracelet's dependencies and every extra's file."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    ranges: dict[str, list[Requirement]] = {}
    requirements = [Requirement(text) for text in project["dependencies"]]
    for path in sorted(REQUIREMENTS.glob("*.txt")):
        if path.name.startswith(("backend-", "framework-", "extra-")):
            requirements += _requirements(path)
    for requirement in requirements:
        ranges.setdefault(canonicalize_name(requirement.name), []).append(requirement)
    return ranges


def _lower_bound(name: str) -> Version:
    """The one ``>=`` bound the ranges declare for ``name``."""
    bounds = {
        Version(spec.version)
        for requirement in _declared_ranges()[name]
        for spec in requirement.specifier
        if spec.operator == ">="
    }
    assert len(bounds) == 1, f"{name}: expected one lower bound, found {sorted(bounds)}"
    return bounds.pop()


OLDEST = _pins(ROOT / FLOORS["OLDEST_CONSTRAINTS"])


@pytest.mark.parametrize("name", [*FLOORS["FLOOR_BACKENDS"], *FLOORS["UNIT_FLOORS"]])
def test_each_lower_bound_is_the_floor_its_cell_runs(name: str) -> None:
    """Below the floor: versions no session ran. Above it: the floor cell runs what no user can have."""
    assert name in OLDEST, f"{FLOORS['OLDEST_CONSTRAINTS']} pins no floor for {name}"
    assert _lower_bound(name) == OLDEST[name], (
        f"{name}: the declared lower bound is {_lower_bound(name)}, the floor cell runs {OLDEST[name]}"
    )


def test_every_hold_of_a_floor_cell_is_pinned_in_the_oldest_constraints() -> None:
    held = {name for holds in FLOORS["FLOOR_HOLDS"].values() for name in holds}
    assert held - set(OLDEST) == set()
    assert set(FLOORS["FLOOR_HOLDS"]) == set(FLOORS["FLOOR_BACKENDS"])


@pytest.mark.parametrize(
    "constraints", ["constraints.txt", "constraints-vision.txt", "constraints-oldest.txt"]
)
def test_every_pin_lies_inside_the_range_a_user_installs(constraints: str) -> None:
    ranges = _declared_ranges()
    outside = [
        f"{name}=={pin} is outside {requirement}"
        for name, pin in _pins(REQUIREMENTS / constraints).items()
        for requirement in ranges.get(name, [])
        if not requirement.specifier.contains(pin, prereleases=True)
    ]
    assert outside == []

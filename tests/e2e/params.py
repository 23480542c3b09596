"""Test parameters that carry their ``requires`` markers, so skips follow the install set."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.framework import ENVIRONMENTS, E2EFramework

#: every single store (the default of ``environments()``)
ALL_ENVIRONMENTS = [name for name, cls in ENVIRONMENTS.items() if not cls.composite]
BACKEND_ENVIRONMENTS = [n for n in ALL_ENVIRONMENTS if n != "local"]
#: the basic workflows also run with every backend in one run (the ``e2e-all-torch`` session)
WITH_ALL_BACKENDS = [*ALL_ENVIRONMENTS, "all"]


#: A real server process is started and stopped by POSIX process group.
POSIX = ("linux", "darwin")


def environments(names: list[str] | None = None) -> list[Any]:
    """``environment`` params: each requires its backend package (and the server a POSIX host)."""
    params = []
    for name in names or ALL_ENVIRONMENTS:
        marks = [pytest.mark.requires(*ENVIRONMENTS[name].requires)]
        if name == "mlflow_server":
            marks.append(pytest.mark.platform_only(*POSIX))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def workflow(name: str) -> Any:
    """A ``workflow`` param that requires its framework packages."""
    requires = E2EFramework().workflows[name]().requires
    return pytest.param(name, marks=pytest.mark.requires(*requires), id=name)

"""Every file in ``examples/`` runs as a user would run it, and succeeds.

Each example is executed as ``python examples/<file>`` in a fresh process, in its own working
directory, with the stores' home folders in a temp dir. What each needs is declared below; a new
example without an entry fails ``test_every_example_is_declared``, so none is left out.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.environments import child_env
from tests.e2e.params import POSIX

pytestmark = pytest.mark.e2e_basic

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

#: example -> (the packages it needs, its extra markers, takes an output folder argument)
NEEDS: dict[str, tuple[tuple[str, ...], tuple[pytest.MarkDecorator, ...], bool]] = {
    # one run into all three stores: the e2e-all-torch session, where they are installed together
    "three_backends.py": (("mlflow", "wandb", "clearml"), (pytest.mark.e2e_together,), True),
    # the workflow on every installed backend (an MLflow server among them, so POSIX only)
    "e2e_demo.py": (
        ("torch",),
        (pytest.mark.framework_only("torch"), pytest.mark.platform_only(*POSIX)),
        False,
    ),
}


def _params() -> list[object]:
    return [
        pytest.param(name, marks=[pytest.mark.requires(*needs), *marks], id=name)
        for name, (needs, marks, _) in NEEDS.items()
    ]


def test_every_example_is_declared() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(NEEDS)


@pytest.mark.parametrize("example", _params())
def test_example_runs(example: str, isolated_env: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),  # ClearML's and W&B's settings files
        "WANDB_CONFIG_DIR": str(home / ".wandb"),
        "WANDB_CACHE_DIR": str(home / ".cache"),
        "COLUMNS": "200",  # rich's table width when the output is not a terminal
    }
    done = _run_example(
        example, *([str(tmp_path / "out")] if NEEDS[example][2] else []), cwd=tmp_path, env=env
    )
    if example == "e2e_demo.py":
        assert "all landed" in done.stdout
        assert "FAILED" not in done.stdout
    else:
        assert done.stdout.count("read back") == 3, done.stdout


@pytest.mark.requires("torch")
@pytest.mark.framework_only("torch")
def test_the_demo_prints_plain_lines_without_rich(isolated_env: Path, tmp_path: Path) -> None:
    """The seed's prerequisites do not name ``rich``: the demo must not need it.

    A ``rich`` package that fails to import, first on the path, stands in for an absent one.
    """
    shadow = tmp_path / "no-rich" / "rich"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("rich is not installed here")\n')
    done = _run_example("e2e_demo.py", "--backends", "local", cwd=tmp_path, env=child_env(shadow.parent))
    assert "local: training and logging" in done.stdout
    assert "all landed" in done.stdout


def _run_example(
    example: str, *args: str, cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``python examples/<example> *args`` as a user runs it; it must exit 0."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / example), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done

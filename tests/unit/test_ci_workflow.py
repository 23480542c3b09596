"""Structural checks of .github/workflows/ci.yml.

A broken workflow is only noticed after a push, and some mistakes (a non-unique artifact name,
a summary that is skipped when a cell fails) only show when the matrix is already red. These
tests pin the properties the E2E reporting relies on.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

WORKFLOW = Path(__file__).resolve().parents[2] / ".github" / "workflows" / "ci.yml"
NEWEST = WORKFLOW.with_name("newest.yml")


@pytest.fixture(scope="module")
def workflow() -> dict[Any, Any]:
    data = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def jobs(workflow: dict[Any, Any]) -> dict[str, Any]:
    return dict(workflow["jobs"])


def _runs(job: dict[str, Any]) -> list[str]:
    return [str(step["run"]) for step in job["steps"] if "run" in step]


def _uses(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [step for step in job["steps"] if str(step.get("uses", "")).startswith(action)]


def _needs(job: dict[str, Any]) -> list[str]:
    needs = job.get("needs", [])
    return [needs] if isinstance(needs, str) else list(needs)


def test_triggers_on_push_and_pull_request(workflow: dict[Any, Any]) -> None:
    # YAML 1.1 reads the bare key `on` as the boolean True.
    triggers = workflow.get("on", workflow.get(True))
    assert triggers is not None
    assert {"push", "pull_request"} <= set(triggers)


def test_lint_typecheck_unit_jobs_run_their_nox_sessions(jobs: dict[str, Any]) -> None:
    assert {"lint", "typecheck", "unit", "list", "e2e", "summary"} <= set(jobs)
    for name in ("lint", "typecheck"):
        runs = _runs(jobs[name])
        assert any('pip install "nox[uv]"' in r for r in runs)
        assert f"nox -s {name}" in runs
    assert any(r.strip() == 'nox -s "unit-${{ matrix.python }}"' for r in _runs(jobs["unit"]))


def test_unit_covers_python_3_10_to_3_13(jobs: dict[str, Any]) -> None:
    assert jobs["unit"]["strategy"]["matrix"]["python"] == ["3.10", "3.11", "3.12", "3.13"]
    assert jobs["unit"]["runs-on"] == "ubuntu-latest"


def test_list_job_lists_nox_sessions_as_json(jobs: dict[str, Any]) -> None:
    job = jobs["list"]
    (script,) = [r for r in _runs(job) if "nox -l --json" in r]
    assert "GITHUB_OUTPUT" in script
    assert job["outputs"]["sessions"] == "${{ steps.list.outputs.sessions }}"
    assert any(step.get("id") == "list" for step in job["steps"])


def test_list_filter_keeps_only_e2e_sessions(jobs: dict[str, Any], tmp_path: Path) -> None:
    """Run the job's own python filter on a nox -l --json sample."""
    (script,) = [r for r in _runs(jobs["list"]) if "nox -l --json" in r]
    match = re.search(r"python -c '([^']*)'", script)
    assert match, "the list step filters with an inline python -c '...'"
    listed = [
        {
            "session": "e2e-mlflow-torch",
            "name": "e2e-mlflow-torch",
            "python": "3.11",
            "tags": ["e2e", "mlflow"],
        },
        {"session": "e2e-none-vision", "name": "e2e-none-vision", "python": "3.11", "tags": ["e2e", "none"]},
        {"session": "unit-3.10", "name": "unit", "python": "3.10", "tags": []},
        {"session": "lint", "name": "lint", "python": "3.11", "tags": []},
    ]
    (tmp_path / "nox-sessions.json").write_text(json.dumps(listed), encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-c", match.group(1)], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == ["e2e-mlflow-torch", "e2e-none-vision"]


def test_e2e_matrix_comes_from_the_list_job(jobs: dict[str, Any]) -> None:
    job = jobs["e2e"]
    assert "list" in _needs(job)
    strategy = job["strategy"]
    assert strategy["fail-fast"] is False
    matrix = strategy["matrix"]
    assert re.fullmatch(r"\$\{\{\s*fromJSON\(needs\.list\.outputs\.sessions\)\s*\}\}", matrix["session"])
    assert matrix["os"] == ["ubuntu-latest", "macos-latest", "windows-latest"]
    assert matrix["python"] == ["3.10", "3.11", "3.12", "3.13"]
    assert job["runs-on"] == "${{ matrix.os }}"
    assert "nox -s ${{ matrix.session }} --force-python ${{ matrix.python }}" in _runs(job)


def test_e2e_upload_is_unique_per_job_and_keeps_coverage_files(jobs: dict[str, Any]) -> None:
    job = jobs["e2e"]
    (upload,) = _uses(job, "actions/upload-artifact@v4")
    assert upload["if"] == "always()"
    name = upload["with"]["name"]
    assert name.startswith("reports-")  # the summary job downloads pattern reports-*
    for dimension in job["strategy"]["matrix"]:
        assert f"${{{{ matrix.{dimension} }}}}" in name, f"artifact name lacks matrix.{dimension}"
    assert upload["with"]["path"] == "reports/${{ matrix.session }}"
    assert upload["with"]["include-hidden-files"] is True


def test_e2e_uses_the_pytorch_cpu_index_off_macos(jobs: dict[str, Any]) -> None:
    (step,) = [s for s in jobs["e2e"]["steps"] if "UV_EXTRA_INDEX_URL" in str(s.get("run", ""))]
    assert "https://download.pytorch.org/whl/cpu" in step["run"]
    assert "UV_INDEX_STRATEGY=unsafe-best-match" in step["run"]
    assert step["if"] == "runner.os != 'macOS'"


def test_summary_always_runs_after_e2e(jobs: dict[str, Any]) -> None:
    job = jobs["summary"]
    assert job["if"] == "always()"
    assert {"e2e", "oldest"} <= set(_needs(job))
    (download,) = _uses(job, "actions/download-artifact@v4")
    assert download["with"]["pattern"] == "reports-*"
    assert download["with"]["path"] == "reports"
    assert "nox -s summary" in _runs(job)
    (upload,) = _uses(job, "actions/upload-artifact@v4")
    paths = set(upload["with"]["path"].split())
    assert {
        "reports/summary.md",
        "reports/summary.json",
        "reports/junit.xml",
        "reports/coverage.xml",
        "reports/htmlcov",
    } <= paths
    steps = job["steps"]
    assert steps.index(download) < steps.index(upload)


def test_only_github_and_pytorch_hosts_are_named() -> None:
    for workflow in (WORKFLOW, NEWEST):
        text = workflow.read_text(encoding="utf-8")
        hosts = set(re.findall(r"https?://([^/\s\"']+)", text))
        assert hosts <= {"download.pytorch.org", "github.com"}


def test_the_floors_run_on_every_push_as_one_linux_job_whose_reports_join_the_summary(
    jobs: dict[str, Any],
) -> None:
    """Issue 23: `nox -t oldest` on Linux, Python 3.11 (and 3.10 for unit-oldest), outside the fan-out."""
    job = jobs["oldest"]
    assert job["runs-on"] == "ubuntu-latest"
    assert "strategy" not in job
    assert "if" not in job
    (setup,) = _uses(job, "actions/setup-python@v5")
    pythons = str(setup["with"]["python-version"]).split()
    assert pythons[-1] == "3.11"
    assert "3.10" in pythons
    runs = _runs(job)
    assert "nox -t oldest" in runs
    assert any("download.pytorch.org/whl/cpu" in r for r in runs)
    (upload,) = _uses(job, "actions/upload-artifact@v4")
    assert upload["if"] == "always()"
    assert upload["with"]["name"].startswith("reports-")  # the summary job downloads pattern reports-*
    assert upload["with"]["path"] == "reports/e2e-*-oldest"
    assert upload["with"]["include-hidden-files"] is True


def test_the_floor_and_newest_cells_stay_out_of_the_os_python_fan_out() -> None:
    """The list job keeps sessions tagged "e2e"; the version cells carry "oldest" or "latest" instead."""
    from tools.summary_tables.base import noxfile_literals

    data = noxfile_literals(("FLOOR_BACKENDS", "LATEST_BACKENDS", "VERSION_CELL_FRAMEWORK"))
    assert set(data["FLOOR_BACKENDS"]) == set(data["LATEST_BACKENDS"]) == {"mlflow", "wandb", "clearml"}
    noxfile = (WORKFLOW.parents[2] / "noxfile.py").read_text(encoding="utf-8")
    assert 'tags = ["e2e", backend, framework] if versions == "pinned" else [versions, backend]' in noxfile


def test_the_newest_releases_run_weekly_and_on_demand_into_their_run_summary() -> None:
    newest = yaml.safe_load(NEWEST.read_text(encoding="utf-8"))
    triggers = newest.get("on", newest.get(True))
    assert set(triggers) == {"schedule", "workflow_dispatch"}  # never on a push: not a contributor's red
    (cron,) = [entry["cron"] for entry in triggers["schedule"]]
    _minute, _hour, day, month, weekday = cron.split()
    assert (day, month) == ("*", "*")
    assert weekday.isdigit()
    (job,) = newest["jobs"].values()
    runs = _runs(job)
    assert runs.index("nox -t latest") < next(i for i, r in enumerate(runs) if r.startswith("nox -s summary"))
    (summary,) = [s for s in job["steps"] if str(s.get("run", "")).startswith("nox -s summary")]
    assert summary["if"] == "always()"  # a red newest cell is summarised too


@pytest.mark.parametrize("name", ["unit", "e2e"])
def test_uv_cache_is_kept_keyed_on_what_decides_the_installs(jobs: dict[str, Any], name: str) -> None:
    """Issue 9 (seed 001, "caching mechanisms"): uv's cache survives between runs, pruned for CI."""
    job = jobs[name]
    (cache,) = _uses(job, "actions/cache@")
    path = cache["with"]["path"]
    assert any(f"UV_CACHE_DIR={path}" in run for run in _runs(job)), "uv must use the cached folder"
    key = cache["with"]["key"]
    assert "hashFiles('requirements/**', 'noxfile.py', 'pyproject.toml')" in key
    assert "runner.os" in key
    assert "matrix.python" in key
    assert key.startswith(cache["with"]["restore-keys"])
    if name == "e2e":
        assert "matrix.session" in key  # each cell installs another set
    names = [str(step.get("run", step.get("uses", ""))) for step in job["steps"]]
    nox_step = max(i for i, n in enumerate(names) if n.startswith("nox -s"))
    prune = names.index("uv cache prune --ci")
    assert prune > nox_step
    assert job["steps"][prune].get("if") == "always()"
    assert names.index(cache["uses"]) < nox_step

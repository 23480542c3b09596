"""The summary's cross-backend table: records the E2E sessions wrote, compared across stores."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from tools.e2e_results import collect
from tools.summary_tables.base import MatrixAxes, SummaryInput
from tools.summary_tables.equivalence import Compared, EquivalenceTable

from tracelet.testing import ArtifactRecord, RunRecord
from tracelet.testing.equivalence import record_to_json

AXES = MatrixAxes(("mlflow", "wandb", "clearml"), ("torch", "vision"), ())

ROOT = Path(__file__).resolve().parents[2]


def run(backend: str, loss: list[float], sha: str = "abc") -> RunRecord:
    return RunRecord(
        backend=backend,
        run_id=f"id-{backend}",
        project="p",
        run_name=f"simple_pytorch-{backend}",
        status="finished",
        params={"lr": "0.05"},
        metrics={"train/loss": list(enumerate(loss))},
        system_tags={"tracelet.version": "0.1.0"},
        artifacts=[ArtifactRecord("checkpoints/model.pt", 3, sha)],
    )


def session(reports: Path, name: str, framework: str, records: dict[str, RunRecord]) -> None:
    folder = reports / name
    folder.mkdir(parents=True)
    backend = name.split("-")[1]
    meta = {"session": name, "backend": backend, "framework": framework, "status": "passed"}
    (folder / "meta.json").write_text(json.dumps(meta))
    for environment, record in records.items():
        path = folder / "records" / "simple_pytorch" / f"{environment}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record_to_json(record)))


def test_equal_stores_pass_and_an_inherent_difference_is_forgiven(tmp_path: Path) -> None:
    session(
        tmp_path,
        "e2e-mlflow-torch",
        "torch",
        {"local": run("local", [1.0, math.inf]), "mlflow": run("mlflow", [1.0, sys.float_info.max])},
    )
    session(
        tmp_path,
        "e2e-clearml-torch",
        "torch",
        {"local": run("local", [1.0, math.inf]), "clearml": run("clearml", [1.0, 0.0])},
    )
    table = EquivalenceTable()
    data = table.build(SummaryInput(collect(tmp_path), AXES))
    assert [(r.framework, r.workflow) for r in data] == [("torch", "simple_pytorch")]
    assert data[0].environments == {
        "local": Compared(records=2, differing=0),
        "mlflow": Compared(records=1, differing=0),
        "clearml": Compared(records=1, differing=0),
    }
    assert table.problems(data) == []
    assert "| simple_pytorch (torch) | ✅ 1 | ✅ 1 | ✅ 2 |" in table.markdown(data)


def test_any_other_difference_is_a_problem_that_names_the_store(tmp_path: Path) -> None:
    session(tmp_path, "e2e-mlflow-torch", "torch", {"local": run("local", [1.0, 0.5])})
    session(tmp_path, "e2e-wandb-torch", "torch", {"wandb": run("wandb", [1.0, 0.5], sha="abd")})
    # another framework column is another torch build: compared only within its own column
    session(tmp_path, "e2e-mlflow-vision", "vision", {"local": run("local", [2.0, 0.7])})
    table = EquivalenceTable()
    data = table.build(SummaryInput(collect(tmp_path), AXES))
    torch_row = next(r for r in data if r.framework == "torch")
    assert torch_row.environments["wandb"] == Compared(records=1, differing=1)
    assert torch_row.differences == [
        "e2e-wandb-torch (?/py?)/wandb: artifacts 'checkpoints/model.pt': 'abc' in local, 'abd' in wandb"
    ]
    assert table.problems(data) == ["simple_pytorch (torch): 1 differences between stores"]
    assert "| simple_pytorch (torch) | ❌ 1/1 differ | ✅ 1 |" in table.markdown(data)


def test_a_difference_fails_the_summary_even_without_strict(tmp_path: Path) -> None:
    session(tmp_path, "e2e-mlflow-torch", "torch", {"local": run("local", [1.0, 0.5])})
    session(tmp_path, "e2e-wandb-torch", "torch", {"wandb": run("wandb", [1.0, 0.6])})
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "e2e_summary.py"), "--reports", str(tmp_path), "--no-coverage"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "problem: simple_pytorch (torch): 1 differences between stores" in done.stdout
    markdown = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "## Cross-backend equivalence" in markdown
    assert "metric 'train/loss' step 1: 0.5 in local, 0.6 in wandb" in markdown

"""bench/trend.py on synthetic results: what a regression is, and what is only noise."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    """bench/ holds scripts, not a package: import the file itself (its siblings by name, as it does)."""
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("tracelet_bench_trend", ROOT / "bench" / "trend.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


trend = _load()
MACHINE = {"os": "linux", "cores": 2, "python": "3.11.7"}


def run(*figures: dict[str, Any], machine: dict[str, Any] = MACHINE) -> dict[str, Any]:
    return {"machine": machine, "figures": list(figures)}


def throughput(reps: list[float], backend: str = "mlflow") -> dict[str, Any]:
    return {
        "measure": "throughput",
        "backend": backend,
        "name": "native/tracelet",
        "kind": "ratio",
        "reps": reps,
    }


def overhead(reps: list[float]) -> dict[str, Any]:
    return {"measure": "overhead", "backend": "wandb", "name": "fast loop", "kind": "points", "reps": reps}


def test_the_key_separates_machines_that_cannot_be_compared() -> None:
    assert trend.baseline_key(MACHINE) == "linux-2cores-py3.11"
    assert trend.baseline_key({**MACHINE, "cores": 4}) != trend.baseline_key(MACHINE)


def test_a_slowed_throughput_is_flagged_by_its_relative_change() -> None:
    result = trend.compare(run(throughput([0.80, 0.81, 0.82])), run(throughput([0.95, 0.96, 0.97])))
    (verdict,) = result.verdicts
    assert verdict.regressed
    assert verdict.change == pytest.approx(0.81 / 0.96 - 1)
    assert result.regressions == [verdict]
    assert "REGRESSED" in verdict.describe()


def test_a_grown_overhead_is_flagged_in_percentage_points() -> None:
    result = trend.compare(run(overhead([4.0, 4.5, 5.0])), run(overhead([1.0, 1.5, 2.0])))
    (verdict,) = result.verdicts
    assert verdict.regressed
    assert verdict.change == pytest.approx(3.0)  # points, not a relative change
    assert verdict.tolerance == pytest.approx(1.0)
    assert "+3.00 points" in verdict.describe()


def test_a_move_within_the_measured_spread_is_noise() -> None:
    # throughput 0.93 against 0.96, but the repetitions themselves spread over 0.85..0.99
    noisy = trend.compare(run(throughput([0.85, 0.93, 0.99])), run(throughput([0.95, 0.96, 0.97])))
    assert not noisy.verdicts[0].regressed
    # an overhead that shrank is never a regression, however far it moved
    better = trend.compare(run(overhead([0.5, 0.5, 0.5])), run(overhead([3.0, 3.0, 3.0])))
    assert not better.verdicts[0].regressed
    assert better.regressions == []


def test_a_missing_baseline_key_warns_and_compares_nothing(tmp_path: Path) -> None:
    results = run(throughput([0.9, 0.9, 0.9]))
    assert trend.load_baseline(results, tmp_path) is None
    result = trend.compare(results, None)
    assert not result.has_baseline
    assert result.regressions == []
    assert result.warnings == [
        "no baseline for linux-2cores-py3.11: nothing compared (commit one to compare)"
    ]


def test_figures_new_or_gone_are_named_not_judged() -> None:
    result = trend.compare(run(throughput([0.9] * 3, "wandb")), run(throughput([0.9] * 3, "mlflow")))
    assert [v.note for v in result.verdicts] == ["new: no baseline figure"]
    assert result.warnings == ["throughput/mlflow/native/tracelet: in the baseline, not measured this time"]


def test_a_baseline_of_another_machine_is_refused() -> None:
    with pytest.raises(ValueError, match=r"baseline is for linux-4cores-py3\.11"):
        trend.compare(run(throughput([0.9] * 3)), run(throughput([0.9] * 3), machine={**MACHINE, "cores": 4}))


def test_update_baseline_then_strict_fails_on_a_regression(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(run(throughput([0.95, 0.96, 0.97]))))
    assert trend.main([str(results), "--baselines", str(tmp_path), "--update-baseline"]) == 0
    assert (tmp_path / "baseline-linux-2cores-py3.11.json").is_file()
    results.write_text(json.dumps(run(throughput([0.70, 0.71, 0.72]))))
    assert trend.main([str(results), "--baselines", str(tmp_path)]) == 0  # reports, but only warns
    assert trend.main([str(results), "--baselines", str(tmp_path), "--strict"]) == 1
    assert "REGRESSED" in capsys.readouterr().out


def test_a_quick_run_is_compared_only_with_a_quick_baseline() -> None:
    quick = {**MACHINE, "suite": "quick"}
    assert trend.baseline_key(quick) == "linux-2cores-py3.11-quick"
    with pytest.raises(ValueError, match=r"baseline is for linux-2cores-py3\.11,"):
        trend.compare(run(throughput([0.9] * 3), machine=quick), run(throughput([0.9] * 3)))


def test_a_slower_rate_and_a_grown_memory_are_flagged_relative_to_their_baselines() -> None:
    def figure(name: str, kind: str, reps: list[float]) -> dict[str, Any]:
        return {"measure": "m", "backend": "wandb", "name": name, "kind": kind, "reps": reps}

    result = trend.compare(
        run(figure("points/s", "rate", [40_000, 41_000, 42_000]), figure("peak", "MB", [300, 310, 320])),
        run(figure("points/s", "rate", [60_000, 61_000, 62_000]), figure("peak", "MB", [200, 205, 210])),
    )
    rate, memory = result.verdicts
    assert rate.regressed
    assert rate.change == pytest.approx(41_000 / 61_000 - 1)
    assert memory.regressed
    assert memory.change == pytest.approx(310 / 205 - 1)
    # the same figures moving the good way: faster, smaller
    better = trend.compare(
        run(figure("points/s", "rate", [90_000] * 3), figure("peak", "MB", [100] * 3)),
        run(figure("points/s", "rate", [60_000] * 3), figure("peak", "MB", [200] * 3)),
    )
    assert better.regressions == []


def sweep_start(reps: list[float], backend: str = "mlflow") -> dict[str, Any]:
    """The figure of a target (bench/targets.py: start_logging p99 at most 50 ms)."""
    name = "tracelet start_logging p99"
    return {"measure": "sweep", "backend": backend, "name": name, "kind": "us", "reps": reps}


def test_strict_fails_on_a_target_newly_missed_and_marks_one_the_baseline_missed_too() -> None:
    """A miss the baseline did not have fails ``--strict``; one it had already is reported, not failed."""
    newly = trend.compare(run(sweep_start([60.0, 61.0])), run(sweep_start([10.0, 70.0])))
    (verdict,) = newly.targets
    assert not verdict.met
    assert newly.regressions == []  # within the (wide) spread: not a regression of the figure
    assert newly.newly_missed == [verdict]  # but the baseline's median (40 ms) met the target
    assert newly.failures == [verdict.describe()]
    already = trend.compare(run(sweep_start([60.0, 61.0])), run(sweep_start([55.0, 70.0])))
    assert [v.met for v in already.targets] == [False]
    assert already.newly_missed == []
    assert already.failures == []

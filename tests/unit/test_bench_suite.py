"""bench/suite.py's figures and bench/report.py's tables, on synthetic child results (no store runs).

What is checked is the arithmetic a reader trusts: ratios paired rep by rep, overhead against the
same rep's no-logging step, cost per point, memory peaks, the sweep's start_logging percentiles and
per-run times; and that the report (with the sweep's targets) and the summary's bench table show them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))  # bench/ holds scripts that import each other by name

import report  # noqa: E402
import suite  # noqa: E402
import trend  # noqa: E402
from tools.summary_tables.base import MatrixAxes, SummaryInput  # noqa: E402
from tools.summary_tables.bench import BenchTable  # noqa: E402

PLAN = suite.Plan(
    reps=2,
    top_reps=2,
    memory_apart=True,
    points=(1_000, 10_000),
    throughput_points=1_000,
    keys=(1, 10),
    keys_points=1_000,
    per_call_points=100,
    latency_calls=10,
    latency_backlog=10,
    overhead_steps=10,
    overhead_server_native_steps=10,
    overhead_slow_steps=0,
    sweep_runs=5,
    sweep_points=100,
    artifacts={"1MB": (1_000_000, 1)},
)


def bulk(points: int, keys: int, total_s: float) -> dict[str, Any]:
    return {"points": points, "keys": keys, "total_s": total_s, "landed": True}


def child_runs(rep: int, slow: float) -> list[dict[str, Any]]:
    """One rep of every child for the ``local`` store; ``slow`` scales tracelet's times."""

    def run(measure: str, kind: str, result: dict[str, Any], store: str = "local") -> dict[str, Any]:
        return {"measure": measure, "kind": kind, "store": store, "rep": rep, "result": result}

    latency = {"float": {"p50_us": 0.5, "p99_us": 2.0}, "tensor": {"p50_us": 1.0, "p99_us": 4.0}}
    percall = {"float": {"p50_us": 5.0, "p99_us": 50.0}, "tensor": {"p50_us": 6.0, "p99_us": 60.0}}
    return [
        run("bulk", "tracelet", {"runs": [bulk(1_000, 10, 0.01 * slow), bulk(1_000, 1, 0.02 * slow)]}),
        run("bulk", "native", {"runs": [bulk(1_000, 10, 0.005), bulk(1_000, 1, 0.005)]}),
        run(
            "memory",
            "tracelet",
            {
                "runs": [bulk(10_000, 10, 0.05 * slow)],
                "peak_rss_mb": {"trainer": 40, "helpers": 40, "total": 80},
            },
        ),
        run(
            "memory",
            "native",
            {"runs": [bulk(10_000, 10, 0.04)], "peak_rss_mb": {"trainer": 20, "helpers": 0, "total": 20}},
        ),
        run(
            "percall", "native", {"points": 100, "log_s": 0.01, "close_s": 0.001, "start_s": 0.001, **percall}
        ),
        run("latency", "tracelet", {"start_s": 0.08, "stop_s": 0.1, **latency}),
        run("artifacts", "tracelet", {"upload_s": {"1MB": 0.01 * slow}, "download_s": {"1MB": 0.002}}),
        run("artifacts", "native", {"upload_s": {"1MB": 0.001}, "download_s": {"1MB": 0.001}}),
        run("overhead", "none", {"median_ms": 0.5}, store="-"),
        run("overhead", "tracelet", {"median_ms": 0.5 * 1.02 * slow}),
        run("overhead", "native", {"median_ms": 0.6}),
    ]


def figures(slow: float = 1.0) -> dict[tuple[str, str], list[float]]:
    runs = child_runs(1, slow) + child_runs(2, slow)
    return {(f["measure"], f["name"]): f["reps"] for f in suite.build_figures(runs, PLAN, ["local"])}


def test_every_measure_has_its_ratio_against_native() -> None:
    got = figures()
    assert got[("throughput", "tracelet points/s")] == [100_000, 100_000]
    assert got[("throughput", "native bulk points/s")] == [200_000, 200_000]
    assert got[("throughput", "native per-call points/s")] == [10_000, 10_000]
    assert got[("throughput", "tracelet ÷ native bulk")] == [0.5, 0.5]
    assert got[("throughput", "tracelet ÷ native per-call")] == [10, 10]
    assert got[("overhead", "tracelet fast loop")] == pytest.approx([2.0, 2.0])
    assert got[("overhead", "native fast loop")] == pytest.approx([20.0, 20.0])
    assert got[("overhead", "step time native ÷ tracelet")] == pytest.approx([0.6 / 0.51] * 2)
    assert got[("latency", "native ÷ tracelet float p50")] == [10, 10]
    assert got[("memory", "native ÷ tracelet total")] == [0.25, 0.25]
    assert got[("memory", "tracelet helpers peak MB")] == [40, 40]
    assert got[("artifacts", "upload 1MB tracelet ÷ native")] == pytest.approx([0.1, 0.1])
    # cost per point: 10 µs at 1,000 points, 5 µs at 10,000 (the memory run is the largest size)
    assert got[("scalability", "tracelet µs/point @ 1,000 points")] == pytest.approx([10, 10])
    assert got[("scalability", "tracelet µs/point @ 10,000 points")] == pytest.approx([5, 5])
    assert got[("scalability", "tracelet µs/point @ 1 keys")] == pytest.approx([20, 20])
    assert got[("scalability", "native ÷ tracelet @ 1 keys")] == pytest.approx([0.25, 0.25])


def test_a_failed_child_leaves_its_figures_out_rather_than_inventing_them() -> None:
    runs = child_runs(1, 1.0)
    for r in runs:
        if r["measure"] == "percall":
            r["result"] = {"error": "exit code 1"}
    got = {(f["measure"], f["name"]): f["reps"] for f in suite.build_figures(runs, PLAN, ["local"])}
    assert got[("throughput", "native per-call points/s")] == []
    assert got[("throughput", "tracelet ÷ native per-call")] == []
    assert got[("throughput", "tracelet ÷ native bulk")] == [0.5]


def results(slow: float = 1.0) -> dict[str, Any]:
    runs = child_runs(1, slow) + child_runs(2, slow)
    return {
        "machine": {"os": "linux", "cores": 2, "python": "3.11.7", "suite": "full"},
        "suite": "full",
        "plan": {**PLAN.__dict__, "artifacts": {k: list(v) for k, v in PLAN.artifacts.items()}},
        "stores": ["local"],
        "elapsed_s": 60.0,
        "figures": suite.build_figures(runs, PLAN, ["local"]),
        "errors": [],
    }


def test_the_report_puts_ratios_first_and_marks_what_regressed(tmp_path: Path) -> None:
    base, slowed = results(), results(slow=2.0)
    comparison = trend.compare(slowed, base)
    assert comparison.regressions  # tracelet twice as slow: throughput, artifacts, overhead...
    path = report.render(slowed, comparison, tmp_path, plots=False)
    text = path.read_text(encoding="utf-8")
    throughput = text.split("## Throughput")[1].split("##")[0]
    rows = [line for line in throughput.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| tracelet ÷ native bulk | 0.250 [0.250..0.250] ×")  # the ratio comes first
    assert "⚠ regressed" in rows[1]
    assert "## Which backend for which load" in text
    assert "figures" in text.split("## Trend")[1]
    within = report.render(base, trend.compare(base, base), tmp_path, plots=False).read_text(encoding="utf-8")
    assert "⚠ regressed" not in within


def test_the_summary_shows_the_bench_table_only_when_a_bench_run_left_results(tmp_path: Path) -> None:
    table = BenchTable()
    assert (
        table.build(SummaryInput([], MatrixAxes((), (), ()), tmp_path)) is None
    )  # no reports/bench: no section
    (tmp_path / "bench").mkdir()
    data = {
        **results(),
        "trend": {"key": "linux-2cores-py3.11", "has_baseline": True, "regressed": ["x: REGRESSED"]},
    }
    (tmp_path / "bench" / "results.json").write_text(json.dumps(data), encoding="utf-8")
    built = table.build(SummaryInput([], MatrixAxes((), (), ()), tmp_path))
    assert built is not None
    lines = table.markdown(built)
    assert "| throughput, tracelet ÷ native bulk | 0.5 × |" in lines
    assert any("1 figure(s) regressed" in line for line in lines)
    assert table.problems(built) == []


def test_one_slow_no_logging_run_does_not_move_a_whole_repetition() -> None:
    runs = child_runs(1, 1.0) + child_runs(2, 1.0) + child_runs(3, 1.0)
    for r in runs:
        if r["measure"] == "overhead" and r["kind"] == "none" and r["rep"] == 2:
            r["result"] = {"median_ms": 0.7}  # a busy neighbour during that one run
    got = {(f["measure"], f["name"]): f["reps"] for f in suite.build_figures(runs, PLAN, ["local"])}
    assert got[("overhead", "tracelet fast loop")] == pytest.approx([2.0, 2.0, 2.0])


def test_the_quick_plan_takes_memory_from_the_process_that_ran_every_size() -> None:
    plan = suite.Plan(**{**PLAN.__dict__, "memory_apart": False})
    jobs = suite.jobs_for(plan, ["local"], None)
    assert not [j for j in jobs if j.measure == "memory"]
    bulk_jobs = [j for j in jobs if j.measure == "bulk"]
    assert all(j.sample_memory and j.spec["sizes"][-1] == [10_000, 10] for j in bulk_jobs)
    runs = []
    for run in child_runs(1, 1.0):
        if run["measure"] == "memory":
            continue
        if run["measure"] == "bulk":
            slow = 1.0 if run["kind"] == "tracelet" else 0.8
            run["result"]["runs"].append(bulk(10_000, 10, 0.05 * slow))
            run["result"]["peak_rss_mb"] = {"trainer": 30, "helpers": 10, "total": 40}
        runs.append(run)
    got = {(f["measure"], f["name"]): f["reps"] for f in suite.build_figures(runs, plan, ["local"])}
    assert got[("memory", "tracelet total peak MB")] == [40]
    assert got[("scalability", "tracelet µs/point @ 10,000 points")] == pytest.approx([5.0])


# -- the sweep ----------------------------------------------------------------------------------------


def sweep_child(
    rep: int, store: str, kind: str, start_ms: list[float], run_ms: list[float], total_s: float
) -> dict[str, Any]:
    """One sweep child's result: each run's start_logging (or native open) and whole time."""
    runs = [
        {"points": 100, "start_s": start / 1e3, "run_s": run / 1e3, "delivered": 100, "landed": True}
        for start, run in zip(start_ms, run_ms, strict=True)
    ]
    result = {"import_s": 0.05, "total_s": total_s, "runs": runs, "landed": True, "git": True}
    return {"measure": "sweep", "kind": kind, "store": store, "rep": rep, "result": result}


def sweep_reps(
    store: str = "local", first_start_ms: float = 200.0, tracelet_total_s: float = 1.2
) -> list[Any]:
    """Two reps of both sides: tracelet's first start is slow (a new agent), the next ones fast."""
    return [
        child
        for rep in (1, 2)
        for child in (
            sweep_child(
                rep,
                store,
                "tracelet",
                [first_start_ms, 10, 12, 11, 30],
                [500, 40, 50, 45, 60],
                tracelet_total_s,
            ),
            sweep_child(rep, store, "native", [100, 5, 5, 5, 5], [300, 20, 30, 25, 20], 0.6),
        )
    ]


def test_the_sweep_figures_come_from_every_run_and_the_runs_after_the_first() -> None:
    got = {
        (f["measure"], f["name"]): f["reps"]
        for f in suite.build_figures(sweep_reps(), PLAN, ["local"], ["sweep"])
    }
    assert {measure for measure, _ in got} == {"sweep"}  # only the measures asked for
    assert got[("sweep", "ratio native/tracelet total")] == pytest.approx([0.5, 0.5])
    # start_logging over all 5 runs, the first included (nearest rank): [10, 11, 12, 30, 200] ms
    assert got[("sweep", "tracelet start_logging p50")] == pytest.approx([12, 12])
    assert got[("sweep", "tracelet start_logging p99")] == pytest.approx([200, 200])
    # runs 2..5: median of [40, 50, 45, 60] and of [20, 30, 25, 20] ms
    assert got[("sweep", "tracelet per run after the first")] == pytest.approx([47.5, 47.5])
    assert got[("sweep", "native per run after the first")] == pytest.approx([22.5, 22.5])
    assert got[("sweep", "extra per run over native")] == pytest.approx([25, 25])
    assert got[("sweep", "tracelet total")] == [1.2, 1.2]
    assert got[("sweep", "native total")] == [0.6, 0.6]


def test_only_the_chosen_measures_run_and_the_sweep_runs_in_a_git_repository() -> None:
    jobs = suite.jobs_for(PLAN, ["local", "mlflow"], None, ["sweep"])
    assert sorted(j.label for j in jobs) == [
        "sweep native-local",
        "sweep native-mlflow",
        "sweep tracelet-local",
        "sweep tracelet-mlflow",
    ]
    assert all(j.spec["git"] and (j.spec["runs"], j.spec["points"]) == (5, 100) for j in jobs)
    assert "sweep" not in {j.measure for j in suite.jobs_for(PLAN, ["local"], None, ["latency"])}
    with pytest.raises(SystemExit):
        suite.main(["--measures", "no-such-measure"])


def test_the_sweep_table_judges_each_target_and_marks_a_missed_one(tmp_path: Path) -> None:
    # mlflow: a 200 ms first start_logging (p99 missed) and half the native speed (ratio missed);
    # local: every start fast, 0.1 s for 5 runs (20 ms a run: met)
    runs = sweep_reps("mlflow") + sweep_reps("local", first_start_ms=10, tracelet_total_s=0.1)
    stores = ["mlflow", "local"]
    data = {
        **results(),
        "stores": stores,
        "measures": ["sweep"],
        "figures": suite.build_figures(runs, PLAN, stores, ["sweep"]),
    }
    text = report.render(data, trend.compare(data, None), tmp_path, plots=False).read_text(encoding="utf-8")
    assert "## Throughput" not in text  # only the measures that ran
    sweep = text.split("## Sweep")[1].split("## Targets")[0]
    targets = text.split("## Targets")[1].split("## Trend")[0]
    body = [line for line in sweep.splitlines() if line.startswith("| ") and not line.startswith("| |")]
    rows = {line.split(" | ")[0]: line.split(" | ")[1:] for line in body}  # label -> mlflow, local, target
    assert next(iter(rows)) == "| native ÷ tracelet, whole sweep"  # the ratio comes first
    mlflow, local, target = zip(*rows.values(), strict=True)
    assert mlflow[0] == "0.500 [0.500..0.500] × ✗ MISSED"  # half the native speed
    assert "MET" not in local[0]  # local is judged per run instead: 0.1 s over 5 runs
    assert "MISSED" not in local[0]
    assert local[1] == "20.0 [20.0..20.0] ✓ MET"
    assert rows["| `start_logging` p50 (ms)"][:2] == ["12.0 [12.0..12.0] ✓ MET", "11.0 [11.0..11.0] ✓ MET"]
    assert rows["| `start_logging` p99 (ms)"] == [
        "200 [200..200] ✗ MISSED",
        "30.0 [30.0..30.0] ✓ MET",
        "≤ 50 ms |",
    ]
    extra = rows["| a run after the first, tracelet − native (ms)"]
    assert extra[0] == "25.0 [25.0..25.0] ✓ MET"  # at the limit is met
    assert target[0] == "≥ 0.9×, not local |"
    # every target in one table, from bench/targets.py: the two misses, and what applies where
    assert "6 of 8 met" in targets
    assert "| sweep: `start_logging` p99 | 200 ✗ MISSED | 30.0 ✓ MET | ≤ 50 ms |" in targets
    assert "| sweep: native ÷ tracelet, whole sweep | 0.500 ✗ MISSED | n/a | ≥ 0.9×, not local |" in targets


def test_a_signed_difference_is_compared_in_its_own_units() -> None:
    """-5 ms over native in the baseline, +5 now: a relative change of -200 % would read as better."""

    def run(extra: list[float]) -> dict[str, Any]:
        figure = {"measure": "sweep", "backend": "local", "name": "extra per run over native"}
        return {**results(), "figures": [{**figure, "kind": "delta", "unit": "ms", "reps": extra}]}

    (verdict,) = trend.compare(run([5.0, 5.5]), run([-5.0, -4.5])).verdicts
    assert verdict.regressed
    assert verdict.change == pytest.approx(10.0)

"""The benchmark suite: every store, tracelet against its native client, with a report, plots and a trend.

    nox -s bench                        # the full suite (about 40 minutes on 2 cores)
    nox -s bench -- --quick             # smaller sizes, two reps, every measure (about 10 minutes)
    nox -s bench -- --update-baseline   # make this run the baseline of this machine's key
    nox -s bench -- --quick --only sweep,kill   # only some of the measures below (default: all)
    python bench/suite.py [--quick] [--reps 3] [--backends mlflow wandb ...] [--only sweep,...]
                          [--delivery thread] [--strict] [--out reports/bench]

Why: a user choosing a store, or checking that a release did not slow down, needs figures measured
side by side, not one script's text. Each measure runs tracelet and the store's own client on the
same kind of store, configured alike, each in a fresh process (``bench/measures.py``), in one run:

* **throughput**: tracelet's delivered points/s against the native bulk and per-call APIs;
* **training overhead**: ``bench/overhead.py``'s fast loop (~0.5 ms a step, 5 metrics a step) and,
  in the full suite, its slow loop (~12 ms a step); ``stop_logging`` after the fast loop against the
  native close;
* **caller latency**: p50/p99 of ``log_metric`` (float and 0-d tensor), idle and while delivery is
  busy, and ``start_logging``/``stop_logging``; the native per-call API's own calls, timed alike;
* **artifacts**: upload and download of 1 MB, 100 MB and a folder of 1,000 small files;
* **memory**: peak RSS of the trainer and of its helper processes (tracelet's agent, wandb-core)
  while logging 10^6 points, sampled from outside every 50 ms;
* **scalability**: cost per delivered point from 10^3 to 10^6 points, and for 1 to 1,000 keys;
* **sweep**: 20 short runs (1,000 points and 3 params each) one after the other in one process,
  inside a git repository, as a hyperparameter sweep does: ``start_logging`` p50/p99, each run's
  time after the first against the native client's, and the whole sweep from the client's import;
* **kill**: a trainer logging a point a millisecond, SIGKILLed at a random moment: how long before the
  kill the oldest lost point was logged, and that nothing older was lost (tracelet only).

Every target tracelet promises is in one table, ``bench/targets.py``; the report judges each (and
the sweep's table shows its verdicts beside its figures), and ``--strict`` fails on a figure that
regressed against the baseline or a target newly missed (one the baseline missed too is marked, not
failed). ``--only overhead,latency`` (or ``--measures``), ``--backends`` and ``--reps`` choose a part;
``--delivery thread`` measures the thread mode (its own baseline key).

Repetitions are interleaved: each rep runs every child in a seeded order rotated from rep to rep,
so drift in the machine's load spreads over all variants; figures are medians with their spread.
``reports/bench/results.json`` holds every figure (the trend's format, ``bench/trend.py``) and every
child's raw result; ``report.md`` and the PNGs are rendered from it (``bench/report.py``). The
run is then compared with the committed baseline of the same machine key.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import machine_facts, rep_orders, select_stores, store_env

from tracelet.testing.servers import MLflowServer

BENCH = Path(__file__).resolve().parent
MEASURES_SCRIPT = BENCH / "measures.py"
OVERHEAD_SCRIPT = BENCH / "overhead.py"
STORES = ("mlflow", "mlflow_server", "wandb", "clearml", "local")
#: what ``--measures`` chooses from: the figures' measures (one child may serve several)
MEASURES = (
    "throughput",
    "overhead",
    "latency",
    "artifacts",
    "memory",
    "scalability",
    "sweep",
    "kill",
    "copy",
)
#: what a results.json written before ``--measures`` existed measured
EARLIER_MEASURES = tuple(m for m in MEASURES if m not in ("sweep", "kill", "copy"))
#: ``tracelet copy`` is measured both ways between these two stores (source, target)
COPY_PAIRS = (("mlflow", "wandb"), ("wandb", "mlflow"))
SAMPLE_EVERY_S = 0.05


@dataclass(frozen=True)
class Plan:
    """How big each measure is. Sized to what it needs (the issue's rule), not one size for all."""

    reps: int
    #: repetitions of the largest-size (memory) runs. At 10^6 points a run on either MLflow store takes
    #: about two minutes, so three repetitions of everything would take about 55 minutes here; the
    #: largest size runs twice (still interleaved, still with a spread), the rest ``reps`` times
    top_reps: int
    #: the largest size in its own process (its memory then is that run's alone); the quick suite runs
    #: every size in one process per store and side, which saves ten process starts a repetition
    memory_apart: bool
    #: points logged over 10 keys, smallest to largest; the largest is also the memory run
    points: tuple[int, ...]
    #: the throughput figure's size (one of ``points``)
    throughput_points: int
    #: keys swept at ``keys_points`` points
    keys: tuple[int, ...]
    keys_points: int
    #: native per-call API: points per run (the MLflow server answers ~19 calls a second)
    per_call_points: int
    #: tracelet latency: calls timed of each type, after a backlog that keeps delivery busy
    latency_calls: int
    latency_backlog: int
    #: training overhead: fast-loop steps per variant (the MLflow server's native per-step
    #: log_batch takes ~50 ms a step, so it runs ``overhead_server_native_steps``: a median
    #: step time does not need thousands of 50 ms steps)
    overhead_steps: int
    overhead_server_native_steps: int
    #: the slow loop (~12 ms a step, where a typical real model lives): steps per variant; 0 leaves
    #: it out (the quick suite: its 1 % target needs thousands of steps to be judged at all)
    overhead_slow_steps: int
    #: sweep: runs one after the other in one process, and points (one key) logged in each
    sweep_runs: int
    sweep_points: int
    #: artifacts: label -> (bytes per file, files)
    artifacts: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: copy: points (over 10 keys) of the run copied between MLflow and W&B
    copy_points: int = 100_000


PLANS: dict[str, Plan] = {
    "full": Plan(
        reps=3,
        top_reps=2,
        memory_apart=True,
        points=(1_000, 10_000, 100_000, 1_000_000),
        throughput_points=100_000,
        keys=(1, 10, 100, 1000),
        keys_points=10_000,
        per_call_points=2_000,
        latency_calls=5_000,
        latency_backlog=20_000,
        overhead_steps=1_500,
        overhead_server_native_steps=200,
        overhead_slow_steps=1_500,
        sweep_runs=20,
        sweep_points=1_000,
        artifacts={
            "1MB": (1_000_000, 1),
            "100MB": (100_000_000, 1),
            "1GB": (1_000_000_000, 1),
            "1000 files": (4_096, 1_000),
        },
    ),
    # The quick suite answers "does every measure still run, and did anything move a lot" in under
    # 10 minutes here, leaving room for the measures still to come: about 170 children, each paying
    # its interpreter and its store's import (the largest share), so two interleaved repetitions
    # (median and spread of two) and sizes that each still reach the regime the figure is about.
    "quick": Plan(
        reps=2,
        top_reps=2,
        memory_apart=False,
        points=(1_000, 10_000),
        throughput_points=10_000,
        keys=(1, 100),
        keys_points=10_000,
        per_call_points=100,
        latency_calls=1_000,
        latency_backlog=3_000,
        overhead_steps=300,
        overhead_server_native_steps=60,
        overhead_slow_steps=0,
        sweep_runs=8,
        sweep_points=1_000,
        artifacts={"1MB": (1_000_000, 1), "10MB": (10_000_000, 1), "50 files": (4_096, 50)},
        copy_points=10_000,
    ),
}


@dataclass(frozen=True)
class Job:
    """One child process: one measure, one side (``tracelet``, ``native`` or ``none``), one store."""

    measure: str
    kind: str
    store: str
    spec: dict[str, Any]
    script: Path = MEASURES_SCRIPT
    sample_memory: bool = False
    timeout: float = 1800.0

    @property
    def label(self) -> str:
        return f"{self.measure} {self.kind}-{self.store}"


def jobs_for(
    plan: Plan, stores: list[str], server_url: str | None, measures: Collection[str] = MEASURES
) -> list[Job]:
    """Every child of one repetition that the chosen ``measures`` need (the caller shuffles their order).

    The bulk children serve throughput, scalability and memory; the native per-call child serves
    throughput and latency.
    """
    wanted = set(measures)
    bulk_wanted = bool(wanted & {"throughput", "scalability", "memory"})
    jobs: list[Job] = []
    cases = [
        {"label": label, "bytes": size, "files": files} for label, (size, files) in plan.artifacts.items()
    ]
    small = [[p, 10] for p in plan.points[:-1]] + [[plan.keys_points, k] for k in plan.keys if k != 10]
    for store in stores:
        base = {"store": store, "server_url": server_url, "flush_timeout": 1800.0}
        for kind in ("tracelet", "native"):
            side = {**base, "kind": kind}
            largest = [[plan.points[-1], 10]]
            if not bulk_wanted:
                pass
            elif plan.memory_apart:
                # the smaller sizes in one process (one run each); the largest alone, its memory sampled
                jobs.append(Job("bulk", kind, store, {**side, "measure": "bulk", "sizes": small}))
                jobs.append(
                    Job(
                        "memory",
                        kind,
                        store,
                        {**side, "measure": "bulk", "sizes": largest},
                        sample_memory=True,
                    )
                )
            else:  # every size in one process, the largest last: its peak is the process's peak
                jobs.append(
                    Job(
                        "bulk",
                        kind,
                        store,
                        {**side, "measure": "bulk", "sizes": small + largest},
                        sample_memory=True,
                    )
                )
            if "artifacts" in wanted:
                jobs.append(Job("artifacts", kind, store, {**side, "measure": "artifacts", "cases": cases}))
            for job_measure, loop, steps in _loops(plan):
                if kind == "native" and store == "mlflow_server":
                    steps = min(steps, plan.overhead_server_native_steps)
                if "overhead" in wanted:
                    spec = {**side, "loop": loop, "steps": steps}
                    jobs.append(Job(job_measure, kind, store, spec, script=OVERHEAD_SCRIPT))
            if "sweep" in wanted:  # the child makes its root a git repository first (tracelet reads it)
                jobs.append(
                    Job(
                        "sweep",
                        kind,
                        store,
                        {
                            **side,
                            "measure": "sweep",
                            "runs": plan.sweep_runs,
                            "points": plan.sweep_points,
                            "git": True,
                        },
                    )
                )
        if wanted & {"throughput", "latency"}:
            jobs.append(
                Job(
                    "percall",
                    "native",
                    store,
                    {**base, "kind": "native", "measure": "percall", "points": plan.per_call_points},
                )
            )
        if "kill" in wanted:  # tracelet only: no native client delivers for a trainer that is gone
            jobs.append(Job("kill", "tracelet", store, {**base, "kind": "tracelet", "measure": "kill"}))
        if "latency" in wanted:
            jobs.append(
                Job(
                    "latency",
                    "tracelet",
                    store,
                    {
                        **base,
                        "kind": "tracelet",
                        "measure": "latency",
                        "calls": plan.latency_calls,
                        "backlog": plan.latency_backlog,
                    },
                )
            )
    if "overhead" in wanted:
        for job_measure, loop, steps in _loops(plan):
            spec = {"kind": "none", "store": "-", "loop": loop, "steps": steps, "flush_timeout": 60.0}
            jobs.append(Job(job_measure, "none", "-", spec, script=OVERHEAD_SCRIPT))
    if "copy" in wanted:  # filed under the target store: "into W&B" is the copy from MLflow
        for source, target in COPY_PAIRS:
            if source in stores and target in stores:
                for kind in ("tracelet", "byhand"):
                    spec = {
                        "kind": kind,
                        "store": target,
                        "source": source,
                        "target": target,
                        "points": plan.copy_points,
                        "measure": "copy",
                        "flush_timeout": 1800.0,
                    }
                    jobs.append(Job("copy", kind, target, spec))
    return jobs


def _loops(plan: Plan) -> list[tuple[str, str, int]]:
    """The overhead measure's loops: (the job's measure, the loop, steps); the slow one when planned."""
    loops = [("overhead", "fast", plan.overhead_steps)]
    return loops + ([("overhead-slow", "slow", plan.overhead_slow_steps)] if plan.overhead_slow_steps else [])


# -- running one child, with its memory sampled from outside --------------------------------------


def _tree_rss(pid: int) -> tuple[int, int] | None:
    """(RSS of ``pid``, summed RSS of its live descendants) in bytes; None once it has gone."""
    import psutil

    try:
        process = psutil.Process(pid)
        own = process.memory_info().rss
        helpers = 0
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                helpers += child.memory_info().rss
        return own, helpers
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def run_job(job: Job, root: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run one child to its end (killing its whole group on timeout) and return its JSON result.

    With ``sample_memory``, this process polls the child's tree every 50 ms: the trainer's peak
    RSS, its helpers' peak (summed over the helpers alive at one sample), and the peak of the sum.
    Sampling from outside costs the child nothing under its own GIL.
    """
    result_path, log_path = root / "result.json", root / "child.log"
    spec = {
        **job.spec,
        "root": str(root),
        "result": str(result_path),
        "run_name": f"{job.measure}-{job.kind}",
    }
    command = [sys.executable, str(job.script), "--child", json.dumps(spec)]
    peaks = {"trainer": 0, "helpers": 0, "total": 0}
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True
        )
        code: int | None = None
        try:
            while True:
                code = process.poll()
                if code is not None:
                    break
                if time.perf_counter() - started > job.timeout:
                    raise TimeoutError
                if job.sample_memory and (rss := _tree_rss(process.pid)) is not None:
                    peaks["trainer"] = max(peaks["trainer"], rss[0])
                    peaks["helpers"] = max(peaks["helpers"], rss[1])
                    peaks["total"] = max(peaks["total"], rss[0] + rss[1])
                time.sleep(SAMPLE_EVERY_S if job.sample_memory else 0.02)
        except BaseException as exc:  # timeout or Ctrl-C: never leave the child's group running
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if not isinstance(exc, TimeoutError):
                raise
            code = None
        # helpers that outlive the trainer (a detached agent) would hold the store open
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    wall = time.perf_counter() - started
    if code != 0 or not result_path.exists():
        why = f"timed out after {job.timeout:.0f}s" if code is None else f"exit code {code}"
        tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
        return {"error": why, "log_tail": tail, "wall_s": wall}
    result: dict[str, Any] = json.loads(result_path.read_text())
    result["wall_s"] = wall
    lost = [r for r in result.get("runs", [result]) if r.get("landed") is False]
    if lost:  # a figure over points that did not all land would flatter the store
        result["error"] = (
            f"not every point landed: {lost[0].get('delivered')} delivered of {lost[0].get('points')}"
        )
    if job.sample_memory:
        result["peak_rss_mb"] = {k: v / 1e6 for k, v in peaks.items()}
    return result


# -- figures --------------------------------------------------------------------------------------


def _fig(measure: str, store: str, name: str, kind: str, unit: str, reps: list[float]) -> dict[str, Any]:
    return {"measure": measure, "backend": store, "name": name, "kind": kind, "unit": unit, "reps": reps}


def _per_rep(runs: list[dict[str, Any]], measure: str, kind: str, store: str) -> list[dict[str, Any]]:
    """The successful results of one job, in rep order."""
    found = [r for r in runs if r["measure"] == measure and r["kind"] == kind and r["store"] == store]
    return [r["result"] for r in sorted(found, key=lambda r: r["rep"]) if "error" not in r["result"]]


def _bulk_runs(results: list[dict[str, Any]], points: int, keys: int) -> list[dict[str, Any]]:
    return [run for res in results for run in res["runs"] if run["points"] == points and run["keys"] == keys]


def _paired(a: list[float], b: list[float], op: Callable[[float, float], float]) -> list[float]:
    """Per-rep values of ``op(a, b)``, pairing rep by rep (interleaved reps share the same load)."""
    return [op(x, y) for x, y in zip(a, b, strict=False) if x and y]


def _rank(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile by nearest rank, as ``bench/measures.py``'s p50/p99 (of 20 runs, p99 is the max)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def build_figures(
    runs: list[dict[str, Any]], plan: Plan, stores: list[str], measures: Collection[str] = MEASURES
) -> list[dict[str, Any]]:
    """Every figure of the chosen ``measures``, each with its per-rep values (the trend's format)."""
    figures: list[dict[str, Any]] = []
    add = figures.append
    for store in stores:
        bulk = {k: _per_rep(runs, "bulk", k, store) for k in ("tracelet", "native")}
        # the memory figures come from the largest size's own process, or (quick) from the one process
        # that ran every size, the largest last
        memory = {k: _per_rep(runs, "memory", k, store) or bulk[k] for k in ("tracelet", "native")}

        def sized(kind: str, points: int, keys: int) -> list[dict[str, Any]]:
            return _bulk_runs(bulk[kind] + _per_rep(runs, "memory", kind, store), points, keys)  # noqa: B023

        def rate(kind: str, points: int, keys: int) -> list[float]:
            return [r["points"] / r["total_s"] for r in sized(kind, points, keys) if r["landed"]]

        # throughput
        tp = plan.throughput_points
        t_rate, n_rate = rate("tracelet", tp, 10), rate("native", tp, 10)
        percall = _per_rep(runs, "percall", "native", store)
        p_rate = [r["points"] / r["log_s"] for r in percall]
        add(_fig("throughput", store, "tracelet points/s", "rate", "points/s", t_rate))
        add(_fig("throughput", store, "native bulk points/s", "rate", "points/s", n_rate))
        add(_fig("throughput", store, "native per-call points/s", "rate", "points/s", p_rate))
        add(
            _fig(
                "throughput",
                store,
                "tracelet ÷ native bulk",
                "ratio",
                "×",
                _paired(t_rate, n_rate, lambda a, b: a / b),
            )
        )
        add(
            _fig(
                "throughput",
                store,
                "tracelet ÷ native per-call",
                "ratio",
                "×",
                _paired(t_rate, p_rate, lambda a, b: a / b),
            )
        )

        # scalability: µs per delivered point
        for label, sizes in (
            ("points", [(p, 10) for p in plan.points]),
            ("keys", [(plan.keys_points, k) for k in plan.keys]),
        ):
            for points, keys in sizes:
                where = f"{points:,} points" if label == "points" else f"{keys:,} keys"
                cost = {
                    k: [r["total_s"] / r["points"] * 1e6 for r in sized(k, points, keys)]
                    for k in ("tracelet", "native")
                }
                add(
                    _fig(
                        "scalability",
                        store,
                        f"tracelet µs/point @ {where}",
                        "us",
                        "µs/point",
                        cost["tracelet"],
                    )
                )
                add(
                    _fig("scalability", store, f"native µs/point @ {where}", "us", "µs/point", cost["native"])
                )
                add(
                    _fig(
                        "scalability",
                        store,
                        f"native ÷ tracelet @ {where}",
                        "ratio",
                        "×",
                        _paired(cost["native"], cost["tracelet"], lambda a, b: a / b),
                    )
                )

        # memory
        peaks = {
            k: [r["peak_rss_mb"] for r in memory[k] if "peak_rss_mb" in r] for k in ("tracelet", "native")
        }
        for kind in ("tracelet", "native"):
            for part in ("trainer", "helpers", "total"):
                add(
                    _fig(
                        "memory", store, f"{kind} {part} peak MB", "MB", "MB", [p[part] for p in peaks[kind]]
                    )
                )
        totals = {k: [p["total"] for p in peaks[k]] for k in peaks}
        add(
            _fig(
                "memory",
                store,
                "native ÷ tracelet total",
                "ratio",
                "×",
                _paired(totals["native"], totals["tracelet"], lambda a, b: a / b),
            )
        )

        # latency
        lat = _per_rep(runs, "latency", "tracelet", store)
        for value in ("float", "tensor"):
            for q in ("p50", "p99"):
                t = [r[value][f"{q}_us"] for r in lat]
                n = [r[value][f"{q}_us"] for r in percall]
                add(_fig("latency", store, f"tracelet {value} {q}", "us", "µs", t))
                add(_fig("latency", store, f"native {value} {q}", "us", "µs", n))
                add(
                    _fig(
                        "latency",
                        store,
                        f"native ÷ tracelet {value} {q}",
                        "ratio",
                        "×",
                        _paired(n, t, lambda a, b: a / b),
                    )
                )
        for value in ("float", "tensor"):  # idle: right after start, nothing queued
            for q in ("p50", "p99"):
                idle = [r[f"idle_{value}"][f"{q}_us"] for r in lat if f"idle_{value}" in r]
                add(_fig("latency", store, f"tracelet idle {value} {q}", "us", "µs", idle))
        for q in ("p50", "p99"):  # Experiment.health(), right after the busy calls
            health = [r["health"][f"{q}_us"] for r in lat if "health" in r]
            add(_fig("latency", store, f"tracelet health() {q}", "us", "µs", health))
        add(_fig("latency", store, "tracelet start_logging", "seconds", "s", [r["start_s"] for r in lat]))
        add(_fig("latency", store, "tracelet stop_logging", "seconds", "s", [r["stop_s"] for r in lat]))
        add(_fig("latency", store, "native start", "seconds", "s", [r["start_s"] for r in percall]))
        add(_fig("latency", store, "native close", "seconds", "s", [r["close_s"] for r in percall]))

        # artifacts: the caller's blocking time, MB/s each way, and the extra disk at peak
        art = {k: _per_rep(runs, "artifacts", k, store) for k in ("tracelet", "native")}
        for label, (size, files) in plan.artifacts.items():
            mb = size * files / 1e6
            block = {k: [r["block_s"][label] for r in art[k] if "block_s" in r] for k in art}
            add(_fig("artifacts", store, f"block {label} tracelet", "seconds", "s", block["tracelet"]))
            add(_fig("artifacts", store, f"block {label} native", "seconds", "s", block["native"]))
            add(
                _fig(
                    "artifacts",
                    store,
                    f"block {label} tracelet ÷ native",
                    "ratio",
                    "×",
                    _paired(block["tracelet"], block["native"], lambda a, b: a / b),
                )
            )
            stored_ms = {k: [r["upload_s"][label] * 1000 for r in art[k]] for k in art}
            add(
                _fig(
                    "artifacts",
                    store,
                    f"stored {label} tracelet − native",
                    "delta",
                    "ms",
                    _paired(stored_ms["tracelet"], stored_ms["native"], lambda a, b: a - b),
                )
            )
            for kind in art:
                extra = [
                    100.0 * r["extra_disk_bytes"][label] / (size * files)
                    for r in art[kind]
                    if "extra_disk_bytes" in r
                ]
                add(_fig("artifacts", store, f"extra disk {label} {kind}", "points", "%", extra))
            for way in ("upload", "download"):
                speed = {k: [mb / r[f"{way}_s"][label] for r in art[k]] for k in art}
                add(
                    _fig(
                        "artifacts", store, f"{way} {label} tracelet MB/s", "rate", "MB/s", speed["tracelet"]
                    )
                )
                add(_fig("artifacts", store, f"{way} {label} native MB/s", "rate", "MB/s", speed["native"]))
                add(
                    _fig(
                        "artifacts",
                        store,
                        f"{way} {label} tracelet ÷ native",
                        "ratio",
                        "×",
                        _paired(speed["tracelet"], speed["native"], lambda a, b: a / b),
                    )
                )

        # training overhead: median step time over the median of the no-logging runs (one per rep).
        # Not the same rep's run alone: one slow no-logging run (a busy neighbour on 2 cores, 0.55 ms
        # against 0.41 ms) would move every store's overhead in that rep by -25 points.
        for job_measure, loop, _ in _loops(plan):
            none = [r["median_ms"] for r in _per_rep(runs, job_measure, "none", "-")]
            side = {k: _per_rep(runs, job_measure, k, store) for k in ("tracelet", "native")}
            steps = {k: [r["median_ms"] for r in side[k]] if none else [] for k in side}
            base = statistics.median(none) if none else 1.0  # no baseline: ``steps`` are empty
            for kind, values in steps.items():
                overhead = [(v / base - 1) * 100 for v in values]
                add(_fig("overhead", store, f"{kind} {loop} loop", "points", "%", overhead))
            suffix = "" if loop == "fast" else ", slow loop"
            ratio = _paired(steps["native"], steps["tracelet"], lambda a, b: a / b)
            add(_fig("overhead", store, f"step time native ÷ tracelet{suffix}", "ratio", "×", ratio))
            if loop == "fast":  # what is still queued when the loop ends: stop_logging against the close
                stop = [r["stop_s"] for r in side["tracelet"] if "stop_s" in r]
                close = [r["close_s"] for r in side["native"] if "close_s" in r]
                add(
                    _fig("overhead", store, "tracelet stop_logging after the fast loop", "seconds", "s", stop)
                )
                add(_fig("overhead", store, "native close after the fast loop", "seconds", "s", close))
                extra = _paired(stop, close, lambda a, b: a - b)
                add(_fig("overhead", store, "stop_logging − native close", "delta", "s", extra))

        # sweep: short runs one after the other in one process. start_logging over every run of a rep,
        # the first included (a new agent, cold imports); a run's time after the first (a warm agent);
        # the whole sweep from before the client's import
        sweep = {k: _per_rep(runs, "sweep", k, store) for k in ("tracelet", "native")}
        totals_s = {k: [r["total_s"] for r in sweep[k]] for k in sweep}
        starts_ms = [[run["start_s"] * 1e3 for run in r["runs"]] for r in sweep["tracelet"] if r["runs"]]
        later_ms = {
            k: [
                statistics.median(run["run_s"] * 1e3 for run in r["runs"][1:])
                for r in sweep[k]
                if len(r["runs"]) > 1
            ]
            for k in sweep
        }
        add(
            _fig(
                "sweep",
                store,
                "ratio native/tracelet total",
                "ratio",
                "×",
                _paired(totals_s["native"], totals_s["tracelet"], lambda a, b: a / b),
            )
        )
        for q, at in (("p50", 0.50), ("p99", 0.99)):
            add(
                _fig(
                    "sweep",
                    store,
                    f"tracelet start_logging {q}",
                    "us",
                    "ms",
                    [_rank(s, at) for s in starts_ms],
                )
            )
        add(_fig("sweep", store, "tracelet per run after the first", "us", "ms", later_ms["tracelet"]))
        add(_fig("sweep", store, "native per run after the first", "us", "ms", later_ms["native"]))
        add(
            _fig(
                "sweep",
                store,
                "extra per run over native",
                "delta",
                "ms",
                _paired(later_ms["tracelet"], later_ms["native"], lambda a, b: a - b),
            )
        )
        add(_fig("sweep", store, "tracelet total", "seconds", "s", totals_s["tracelet"]))
        per_run = [r["total_s"] / len(r["runs"]) * 1e3 for r in sweep["tracelet"] if r["runs"]]
        add(_fig("sweep", store, "tracelet whole sweep per run", "us", "ms", per_run))
        add(_fig("sweep", store, "native total", "seconds", "s", totals_s["native"]))
        # copy: into this store from the other of COPY_PAIRS, against read_run + log_metric by hand
        if store in {target for _, target in COPY_PAIRS}:
            copies = {k: _per_rep(runs, "copy", k, store) for k in ("tracelet", "byhand")}
            rates = {k: [r["points"] / r["copy_s"] for r in copies[k]] for k in copies}
            verify = [r["verify_s"] for r in copies["tracelet"]]
            add(_fig("copy", store, "tracelet copy points/s", "rate", "points/s", rates["tracelet"]))
            add(_fig("copy", store, "by hand points/s", "rate", "points/s", rates["byhand"]))
            ratio = _paired(rates["tracelet"], rates["byhand"], lambda a, b: a / b)
            add(_fig("copy", store, "tracelet copy ÷ by hand", "ratio", "×", ratio))
            add(_fig("copy", store, "tracelet verify", "seconds", "s", verify))
        # kill: what a SIGKILL of the trainer loses (tracelet only)
        kills = _per_rep(runs, "kill", "tracelet", store)
        add(_fig("kill", store, "tracelet SIGKILL window", "us", "ms", [r["window_ms"] for r in kills]))
        add(
            _fig(
                "kill", store, "points lost before the window", "delta", "points", [r["gaps"] for r in kills]
            )
        )
    for job_measure, loop, _ in _loops(plan):
        none_ms = [r["median_ms"] for r in _per_rep(runs, job_measure, "none", "-")]
        add(
            _fig(
                "overhead",
                "-",
                "no-logging step" if loop == "fast" else "no-logging slow step",
                "us",
                "ms",
                none_ms,
            )
        )
    return [f for f in figures if f["measure"] in measures]


# -- the run --------------------------------------------------------------------------------------


def machine(suite: str) -> dict[str, Any]:
    facts = machine_facts()
    return {
        "os": platform.system().lower(),
        "cores": facts["cores"],
        "python": facts["python"],
        "suite": suite,
        **{k: v for k, v in facts.items() if k not in ("cores", "python")},
    }


@contextlib.contextmanager
def maybe_server(stores: list[str], root: Path) -> Iterator[MLflowServer | None]:
    if "mlflow_server" not in stores:
        yield None
        return
    with MLflowServer(root / "mlflow-server", workers=2) as server:
        yield server


def run_suite(
    plan: Plan,
    stores: list[str],
    out: Path,
    seed: int,
    keep: bool,
    suite: str,
    measures: Sequence[str] = MEASURES,
    delivery: str | None = None,
) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    work = Path(tempfile.mkdtemp(prefix="tracelet-bench-"))
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    try:
        with maybe_server(stores, work) as server:
            if server is not None:
                console.print(
                    f"mlflow server on {server.url} answered /health after {server.started_s:.1f} s"
                )
            jobs = jobs_for(plan, stores, server.url if server else None, measures)
            by_label = {job.label: job for job in jobs}
            orders = rep_orders(list(by_label), plan.reps, seed)
            columns = (
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console, transient=False) as progress:

                def runs_in(rep: int, job: Job) -> bool:
                    return job.measure != "memory" or rep <= plan.top_reps

                total = sum(runs_in(rep, job) for rep in range(1, plan.reps + 1) for job in jobs)
                task = progress.add_task("starting", total=total)
                for rep, order in enumerate(orders, start=1):
                    for label in order:
                        job = by_label[label]
                        if not runs_in(rep, job):
                            continue
                        progress.update(task, description=f"rep {rep}/{plan.reps}: {label}")
                        root = work / f"rep{rep}" / label.replace(" ", "_")
                        root.mkdir(parents=True)
                        env = store_env(root, delivery)
                        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), env.get("PYTHONPATH")]))
                        result = run_job(job, root, env)
                        runs.append(
                            {
                                "measure": job.measure,
                                "kind": job.kind,
                                "store": job.store,
                                "rep": rep,
                                "result": result,
                            }
                        )
                        line = f"rep {rep} {label}: {result['wall_s']:.1f} s"
                        if "error" in result:
                            tail = result.get("log_tail", "").strip().splitlines()[-1:] or [""]
                            line += f"  [red]ERROR {result['error']}: {tail[0][:200]}[/red]"
                        progress.console.print(line)
                        if not keep:
                            shutil.rmtree(root, ignore_errors=True)
                        progress.advance(task)
    finally:
        if keep:
            console.print(f"kept the stores under {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    facts = machine(suite)
    facts["delivery"] = delivery or "agent"
    facts["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {
        "machine": facts,
        "suite": suite,
        "plan": asdict(plan),
        "stores": stores,
        "measures": list(measures),
        "elapsed_s": time.perf_counter() - started,
        "figures": build_figures(runs, plan, stores, measures),
        "errors": [
            f"rep {r['rep']} {r['measure']} {r['kind']}-{r['store']}: {r['result']['error']}"
            for r in runs
            if "error" in r["result"]
        ],
        "runs": runs,
    }


def _measure_list(value: str) -> list[str]:
    chosen = [m.strip() for m in value.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(MEASURES))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown measure(s) {', '.join(unknown)}; choose from {', '.join(MEASURES)}"
        )
    return chosen


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (a `kill`, a CI timeout) unwinds the suite as Ctrl-C does, so `maybe_server`'s `with`
    # stops the mlflow server: it runs in its own session, and SIGTERM's default action left it orphaned.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes, every measure (under 10 minutes)"
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default: the plan's, 3)")
    parser.add_argument("--backends", nargs="+", default=list(STORES), help=f"any of {', '.join(STORES)}")
    parser.add_argument(
        "--measures",
        nargs="+",
        choices=MEASURES,
        default=list(MEASURES),
        help="only these measures (default: all); a run of some cannot become the baseline",
    )
    parser.add_argument(
        "--only",
        type=_measure_list,
        default=None,
        help="the same as --measures, comma separated: --only overhead,latency",
    )
    parser.add_argument(
        "--delivery",
        choices=("agent", "thread"),
        default=None,
        help="TRACELET_DELIVERY of tracelet's side (default: agent); thread has its own baseline",
    )
    parser.add_argument("--out", type=Path, default=BENCH.parent / "reports" / "bench")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temp stores (path printed)")
    parser.add_argument(
        "--update-baseline", action="store_true", help="make this run the baseline of its key"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a figure regressed or a target is newly missed against the baseline",
    )
    parser.add_argument(
        "--baselines", type=Path, default=BENCH / "results", help="where baseline-<key>.json live"
    )
    parser.add_argument("--render-only", action="store_true", help="re-render report.md and plots from --out")
    args = parser.parse_args(argv)

    import report
    import trend

    out: Path = args.out
    results_path = out / "results.json"
    if args.render_only:
        results = json.loads(results_path.read_text(encoding="utf-8"))
        results.setdefault("measures", list(EARLIER_MEASURES))
        if results.get("runs"):  # figures are derived: rebuild them with this version's arithmetic
            plan_data = {**results["plan"], "points": tuple(results["plan"]["points"])}
            plan_data["keys"] = tuple(plan_data["keys"])
            plan_data.setdefault(
                "memory_apart",
                not any(r["measure"] == "bulk" and "peak_rss_mb" in r["result"] for r in results["runs"]),
            )
            sizes = PLANS[results.get("suite", "full")]
            plan_data.setdefault("sweep_runs", sizes.sweep_runs)
            plan_data.setdefault("sweep_points", sizes.sweep_points)
            plan_data.setdefault("overhead_slow_steps", 0)  # results from before the slow loop joined
            plan_data["artifacts"] = {k: tuple(v) for k, v in plan_data["artifacts"].items()}
            results["figures"] = build_figures(
                results["runs"], Plan(**plan_data), results["stores"], results["measures"]
            )
    else:
        suite = "quick" if args.quick else "full"
        plan = PLANS[suite]
        if args.reps is not None:
            plan = Plan(**{**asdict(plan), "reps": args.reps, "top_reps": min(plan.top_reps, args.reps)})
        stores = select_stores(args.backends, STORES)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        if load > 0.5 * (os.cpu_count() or 1):
            print(
                f"warning: 1-minute load average is {load:.2f} on {os.cpu_count()} cores; expect "
                "noisy numbers"
            )
        chosen = args.only if args.only is not None else args.measures
        measures = [m for m in MEASURES if m in chosen]
        results = run_suite(plan, stores, out, args.seed, args.keep, suite, measures, args.delivery)
    baseline = trend.load_baseline(results, args.baselines)
    partial = set(results["measures"]) != set(MEASURES)
    if baseline is not None and partial:  # compare what was measured; say nothing of the rest
        kept = [f for f in baseline["figures"] if f["measure"] in results["measures"]]
        baseline = {**baseline, "figures": kept}
    comparison = trend.compare(results, baseline)
    results["trend"] = {
        "key": comparison.key,
        "has_baseline": comparison.has_baseline,
        "compared": sum(v.baseline is not None for v in comparison.verdicts),
        "regressed": [v.describe() for v in comparison.regressions],
        "targets_missed": [v.describe() for v in comparison.targets if not v.met],
        "newly_missed": [v.describe() for v in comparison.newly_missed],
        "warnings": list(comparison.warnings),
    }
    out.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    report.render(results, comparison, out)
    annotate = os.environ.get("GITHUB_ACTIONS") == "true"  # CI shows these on the run's page
    for verdict in comparison.regressions:
        print(f"{'::error::' if annotate else ''}REGRESSED {verdict.describe()}")
    for target in comparison.newly_missed:
        print(f"{'::error::' if annotate else ''}NEWLY MISSED {target.describe()}")
    for warning in comparison.warnings:
        print(f"{'::warning::' if annotate else 'warning: '}{warning}")
    plots = len(list(out.glob("*.png")))
    minutes = results.get("elapsed_s", 0) / 60
    print(f"wrote {results_path}, {out / 'report.md'} and {plots} plots; the suite took {minutes:.1f} min")
    if results.get("errors"):
        print(f"{len(results['errors'])} measurement(s) failed:\n  " + "\n  ".join(results["errors"]))
    if args.update_baseline:
        if results.get("errors"):
            print("baseline NOT written: a run with failed measurements cannot be the reference")
            return 1
        if partial:
            print(f"baseline NOT written: only {', '.join(results['measures'])} measured, not every measure")
            return 1
        print(f"baseline written: {trend.write_baseline(results, args.baselines)}")
        return 0
    failed = bool(results.get("errors")) or (args.strict and bool(comparison.failures))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

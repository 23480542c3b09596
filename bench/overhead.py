"""The training-overhead measure's child: one CPU training loop, one variant, one fresh process.

    python bench/overhead.py [suite options]     # the same as: python bench/suite.py --only overhead

Why: tracelet promises that logging never slows training. The caller-side cost of one
``log_metric`` does not show the real cost, which is delivery competing with the trainer for the GIL
and the CPU (DESIGN.md section 6: a writer thread running SQLAlchemy under the trainer's GIL made a
0.5 ms/step loop 3x slower). So this times whole training steps.

Two loops, one torch thread each (``torch.set_num_threads(1)``): *fast*, a small MLP step of about
0.5 ms, where per-step costs and GIL contention show; and *slow*, a wider MLP of about 12 ms a step,
where a typical real model lives. Every step logs 5 metrics: the loss as a 0-d tensor and 4 floats.
Variants (``spec["kind"]``): no logging; tracelet to a store (with its system metrics sampled
every second, ten times as often as by default, so their cost shows); the store's own per-step API
(``MlflowClient.log_batch`` of the 5 metrics, ``run.log({...})``, ``Logger.report_scalar`` x5 with
ClearML's reporting subprocess off). After 100 unlogged warm-up steps the loop is timed step by
step; ``stop_logging()`` (which flushes what is still queued) is timed next to the native close.
The suite (``bench/suite.py``) runs every variant, interleaved, and judges the targets
(``bench/targets.py``).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    backend_counts,
    open_native,
    tracelet_backend,
    write_child_result,
)

#: The two loops. Sizes calibrated on the 2-core reference machine with one torch thread:
#: fast ~0.47-0.50 ms a step, slow ~12 ms. The measured no-logging step time is printed
#: and stored, so a different machine shows what it actually ran.
LOOPS: dict[str, dict[str, int]] = {
    "fast": {"inputs": 64, "width": 192, "depth": 2, "batch": 64},
    "slow": {"inputs": 64, "width": 816, "depth": 2, "batch": 256},
}
WARMUP_STEPS = 100
#: tracelet's variant samples the system metrics this often (their default: every 10 s)
SYSTEM_INTERVAL_S = 1
METRICS_PER_STEP = 5
PROJECT = "bench-overhead"


# -- the child: one variant, one loop, one process -----------------------------------------------


def build_step(loop: dict[str, int]) -> Callable[[], Any]:
    """A seeded MLP forward + backward + SGD step on a fixed batch; returns the 0-d loss."""
    import torch

    torch.manual_seed(0)
    layers: list[Any] = []
    width_in = loop["inputs"]
    for _ in range(loop["depth"]):
        layers += [torch.nn.Linear(width_in, loop["width"]), torch.nn.ReLU()]
        width_in = loop["width"]
    layers.append(torch.nn.Linear(width_in, 1))
    model = torch.nn.Sequential(*layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(loop["batch"], loop["inputs"])
    y = torch.randn(loop["batch"], 1)
    mse = torch.nn.functional.mse_loss

    def step() -> Any:
        optimizer.zero_grad(set_to_none=True)
        loss = mse(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def helpers_cpu_s() -> float | None:
    """CPU seconds used so far by this process's live descendants (a delivery agent, wandb-core).

    On 2 cores a helper process competes with the trainer as surely as a thread does,
    so its CPU during the loop is part of the price. ``None`` without psutil.
    """
    try:
        import psutil
    except ImportError:
        return None
    total = 0.0
    for proc in psutil.Process().children(recursive=True):
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one loop with one variant and return its timings (written as JSON by the caller)."""
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    import torch

    torch.set_num_threads(1)
    loop = LOOPS[spec["loop"]]
    step_fn = build_step(loop)
    for _ in range(WARMUP_STEPS):
        step_fn()

    kind, store, steps = spec["kind"], spec["store"], int(spec["steps"])
    root = Path(spec["root"])
    result: dict[str, Any] = {"kind": kind, "store": store, "steps": steps, "load_at_start": load_at_start}
    exp: Any = None
    native: Any = None
    tracelet: Any = None
    backend = ""
    if kind == "tracelet":
        t0 = time.perf_counter()
        import tracelet

        t1 = time.perf_counter()
        backend, options = tracelet_backend(store, root, spec.get("server_url"))
        # the system metrics sampled every second (ten times their default), so their cost shows
        os.environ["TRACELET_SYSTEM_INTERVAL"] = str(SYSTEM_INTERVAL_S)
        exp = tracelet.start_logging(
            exp_name=spec["run_name"], project=PROJECT, backend=backend, backend_options=options
        )
        result["import_s"], result["start_s"] = t1 - t0, time.perf_counter() - t1
        result["delivery"] = getattr(getattr(exp, "settings", None), "delivery", None)
    elif kind == "native":
        native = open_native(
            store, root, PROJECT, spec["run_name"], mlflow_chunk=None, server_url=spec.get("server_url")
        )
        result["import_s"], result["start_s"] = native.import_s, native.create_s

    batch = float(loop["batch"])
    lr = 1e-3
    times = [0.0] * steps
    perf = time.perf_counter
    previous = 0.0
    helpers0 = helpers_cpu_s()
    cpu0, wall0 = os.times(), perf()
    for step in range(steps):
        t = perf()
        loss = step_fn()
        # The 4 floats are made in every variant, logged or not, so only logging differs.
        epoch, step_ms, samples = step / 100.0, previous * 1e3, (step + 1) * batch
        if exp is not None:
            exp.log_metric("train/loss", loss, step)
            exp.log_metric("train/lr", lr, step)
            exp.log_metric("train/epoch", epoch, step)
            exp.log_metric("train/step_ms", step_ms, step)
            exp.log_metric("train/samples", samples, step)
        elif native is not None:
            native.log_step(
                step,
                {
                    "train/loss": loss.item(),
                    "train/lr": lr,
                    "train/epoch": epoch,
                    "train/step_ms": step_ms,
                    "train/samples": samples,
                },
            )
        previous = perf() - t
        times[step] = previous
    wall1, cpu1 = perf(), os.times()
    helpers1 = helpers_cpu_s()

    if exp is not None:
        t0 = perf()
        report = tracelet.stop_logging(flush_timeout=spec["flush_timeout"])
        result["stop_s"] = perf() - t0
        result["report"] = backend_counts(report, backend)
    elif native is not None:
        t0 = perf()
        native.close()
        result["close_s"] = perf() - t0
    cpu2 = os.times()

    ordered = sorted(times)
    result.update(
        {
            "median_ms": statistics.median(times) * 1e3,
            "mean_ms": statistics.fmean(times) * 1e3,
            "p90_ms": ordered[int(0.90 * (steps - 1))] * 1e3,
            "p99_ms": ordered[int(0.99 * (steps - 1))] * 1e3,
            "max_ms": ordered[-1] * 1e3,
            "loop_s": wall1 - wall0,
            # CPU this process spent in the loop; and in its reaped children by the end
            # (a delivery agent shows here once it has exited).
            "loop_cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
            "children_cpu_s": (cpu2.children_user - cpu0.children_user)
            + (cpu2.children_system - cpu0.children_system),
            "helpers_loop_cpu_s": None
            if helpers0 is None or helpers1 is None
            else max(0.0, helpers1 - helpers0),
            "points": steps * METRICS_PER_STEP if kind != "none" else 0,
        }
    )
    return result


# -- the parent: schedule, summarize, judge ------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``--child <spec>``: one variant (run by the suite). Anything else is the suite's overhead measure:
    ``python bench/overhead.py --reps 3`` is ``python bench/suite.py --only overhead --reps 3``."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--child"] and len(args) == 2:
        spec = json.loads(args[1])
        write_child_result(spec, child(spec))
        return 0
    import suite

    return suite.main(["--only", "overhead", *args])


if __name__ == "__main__":
    sys.exit(main())

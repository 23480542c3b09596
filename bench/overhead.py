"""How much slower a CPU training loop runs with tracelet attached, next to each store's own API.

    python bench/overhead.py [--steps 4000] [--slow-steps 4000] [--reps 3] [--loops fast slow]
                             [--backends mlflow wandb clearml local] [--delivery thread|agent]
                             [--json bench/results/overhead.json]

Why this benchmark: tracelet promises that logging never slows training. The caller-side
cost of one ``log_metric`` (``bench/hot_path.py``) does not show the real cost, which is
delivery competing with the trainer for the GIL and the CPU (DESIGN.md section 6: a
writer thread running SQLAlchemy under the trainer's GIL made a 0.5 ms/step loop 3x
slower). So this times whole training steps.

Two loops, one torch thread each (``torch.set_num_threads(1)``): *fast*, a small MLP
step of about 0.5 ms, where per-step costs and GIL contention show; and *slow*, a
wider MLP of about 12 ms a step, where a typical real model lives. Every step logs 5
metrics: the loss as a 0-d tensor and 4 floats. Variants: no logging; tracelet to each
of mlflow (sqlite), wandb (offline), clearml (offline) and local; and each store's own
per-step API (``MlflowClient.log_batch`` of the 5 metrics, ``run.log({...})``,
``Logger.report_scalar`` x5 with ClearML's reporting subprocess off), which is what
the same loop costs without tracelet.

Method: every variant runs in a fresh subprocess of this script with its own temp
store (one store's threads or helper processes never share a process with another's
measurement), after 100 unlogged warm-up steps. Repetitions are interleaved: each rep
runs every variant, in a seeded order rotated from rep to rep, so drift in machine
load spreads over all variants. Overhead is the variant's median step time over the
no-logging median *of the same rep*; reported are the median and [min..max] over reps.
The mean step time (total loop time) is shown next to it: a cost paid in bursts (a
batch write every N steps) hides from the median but not from the mean.

The trainer cannot see how many events are still undelivered when the loop ends (no
public count), so the backlog shows as the duration of ``stop_logging()`` (which
flushes everything), reported next to the native client's own close
(``set_terminated`` / ``finish`` / ``close``), with the report's delivered count.

Defaults: 4000 steps in each loop (the slow one then takes about 50 s a variant; its
step-to-step noise on a shared 2-core machine is about 1%, so fewer steps cannot judge
a 1% target). Targets (``bench/_common.py``): overhead <= 5%
on the fast loop, <= 1% on the slow loop; ``stop_logging()`` after the fast loop at most
0.5 s longer than the native close. A benchmark, not a test: it prints a table and
writes JSON (with the machine's cores, load, Python and platform).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    RESULTS_DIR,
    TARGETS,
    backend_counts,
    fmt_spread,
    load_1min,
    machine_facts,
    open_native,
    rep_orders,
    run_child,
    select_stores,
    spread,
    store_env,
    table,
    tracelet_backend,
    verdict,
    warn_if_busy,
    write_child_result,
    write_json,
)

#: The two loops. Sizes calibrated on the 2-core reference machine with one torch thread:
#: fast ~0.47-0.50 ms a step, slow ~12 ms. The measured no-logging step time is printed
#: and stored, so a different machine shows what it actually ran.
LOOPS: dict[str, dict[str, int]] = {
    "fast": {"inputs": 64, "width": 192, "depth": 2, "batch": 64},
    "slow": {"inputs": 64, "width": 816, "depth": 2, "batch": 256},
}
STORES = ("mlflow", "wandb", "clearml", "local")
NATIVE_API = {
    "mlflow": "MlflowClient.log_batch(5 metrics) per step, sqlite",
    "wandb": "run.log({5 keys}) per step, offline",
    "clearml": "Logger.report_scalar x5 per step, offline, subprocess off",
}
WARMUP_STEPS = 100
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


def variant_name(kind: str, store: str) -> str:
    return "no-logging" if kind == "none" else f"{kind}-{store}"


def summarize(
    runs: list[dict[str, Any]], loops: list[str], variants: list[tuple[str, str]]
) -> dict[str, Any]:
    """Per loop and variant: overhead vs the same rep's no-logging run, and absolute times."""
    summary: dict[str, Any] = {}
    for loop in loops:
        base_median = {
            r["rep"]: r["median_ms"]
            for r in runs
            if r["loop"] == loop and r["kind"] == "none" and "error" not in r
        }
        base_mean = {
            r["rep"]: r["mean_ms"]
            for r in runs
            if r["loop"] == loop and r["kind"] == "none" and "error" not in r
        }
        per_variant: dict[str, Any] = {}
        for kind, store in variants:
            name = variant_name(kind, store)
            mine = [r for r in runs if r["loop"] == loop and r["kind"] == kind and r["store"] == store]
            good = [r for r in mine if "error" not in r]
            entry: dict[str, Any] = {
                "kind": kind,
                "store": store,
                "runs": len(mine),
                "errors": [r["error"] for r in mine if "error" in r],
                "median_step_ms": spread(r["median_ms"] for r in good),
                "mean_step_ms": spread(r["mean_ms"] for r in good),
                "p99_step_ms": spread(r["p99_ms"] for r in good),
                "loop_cpu_s": spread(r["loop_cpu_s"] for r in good),
                "helpers_loop_cpu_s": spread(r.get("helpers_loop_cpu_s") for r in good),
                "start_s": spread((r["import_s"] + r["start_s"]) if "start_s" in r else None for r in good),
            }
            if kind != "none":
                entry["overhead_pct"] = spread(
                    (r["median_ms"] / base_median[r["rep"]] - 1) * 100
                    for r in good
                    if r["rep"] in base_median
                )
                entry["overhead_mean_pct"] = spread(
                    (r["mean_ms"] / base_mean[r["rep"]] - 1) * 100 for r in good if r["rep"] in base_mean
                )
            if kind == "tracelet":
                entry["stop_s"] = spread(r.get("stop_s") for r in good)
                entry["delivered"] = [r["report"]["delivered"] for r in good]
                entry["sent"] = [r["report"]["sent"] for r in good]
                entry["pending"] = [r["report"]["pending"] for r in good]
                entry["failed"] = [r["report"]["failed"] for r in good]
                entry["all_landed"] = bool(good) and all(r["report"]["ok"] for r in good)
            if kind == "native":
                entry["close_s"] = spread(r.get("close_s") for r in good)
            per_variant[name] = entry
        summary[loop] = per_variant
    return summary


def judge(summary: dict[str, Any], stores: list[str]) -> list[dict[str, Any]]:
    """PASS/MISS per target; a variant that failed or was not run is a MISS, not a silent gap."""
    verdicts: list[dict[str, Any]] = []
    limits = {"fast": TARGETS["overhead_fast_max_pct"], "slow": TARGETS["overhead_slow_max_pct"]}
    for loop, variants in summary.items():
        for store in stores:
            entry = variants.get(f"tracelet-{store}")
            if entry is None:
                continue
            value = entry["overhead_pct"]["median"]
            verdicts.append(
                {
                    "target": f"overhead {loop} loop, tracelet-{store}",
                    "value": value,
                    "limit": limits[loop],
                    "pass": value is not None and value <= limits[loop],
                }
            )
    fast = summary.get("fast", {})
    for store in stores:
        entry = fast.get(f"tracelet-{store}")
        if entry is None:
            continue
        native = fast.get(f"native-{store}")
        close = native["close_s"]["median"] if native else 0.0
        stop = entry["stop_s"]["median"]
        limit = None if close is None else close + TARGETS["stop_max_extra_s"]
        verdicts.append(
            {
                "target": f"stop_logging after fast loop, tracelet-{store}",
                "value": stop,
                "limit": limit,
                "native_close_s": close,
                "pass": stop is not None and limit is not None and stop <= limit and entry["all_landed"],
            }
        )
    return verdicts


def render(summary: dict[str, Any], verdicts: list[dict[str, Any]], stores: list[str], header: str) -> str:
    """Ratios first (overhead, stop vs close, with PASS/MISS), absolute times second."""
    limits = {"fast": TARGETS["overhead_fast_max_pct"], "slow": TARGETS["overhead_slow_max_pct"]}
    out = [header, "", "Overhead vs no logging (median over reps [min..max]; PASS/MISS on the median step)"]
    rows = []
    for loop, variants in summary.items():
        for name, e in variants.items():
            if e["kind"] == "none":
                continue
            target = f"<= {limits[loop]:g}%" if e["kind"] == "tracelet" else "-"
            ok = None
            if e["kind"] == "tracelet":
                value = e["overhead_pct"]["median"]
                ok = value is not None and value <= limits[loop]
            rows.append(
                [
                    loop,
                    name,
                    fmt_spread(e["overhead_pct"], "{:+.1f}", "%"),
                    fmt_spread(e["overhead_mean_pct"], "{:+.1f}", "%"),
                    target,
                    verdict(ok) if e["runs"] else "-",
                    f"{len(e['errors'])} failed" if e["errors"] else "",
                ]
            )
    out.append(
        table(
            [
                "loop",
                "variant",
                "overhead (median step)",
                "(mean step, total time)",
                "target",
                "verdict",
                "notes",
            ],
            rows,
        )
    )

    stop_rows = []
    for v in verdicts:
        if not v["target"].startswith("stop_logging"):
            continue
        store = v["target"].rsplit("tracelet-", 1)[1]
        e = summary["fast"][f"tracelet-{store}"]
        native = summary["fast"].get(f"native-{store}")
        counts = f"delivered {'/'.join(map(str, e['delivered']))} of {'/'.join(map(str, e['sent']))} sent"
        landed = "all" if e["all_landed"] else f"NOT ALL: pending {e['pending']} failed {e['failed']}"
        stop_rows.append(
            [
                store,
                fmt_spread(e["stop_s"], "{:.2f}", " s"),
                fmt_spread(native["close_s"], "{:.2f}", " s") if native else "- (no native; 0)",
                "-" if v["limit"] is None else f"<= {v['limit']:.2f} s",
                verdict(v["pass"]),
                f"{landed}; {counts}",
            ]
        )
    if stop_rows:
        out += [
            "",
            "stop_logging() after the fast loop (drains what is still undelivered) vs the native close",
            table(["store", "stop_logging()", "native close", "target", "verdict", "landed"], stop_rows),
        ]

    out += [
        "",
        "Absolute times (median over reps [min..max]; loop CPU = the trainer process, threads included;",
        "helpers = its child processes, e.g. a delivery agent or wandb-core, during the loop)",
    ]
    rows = []
    for loop, variants in summary.items():
        for name, e in variants.items():
            rows.append(
                [
                    loop,
                    name,
                    fmt_spread(e["median_step_ms"], "{:.3f}"),
                    fmt_spread(e["mean_step_ms"], "{:.3f}"),
                    fmt_spread(e["p99_step_ms"], "{:.3f}"),
                    fmt_spread(e["loop_cpu_s"], "{:.2f}"),
                    fmt_spread(e["helpers_loop_cpu_s"], "{:.2f}"),
                    fmt_spread(e["start_s"], "{:.2f}"),
                ]
            )
    out.append(
        table(
            [
                "loop",
                "variant",
                "median step ms",
                "mean step ms",
                "p99 step ms",
                "loop CPU s",
                "helpers CPU s",
                "import+start s",
            ],
            rows,
        )
    )
    natives = [f"  native-{s}: {NATIVE_API[s]}" for s in stores if s in NATIVE_API]
    if natives:
        out += ["", "Native APIs:", *natives]
    passed = sum(v["pass"] for v in verdicts)
    out += ["", f"Targets: {passed}/{len(verdicts)} PASS"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000, help="fast-loop steps (spec: at least 4000)")
    parser.add_argument("--slow-steps", type=int, default=None, help="slow-loop steps (default: --steps)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--loops", nargs="+", choices=list(LOOPS), default=list(LOOPS))
    parser.add_argument("--backends", nargs="+", default=list(STORES), help=f"any of {', '.join(STORES)}")
    parser.add_argument("--no-native", action="store_true", help="skip the stores' own APIs")
    parser.add_argument(
        "--delivery",
        choices=("thread", "agent"),
        default=None,
        help="sets TRACELET_DELIVERY (default: inherit)",
    )
    parser.add_argument("--flush-timeout", type=float, default=600.0, help="stop_logging(flush_timeout=...)")
    parser.add_argument("--child-timeout", type=float, default=1800.0, help="seconds before a run is killed")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "overhead.json")
    parser.add_argument("--keep", action="store_true", help="keep the temp stores (printed path)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        spec = json.loads(args.child)
        write_child_result(spec, child(spec))
        return 0

    stores = select_stores(args.backends, STORES)
    slow_steps = args.slow_steps if args.slow_steps is not None else args.steps
    steps_of = {"fast": args.steps, "slow": slow_steps}
    variants: list[tuple[str, str]] = [("none", "")]
    variants += [("tracelet", s) for s in stores]
    if not args.no_native:
        variants += [("native", s) for s in stores if s in NATIVE_API]
    full_size = args.steps >= 4000 and args.reps >= 3
    if not full_size:
        print(
            f"note: smoke size ({args.steps} steps, {args.reps} reps); the spec's run is 4000 steps, 3 reps"
        )
    warn_if_busy()
    facts = machine_facts()
    if args.delivery is not None:
        facts["tracelet_delivery_env"] = args.delivery
    script = Path(__file__).resolve()
    names = [f"{k}|{s}" for k, s in variants]
    orders = {loop: rep_orders(names, args.reps, args.seed + i) for i, loop in enumerate(args.loops)}
    runs: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="tracelet-bench-overhead-"))
    total = args.reps * len(args.loops) * len(variants)
    started = time.monotonic()
    try:
        for rep in range(args.reps):
            for loop in args.loops:
                for name in orders[loop][rep]:
                    kind, store = name.split("|")
                    label = variant_name(kind, store)
                    root = tmp / f"rep{rep}-{loop}-{label}"
                    root.mkdir()
                    spec = {
                        "loop": loop,
                        "kind": kind,
                        "store": store,
                        "steps": steps_of[loop],
                        "flush_timeout": args.flush_timeout,
                        "run_name": f"{loop}-{label}-rep{rep}",
                    }
                    res = run_child(script, spec, root, store_env(root, args.delivery), args.child_timeout)
                    res.update({"rep": rep, "loop": loop, "kind": kind, "store": store, "variant": label})
                    runs.append(res)
                    print(
                        f"[{len(runs)}/{total}] rep {rep + 1} {loop:<4} {label:<17} {progress(res)}",
                        flush=True,
                    )
                    if not args.keep:
                        shutil.rmtree(root, ignore_errors=True)
    finally:
        if args.keep:
            print(f"kept stores under {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    summary = summarize(runs, args.loops, variants)
    verdicts = judge(summary, stores)
    base = {loop: summary[loop]["no-logging"]["median_step_ms"]["median"] for loop in args.loops}
    delivery = args.delivery or os.environ.get("TRACELET_DELIVERY") or "library default"
    header = (
        f"tracelet overhead: delivery={delivery}; "
        + "; ".join(
            f"{loop} loop {base[loop]:.3f} ms/step x {steps_of[loop]} steps"
            if base[loop] is not None
            else f"{loop} loop (no baseline)"
            for loop in args.loops
        )
        + f"; {args.reps} rep(s), {METRICS_PER_STEP} metrics/step; {facts['cores']} cores, "
        f"load {load_1min(facts)}; {time.monotonic() - started:.0f} s"
    )
    print()
    print(render(summary, verdicts, stores, header))
    facts_after = {"load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    write_json(
        args.json,
        {
            "benchmark": "overhead",
            "full_size": full_size,
            "args": {
                k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "child"
            },
            "steps": steps_of,
            "loops": LOOPS,
            "native_api": NATIVE_API,
            "targets": {k: v for k, v in TARGETS.items() if k.startswith("overhead") or k.startswith("stop")},
            "machine": facts,
            "machine_after": facts_after,
            "summary": summary,
            "verdicts": verdicts,
            "runs": runs,
        },
    )
    return 0


def progress(res: dict[str, Any]) -> str:
    """One line per finished child, so a long run shows it is alive and what it measured."""
    if "error" in res:
        last = res.get("log_tail", "").strip().splitlines()[-1:] or [""]
        return f"ERROR {res['error']}: {last[0][:160]}"
    text = f"median {res['median_ms']:.3f} ms  mean {res['mean_ms']:.3f} ms"
    if "stop_s" in res:
        r = res["report"]
        text += f"  stop_logging {res['stop_s']:.2f} s  delivered {r['delivered']}/{r['sent']}"
        if not r["ok"]:
            text += f" (pending {r['pending']}, failed {r['failed']})"
    if "close_s" in res:
        text += f"  close {res['close_s']:.2f} s"
    return text


if __name__ == "__main__":
    sys.exit(main())

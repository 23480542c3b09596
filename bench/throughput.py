"""Delivered throughput: 100k points into each store through tracelet vs the store's own bulk API.

    python bench/throughput.py [--points 100000] [--keys 10] [--reps 3]
                               [--backends mlflow mlflow_server wandb clearml local]
                               [--delivery thread|agent] [--json bench/results/throughput.json]

Why this benchmark: the caller-side cost of ``log_metric`` is about a microsecond, but a
run is only done when its points have *landed*. What a user waits for is the time from
the first log call until the run is closed with everything stored. tracelet batches
into each store's bulk API, so it should get close to the best the store can do by
hand; this measures how close.

Work: ``--points`` points (default 100,000) over ``--keys`` keys (default 10), i.e.
10,000 steps of 10 values, timed from the first log call until ``stop_logging()``
returns (for tracelet) or the store's own finish/close returns (for the native client).
The native clients do the same work in their best bulk form:

- MLflow: ``MlflowClient.log_batch`` in chunks of 1000 metrics (its batch limit), then
  ``set_terminated``; on sqlite, and on a real ``mlflow server`` (started here with two
  workers in its own session on a free 127.0.0.1 port, shared by every rep, and always
  stopped, process group and all, at the end);
- W&B offline: ``run.log`` of one row per step with the 10 keys, then ``finish()``;
- ClearML offline: ``Logger.report_scalar`` per point with the reporting subprocess off
  (as tracelet runs it), then ``task.close()``;
- tracelet ``local`` has no native counterpart and is reported on its own.

Ratio = native time / tracelet time (1.0 = as fast as hand-written bulk logging);
target >= 0.95 on every store (``bench/_common.py``). ``start_logging()`` latency is
reported separately, next to the native run creation (both including the import a
user's script would pay). Every run is a fresh subprocess with its own temp store,
and 3 repetitions are interleaved in rotated order; medians and [min..max] over reps
are printed, ratios first, then absolute times, and written as JSON with the
machine's cores, load, Python and platform. A benchmark, not a test: it prints.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    RESULTS_DIR,
    TARGETS,
    MLflowServer,
    backend_counts,
    fmt_spread,
    installed,
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

STORES = ("mlflow", "mlflow_server", "wandb", "clearml", "local")
NATIVE_API = {
    "mlflow": "MlflowClient.log_batch, chunks of 1000 metrics, sqlite",
    "mlflow_server": "MlflowClient.log_batch, chunks of 1000 metrics, mlflow server over HTTP",
    "wandb": "run.log({10 keys}) one row per step, offline",
    "clearml": "Logger.report_scalar per point, offline, reporting subprocess off",
}
MLFLOW_CHUNK = 1000
PROJECT = "bench-throughput"


# -- the child: one store, one client, one process -----------------------------------------------


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Log the points with one client and return how long it took until they had landed."""
    kind, store = spec["kind"], spec["store"]
    keys, points = int(spec["keys"]), int(spec["points"])
    root = Path(spec["root"])
    steps = points // keys
    names = [f"bench/k{k}" for k in range(keys)]
    # Values are made before the clock starts, identical for every variant.
    rows = [[math.sin(0.001 * step + k) for k in range(keys)] for step in range(steps)]
    result: dict[str, Any] = {"kind": kind, "store": store, "points": steps * keys}
    if hasattr(os, "getloadavg"):
        result["load_at_start"] = os.getloadavg()[0]
    perf = time.perf_counter

    if kind == "tracelet":
        t0 = perf()
        import tracelet

        t1 = perf()
        backend, options = tracelet_backend(store, root, spec.get("server_url"))
        exp = tracelet.start_logging(
            exp_name=spec["run_name"], project=PROJECT, backend=backend, backend_options=options
        )
        result["import_s"], result["start_s"] = t1 - t0, perf() - t1
        result["delivery"] = getattr(getattr(exp, "settings", None), "delivery", None)
        log = exp.log_metric
        begin = perf()
        for step, row in enumerate(rows):
            for name, value in zip(names, row, strict=True):
                log(name, value, step)
        logged = perf()
        report = tracelet.stop_logging(flush_timeout=spec["flush_timeout"])
        end = perf()
        result["report"] = backend_counts(report, backend)
        result["all_landed"] = result["report"]["ok"] and result["report"]["delivered"] >= steps * keys
    else:
        run = open_native(
            store,
            root,
            PROJECT,
            spec["run_name"],
            mlflow_chunk=MLFLOW_CHUNK,
            server_url=spec.get("server_url"),
        )
        result["import_s"], result["start_s"] = run.import_s, run.create_s
        begin = perf()
        for step, row in enumerate(rows):
            run.log_step(step, dict(zip(names, row, strict=True)))
        logged = perf()
        run.close()
        end = perf()
        result["all_landed"] = True  # the native close returned without raising
    result.update(
        {
            "log_s": logged - begin,  # the log calls themselves
            "close_s": end - logged,  # stop_logging() / finish / close: draining what is left
            "total_s": end - begin,  # first log call until the run is closed with everything landed
            "points_per_s": steps * keys / (end - begin),
        }
    )
    return result


# -- the parent ----------------------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]], stores: list[str]) -> dict[str, Any]:
    """Per store: tracelet and native times, their per-rep ratio, and start latency."""
    summary: dict[str, Any] = {}
    for store in stores:
        entry: dict[str, Any] = {}
        by_kind: dict[str, dict[int, dict[str, Any]]] = {"tracelet": {}, "native": {}}
        for r in runs:
            if r["store"] == store:
                by_kind[r["kind"]][r["rep"]] = r
        for kind, reps in by_kind.items():
            if not reps:
                continue
            good = [r for r in reps.values() if "error" not in r]
            entry[kind] = {
                "runs": len(reps),
                "errors": [r["error"] for r in reps.values() if "error" in r],
                "total_s": spread(r["total_s"] for r in good),
                "log_s": spread(r["log_s"] for r in good),
                "close_s": spread(r["close_s"] for r in good),
                "points_per_s": spread(r["points_per_s"] for r in good),
                "start_s": spread(r["import_s"] + r["start_s"] for r in good),
                "import_s": spread(r["import_s"] for r in good),
                "create_s": spread(r["start_s"] for r in good),
                "all_landed": bool(good) and len(good) == len(reps) and all(r["all_landed"] for r in good),
            }
            if kind == "tracelet":
                entry[kind]["reports"] = [r["report"] for r in good]
        tr, na = by_kind["tracelet"], by_kind["native"]
        paired = [rep for rep in tr if rep in na and "error" not in tr[rep] and "error" not in na[rep]]
        if paired:
            entry["ratio"] = spread(na[rep]["total_s"] / tr[rep]["total_s"] for rep in paired)
            entry["start_ratio"] = spread(
                (tr[rep]["import_s"] + tr[rep]["start_s"]) / (na[rep]["import_s"] + na[rep]["start_s"])
                for rep in paired
            )
        summary[store] = entry
    return summary


def judge(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Ratio >= target on every store that has a native client, with every point landed."""
    limit = TARGETS["throughput_min_ratio"]
    verdicts = []
    for store, entry in summary.items():
        if store not in NATIVE_API or "tracelet" not in entry:
            continue
        value = entry.get("ratio", {}).get("median")
        verdicts.append(
            {
                "target": f"throughput {store}: native_time / tracelet_time",
                "value": value,
                "limit": limit,
                "all_landed": entry["tracelet"]["all_landed"],
                "pass": value is not None and value >= limit and entry["tracelet"]["all_landed"],
            }
        )
    return verdicts


def render(summary: dict[str, Any], verdicts: list[dict[str, Any]], header: str) -> str:
    """Ratios first (with PASS/MISS), then absolute times, then start latency."""
    limit = TARGETS["throughput_min_ratio"]
    judged = {v["target"].split()[1].rstrip(":"): v for v in verdicts}
    out = [header, "", "Ratio = native time / tracelet time (median over reps [min..max]; >= 1 is faster)"]
    rows = []
    for store, e in summary.items():
        v = judged.get(store)
        tr = e.get("tracelet", {})
        landed = "all" if tr.get("all_landed") else "NOT ALL"
        if tr.get("reports"):
            landed += f" ({'/'.join(str(r['delivered']) for r in tr['reports'])} delivered)"
        errors = len(tr.get("errors", [])) + len(e.get("native", {}).get("errors", []))
        rows.append(
            [
                store,
                fmt_spread(e.get("ratio", {}), "{:.2f}", "x") if store in NATIVE_API else "- (no native)",
                f">= {limit:g}x" if store in NATIVE_API else "-",
                verdict(v["pass"]) if v else "-",
                landed + (f"; {errors} run(s) failed" if errors else ""),
            ]
        )
    out.append(table(["store", "ratio", "target", "verdict", "tracelet landed"], rows))

    out += [
        "",
        "Absolute times, first log call to run closed (median over reps [min..max]);",
        "log = the log calls, close = stop_logging() or the native finish/close",
    ]
    rows = []
    for store, e in summary.items():
        for kind in ("tracelet", "native"):
            k = e.get(kind)
            if not k:
                continue
            rows.append(
                [
                    store,
                    kind,
                    fmt_spread(k["total_s"], "{:.2f}", " s"),
                    fmt_spread(k["log_s"], "{:.2f}"),
                    fmt_spread(k["close_s"], "{:.2f}"),
                    fmt_spread(k["points_per_s"], "{:,.0f}"),
                ]
            )
    out.append(table(["store", "client", "total", "log s", "close s", "points/s"], rows))

    out += ["", "Start latency: import + start_logging() vs import + native run creation (median [min..max])"]
    rows = []
    for store, e in summary.items():
        tr, na = e.get("tracelet"), e.get("native")
        rows.append(
            [
                store,
                fmt_spread(tr["start_s"], "{:.3f}", " s") if tr else "-",
                fmt_spread(tr["create_s"], "{:.3f}", " s") if tr else "-",
                fmt_spread(na["start_s"], "{:.3f}", " s") if na else "-",
                fmt_spread(na["create_s"], "{:.3f}", " s") if na else "-",
                fmt_spread(e["start_ratio"], "{:.2f}", "x") if "start_ratio" in e else "-",
            ]
        )
    out.append(
        table(
            [
                "store",
                "tracelet import+start",
                "start_logging() alone",
                "native import+create",
                "native create alone",
                "tracelet/native",
            ],
            rows,
        )
    )
    natives = [f"  {s}: {NATIVE_API[s]}" for s in summary if s in NATIVE_API]
    out += ["", "Native APIs:", *natives]
    passed = sum(v["pass"] for v in verdicts)
    out += ["", f"Targets: {passed}/{len(verdicts)} PASS"]
    return "\n".join(out)


def progress(res: dict[str, Any]) -> str:
    if "error" in res:
        last = res.get("log_tail", "").strip().splitlines()[-1:] or [""]
        return f"ERROR {res['error']}: {last[0][:160]}"
    text = (
        f"total {res['total_s']:.2f} s (log {res['log_s']:.2f} + close {res['close_s']:.2f})  "
        f"{res['points_per_s']:,.0f} points/s  start {res['import_s'] + res['start_s']:.2f} s"
    )
    if "report" in res:
        r = res["report"]
        text += f"  delivered {r['delivered']}/{r['sent']}"
        if not r["ok"]:
            text += f" (pending {r['pending']}, failed {r['failed']})"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000, help="points per run (spec: 100000)")
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=list(STORES), help=f"any of {', '.join(STORES)}")
    parser.add_argument(
        "--delivery",
        choices=("thread", "agent"),
        default=None,
        help="sets TRACELET_DELIVERY (default: inherit)",
    )
    parser.add_argument("--flush-timeout", type=float, default=1800.0, help="stop_logging(flush_timeout=...)")
    parser.add_argument("--child-timeout", type=float, default=3600.0, help="seconds before a run is killed")
    parser.add_argument("--server-workers", type=int, default=2, help="mlflow server --workers")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "throughput.json")
    parser.add_argument("--keep", action="store_true", help="keep the temp stores (printed path)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        spec = json.loads(args.child)
        write_child_result(spec, child(spec))
        return 0

    if args.points < args.keys or args.keys < 1:
        parser.error("--points must be at least --keys, and --keys at least 1")
    stores = select_stores(args.backends, STORES)
    full_size = args.points >= 100_000 and args.reps >= 3
    if not full_size:
        print(
            f"note: smoke size ({args.points} points, {args.reps} reps); "
            "the spec's run is 100000 points, 3 reps"
        )
    warn_if_busy()
    facts = machine_facts()
    if args.delivery is not None:
        facts["tracelet_delivery_env"] = args.delivery
    variants = [f"tracelet|{s}" for s in stores] + [f"native|{s}" for s in stores if s in NATIVE_API]
    orders = rep_orders(variants, args.reps, args.seed)
    script = Path(__file__).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="tracelet-bench-throughput-"))
    runs: list[dict[str, Any]] = []
    server: MLflowServer | None = None
    server_facts: dict[str, Any] = {}
    started = time.monotonic()
    total = args.reps * len(variants)
    try:
        if "mlflow_server" in stores and installed("mlflow_server"):
            server = MLflowServer(tmp / "mlflow-server", workers=args.server_workers)
            server_facts = {
                "url": server.url,
                "workers": args.server_workers,
                "healthy_after_s": server.started_s,
            }
            print(f"mlflow server on {server.url} answered /health after {server.started_s:.1f} s")
        for rep in range(args.reps):
            for name in orders[rep]:
                kind, store = name.split("|")
                label = f"{kind}-{store}"
                root = tmp / f"rep{rep}-{label}"
                root.mkdir()
                spec = {
                    "kind": kind,
                    "store": store,
                    "points": args.points,
                    "keys": args.keys,
                    "flush_timeout": args.flush_timeout,
                    "run_name": f"{label}-rep{rep}",
                    "server_url": server.url if server is not None else None,
                }
                res = run_child(script, spec, root, store_env(root, args.delivery), args.child_timeout)
                res.update({"rep": rep, "kind": kind, "store": store, "variant": label})
                runs.append(res)
                print(f"[{len(runs)}/{total}] rep {rep + 1} {label:<22} {progress(res)}", flush=True)
                if not args.keep:
                    shutil.rmtree(root, ignore_errors=True)
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"kept stores under {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    summary = summarize(runs, stores)
    verdicts = judge(summary)
    delivery = args.delivery or os.environ.get("TRACELET_DELIVERY") or "library default"
    header = (
        f"tracelet delivered throughput: delivery={delivery}; {args.points:,} points over {args.keys} keys; "
        f"{args.reps} rep(s); {facts['cores']} cores, load {load_1min(facts)}; "
        f"{time.monotonic() - started:.0f} s"
    )
    print()
    print(render(summary, verdicts, header))
    write_json(
        args.json,
        {
            "benchmark": "throughput",
            "full_size": full_size,
            "args": {
                k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "child"
            },
            "native_api": NATIVE_API,
            "mlflow_chunk": MLFLOW_CHUNK,
            "mlflow_server": server_facts,
            "targets": {"throughput_min_ratio": TARGETS["throughput_min_ratio"]},
            "machine": facts,
            "machine_after": {"load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
            "summary": summary,
            "verdicts": verdicts,
            "runs": runs,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

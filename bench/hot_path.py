"""The caller-side cost of ``log_metric``, next to each installed backend's native per-call API.

    python bench/hot_path.py [--calls 100000] [--backend mlflow] [--json bench/results/hot_path.json]

tracelet is measured through the real pipeline with a real backend attached (its
writer thread delivering concurrently, as in training). Calls are timed in blocks
of 100 and the median per-call cost is reported, for a float and for a 0-dim tensor.
Each native API runs in its default configuration, in the same process, side by
side: MLflow's ``mlflow.log_metric`` (sqlite store), W&B's ``run.log`` (offline) and
ClearML's ``Logger.report_scalar`` (offline). A benchmark, not a test: it prints.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

BLOCK = 100
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import TARGETS  # noqa: E402  (one set of targets for every benchmark)

#: The caller's cost is measured idle, and *while delivery drains this backlog* (where the GIL bites).
BACKLOG = 100_000


def per_call_median(call: Callable[[int], Any], calls: int, block: int = BLOCK) -> float:
    """Median seconds per call, timing blocks of ``block`` calls (timer overhead amortized)."""
    samples = []
    perf = time.perf_counter
    for start in range(0, calls, block):
        t0 = perf()
        for i in range(start, start + block):
            call(i)
        samples.append((perf() - t0) / block)
    return statistics.median(samples)


def bench_tracelet(backend: str, calls: int, tmp: Path) -> dict[str, float]:
    import tracelet

    options: dict[str, Any] = {}
    if backend == "mlflow":
        options = {"tracking_uri": f"sqlite:///{tmp / 'tracelet-mlflow.db'}"}
    elif backend == "local":
        options = {"root": str(tmp / "local")}
    exp = tracelet.start_logging(
        exp_name="hot-path",
        project="bench",
        backend=backend,
        backend_options={backend: options} if options else None,
    )
    results = {"float_us": per_call_median(lambda i: exp.log_metric("loss", 0.5, i), calls) * 1e6}
    exp.flush(600)
    if importlib.util.find_spec("torch"):
        import torch

        t = torch.tensor(0.5)
        results["tensor_us"] = per_call_median(lambda i: exp.log_metric("loss_t", t, i), calls) * 1e6
    exp.flush(600)
    # Busy: the same calls right after a 100k-point backlog was logged, so delivery is draining it
    # (the stores' Python code runs meanwhile: in the agent by default, here with TRACELET_DELIVERY=thread).
    for i in range(BACKLOG):
        exp.log_metric("backlog", 0.5, i)
    results["busy_float_us"] = per_call_median(lambda i: exp.log_metric("busy", 0.5, i), calls) * 1e6
    results["busy_float_still_draining"] = float(not exp.flush(0))
    exp.flush(600)
    if importlib.util.find_spec("torch"):
        for i in range(BACKLOG):
            exp.log_metric("backlog_t", 0.5, i)
        results["busy_tensor_us"] = per_call_median(lambda i: exp.log_metric("busy_t", t, i), calls) * 1e6
        results["busy_tensor_still_draining"] = float(not exp.flush(0))
    exp.flush(600)
    # Memory: a separate pass under tracemalloc (which would distort the timings above).
    tracemalloc.start()
    for i in range(calls):
        exp.log_metric("loss_mem", 0.5, i)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    results["peak_mib"] = peak / 2**20
    results["peak_bytes_per_point"] = peak / calls
    report = tracelet.stop_logging(flush_timeout=600)
    assert report.ok, report.format()
    results["delivered"] = float(report[backend].delivered)
    return results


def bench_mlflow(tmp: Path, seconds: float) -> float:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'native-mlflow.db'}")
    mlflow.set_experiment("bench-native")
    with mlflow.start_run():
        mlflow.log_metric("warmup", 0.0, step=0)
        return _timed_calls(lambda i: mlflow.log_metric("loss", 0.5, step=i), seconds)


def bench_wandb(tmp: Path, seconds: float) -> float:
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(project="bench", mode="offline", dir=str(tmp))
    try:
        return _timed_calls(lambda i: run.log({"loss": 0.5}), seconds)
    finally:
        run.finish()


def bench_clearml(tmp: Path, seconds: float) -> float:
    os.environ["CLEARML_OFFLINE_MODE"] = "1"
    os.environ.setdefault("CLEARML_CACHE_DIR", str(tmp / "clearml-cache"))
    from clearml import Task

    Task.set_offline(True)
    task = Task.init(
        project_name="bench",
        task_name="native",
        auto_connect_frameworks=False,
        auto_resource_monitoring=False,
        reuse_last_task_id=False,
    )
    logger = task.get_logger()
    try:
        return _timed_calls(lambda i: logger.report_scalar("loss", "loss", 0.5, iteration=i), seconds)
    finally:
        task.close()


def _timed_calls(call: Callable[[int], Any], seconds: float) -> float:
    """Median per-call seconds over as many single calls as fit in ``seconds`` (slow APIs)."""
    samples = []
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline or i < 20:
        t0 = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - t0)
        i += 1
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument(
        "--backend", default=None, help="backend attached to tracelet (default: mlflow, else local)"
    )
    parser.add_argument("--native-seconds", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=Path("bench/results/hot_path.json"))
    args = parser.parse_args(argv)
    if args.calls < 100_000:
        parser.error("--calls must be at least 100000")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TRACELET_HANDLE_SIGNALS", "0")
    backend = args.backend or ("mlflow" if importlib.util.find_spec("mlflow") else "local")
    with tempfile.TemporaryDirectory(prefix="tracelet-bench-") as tmpdir:
        tmp = Path(tmpdir)
        os.environ["TRACELET_SPOOL_DIR"] = str(tmp / "spool")
        ours = bench_tracelet(backend, args.calls, tmp)
        natives: dict[str, float] = {}
        for name, fn in (
            ("mlflow.log_metric", bench_mlflow),
            ("wandb run.log", bench_wandb),
            ("clearml report_scalar", bench_clearml),
        ):
            if importlib.util.find_spec(name.split(".")[0].split()[0]):
                natives[name] = fn(tmp, args.native_seconds) * 1e6
    delivery = os.environ.get("TRACELET_DELIVERY", "agent")
    lines = [
        f"tracelet hot path ({args.calls} calls, backend {backend}, delivery {delivery}, "
        f"Python {platform.python_version()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}):",
        f"  log_metric(float)       {ours['float_us']:8.3f} µs/call   target <= {TARGETS['float_us']} µs",
    ]
    if "tensor_us" in ours:
        lines.append(
            f"  log_metric(0-dim tensor){ours['tensor_us']:8.3f} µs/call   "
            f"target <= {TARGETS['tensor_us']} µs"
        )
    for key, label in (("busy_float_us", "float"), ("busy_tensor_us", "0-dim tensor")):
        if key in ours:
            draining = (
                "still draining after" if ours[key.replace("_us", "_still_draining")] else "drained during"
            )
            lines.append(
                f"  busy log_metric({label:<12}) {ours[key]:8.3f} µs/call   target <= {TARGETS[key]} µs "
                f"(delivery {draining} the timed calls)"
            )
    lines.append(
        f"  memory: peak {ours['peak_mib']:.1f} MiB traced while logging {args.calls} points "
        f"({ours['peak_bytes_per_point']:.0f} B/point; the queue is bounded, overflow goes to disk)"
    )
    for name, us in natives.items():
        ratio = us / ours["float_us"]
        lines.append(
            f"  native {name:<24} {us:10.1f} µs/call   tracelet is {ratio:,.0f}x faster (target >= 50x)"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "backend": backend,
                "delivery": delivery,
                "cores": os.cpu_count(),
                "calls": args.calls,
                "tracelet_us": ours,
                "native_us": natives,
                "targets": TARGETS,
                "python": platform.python_version(),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What a SIGKILL costs, and what the processes weigh: the loss window and RSS, against the native client.

    python bench/kill_window.py [--reps 5] [--json bench/results/kill_window.json]

A trainer logs a point every millisecond (and writes a timestamped tally of every
call), then its whole process group is SIGKILLed at a random moment, as the OOM
killer or a scheduler would. The delivery agent, in its own session, delivers what
it received and closes the run ``killed``. The *window* is how long before the kill
the first point that did not land was logged: what a SIGKILL loses. Target: 50 ms.

The same child reports its resident memory after logging 100k points, and the
agent's; a native MLflow child doing the same work (``log_batch`` per step) gives the
comparison. A benchmark, not a test: it prints, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS_DIR, TARGETS, machine_facts, sqlite_uri, store_env

TARGET_WINDOW_MS = TARGETS["kill_window_ms"]

TRAINER = textwrap.dedent(
    """
    import json, os, sys, time
    spec = json.loads(sys.argv[1])
    import tracelet
    exp = tracelet.start_logging(exp_name="kill", project="bench", backend=spec["backend"],
                                 backend_options=spec["options"])
    with open(spec["runs"], "w") as f:
        json.dump(exp.runs, f)
    tally = open(spec["tally"], "w", buffering=1)
    i = 0
    while True:
        exp.log_metric("loss", float(i), i)
        tally.write(f"{time.time():.6f} {i}\\n")
        i += 1
        time.sleep(0.001)
    """
)

RSS = textwrap.dedent(
    """
    import json, os, sys, time
    import psutil
    spec = json.loads(sys.argv[1])
    points = spec["points"]
    if spec["kind"] == "tracelet":
        import tracelet
        exp = tracelet.start_logging(exp_name="rss", project="bench", backend="mlflow",
                                     backend_options={"mlflow": {"tracking_uri": spec["uri"]}})
        for i in range(points):
            exp.log_metric("loss", float(i), i)
        exp.flush(600)
        me = psutil.Process()
        agents = [p for p in me.children() if "tracelet.delivery" in " ".join(p.cmdline())]
        out = {"trainer_mib": me.memory_info().rss / 2**20,
               "agent_mib": sum(p.memory_info().rss for p in agents) / 2**20}
        tracelet.stop_logging()
    else:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient
        client = MlflowClient(spec["uri"])
        run = client.create_run(client.create_experiment("native"))
        batch = []
        for i in range(points):
            batch.append(Metric("loss", float(i), int(time.time() * 1000) + i, i))
            if len(batch) == 1000:
                client.log_batch(run.info.run_id, metrics=batch)
                batch = []
        out = {"native_mib": psutil.Process().memory_info().rss / 2**20}
        client.set_terminated(run.info.run_id)
    print("RESULT " + json.dumps(out), flush=True)
    """
)


def kill_once(store: str, root: Path, rng: random.Random) -> dict[str, Any]:
    from tracelet.testing import read_run

    root.mkdir(parents=True)
    env = store_env(root, None)
    if store == "mlflow":
        uri = sqlite_uri(root / "m.db")
        spec: dict[str, Any] = {"backend": "mlflow", "options": {"mlflow": {"tracking_uri": uri}}}
    else:
        spec = {"backend": "local", "options": {"local": {"root": str(root / "local")}}}
    spec.update(runs=str(root / "runs.json"), tally=str(root / "tally.txt"))
    script = root / "trainer.py"
    script.write_text(TRAINER)
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps(spec)], env=env, cwd=root, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not (root / "tally.txt").exists() or (root / "tally.txt").stat().st_size < 100:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"trainer did not start (exit {proc.poll()})")
        time.sleep(0.05)
    time.sleep(rng.uniform(1.5, 3.0))
    killed_at = time.time()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_id = json.loads((root / "runs.json").read_text())[spec["backend"]]
    options = {"tracking_uri": uri} if store == "mlflow" else {"root": str(root / "local")}
    deadline = time.monotonic() + 60
    while True:
        record = read_run(spec["backend"], run_id, **options)
        if record.status != "running" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    tally = [line.split() for line in (root / "tally.txt").read_text().splitlines() if line.count(" ") == 1]
    times = {int(step): float(t) for t, step in tally}
    landed = {step for step, _ in record.metrics.get("loss", [])}
    lost = sorted(s for s in times if s not in landed)
    first_lost = times[lost[0]] if lost else killed_at
    return {
        "status": record.status,
        "logged": len(times),
        "landed": len(landed),
        "window_ms": max(0.0, (killed_at - first_lost) * 1000),
        "gaps_before_window": sum(1 for s in lost if times[s] < first_lost),
    }


def rss(kind: str, root: Path, points: int) -> dict[str, float]:
    root.mkdir(parents=True)
    script = root / "rss.py"
    script.write_text(RSS)
    spec = {"kind": kind, "uri": sqlite_uri(root / "m.db"), "points": points}
    out = subprocess.run(
        [sys.executable, str(script), json.dumps(spec)],
        env=store_env(root, None),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"rss child failed: {out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(line[7:])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--points", type=int, default=100_000, help="points logged before RSS is read")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "kill_window.json")
    args = parser.parse_args()
    rng = random.Random(7)
    results: dict[str, Any] = {"facts": machine_facts(), "target_window_ms": TARGET_WINDOW_MS, "kill": {}}
    with tempfile.TemporaryDirectory(prefix="tracelet-kill-") as tmp:
        for store in ("local", "mlflow"):
            runs = [kill_once(store, Path(tmp) / f"{store}-{rep}", rng) for rep in range(args.reps)]
            windows = [r["window_ms"] for r in runs]
            results["kill"][store] = {
                "runs": runs,
                "window_ms_median": statistics.median(windows),
                "window_ms_max": max(windows),
            }
            statuses = {r["status"] for r in runs}
            print(
                f"SIGKILL window {store:<7} median {statistics.median(windows):6.1f} ms, "
                f"max {max(windows):6.1f} ms (target {TARGET_WINDOW_MS:.0f} ms); "
                f"statuses {sorted(statuses)}; "
                f"gaps before the window: {sum(r['gaps_before_window'] for r in runs)}"
            )
        ours = rss("tracelet", Path(tmp) / "rss-tracelet", args.points)
        native = rss("native", Path(tmp) / "rss-native", args.points)
    results["rss"] = {**ours, **native, "points": args.points}
    print(
        f"RSS after {args.points} points to mlflow sqlite: trainer {ours['trainer_mib']:.0f} MiB + "
        f"agent {ours['agent_mib']:.0f} MiB, against one native MLflow process {native['native_mib']:.0f} MiB"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

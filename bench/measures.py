"""The suite's measurements, each run in a fresh child process: ``python bench/measures.py --child <spec>``.

Every measurement has a tracelet side and a native side that do the same work against the same
kind of store (``bench/_common.py`` holds the stores' isolation and the native clients). One
process per measurement keeps one store's threads and helper processes (wandb-core, tracelet's
agent) from slowing the next variant, and lets the parent sample a process tree's memory.

Measurements (``spec["measure"]``):

* ``bulk``: log ``points`` over ``keys`` keys (one or several sizes in turn), timed from the
  first log call until the run is closed with everything landed. Native: the store's bulk API.
  The parent samples the process tree's RSS while it runs (the memory measure).
* ``percall``: the store's per-call API, one value per call, each call timed: half floats,
  half 0-d tensors (``.item()`` first, as a user must). Native only.
* ``latency``: tracelet's ``log_metric`` idle (right after start), then while delivery is busy (a
  backlog logged first), each call timed, floats then 0-d tensors; ``start_logging`` and
  ``stop_logging`` timed.
* ``artifacts``: upload a 1 MB file, a 100 MB file and a folder of 1,000 small files, each
  until it has landed; then download each back from the store.
* ``kill``: a trainer logging a point a millisecond is SIGKILLed at a random moment; how long before
  the kill the first lost point was logged (what a SIGKILL costs), and the run's final status.
  tracelet only: a native client has no agent to deliver what the dead trainer handed over.
* ``sweep``: ``runs`` short runs one after the other in this one process, as a hyperparameter
  sweep does, inside a git repository: each opens a run, logs 3 params and ``points`` losses,
  and closes it with everything landed. Timed from before the client is imported (``import
  tracelet``, ``import mlflow``...) to after the last run closed; each run's open and whole
  time too. Native: the store's bulk API, as in ``bulk``.

The training-overhead measure runs ``bench/overhead.py``'s own child (one loop, one variant).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

from _common import (
    PACKAGES,
    backend_counts,
    git_init,
    open_native,
    sqlite_uri,
    tracelet_backend,
    write_child_result,
)
from targets import FILE_BASED  # the stores where tracelet links its snapshot into place

PROJECT = "bench-suite"
MLFLOW_CHUNK = 1000  # MLflow's batch limit: the best its bulk API can do


# -- bulk: throughput, scalability, memory --------------------------------------------------------


def _names(keys: int) -> list[str]:
    return [f"bench/k{k}" for k in range(keys)]


def bulk_tracelet(spec: dict[str, Any], root: Path, run_name: str, points: int, keys: int) -> dict[str, Any]:
    import tracelet

    steps, names, sin, perf = points // keys, _names(keys), math.sin, time.perf_counter
    backend, options = tracelet_backend(spec["store"], root, spec.get("server_url"))
    t0 = perf()
    exp = tracelet.start_logging(exp_name=run_name, project=PROJECT, backend=backend, backend_options=options)
    t1 = perf()
    log = exp.log_metric
    for step in range(steps):
        for k, name in enumerate(names):
            log(name, sin(0.001 * step + k), step)
    t2 = perf()
    report = tracelet.stop_logging(flush_timeout=spec["flush_timeout"])
    t3 = perf()
    counts = backend_counts(report, backend)
    landed = counts["ok"] and counts["delivered"] >= steps * keys
    return _bulk_result(steps * keys, keys, (t0, t1, t2, t3), counts["delivered"], landed, counts["errors"])


def bulk_native(spec: dict[str, Any], root: Path, run_name: str, points: int, keys: int) -> dict[str, Any]:
    steps, names, sin, perf = points // keys, _names(keys), math.sin, time.perf_counter
    t0 = perf()
    run = open_native(
        spec["store"], root, PROJECT, run_name, mlflow_chunk=MLFLOW_CHUNK, server_url=spec.get("server_url")
    )
    t1 = perf()
    for step in range(steps):
        run.log_step(step, {name: sin(0.001 * step + k) for k, name in enumerate(names)})
    t2 = perf()
    run.close()
    t3 = perf()
    # landed: the native close returned without raising
    return _bulk_result(steps * keys, keys, (t0, t1, t2, t3), steps * keys, True, [])


def _bulk_result(
    points: int,
    keys: int,
    t: tuple[float, float, float, float],
    delivered: int,
    landed: bool,
    errors: list[str],
) -> dict[str, Any]:
    """One bulk run's figures from its four clock readings: before open, opened, logged, closed."""
    return {
        "points": points,
        "keys": keys,
        "start_s": t[1] - t[0],
        "log_s": t[2] - t[1],
        "close_s": t[3] - t[2],
        "total_s": t[3] - t[1],
        "delivered": delivered,
        "landed": landed,
        "errors": errors,
    }


def measure_bulk(spec: dict[str, Any]) -> dict[str, Any]:
    """Each size in ``spec["sizes"]`` in turn, one run each, in this one process."""
    root = Path(spec["root"])
    one = bulk_tracelet if spec["kind"] == "tracelet" else bulk_native
    runs = []
    for i, (points, keys) in enumerate(spec["sizes"]):
        runs.append(one(spec, root, f"{spec['run_name']}-{i}", int(points), int(keys)))
    return {"runs": runs}


# -- per-call and latency -------------------------------------------------------------------------


def _percentiles(ns: list[int]) -> dict[str, float]:
    """p50 and p99 in microseconds (nearest rank)."""
    ordered = sorted(ns)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e3

    return {"p50_us": at(0.50), "p99_us": at(0.99), "mean_us": sum(ordered) / len(ordered) / 1e3}


def _tensors(n: int) -> list[Any]:
    import torch

    return [torch.tensor(math.cos(0.01 * i)) for i in range(n)]


def measure_percall(spec: dict[str, Any]) -> dict[str, Any]:
    """The store's per-call API, each call timed: floats, then 0-d tensors through ``.item()``."""
    root, points, keys = Path(spec["root"]), int(spec["points"]), 10
    names, sin, clock = _names(keys), math.sin, time.perf_counter_ns
    half = points // 2
    tensors = _tensors(points - half)
    t0 = time.perf_counter()
    run = open_native(
        spec["store"], root, PROJECT, spec["run_name"], mlflow_chunk=None, server_url=spec.get("server_url")
    )
    start_s = time.perf_counter() - t0
    float_ns, tensor_ns = [], []
    begin = time.perf_counter()
    for i in range(half):
        t = clock()
        run.log_point(names[i % keys], sin(0.001 * i), i // keys)
        float_ns.append(clock() - t)
    for j, value in enumerate(tensors):
        i = half + j
        t = clock()
        run.log_point(names[i % keys], value.item(), i // keys)
        tensor_ns.append(clock() - t)
    logged = time.perf_counter()
    run.close()
    end = time.perf_counter()
    return {
        "points": points,
        "start_s": start_s,
        "log_s": logged - begin,
        "close_s": end - logged,
        "total_s": end - begin,
        "float": _percentiles(float_ns),
        "tensor": _percentiles(tensor_ns),
    }


def measure_latency(spec: dict[str, Any]) -> dict[str, Any]:
    """tracelet's caller-side cost, idle (right after start) and while delivery is busy (a backlog)."""
    root, calls, backlog, keys = Path(spec["root"]), int(spec["calls"]), int(spec["backlog"]), 10
    names, sin, clock = _names(keys), math.sin, time.perf_counter_ns
    tensors = _tensors(calls)
    t0 = time.perf_counter()
    import tracelet

    backend, options = tracelet_backend(spec["store"], root, spec.get("server_url"))
    exp = tracelet.start_logging(
        exp_name=spec["run_name"], project=PROJECT, backend=backend, backend_options=options
    )
    start_s = time.perf_counter() - t0  # with `import tracelet`, as a script pays it
    log = exp.log_metric
    idle_calls = min(calls, 1_000)  # idle: nothing queued yet, the feeder keeps up with these
    idle_float_ns, idle_tensor_ns = [], []
    for i in range(idle_calls):
        t = clock()
        log("idle/float", sin(0.003 * i), i)
        idle_float_ns.append(clock() - t)
    for i, value in enumerate(tensors[:idle_calls]):
        t = clock()
        log("idle/tensor", value, i)
        idle_tensor_ns.append(clock() - t)
    time.sleep(0.2)  # what the idle calls queued has left before the backlog begins
    for i in range(backlog):  # delivery now has work queued: the state the GIL contention shows in
        log(names[i % keys], sin(0.001 * i), i // keys)
    float_ns, tensor_ns = [], []
    base = backlog // keys + 1
    for i in range(calls):
        t = clock()
        log(names[i % keys], sin(0.002 * i), base + i // keys)
        float_ns.append(clock() - t)
    base += calls // keys + 1
    for i, value in enumerate(tensors):
        t = clock()
        log(names[i % keys], value, base + i // keys)
        tensor_ns.append(clock() - t)
    health, health_ns = exp.health, []  # what a training loop pays to ask how delivery goes
    for _ in range(calls):
        t = clock()
        health()
        health_ns.append(clock() - t)
    t1 = time.perf_counter()
    report = tracelet.stop_logging(flush_timeout=spec["flush_timeout"])
    stop_s = time.perf_counter() - t1
    counts = backend_counts(report, backend)
    sent = backlog + 2 * calls
    return {
        "calls": calls,
        "backlog": backlog,
        "start_s": start_s,
        "stop_s": stop_s,
        "float": _percentiles(float_ns),
        "tensor": _percentiles(tensor_ns),
        "idle_float": _percentiles(idle_float_ns),
        "idle_tensor": _percentiles(idle_tensor_ns),
        "health": _percentiles(health_ns),
        "delivered": counts["delivered"],
        "landed": counts["ok"] and counts["delivered"] >= sent + 2 * idle_calls,
    }


# -- artifacts ------------------------------------------------------------------------------------


def make_sources(src: Path, cases: list[dict[str, Any]]) -> None:
    """``src/<label>/``: one file of ``bytes``, or ``files`` files of ``bytes`` each (random, "
    "incompressible)."""
    for case in cases:
        folder = src / case["label"]
        folder.mkdir(parents=True, exist_ok=True)
        if case["files"] == 1:
            (folder / "blob.bin").write_bytes(os.urandom(int(case["bytes"])))
        else:
            for i in range(int(case["files"])):
                (folder / f"f{i:04d}.bin").write_bytes(os.urandom(int(case["bytes"])))


def _case_bytes(case: dict[str, Any]) -> int:
    return int(case["bytes"]) * int(case["files"])


def _source_of(src: Path, case: dict[str, Any]) -> Path:
    folder: Path = src / case["label"]
    return folder / "blob.bin" if case["files"] == 1 else folder


def _reader_options(store: str, root: Path, server_url: str | None) -> dict[str, Any]:
    if store == "mlflow":
        return {"tracking_uri": sqlite_uri(root / "tracelet-mlflow.db")}
    if store == "mlflow_server":
        return {"tracking_uri": server_url}
    if store == "wandb":
        return {"wandb_dir": str(root / "wandb")}
    if store == "local":
        return {"root": str(root / "local")}
    return {}  # clearml: its offline folder under CLEARML_CACHE_DIR


def artifacts_tracelet(spec: dict[str, Any], root: Path, src: Path) -> dict[str, Any]:
    """``log_artifact`` (the caller's blocking time), then ``flush`` (until stored); back with one
    ``read_artifact_tree`` per case; and the most snapshot bytes that waited for the store at once."""
    import tracelet
    from tracelet.testing import read_artifact_tree, read_run

    store, cases, perf = spec["store"], spec["cases"], time.perf_counter
    backend, options = tracelet_backend(store, root, spec.get("server_url"))
    exp = tracelet.start_logging(
        exp_name=spec["run_name"], project=PROJECT, backend=backend, backend_options=options
    )
    if not all(exp.runs.values()):  # open, as the native side's run is before its first call
        raise RuntimeError(f"the run did not open: {exp.runs}")
    block: dict[str, float] = {}
    up: dict[str, float] = {}
    staged: dict[str, int] = {}
    for case in cases:
        t0 = perf()
        exp.log_artifact(_source_of(src, case), artifact_path=case["label"])
        block[case["label"]] = perf() - t0
        if not exp.flush(spec["flush_timeout"]):
            raise RuntimeError(f"artifact {case['label']} not delivered within {spec['flush_timeout']} s")
        up[case["label"]] = perf() - t0
        staged[case["label"]] = exp.staged_bytes_peak(reset=True)
    run_id = exp.runs[backend]
    report = tracelet.stop_logging(flush_timeout=spec["flush_timeout"])
    if not report.ok or run_id is None:
        raise RuntimeError(f"artifacts did not land: {report.format()}")
    # Extra disk: the snapshots that waited, where they are not the store's own copy. The file-based
    # stores link the snapshot into place (a report note says when one was copied instead).
    copied = store not in FILE_BASED or any(r.notes for r in report.backends.values())
    extra = {label: peak if copied else 0 for label, peak in staged.items()}
    reader = _reader_options(store, root, spec.get("server_url"))
    if PACKAGES[store]:  # the reader imports the store's client: not part of the download time
        importlib.import_module(str(PACKAGES[store]))
    # and opens its store once (MLflow checks the sqlite schema): the native side's client is open too
    read_run(backend, run_id, **reader)
    down: dict[str, float] = {}
    for n, case in enumerate(cases):
        t0 = perf()
        fetched = read_artifact_tree(backend, run_id, case["label"], root / "download" / str(n), **reader)
        got = _read_tree(fetched / case["label"])
        down[case["label"]] = perf() - t0
        if got != _case_bytes(case):
            raise RuntimeError(f"{case['label']}: read back {got} bytes, logged {_case_bytes(case)}")
    return {
        "block_s": block,
        "upload_s": up,
        "download_s": down,
        "staged_peak_bytes": staged,
        "extra_disk_bytes": extra,
    }


def artifacts_native(spec: dict[str, Any], root: Path, src: Path) -> dict[str, Any]:
    """Each store's own call for a file and a folder; its own way back where it has one.

    MLflow: ``log_artifact``/``log_artifacts`` and ``download_artifacts``. W&B offline: a
    ``wandb.Artifact`` (``add_file``/``add_dir``, which stage a copy in W&B's cache) and
    ``run.log_artifact``, read back from the copies the artifact's manifest names, as offline
    W&B has no download call. ClearML offline: ``upload_artifact`` (a folder becomes a zip),
    read back from the offline session folder (unzipped), as offline ClearML has no download
    call either. Local: the hand-written equivalent, ``shutil.copy``/``copytree``, read back
    with plain reads. Every native call blocks its caller until stored: blocking = stored.
    """
    store, cases, perf = spec["store"], spec["cases"], time.perf_counter
    # each store's client has its own surface (MlflowClient, wandb Run, ClearML Task): typed as Any here
    run: Any = open_native(
        store, root, PROJECT, spec["run_name"], mlflow_chunk=None, server_url=spec.get("server_url")
    )
    up: dict[str, float] = {}
    wandb_copies: dict[str, list[Path]] = {}
    extra = {case["label"]: 0 for case in cases}  # the stores' own copy is the stored one, but W&B's
    for case in cases:
        source, label = _source_of(src, case), case["label"]
        t0 = perf()
        if store in ("mlflow", "mlflow_server"):
            if source.is_file():
                run.client.log_artifact(run.run_id, str(source), label)
            else:
                run.client.log_artifacts(run.run_id, str(source), label)
        elif store == "wandb":
            import wandb

            artifact = wandb.Artifact(label.replace(" ", "-"), type="model")
            if source.is_file():
                artifact.add_file(str(source))
            else:
                artifact.add_dir(str(source))
            run.run.log_artifact(artifact)
            wandb_copies[label] = [Path(e.local_path) for e in artifact.manifest.entries.values()]
            # add_file/add_dir stage a copy of every file in W&B's cache (wandb/wandb#3823)
            extra[label] = sum(p.stat().st_size for p in wandb_copies[label] if not p.is_relative_to(src))
        elif store == "clearml":
            if not run.task.upload_artifact(name=label, artifact_object=source, wait_on_upload=True):
                raise RuntimeError(f"ClearML refused artifact {label}")
        else:
            target = run.run_dir / "artifacts" / label
            if source.is_file():
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / source.name)
            else:
                shutil.copytree(source, target)
        up[label] = perf() - t0
    session = run.task.get_offline_mode_folder() if store == "clearml" else None
    run.close()
    down: dict[str, float] = {}
    for case in cases:
        label = case["label"]
        t0 = perf()
        if store in ("mlflow", "mlflow_server"):
            got = _read_tree(
                Path(run.client.download_artifacts(run.run_id, label, str(root / "download" / label)))
            )
        elif store == "wandb":
            got = sum(_read_tree(p) for p in wandb_copies[label])
        elif store == "clearml":
            got = _read_clearml(Path(session) if session else root, label, root / "download" / label)
        else:
            got = _read_tree(run.run_dir / "artifacts" / label)
        down[label] = perf() - t0
        if got != _case_bytes(case):
            raise RuntimeError(f"{label}: read back {got} bytes, logged {_case_bytes(case)}")
    return {"block_s": dict(up), "upload_s": up, "download_s": down, "extra_disk_bytes": extra}


def _read_tree(path: Path) -> int:
    """Read every byte of a file or a folder's files (links followed), in chunks; the byte count."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    total = 0
    for file in files:
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
    return total


def _read_clearml(session: Path, label: str, unpack: Path) -> int:
    """An artifact from ClearML's offline session: the file its URI names, or its folder's zip unpacked."""
    task = json.loads((session / "task.json").read_text())
    offline_folder = str(task.get("offline_folder") or "")
    for item in (task.get("execution") or {}).get("artifacts") or []:
        if item.get("key") != label:
            continue
        uri = str(item["uri"])
        found = Path(uri)
        if not found.is_file() and offline_folder and uri.startswith(offline_folder):
            found = session / uri[len(offline_folder) :].lstrip("/\\")
        if found.suffix == ".zip" and zipfile.is_zipfile(found):
            with zipfile.ZipFile(found) as archive:
                archive.extractall(unpack)
            return _read_tree(unpack)
        return _read_tree(found)
    raise FileNotFoundError(f"ClearML offline session {session} holds no artifact {label!r}")


def measure_artifacts(spec: dict[str, Any]) -> dict[str, Any]:
    root = Path(spec["root"])
    src = root / "src"
    make_sources(src, spec["cases"])
    side = artifacts_tracelet if spec["kind"] == "tracelet" else artifacts_native
    return side(spec, root, src)


# -- sweep: many short runs in one process -------------------------------------------------------


def _sweep_params(i: int) -> dict[str, Any]:
    """Run ``i``'s hyperparameters: what a sweep varies."""
    return {"lr": 0.001 * (i + 1), "batch": 32 * (1 + i % 4), "seed": i}


def _loss(i: int, step: int) -> float:
    return 1.0 / (1.0 + 0.01 * step) + 0.01 * math.sin(step + i)


def _sweep_run(points: int, t: tuple[float, float, float], delivered: int, landed: bool) -> dict[str, Any]:
    """One run of a sweep from its three clock readings: before open, opened, closed (all landed)."""
    return {
        "points": points,
        "start_s": t[1] - t[0],
        "run_s": t[2] - t[0],
        "delivered": delivered,
        "landed": landed,
    }


def sweep_tracelet(spec: dict[str, Any], root: Path) -> dict[str, Any]:
    """``start_logging``, 3 params, ``points`` losses, ``stop_logging``: ``runs`` times, one process."""
    if "tracelet" in sys.modules:
        raise RuntimeError("tracelet was imported before the clock started: the total would leave it out")
    runs, points, perf = int(spec["runs"]), int(spec["points"]), time.perf_counter
    backend, options = tracelet_backend(spec["store"], root, spec.get("server_url"))
    done: list[dict[str, Any]] = []
    t0 = perf()
    import tracelet

    imported = perf()
    for i in range(runs):
        a = perf()
        exp = tracelet.start_logging(
            exp_name=f"{spec['run_name']}-{i}", project=PROJECT, backend=backend, backend_options=options
        )
        b = perf()
        exp.log_params(_sweep_params(i))
        log = exp.log_metric
        for step in range(points):
            log("loss", _loss(i, step), step)
        report = tracelet.stop_logging(flush_timeout=spec["flush_timeout"])
        c = perf()
        counts = backend_counts(report, backend)
        done.append(
            _sweep_run(points, (a, b, c), counts["delivered"], counts["ok"] and counts["delivered"] >= points)
        )
    end = perf()
    return {"import_s": imported - t0, "total_s": end - t0, "runs": done}


def sweep_native(spec: dict[str, Any], root: Path) -> dict[str, Any]:
    """The same sweep with the store's own client; its import happens inside the first open."""
    package = PACKAGES[spec["store"]]
    if package is not None and package in sys.modules:
        raise RuntimeError(f"{package} was imported before the clock started: the total would leave it out")
    runs, points, perf = int(spec["runs"]), int(spec["points"]), time.perf_counter
    done: list[dict[str, Any]] = []
    import_s = 0.0
    t0 = perf()
    for i in range(runs):
        a = perf()
        run = open_native(
            spec["store"],
            root,
            PROJECT,
            f"{spec['run_name']}-{i}",
            mlflow_chunk=MLFLOW_CHUNK,
            server_url=spec.get("server_url"),
        )
        b = perf()
        run.log_params(_sweep_params(i))
        log = run.log_step
        for step in range(points):
            log(step, {"loss": _loss(i, step)})
        run.close()
        c = perf()
        if i == 0:  # the first open imports the client
            import_s = run.import_s
        # landed: the native close returned without raising
        done.append(_sweep_run(points, (a, b, c), points, True))
    end = perf()
    return {"import_s": import_s, "total_s": end - t0, "runs": done}


def measure_sweep(spec: dict[str, Any]) -> dict[str, Any]:
    """A git repository around the working directory first (tracelet reads it), then the sweep."""
    root = Path(spec["root"])
    git = git_init(root) if spec.get("git", True) else False
    os.chdir(root)  # where the suite starts the child anyway: inside that repository
    side = sweep_tracelet if spec["kind"] == "tracelet" else sweep_native
    result = side(spec, root)
    return {**result, "landed": all(r["landed"] for r in result["runs"]), "git": git}


# -- kill: what a SIGKILL of the trainer loses -------------------------------------------------------

KILLED_TRAINER = """
import json, sys, time
spec = json.loads(sys.argv[1])
import tracelet
exp = tracelet.start_logging(exp_name=spec["run_name"], project=spec["project"], backend=spec["backend"],
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


def measure_kill(spec: dict[str, Any]) -> dict[str, Any]:
    """A trainer logging a point a millisecond, its process group SIGKILLed at a random moment.

    The agent, in its own session, delivers what it received and closes the run ``killed``. The
    *window* is how long before the kill the first point that did not land was logged: what a
    SIGKILL loses. ``gaps`` counts points lost *before* that one (none may be).
    """
    import random
    import signal
    import subprocess

    from tracelet.testing import read_run

    root = Path(spec["root"])
    backend, options = tracelet_backend(spec["store"], root, spec.get("server_url"))
    tally_path, runs_path, script = root / "tally.txt", root / "runs.json", root / "trainer.py"
    script.write_text(KILLED_TRAINER)
    child = {
        "backend": backend,
        "options": options,  # already {backend: {...}}
        "project": PROJECT,
        "run_name": spec["run_name"],
    }
    child.update(runs=str(runs_path), tally=str(tally_path))
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps(child)], cwd=root, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not tally_path.exists() or tally_path.stat().st_size < 100:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"the trainer did not start (exit {proc.poll()})")
        time.sleep(0.05)
    time.sleep(random.Random(spec["root"]).uniform(1.5, 3.0))  # a moment of its own per child
    killed_at = time.time()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_id = json.loads(runs_path.read_text())[backend]
    reader = _reader_options(spec["store"], root, spec.get("server_url"))
    deadline = time.monotonic() + 90
    while True:  # the agent drains, then closes the run
        record = read_run(backend, run_id, **reader)
        if record.status != "running" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    lines = [line.split() for line in tally_path.read_text().splitlines() if line.count(" ") == 1]
    times = {int(step): float(at) for at, step in lines}
    landed = {step for step, _ in record.metrics.get("loss", [])}
    lost = sorted(s for s in times if s not in landed)
    first_lost = times[lost[0]] if lost else killed_at
    return {
        "status": record.status,
        "logged": len(times),
        "delivered": len(landed),
        "window_ms": max(0.0, (killed_at - first_lost) * 1000),
        "gaps": sum(1 for s in lost if times[s] < first_lost),
        "landed": record.status == "killed",
    }


# -- copy: tracelet copy against doing it by hand ------------------------------------------------------


def _copy_address(store: str, root: Path, run_id: str | None) -> str:
    """The ``tracelet copy`` address of the bench's store under ``root`` (a run's, with ``run_id``)."""
    options = _reader_options(store, root, None)
    if store == "mlflow":
        return f"mlflow:{options['tracking_uri']}" + (f"#{run_id}" if run_id else "")
    if store == "wandb":
        if run_id is None:
            return f"wandb:{options['wandb_dir']}"
        (folder,) = {p.parent for p in Path(options["wandb_dir"]).rglob(f"run-{run_id}.wandb")}
        return f"wandb:{folder}"
    raise ValueError(f"the copy measure copies between mlflow and wandb, not {store!r}")


def measure_copy(spec: dict[str, Any]) -> dict[str, Any]:
    """One run of ``points`` points over 10 keys, logged to ``source`` (not timed), then moved to ``target``.

    ``tracelet``: ``copy_run(..., verify=False)``, then its verification timed apart. ``byhand``: what
    a user would write without it: ``read_run`` of the source, then every point through
    ``log_metric`` to a tracelet run on the target, step by step (keys of a step side by side, as
    a W&B row wants them), and ``stop_logging()``. Both are timed from the caller's side.
    """
    import tracelet
    from tracelet.testing import read_run

    root, points, keys = Path(spec["root"]), int(spec["points"]), 10
    source, target = spec["source"], spec["target"]
    src_root, dst_root = root / "src", root / "dst"
    backend, options = tracelet_backend(source, src_root)
    exp = tracelet.start_logging(
        exp_name=spec["run_name"], project=PROJECT, backend=backend, backend_options=options
    )
    names = _names(keys)
    for i in range(points):
        exp.log_metric(names[i % keys], math.sin(0.001 * i), i // keys)
    assert tracelet.stop_logging(flush_timeout=spec["flush_timeout"]).ok
    run_id = exp.runs[backend]
    assert run_id is not None
    result: dict[str, Any] = {"points": points, "source": source, "target": target}
    t0 = time.perf_counter()
    if spec["kind"] == "tracelet":
        from tracelet.copying import copy_run
        from tracelet.testing.equivalence import compare

        copied = copy_run(
            _copy_address(source, src_root, run_id), _copy_address(target, dst_root, None), verify=False
        )
        result["copy_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        original = read_run(source, run_id, **_reader_options(source, src_root, None))
        held = read_run(target, copied.target.rpartition("#")[2], **_reader_options(target, dst_root, None))
        result["verify_s"] = time.perf_counter() - t1
        result["landed"] = copied.new_points == points and compare(original, held) == []
        return result
    record = read_run(source, run_id, **_reader_options(source, src_root, None))
    to_backend, to_options = tracelet_backend(target, dst_root)
    copy = tracelet.start_logging(
        exp_name=record.run_name, project=record.project, backend=to_backend, backend_options=to_options
    )
    log = copy.log_metric
    for points_of_a_step in zip(*record.metrics.values(), strict=True):
        for name, (step, value) in zip(record.metrics, points_of_a_step, strict=True):
            log(name, value, step)
    report = tracelet.stop_logging(flush_timeout=spec["flush_timeout"])
    result["copy_s"] = time.perf_counter() - t0
    result["landed"] = (
        report.ok and backend_counts(report, to_backend)["delivered"] >= points
    )  # + system/ samples
    return result


MEASURES = {
    "bulk": measure_bulk,
    "percall": measure_percall,
    "latency": measure_latency,
    "artifacts": measure_artifacts,
    "sweep": measure_sweep,
    "kill": measure_kill,
    "copy": measure_copy,
}


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] != "--child":
        print("usage: python bench/measures.py --child <spec json> (run by bench/suite.py)", file=sys.stderr)
        return 2
    spec = json.loads(sys.argv[2])
    write_child_result(spec, MEASURES[spec["measure"]](spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())

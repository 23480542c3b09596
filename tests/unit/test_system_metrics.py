"""System metrics: what the sampler reads, whom it leaves out, NVML (a fake ``pynvml``), and the runs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import tracelet
from tests.unit.fakes import run_view, wait_for
from tracelet.collectors.system_metrics import SystemSampler
from tracelet.config import resolve

BURN = "import time\nend = time.time() + 60\nwhile time.time() < end: pass\n"
SLEEP = "import time; time.sleep(60)"


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def _spawn(children: list[subprocess.Popen[bytes]], code: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", code], **kwargs)
    children.append(proc)
    return proc


def _sampler(pid: int | None = None, **kwargs: Any) -> SystemSampler:
    return SystemSampler(
        pid or os.getpid(), interval=1.0, started=time.time(), emit=lambda items: None, **kwargs
    )


def test_a_busy_child_counts_as_the_training_process(children: list[subprocess.Popen[bytes]]) -> None:
    """A DataLoader worker is the trainer's child: its CPU is the training process's CPU."""
    sampler = _sampler()
    _spawn(children, BURN)
    time.sleep(1.5)
    values = sampler.sample()
    assert values["system/process/cpu_percent"] > 30  # a core, busy (shared with whatever else runs here)
    assert values["system/process/rss_mb"] > psutil.Process().memory_info().rss / 2**20
    assert values["system/process/threads"] >= 2  # this process and the child's
    assert 0 <= values["system/host/cpu_percent"] <= 100
    assert values["system/host/memory_used_mb"] > 0
    for key in ("disk_read_mb_s", "disk_write_mb_s", "network_sent_mb_s", "network_received_mb_s"):
        assert values.get(f"system/host/{key}", 0.0) >= 0.0
    assert all(name.startswith("system/") for name in values)


def test_a_child_that_ends_during_the_scan_is_skipped(
    children: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child listed by the scan and gone before it is opened (a DataLoader worker at an epoch's end):
    the sample leaves it out, and neither the sampler's start nor the sample fails (the start did)."""
    gone = _spawn(children, SLEEP)
    sampler = _sampler()
    opened = sampler._process

    def vanishing(pid: int) -> Any:
        if pid == gone.pid:
            raise psutil.NoSuchProcess(pid)
        return opened(pid)

    monkeypatch.setattr(sampler, "_process", vanishing)
    tree = {p.pid for p in sampler.training_tree()}
    assert os.getpid() in tree
    assert gone.pid not in tree
    assert sampler.sample()["system/process/rss_mb"] > 0


def test_the_agents_tree_and_wandb_core_are_left_out(
    children: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """The sampler's own process (the agent) and a store's helper burn CPU: neither is training."""
    agent = _spawn(children, BURN)
    core = tmp_path / "wandb-core"
    core.symlink_to(sys.executable)
    helper = _spawn(children, BURN, executable=str(core))  # named wandb-core, as W&B's service is
    wait_for(lambda: psutil.Process(helper.pid).name() == "wandb-core", what="the helper's name")
    sampler = _sampler(exclude_pid=agent.pid)
    tree = {p.pid for p in sampler.training_tree()}
    assert os.getpid() in tree
    assert agent.pid not in tree
    assert helper.pid not in tree
    time.sleep(1.2)
    assert sampler.sample()["system/process/cpu_percent"] < 40  # this test process idles meanwhile


def test_the_schedule_steps_by_whole_seconds_since_the_run_began() -> None:
    samples: list[list[tuple[Any, ...]]] = []
    sampler = SystemSampler(os.getpid(), interval=1.0, started=time.time() - 5.0, emit=samples.append)
    sampler.start()
    wait_for(lambda: len(samples) >= 3, what="three samples")
    sampler.stop()
    steps = [items[0][3] for items in samples]
    assert steps[:3] in ([6, 7, 8], [5, 6, 7]), steps  # 5 s before it started, one sample a second
    assert all(item[0] == "metric" and item[3] == items[0][3] for items in samples for item in items)


def test_a_failing_sampler_is_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tracelet")

    def emit(items: list[tuple[Any, ...]]) -> None:
        raise OSError("nowhere to put it")

    sampler = SystemSampler(os.getpid(), interval=1.0, started=time.time(), emit=emit).start()
    wait_for(lambda: caplog.records, what="the warning")
    time.sleep(1.5)  # it stopped: no second warning
    sampler.stop()
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "system metrics stop here" in caplog.records[0].getMessage()


# -- NVML, without a GPU: a fake pynvml ----------------------------------------------------------
class _Proc:
    def __init__(self, pid: int) -> None:
        self.pid = pid


def _fake_nvml(owner: int, fail_after: int | None = None) -> types.ModuleType:
    """Two GPUs: 0 runs ``owner``, 1 runs some other process."""
    nvml = types.ModuleType("pynvml")
    calls = {"n": 0}
    state: dict[str, Any] = {"shut": False}

    def util(handle: int) -> Any:
        calls["n"] += 1
        if fail_after is not None and calls["n"] > fail_after:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        return types.SimpleNamespace(gpu=40 + handle)

    nvml.NVML_TEMPERATURE_GPU = 0  # type: ignore[attr-defined]
    nvml.nvmlInit = lambda: None  # type: ignore[attr-defined]
    nvml.nvmlShutdown = lambda: state.update(shut=True)  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCount = lambda: 2  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetComputeRunningProcesses = lambda h: [_Proc(owner if h == 0 else 1)]  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetGraphicsRunningProcesses = lambda h: []  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetUtilizationRates = util  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=(3 + h) << 30)  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetPowerUsage = lambda h: 150_000  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetTemperature = lambda h, sensor: 61  # type: ignore[attr-defined]
    nvml.state = state  # type: ignore[attr-defined]
    return nvml


def test_gpu_metrics_only_for_the_gpus_the_training_process_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(os.getpid()))
    values = _sampler().sample()
    gpu = {k: v for k, v in values.items() if k.startswith("system/gpu")}
    assert gpu == {
        "system/gpu0/utilization_percent": 40.0,
        "system/gpu0/memory_used_mb": 3 * 1024.0,
        "system/gpu0/power_w": 150.0,
        "system/gpu0/temperature_c": 61.0,
    }


def test_nvml_that_fails_mid_run_is_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tracelet")
    nvml = _fake_nvml(os.getpid(), fail_after=1)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    sampler = _sampler()
    assert "system/gpu0/utilization_percent" in sampler.sample()
    second = sampler.sample()
    third = sampler.sample()
    assert not any(k.startswith("system/gpu") for k in (*second, *third))
    assert "system/process/cpu_percent" in third  # the rest goes on
    assert [r.getMessage() for r in caplog.records] == [
        "tracelet: GPU metrics stop here: NVML failed (RuntimeError('NVML_ERROR_GPU_IS_LOST'))"
    ]
    assert nvml.state["shut"]  # type: ignore[attr-defined]


def test_without_nvml_there_are_no_gpu_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # an import of it raises ImportError
    values = _sampler().sample()
    assert not any(k.startswith("system/gpu") for k in values)


# -- in a run, both delivery modes ---------------------------------------------------------------
def _run_logging_loss(monkeypatch: pytest.MonkeyPatch, system_metrics: str) -> tracelet.Experiment:
    """A run with system metrics on or off, sampled every second, that has logged one point."""
    monkeypatch.setenv("TRACELET_SYSTEM_METRICS", system_metrics)
    monkeypatch.setenv("TRACELET_SYSTEM_INTERVAL", "1")
    exp = tracelet.start_logging(backend="memory")
    exp.log_metric("loss", 0.5, 0)
    return exp


@pytest.mark.usefixtures("delivery_mode")
def test_a_run_records_system_metrics_into_its_store(monkeypatch: pytest.MonkeyPatch) -> None:
    began = time.monotonic()
    exp = _run_logging_loss(monkeypatch, "1")

    def sampled() -> int:
        return sum(m.name == "system/process/cpu_percent" for m in run_view(exp.runs["memory"]).metrics)

    wait_for(lambda: sampled() >= 2, what="two samples delivered")  # one a second (a busy machine: later)
    waited = time.monotonic() - began
    report = tracelet.stop_logging(flush_timeout=30)
    assert report.ok, report.format()
    metrics = run_view(exp.runs["memory"]).metrics
    cpu = [m for m in metrics if m.name == "system/process/cpu_percent"]
    assert [m.step for m in cpu] == sorted({m.step for m in cpu})  # whole seconds, none twice
    # whole seconds (floored) since the run began, at the first sample: at least one interval, and less
    # than the time the test waited for the second sample
    assert 1 <= cpu[0].step <= waited, (cpu[0].step, waited)
    names = {m.name for m in metrics}
    assert {"system/process/rss_mb", "system/process/threads", "system/host/cpu_percent"} <= names
    assert next(m for m in metrics if not m.name.startswith("system/")).name == "loss"
    assert report["memory"].sent == len(metrics)  # the samples are events of the run, counted


@pytest.mark.usefixtures("delivery_mode")
def test_system_metrics_off_records_none(monkeypatch: pytest.MonkeyPatch) -> None:
    exp = _run_logging_loss(monkeypatch, "0")
    time.sleep(2.2)
    tracelet.stop_logging(flush_timeout=30)
    assert [m.name for m in run_view(exp.runs["memory"]).metrics] == ["loss"]


def test_the_system_prefix_is_reserved_for_what_tracelet_samples() -> None:
    exp = tracelet.start_logging(backend="memory")
    with pytest.raises(ValueError, match=r"'system/gpu0/utilization_percent'.*reserved"):
        exp.log_metric("system/gpu0/utilization_percent", 1.0, 0)
    with pytest.raises(ValueError, match=r"'system/x'.*reserved"):
        exp.log_metrics({"ok": 1.0, "system/x": 2.0}, 0)
    exp.log_metric("systematic/error", 1.0, 0)  # only the prefix itself
    tracelet.stop_logging()
    assert [m.name for m in run_view(exp.runs["memory"]).metrics] == ["systematic/error"]


@pytest.mark.parametrize(
    ("value", "error"),
    [("0.5", "TRACELET_SYSTEM_INTERVAL='0.5' is below 1 second"), ("soon", "not a number of seconds")],
)
def test_a_bad_interval_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str, error: str) -> None:
    monkeypatch.setenv("TRACELET_SYSTEM_METRICS", "1")
    monkeypatch.setenv("TRACELET_SYSTEM_INTERVAL", value)
    with pytest.raises(ValueError, match=error):
        resolve(exp_name=None, project=None, backend=None, backend_options=None)
    with pytest.raises(ValueError, match=error):
        tracelet.start_logging(backend="memory")
    assert tracelet.get_active_experiment() is None


def test_a_fully_busy_host_is_at_most_100_percent() -> None:
    """Counters whose rounding put a fully busy host above 100 % (the idle time did not move)."""
    from tracelet.collectors.system_metrics import busy_percent

    before, after, idle = 513218.55871960154, 513224.08388306526, 138199.22530525367
    assert 100.0 * ((after - idle) - (before - idle)) / (after - before) > 100  # what rounding does
    assert busy_percent((after - idle) - (before - idle), after - before) == 100.0
    assert busy_percent(0.0, 2.0) == 0.0
    assert busy_percent(1.0, 4.0) == 25.0

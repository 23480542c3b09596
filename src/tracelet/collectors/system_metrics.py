"""System metrics: how the training process and the machine were used while the run went on.

MLflow samples them from a thread in the training process, ClearML too; W&B from its own
helper process. tracelet samples from its delivery agent, which is a separate process:
it reads the trainer from outside (``psutil``), so the training thread does no work at all
for it. In thread mode (``TRACELET_DELIVERY=thread``) there is no agent, and a daemon
thread of the training process samples instead: it costs that process about a millisecond
of CPU per sample (one ``psutil`` pass over the process tree and the machine's counters),
and a few GIL switches.

What is sampled, every ``TRACELET_SYSTEM_INTERVAL`` seconds (default 10, as MLflow's):

* the training process and its children (DataLoader workers), leaving out the delivery
  agent's own process tree and ``wandb-core``: ``system/process/cpu_percent`` (100 = one
  full core), ``system/process/rss_mb``, ``system/process/threads``;
* the machine: ``system/host/cpu_percent`` (100 = every core), ``system/host/memory_used_mb``,
  ``system/host/disk_read_mb_s``, ``system/host/disk_write_mb_s``,
  ``system/host/network_sent_mb_s``, ``system/host/network_received_mb_s``;
* per GPU the training process uses, when NVML is there (``pip install tracelet[gpu]``):
  ``system/gpu<i>/utilization_percent``, ``system/gpu<i>/memory_used_mb``,
  ``system/gpu<i>/power_w``, ``system/gpu<i>/temperature_c``.

Each sample's step is the whole seconds since the run began (the samples are taken on a
fixed schedule, so two never share a step). ``system/`` is the prefix MLflow gives its own
system metrics; it is reserved: ``log_metric`` refuses a name that starts with it. A
sampler that fails says so once, at WARNING, and the run goes on without it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tracelet.validation import SYSTEM_PREFIX as PREFIX

log = logging.getLogger("tracelet.system")
_MB = float(1 << 20)
#: processes of the training tree that are not training: the stores' own helper (W&B)
_NOT_TRAINING = ("wandb-core",)


def busy_percent(busy: float, total: float) -> float:
    """``busy`` as a percentage of ``total``, within 0..100.

    Both are differences of large CPU-time counters (busy is total minus idle), and their rounding
    can put a fully busy host a hair above 100 % (100.00000000024 was seen, with psutil 5.9).
    """
    return min(100.0, max(0.0, 100.0 * busy / total))


@dataclass
class _Counters:
    """What the previous sample read: the rates are differences against it."""

    when: float
    host_busy: float
    host_total: float
    disk: tuple[int, int] | None
    net: tuple[int, int] | None
    #: per (pid, create time): CPU seconds (user + system) the process had used
    cpu: dict[tuple[int, float], float] = field(default_factory=dict)


class Gpus:
    """NVML, when ``nvidia-ml-py`` is installed and a driver answers; otherwise nothing."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        nvml.nvmlInit()
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]

    @classmethod
    def load(cls) -> Gpus | None:
        try:
            import pynvml  # from nvidia-ml-py: tracelet[gpu]
        except ImportError:
            return None
        try:
            return cls(pynvml)
        except Exception as exc:  # no driver, no device: a CPU machine with the package installed
            log.debug("tracelet: NVML is installed but does not answer (%r); no GPU metrics", exc)
            return None

    def _pids(self, handle: Any) -> set[int]:
        pids: set[int] = set()
        for query in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            try:
                pids.update(p.pid for p in getattr(self.nvml, query)(handle))
            except Exception:  # not supported on this device or driver
                continue
        return pids

    def sample(self, training: set[int]) -> dict[str, float]:
        """The GPUs any process of ``training`` runs on, by NVML index."""
        nvml = self.nvml
        values: dict[str, float] = {}
        for index, handle in enumerate(self.handles):
            if not self._pids(handle) & training:
                continue
            key = f"{PREFIX}gpu{index}/"
            values[key + "utilization_percent"] = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            values[key + "memory_used_mb"] = nvml.nvmlDeviceGetMemoryInfo(handle).used / _MB
            with contextlib.suppress(Exception):  # not every board reports power and temperature
                values[key + "power_w"] = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            with contextlib.suppress(Exception):
                values[key + "temperature_c"] = float(
                    nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
                )
        return values

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.nvml.nvmlShutdown()


class SystemSampler:
    """Samples ``trainer_pid``'s tree and the machine on a fixed schedule, on a daemon thread.

    ``exclude_pid``: a process whose whole tree is not the trainer's (the agent that
    samples). ``emit`` takes each sample as plain metric tuples; it must not block.
    """

    def __init__(
        self,
        trainer_pid: int,
        *,
        interval: float,
        started: float,
        emit: Callable[[list[tuple[Any, ...]]], None],
        exclude_pid: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        import psutil  # a dependency of tracelet; imported here, where sampling starts

        self._psutil = psutil
        self.trainer = psutil.Process(trainer_pid)
        self.exclude_pid = exclude_pid
        self.interval = interval
        self.started = started
        self.emit = emit
        self.clock = clock
        self._processes: dict[int, Any] = {trainer_pid: self.trainer}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.gpus = Gpus.load()
        self._last = self._read_counters()
        self._read_cpu(self.training_tree(), self._last, self._last)

    # -- one sample ----------------------------------------------------------------------------
    def _process(self, pid: int) -> Any:
        """The same ``psutil.Process`` for a pid each time (it keeps the process's identity)."""
        process = self._processes.get(pid)
        if process is None:
            process = self._processes[pid] = self._psutil.Process(pid)
        return process

    def training_tree(self) -> list[Any]:
        """The trainer and its descendants, without the excluded tree and the stores' helpers.

        One scan of the process table (``children(recursive=True)``), then, for the few
        descendants, their parent and name: a process below the excluded one (the agent)
        or below a helper (``wandb-core``) is left out.
        """
        psutil = self._psutil
        try:
            descendants = self.trainer.children(recursive=True)
        except psutil.Error:
            descendants = []
        parent: dict[int, int] = {}
        skip: set[int] = set() if self.exclude_pid is None else {self.exclude_pid}
        for child in descendants:
            try:
                parent[child.pid] = child.ppid()
                if child.name() in _NOT_TRAINING:
                    skip.add(child.pid)
            except psutil.Error:  # it ended meanwhile
                skip.add(child.pid)

        def left_out(pid: int) -> bool:
            while pid in parent:
                if pid in skip:
                    return True
                pid = parent[pid]
            return pid in skip

        tree = [self.trainer]
        for child in descendants:
            if not left_out(child.pid):
                try:
                    tree.append(self._process(child.pid))
                except psutil.Error:  # it ended since the scan (a DataLoader worker at an epoch's end)
                    continue
        live = {p.pid for p in tree}
        for pid in [pid for pid in self._processes if pid not in live]:
            del self._processes[pid]
        return tree

    def _read_counters(self) -> _Counters:
        psutil = self._psutil
        times = psutil.cpu_times()
        total = float(sum(times))
        idle = times.idle + getattr(times, "iowait", 0.0)
        disk = psutil.disk_io_counters()
        net = psutil.net_io_counters()
        return _Counters(
            when=time.monotonic(),
            host_busy=total - idle,
            host_total=total,
            disk=(disk.read_bytes, disk.write_bytes) if disk is not None else None,
            net=(net.bytes_sent, net.bytes_recv) if net is not None else None,
        )

    def _read_cpu(self, tree: list[Any], last: _Counters, now: _Counters) -> tuple[float, int, int]:
        """CPU seconds ``tree`` used since ``last`` (recorded in ``now``), its RSS bytes and threads."""
        psutil = self._psutil
        cpu_used = 0.0
        rss = threads = 0
        for process in tree:
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    used = times.user + times.system
                    key = (process.pid, process.create_time())
                    rss += process.memory_info().rss
                    threads += process.num_threads()
            except psutil.Error:  # it ended meanwhile
                continue
            before = last.cpu.get(key)
            if before is None:  # first seen: its CPU time counts if it started since the last sample
                before = 0.0 if key[1] >= time.time() - (now.when - last.when) - 1.0 else used
            cpu_used += max(0.0, used - before)
            now.cpu[key] = used
        return cpu_used, rss, threads

    def sample(self) -> dict[str, float]:
        """One sample: every ``system/`` value, as of now (rates since the previous sample)."""
        psutil = self._psutil
        now = self._read_counters()
        last = self._last
        elapsed = max(now.when - last.when, 1e-6)
        values: dict[str, float] = {}
        cpu_used, rss, threads = self._read_cpu(self.training_tree(), last, now)
        values[PREFIX + "process/cpu_percent"] = 100.0 * cpu_used / elapsed
        values[PREFIX + "process/rss_mb"] = rss / _MB
        values[PREFIX + "process/threads"] = float(threads)
        host_total = now.host_total - last.host_total
        if host_total > 0:
            values[PREFIX + "host/cpu_percent"] = busy_percent(now.host_busy - last.host_busy, host_total)
        values[PREFIX + "host/memory_used_mb"] = psutil.virtual_memory().used / _MB
        for prefix, new, old, names in (
            ("disk", now.disk, last.disk, ("read", "write")),
            ("network", now.net, last.net, ("sent", "received")),
        ):
            if new is not None and old is not None:
                for name, a, b in zip(names, new, old, strict=True):
                    values[f"{PREFIX}host/{prefix}_{name}_mb_s"] = max(0, a - b) / _MB / elapsed
        if self.gpus is not None:
            try:
                values.update(self.gpus.sample({p.pid for p in self._processes.values()}))
            except Exception as exc:
                log.warning("tracelet: GPU metrics stop here: NVML failed (%r)", exc)
                self.gpus.close()
                self.gpus = None
        self._last = now
        return values

    # -- the schedule --------------------------------------------------------------------------
    def start(self) -> SystemSampler:
        self._thread = threading.Thread(target=self._run, name="tracelet-system-metrics", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self.gpus is not None:
            self.gpus.close()

    def _run(self) -> None:
        begin = time.monotonic()
        offset = self.clock() - self.started  # seconds since the run began, at ``begin``
        slot = 1
        while True:
            due = begin + slot * self.interval
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            try:
                values = self.sample()
            except Exception as exc:
                log.warning("tracelet: system metrics stop here: sampling failed (%r)", exc)
                return
            step = int(offset + slot * self.interval)
            stamp = self.clock()
            try:
                self.emit(metric_tuples(values, step, stamp))
            except Exception as exc:
                log.warning("tracelet: system metrics stop here: %r", exc)
                return
            # a sample that came late (a busy machine) skips the slots it missed, never doubles one
            slot = max(slot + 1, int((time.monotonic() - begin) / self.interval) + 1)


def metric_tuples(values: dict[str, float], step: int, timestamp: float) -> list[tuple[Any, ...]]:
    """The raw metric events of one sample (the tuples ``Experiment.log_metric`` would put)."""
    return [("metric", name, value, step, timestamp) for name, value in values.items()]


def start_sampler(
    trainer_pid: int,
    interval: float | None,
    started: float,
    emit: Callable[[list[tuple[Any, ...]]], None],
    exclude_pid: int | None = None,
) -> SystemSampler | None:
    """A running sampler; ``None`` when system metrics are off (``interval=None``) or cannot start.

    A sampler that cannot start is one WARNING: the run goes on without system metrics.
    """
    if interval is None:
        return None
    try:
        return SystemSampler(
            trainer_pid, interval=interval, started=started, emit=emit, exclude_pid=exclude_pid
        ).start()
    except Exception as exc:
        log.warning("tracelet: no system metrics for this run: %r", exc)
        return None

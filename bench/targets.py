"""What tracelet promises, as one table of targets over the suite's figures, and how each is judged.

Every target names one figure of ``results.json`` (a measure, a figure name, the stores it applies to)
and a limit. It is judged on the figure's median over the repetitions. The report shows every verdict,
and the trend compares them with the baseline's: ``--strict`` fails on a target the baseline met (or did
not measure) and this run misses; a target the baseline already missed is marked, not failed.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ALL_STORES = ("mlflow", "mlflow_server", "wandb", "clearml", "local")
THIRD_PARTY = ("mlflow", "mlflow_server", "wandb", "clearml")
#: the stores that keep files on this filesystem (where a second copy on disk is avoidable)
FILE_BASED = ("mlflow", "wandb", "local")


@dataclass(frozen=True)
class Target:
    """A figure's median must stay ``at_most`` (or ``at_least``) a limit, on each of ``stores``."""

    measure: str
    figure: str
    label: str
    at_most: float | None = None
    at_least: float | None = None
    stores: tuple[str, ...] = ALL_STORES
    unit: str = ""

    def met(self, value: float) -> bool:
        if self.at_most is not None and value > self.at_most:
            return False
        return not (self.at_least is not None and value < self.at_least)

    @property
    def where(self) -> str:
        """Which stores it applies to, as the report says it ("" for every store)."""
        if self.stores == ALL_STORES:
            return ""
        return "not local" if self.stores == THIRD_PARTY else f"{', '.join(self.stores)} only"

    @property
    def scope(self) -> str:
        """The limit and where it applies: ``≥ 0.9×, not local``."""
        return ", ".join(filter(None, (self.limit, self.where)))

    @property
    def limit(self) -> str:
        """``≤ 20 ms``, ``≥ 0.9×``: the target as the report writes it."""
        sign, value = ("≤", self.at_most) if self.at_most is not None else ("≥", self.at_least)
        return f"{sign} {value:g}{(' ' + self.unit) if self.unit not in ('', '×') else self.unit}"


#: Every target of the benchmarks, and only here. The fast loop is ~0.5 ms a step, 5 metrics a step.
TARGETS: tuple[Target, ...] = (
    Target("overhead", "tracelet fast loop", "training overhead, fast loop", at_most=5.0, unit="%"),
    Target(
        "throughput", "tracelet ÷ native bulk", "throughput, tracelet ÷ native bulk", at_least=0.95, unit="×"
    ),
    Target("latency", "tracelet idle float p50", "`log_metric` float p50, idle", at_most=2.0, unit="µs"),
    Target(
        "latency", "tracelet idle tensor p50", "`log_metric` 0-d tensor p50, idle", at_most=5.0, unit="µs"
    ),
    Target("latency", "tracelet float p50", "`log_metric` float p50, delivery busy", at_most=1.0, unit="µs"),
    Target("latency", "tracelet health() p50", "`exp.health()` p50", at_most=2.0, unit="µs"),
    Target(
        "latency", "tracelet tensor p50", "`log_metric` 0-d tensor p50, delivery busy", at_most=3.0, unit="µs"
    ),
    Target(
        "latency",
        "native ÷ tracelet float p50",
        "native per-call API ÷ `log_metric`, float p50",
        at_least=50.0,
        stores=THIRD_PARTY,
        unit="×",
    ),
    Target(
        "kill",
        "tracelet SIGKILL window",
        "SIGKILL: the oldest point lost was logged",
        at_most=50.0,
        unit="ms",
    ),
    Target("kill", "points lost before the window", "SIGKILL: points lost before that", at_most=0.0),
    Target(
        "copy",
        "tracelet copy ÷ by hand",
        "`tracelet copy` into this store (from the other) ÷ read_run + log_metric by hand",
        at_least=0.9,
        stores=("mlflow", "wandb"),
        unit="×",
    ),
    Target("sweep", "tracelet start_logging p50", "sweep: `start_logging` p50", at_most=20.0, unit="ms"),
    Target("sweep", "tracelet start_logging p99", "sweep: `start_logging` p99", at_most=50.0, unit="ms"),
    Target(
        "sweep",
        "extra per run over native",
        "sweep: a run after the first, tracelet − native",
        at_most=25.0,
        unit="ms",
    ),
    Target(
        "sweep",
        "ratio native/tracelet total",
        "sweep: native ÷ tracelet, whole sweep",
        at_least=0.9,
        stores=THIRD_PARTY,
        unit="×",
    ),
    Target(
        "sweep",
        "tracelet whole sweep per run",
        "sweep: whole sweep ÷ runs (local has no native client)",
        at_most=25.0,
        stores=("local",),
        unit="ms",
    ),
    *(
        target
        for size in ("100MB", "1GB")
        for target in (
            Target(
                "artifacts",
                f"block {size} tracelet ÷ native",
                f"artifact {size}: the caller blocked, tracelet ÷ native",
                at_most=1.1,
                unit="×",
            ),
            Target(
                "artifacts",
                f"upload {size} tracelet ÷ native",
                f"artifact {size}: until stored, speed tracelet ÷ native",
                at_least=0.9,
                unit="×",
            ),
            Target(
                "artifacts",
                f"download {size} tracelet ÷ native",
                f"artifact {size}: read back, speed tracelet ÷ native",
                at_least=0.9,
                unit="×",
            ),
            Target(
                "artifacts",
                f"extra disk {size} tracelet",
                f"artifact {size}: extra disk at peak, of the file",
                at_most=10.0,
                stores=FILE_BASED,
                unit="%",
            ),
        )
    ),
    *(
        Target(
            "artifacts",
            f"stored {case} tracelet − native",
            f"artifact {case}: until stored, tracelet − native",
            at_most=20.0,
            unit="ms",
        )
        for case in ("1MB", "1000 files")
    ),
    Target(
        "artifacts",
        "upload 1000 files tracelet ÷ native",
        "1,000-file folder: until stored, speed tracelet ÷ native",
        at_least=0.9,
        unit="×",
    ),
)


@dataclass(frozen=True)
class TargetVerdict:
    target: Target
    store: str
    median: float
    met: bool

    def describe(self) -> str:
        verdict = "met" if self.met else "MISSED"
        where = f"{self.target.measure}/{self.store}/{self.target.figure}"
        return f"{where}: {self.median:g} ({self.target.limit}): {verdict}"


def judge(figures: Iterable[Mapping[str, Any]], targets: Iterable[Target] = TARGETS) -> list[TargetVerdict]:
    """Every target whose figure was measured, on every store it applies to, judged on the median."""
    by_identity = {(f["measure"], f["backend"], f["name"]): f["reps"] for f in figures if f["reps"]}
    verdicts = []
    for target in targets:
        for store in target.stores:
            reps = by_identity.get((target.measure, store, target.figure))
            if reps:
                median = statistics.median(float(r) for r in reps)
                verdicts.append(TargetVerdict(target, store, median, target.met(median)))
    return verdicts


def newly_missed(now: Iterable[TargetVerdict], baseline: Iterable[TargetVerdict]) -> list[TargetVerdict]:
    """Targets this run misses that the baseline met, or did not measure."""
    missed_before = {(v.target, v.store) for v in baseline if not v.met}
    return [v for v in now if not v.met and (v.target, v.store) not in missed_before]

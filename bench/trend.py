"""Did a release slow tracelet down? Compare a benchmark run with the baseline of the same machine.

A figure measured on this 2-core machine says nothing about a 4-core CI runner, so baselines are
keyed by OS, core count and Python version (:func:`baseline_key`) and live in
``bench/results/baseline-<key>.json``. Each figure is compared in its own terms:

* ``ratio`` (native time / tracelet time, higher is better): by relative change;
* ``points`` (an overhead in percent, lower is better): in percentage points;
* ``seconds`` / ``us`` (a time, lower is better): by relative change;
* ``rate`` (points/s, MB/s, higher is better) and ``MB`` (memory, lower is better): by relative change;
* ``delta`` (a signed difference, e.g. ms a run over the native client, lower is better): in its
  own units, as ``points`` are (a relative change of a value near or below zero means nothing).

A figure regressed only when it moved the wrong way by more than the measured spread: the wider of
the two runs' spreads (max - min of their repetitions). Within that, it is noise, not a verdict.
A figure with no repetition (every child of its measure failed) is not compared; a warning says so.
A run whose key has no baseline is compared with nothing and says so: the CI job only warns then.

The targets (``bench/targets.py``) are judged on both runs: a target this run misses and the baseline
met is *newly missed*, and fails ``--strict`` as a regression does; one the baseline missed too is
reported, not failed.

The results format (``reports/bench/results.json``, and the baselines)::

    {"machine": {"os": "linux", "cores": 2, "python": "3.11.7", ...},
     "figures": [{"measure": "throughput", "backend": "mlflow", "name": "native/tracelet",
                  "kind": "ratio", "unit": "×", "reps": [0.91, 0.93, 0.92]}, ...]}

    python bench/trend.py reports/bench/results.json [--update-baseline]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from targets import TargetVerdict, judge, newly_missed

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NEW_FIGURE = "new: no baseline figure"
NO_BASELINE = "no baseline for {key}: nothing compared (commit one to compare)"

#: kind -> (higher is better, compared by "relative" change or in "points")
KINDS: dict[str, tuple[bool, str]] = {
    "ratio": (True, "relative"),
    "points": (False, "points"),
    "seconds": (False, "relative"),
    "us": (False, "relative"),
    "rate": (True, "relative"),  # points/s, MB/s
    "MB": (False, "relative"),  # memory
    "delta": (False, "points"),  # a signed difference, in the figure's own unit
}


def baseline_key(machine: Mapping[str, Any]) -> str:
    """``linux-2cores-py3.11``: the machines whose figures may be compared.

    A ``--quick`` run measures smaller sizes than the full suite, so its figures are compared
    only with a quick baseline (``...-quick``).
    """
    python = ".".join(str(machine["python"]).split(".")[:2])
    suffix = "-quick" if machine.get("suite") == "quick" else ""
    suffix += "-thread" if machine.get("delivery") == "thread" else ""  # another pipeline, its own figures
    return f"{machine['os']}-{machine['cores']}cores-py{python}{suffix}"


def baseline_path(key: str, directory: Path = RESULTS_DIR) -> Path:
    return directory / f"baseline-{key}.json"


@dataclass(frozen=True)
class Verdict:
    """One figure against its baseline."""

    measure: str
    backend: str
    name: str
    kind: str
    median: float
    baseline: float | None
    change: float | None  # relative (0.1 = +10 %) or in points, as the kind says
    tolerance: float | None  # the measured spread, in the same terms as ``change``
    regressed: bool
    note: str = ""

    def describe(self) -> str:
        if self.baseline is None:
            return f"{self.measure}/{self.backend}/{self.name}: {self.median:g} ({self.note})"
        _, terms = KINDS[self.kind]
        assert self.change is not None
        assert self.tolerance is not None
        if terms == "points":
            units = "points" if self.kind == "points" else "(absolute)"
            moved = f"{self.change:+.2f} {units} (spread {self.tolerance:.2f})"
        else:
            moved = f"{self.change:+.1%} (spread {self.tolerance:.1%})"
        flag = "REGRESSED" if self.regressed else "ok"
        where = f"{self.measure}/{self.backend}/{self.name}"
        return f"{where}: {self.baseline:g} -> {self.median:g}, {moved}: {flag}"


def _identity(figure: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(figure["measure"]), str(figure["backend"]), str(figure["name"]))


def _spread(reps: Sequence[float]) -> float:
    return max(reps) - min(reps) if reps else 0.0


def compare_figure(figure: Mapping[str, Any], base: Mapping[str, Any] | None) -> Verdict:
    """One figure in its own terms; ``base`` is the same figure in the baseline, if it has one."""
    kind = str(figure["kind"])
    if kind not in KINDS:
        raise ValueError(f"figure {_identity(figure)} has unknown kind {kind!r}; kinds: {sorted(KINDS)}")
    reps = [float(r) for r in figure["reps"]]
    median = statistics.median(reps)
    measure, backend, name = _identity(figure)
    if base is None:
        return Verdict(measure, backend, name, kind, median, None, None, None, False, NEW_FIGURE)
    base_reps = [float(r) for r in base["reps"]]
    base_median = statistics.median(base_reps)
    higher_is_better, terms = KINDS[kind]
    spread = max(_spread(reps), _spread(base_reps))
    if terms == "points":
        change, tolerance = median - base_median, spread
    else:
        change = (median - base_median) / base_median if base_median else 0.0
        tolerance = spread / base_median if base_median else 0.0
    worse = change < 0 if higher_is_better else change > 0
    return Verdict(
        measure,
        backend,
        name,
        kind,
        median,
        base_median,
        change,
        tolerance,
        worse and abs(change) > tolerance,
    )


@dataclass(frozen=True)
class Trend:
    """A whole run against its baseline: every verdict, the targets, and what could not be compared."""

    key: str
    has_baseline: bool
    verdicts: list[Verdict]
    warnings: list[str]
    #: every target of ``bench/targets.py`` whose figure this run measured
    targets: list[TargetVerdict] = field(default_factory=list)
    #: targets this run misses that the baseline met (or did not measure): ``--strict`` fails on them
    newly_missed: list[TargetVerdict] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        """What ``--strict`` fails on: figures that regressed, and targets newly missed."""
        return [v.describe() for v in self.regressions] + [v.describe() for v in self.newly_missed]

    @property
    def regressions(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.regressed]


def compare(results: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> Trend:
    """Every figure of ``results`` against ``baseline`` (None: no baseline for this machine's key)."""
    key = baseline_key(results["machine"])
    figures = [f for f in results["figures"] if f["reps"]]
    unmeasured = [
        f"{'/'.join(_identity(f))}: no repetition succeeded, not compared"
        for f in results["figures"]
        if not f["reps"]
    ]
    now = judge(figures)
    if baseline is None:
        verdicts = [compare_figure(f, None) for f in figures]
        return Trend(key, False, verdicts, [NO_BASELINE.format(key=key), *unmeasured], now, [])
    if baseline_key(baseline["machine"]) != key:
        raise ValueError(f"baseline is for {baseline_key(baseline['machine'])}, results for {key}")
    by_identity = {_identity(f): f for f in baseline["figures"] if f["reps"]}
    verdicts = [compare_figure(f, by_identity.get(_identity(f))) for f in figures]
    measured = {_identity(f) for f in results["figures"]}
    warnings = [
        f"{'/'.join(identity)}: in the baseline, not measured this time"
        for identity in sorted(set(by_identity) - measured)
    ]
    newly = newly_missed(now, judge(baseline["figures"]))
    return Trend(key, True, verdicts, [*unmeasured, *warnings], now, newly)


def load_baseline(results: Mapping[str, Any], directory: Path = RESULTS_DIR) -> dict[str, Any] | None:
    path = baseline_path(baseline_key(results["machine"]), directory)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


#: what a baseline keeps of a run: enough to compare with and to say what was measured, not the raw runs
BASELINE_FIELDS = ("machine", "suite", "plan", "stores", "figures")


def write_baseline(results: Mapping[str, Any], directory: Path = RESULTS_DIR) -> Path:
    """Make ``results`` the baseline of its machine key; returns the file written."""
    target = baseline_path(baseline_key(results["machine"]), directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    kept = {k: results[k] for k in BASELINE_FIELDS if k in results}
    target.write_text(json.dumps(kept, indent=1) + "\n", encoding="utf-8")
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("results", type=Path, help="a results.json written by the suite")
    parser.add_argument("--baselines", type=Path, default=RESULTS_DIR, help="where baseline-<key>.json live")
    parser.add_argument("--update-baseline", action="store_true", help="make these results the baseline")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 on a regression or a newly missed target (CI, once a baseline exists)",
    )
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text(encoding="utf-8"))
    trend = compare(results, load_baseline(results, args.baselines))
    for verdict in trend.verdicts:
        print(verdict.describe())
    for warning in trend.warnings:
        print(f"warning: {warning}")
    if args.update_baseline:
        print(f"baseline written: {write_baseline(results, args.baselines)}")
        return 0
    for target in trend.targets:
        print(target.describe())
    return 1 if args.strict and trend.failures else 0


if __name__ == "__main__":
    sys.exit(main())

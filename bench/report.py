"""``reports/bench/report.md`` and its plots, rendered from ``results.json`` (``bench/suite.py``).

One table per measure with the stores side by side, ratios against the native client first and
absolute figures second, each as ``median [min..max]`` over the repetitions; a figure that
regressed against the baseline of the same machine key is marked. The plots are PNGs beside the
report. The closing section, "which backend for which load", is drawn from the figures of this
run, not written by hand, so it cannot go stale. A run of some measures (``--measures``) shows
those only. Every target of ``bench/targets.py`` is judged in its own section, and the sweep's
table shows its verdicts beside its figures.

    python bench/suite.py --render-only [--out reports/bench]   # re-render from results.json
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from targets import ALL_STORES, TARGETS, TargetVerdict

LABELS = {
    "mlflow": "MLflow (sqlite)",
    "mlflow_server": "MLflow server",
    "wandb": "W&B offline",
    "clearml": "ClearML offline",
    "local": "local",
}
#: the stores' names on a plot's x axis, on two lines so five fit side by side in a small panel
TICKS = {
    "mlflow": "MLflow\nsqlite",
    "mlflow_server": "MLflow\nserver",
    "wandb": "W&B\noffline",
    "clearml": "ClearML\noffline",
    "local": "local",
}
COLORS = {
    "mlflow": "#1f77b4",
    "mlflow_server": "#17becf",
    "wandb": "#ff7f0e",
    "clearml": "#2ca02c",
    "local": "#7f7f7f",
}
NATIVE_NOTE = {
    "mlflow": "`MlflowClient.log_batch` (bulk, 1,000 a batch) / `log_metric` (per call); sqlite",
    "mlflow_server": "the same calls over HTTP to a real `mlflow server` on 127.0.0.1 (2 workers)",
    "wandb": "`run.log` one row per step (bulk) / one key per call; offline",
    "clearml": "`Logger.report_scalar` per value (it has no bulk call); offline, reporting subprocess off",
    "local": "no third-party client: hand-written JSON lines (`json.dumps` + `write`), the obvious "
    "equivalent",
}


class Figures:
    """Lookup of the figures of one run, and of the trend's verdicts on them."""

    def __init__(self, results: Mapping[str, Any], comparison: Any) -> None:
        self.stores: list[str] = list(results["stores"])
        self._by_id = {(f["measure"], f["backend"], f["name"]): f for f in results["figures"]}
        self._regressed = {
            (v.measure, v.backend, v.name) for v in (comparison.regressions if comparison is not None else [])
        }

    def reps(self, measure: str, store: str, name: str) -> list[float]:
        figure = self._by_id.get((measure, store, name))
        return [float(r) for r in figure["reps"]] if figure else []

    def median(self, measure: str, store: str, name: str) -> float | None:
        reps = self.reps(measure, store, name)
        return statistics.median(reps) if reps else None

    def spread(self, measure: str, store: str, name: str) -> tuple[float, float, float] | None:
        reps = self.reps(measure, store, name)
        return (statistics.median(reps), min(reps), max(reps)) if reps else None

    def cell(self, measure: str, store: str, name: str) -> str:
        reps = self.reps(measure, store, name)
        if not reps:
            return "–"
        figure = self._by_id[(measure, store, name)]
        text = _spread_text(reps)
        unit = figure.get("unit", "")
        text = f"{text} {unit}".rstrip() if unit in ("×", "%") else text
        if (measure, store, name) in self._regressed:
            text += " ⚠ regressed"
        return text


def measured(results: Mapping[str, Any]) -> set[str]:
    """The measures this run chose (a results.json from before ``--measures``: those it has figures of)."""
    chosen = results.get("measures")
    return set(chosen) if chosen is not None else {str(f["measure"]) for f in results["figures"]}


def _spread_text(reps: Sequence[float]) -> str:
    """``median [min..max]``, or the one value of a single repetition."""
    median = statistics.median(reps)
    return f"{_num(median)} [{_num(min(reps))}..{_num(max(reps))}]" if len(reps) > 1 else _num(median)


def _num(x: float) -> str:
    """Three significant digits, thousands separated: readable across six orders of magnitude."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    magnitude = math.floor(math.log10(abs(x)))
    if magnitude >= 3:
        return f"{x:,.0f}"
    decimals = max(0, 2 - magnitude)
    return f"{x:.{decimals}f}"


def _table(fig: Figures, measure: str, rows: Sequence[tuple[str, str]]) -> list[str]:
    """Rows (label, figure name) × stores."""
    lines = [
        "| | " + " | ".join(LABELS.get(s, s) for s in fig.stores) + " |",
        "|---|" + "---|" * len(fig.stores),
    ]
    for label, name in rows:
        lines.append(f"| {label} | " + " | ".join(fig.cell(measure, s, name) for s in fig.stores) + " |")
    return lines


#: a target's verdict beside its figure
MET, MISSED = "✓ MET", "✗ MISSED"

#: the Sweep table's rows: (label, figure name)
SWEEP_ROWS: tuple[tuple[str, str], ...] = (
    ("native ÷ tracelet, whole sweep", "ratio native/tracelet total"),
    ("tracelet, whole sweep ÷ runs (ms)", "tracelet whole sweep per run"),
    ("`start_logging` p50 (ms)", "tracelet start_logging p50"),
    ("`start_logging` p99 (ms)", "tracelet start_logging p99"),
    ("a run after the first, tracelet − native (ms)", "extra per run over native"),
    ("a run after the first, tracelet (ms)", "tracelet per run after the first"),
    ("a run after the first, native (ms)", "native per run after the first"),
    ("whole sweep, tracelet (s)", "tracelet total"),
    ("whole sweep, native (s)", "native total"),
)


def sweep_table(fig: Figures, verdicts: Sequence[TargetVerdict]) -> list[str]:
    """The Sweep table: the stores side by side, each target's verdict (``bench/targets.py``) beside
    its figure, and the targets in the last column."""
    of = {(v.target.figure, v.store): v for v in verdicts if v.target.measure == "sweep"}
    limits = {t.figure: t.scope for t in TARGETS if t.measure == "sweep"}
    lines = [
        "| | " + " | ".join(LABELS.get(s, s) for s in fig.stores) + " | target |",
        "|---|" + "---|" * (len(fig.stores) + 1),
    ]
    for label, name in SWEEP_ROWS:
        cells = []
        for store in fig.stores:
            text = fig.cell("sweep", store, name) if fig.reps("sweep", store, name) else "–"
            verdict = of.get((name, store))
            cells.append(text if verdict is None else f"{text} {MET if verdict.met else MISSED}")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {limits.get(name, '')} |")
    return lines


def targets_section(verdicts: Sequence[TargetVerdict], newly: Sequence[TargetVerdict]) -> list[str]:
    """Every target of ``bench/targets.py`` this run measured, per store: met, missed or newly missed."""
    if not verdicts:
        return ["No target's figure was measured."]
    fresh = {(v.target, v.store) for v in newly}
    stores = [s for s in ALL_STORES if any(v.store == s for v in verdicts)]
    lines = [
        "| target | " + " | ".join(LABELS.get(s, s) for s in stores) + " | limit |",
        "|---|" + "---|" * (len(stores) + 1),
    ]
    by = {(v.target, v.store): v for v in verdicts}
    for target in TARGETS:
        if not any((target, s) in by for s in stores):
            continue
        cells = []
        for store in stores:
            v = by.get((target, store))
            if v is None:
                cells.append("–" if store in target.stores else "n/a")
            else:
                flag = MET if v.met else (f"{MISSED} (new)" if (target, store) in fresh else MISSED)
                cells.append(f"{_num(v.median)} {flag}")
        lines.append(f"| {target.label} | " + " | ".join(cells) + f" | {target.scope} |")
    missed = [v for v in verdicts if not v.met]
    summary = f"{len(verdicts) - len(missed)} of {len(verdicts)} met"
    if newly:
        summary += f"; {len(newly)} newly missed against the baseline (`--strict` fails on these)"
    return [*lines, "", f"Each judged on the median over the repetitions: {summary}."]


# -- plots ----------------------------------------------------------------------------------------


def _bar_err(values: list[tuple[float, float, float] | None]) -> tuple[list[float], list[list[float]]]:
    heights = [v[0] if v else 0.0 for v in values]
    err = [[v[0] - v[1] if v else 0.0 for v in values], [v[2] - v[0] if v else 0.0 for v in values]]
    return heights, err


def _readable_log(ax: Any, axis: str = "y") -> None:
    """Log-axis ticks as plain numbers (``2,000``, ``0.5``), not ``2×10^3``."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    target = ax.yaxis if axis == "y" else ax.xaxis
    low, high = ax.get_ylim() if axis == "y" else ax.get_xlim()
    # under two decades, 1-2-5 ticks; otherwise one per decade (a short axis would show one label)
    decades = math.log10(high / low) if low > 0 and high > 0 else 10.0
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades < 2 else (1.0,)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 and v == int(v) else _num(v)))
    target.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _grouped(
    ax: Any, fig: Figures, series: Sequence[tuple[str, str, str, str]], ylabel: str, log: bool
) -> None:
    """Bars per store, one per (label, measure, name, hatch) series, min..max as error bars."""
    stores = fig.stores
    width = 0.8 / len(series)
    for i, (label, measure, name, hatch) in enumerate(series):
        heights, err = _bar_err([fig.spread(measure, s, name) for s in stores])
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(stores))]
        ax.bar(
            xs,
            heights,
            width,
            yerr=err,
            capsize=3,
            label=label,
            hatch=hatch,
            color=[COLORS.get(s, "#999999") for s in stores],
            edgecolor="black",
            linewidth=0.6,
            alpha=0.45 + 0.55 * (i + 1) / len(series),
        )
    ax.set_xticks(range(len(stores)), [TICKS.get(s, s) for s in stores], rotation=0, fontsize=8)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
        _readable_log(ax)
    ax.grid(axis="y", which="both", alpha=0.3)
    _legend(
        ax,
        [
            (label, hatch, 0.45 + 0.55 * (i + 1) / len(series))
            for i, (label, _, _, hatch) in enumerate(series)
        ],
    )


def _legend(ax: Any, entries: Sequence[tuple[str, str, float]], fontsize: int = 8) -> None:
    """A legend of grey swatches: the bars' colours say the store, the hatching says the series."""
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor="#888888", alpha=alpha, hatch=hatch, edgecolor="black", label=label)
        for label, hatch, alpha in entries
    ]
    ax.legend(handles=handles, fontsize=fontsize)


def plot_all(fig: Figures, results: Mapping[str, Any], out: Path) -> list[tuple[str, str]]:
    """Write the PNGs; returns (file name, caption) for the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan = results["plan"]
    made: list[tuple[str, str]] = []
    cores, suite, reps = results["machine"].get("cores"), results["suite"], plan["reps"]
    subtitle = f"{cores} cores, {suite} suite, {reps} reps; bars: median, whiskers: min..max"

    def save(figure: Any, name: str, caption: str, bottom: float = 0.0) -> None:
        figure.tight_layout(rect=(0.0, bottom, 1.0, 1.0))
        figure.savefig(out / name, dpi=110)
        plt.close(figure)
        made.append((name, caption))

    ran, stores = measured(results), fig.stores

    # throughput
    if "throughput" in ran:
        f, ax = plt.subplots(figsize=(9, 4.8))
        _grouped(
            ax,
            fig,
            [
                ("native per-call", "throughput", "native per-call points/s", "//"),
                ("native bulk", "throughput", "native bulk points/s", ".."),
                ("tracelet", "throughput", "tracelet points/s", ""),
            ],
            "delivered points per second (log scale)",
            log=True,
        )
        ax.set_title(
            f"Throughput, {plan['throughput_points']:,} points over 10 keys, until landed\n{subtitle}",
            fontsize=9,
        )
        save(
            f,
            "throughput.png",
            "Throughput: points per second from the first log call until the run is closed with every "
            "point stored",
        )

    # scalability
    if "scalability" in ran:
        f, axes = plt.subplots(1, 2, figsize=(11, 4.6))
        for ax, (label, sizes, xlabel) in zip(
            axes,
            (
                ("points", [(p, f"{p:,} points") for p in plan["points"]], "points logged (10 keys)"),
                (
                    "keys",
                    [(k, f"{k:,} keys") for k in plan["keys"]],
                    f"keys ({plan['keys_points']:,} points)",
                ),
            ),
            strict=True,
        ):
            for store in fig.stores:
                for kind, style in (("tracelet", "-o"), ("native", "--s")):
                    pts = [
                        (x, fig.median("scalability", store, f"{kind} µs/point @ {where}"))
                        for x, where in sizes
                    ]
                    pts = [(x, y) for x, y in pts if y]
                    if pts:
                        ax.plot(
                            [p[0] for p in pts],
                            [p[1] for p in pts],
                            style,
                            color=COLORS.get(store),
                            markersize=4,
                            label=f"{LABELS.get(store, store)} {kind}",
                        )
            ax.set_xscale("log")
            ax.set_yscale("log")
            _readable_log(ax, "x")
            _readable_log(ax, "y")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("cost per delivered point (µs, log scale)")
            ax.grid(which="both", alpha=0.3)
            ax.set_title(f"Cost per point vs {label}: solid tracelet, dashed native", fontsize=9)
        handles, names = axes[0].get_legend_handles_labels()
        f.legend(handles, names, loc="lower center", ncol=5, fontsize=7, frameon=False)
        save(
            f,
            "scalability.png",
            "Scalability: µs per delivered point (run open to run closed, start excluded), log-log",
            bottom=0.12,
        )

    # overhead as a slowdown factor (the MLflow server's per-step native call is ~100x: log scale)
    if "overhead" in ran:
        f, ax = plt.subplots(figsize=(9, 4.6))
        for i, (kind, hatch) in enumerate((("native", "//"), ("tracelet", ""))):
            values = []
            for s in stores:
                sp = fig.spread("overhead", s, f"{kind} fast loop")
                values.append(tuple(1 + v / 100 for v in sp) if sp else None)
            heights, err = _bar_err(values)  # type: ignore[arg-type]
            xs = [j + (i - 0.5) * 0.38 for j in range(len(stores))]
            ax.bar(
                xs,
                heights,
                0.38,
                yerr=err,
                capsize=3,
                hatch=hatch,
                label=kind,
                color=[COLORS.get(s) for s in stores],
                edgecolor="black",
                linewidth=0.6,
                alpha=0.55 + 0.45 * i,
            )
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        _readable_log(ax)
        ax.set_xticks(range(len(stores)), [TICKS.get(s, s) for s in stores], fontsize=8)
        ax.set_ylabel("median step time ÷ no-logging step (×, log scale)")
        base = fig.median("overhead", "-", "no-logging step")
        ax.set_title(
            f"Training overhead: fast CPU loop ({base or 0:.2f} ms/step), 5 metrics a step\n{subtitle}",
            fontsize=9,
        )
        _legend(ax, [("native per-step call", "//", 0.55), ("tracelet", "", 1.0)])
        ax.grid(axis="y", which="both", alpha=0.3)
        save(
            f,
            "overhead.png",
            "Training overhead: how much slower each step runs with tracelet, and with the native "
            "per-step call",
        )

    # latency
    if "latency" in ran:
        f, axes = plt.subplots(1, 2, figsize=(12, 4.6))
        for ax, q in zip(axes, ("p50", "p99"), strict=True):
            _grouped(
                ax,
                fig,
                [
                    ("native float", "latency", f"native float {q}", "//"),
                    ("native tensor (.item())", "latency", f"native tensor {q}", "\\\\"),
                    ("tracelet float", "latency", f"tracelet float {q}", ""),
                    ("tracelet 0-d tensor", "latency", f"tracelet tensor {q}", ".."),
                ],
                f"{q} of one call (µs, log scale)",
                log=True,
            )
            ax.set_title(f"Caller latency {q} while delivery is busy", fontsize=9)
        save(
            f,
            "latency.png",
            "Caller latency of one log call: tracelet's log_metric while a backlog drains, against the "
            "native per-call API",
        )

    # memory
    if "memory" in ran:
        f, ax = plt.subplots(figsize=(9, 4.6))
        for i, (kind, hatch) in enumerate((("native", "//"), ("tracelet", ""))):
            xs = [j + (i - 0.5) * 0.38 for j in range(len(stores))]
            trainer = [fig.median("memory", s, f"{kind} trainer peak MB") or 0 for s in stores]
            helpers = [fig.median("memory", s, f"{kind} helpers peak MB") or 0 for s in stores]
            colors = [COLORS.get(s) for s in stores]
            ax.bar(
                xs,
                trainer,
                0.38,
                hatch=hatch,
                color=colors,
                edgecolor="black",
                linewidth=0.6,
                label=f"{kind}: trainer",
            )
            ax.bar(
                xs,
                helpers,
                0.38,
                bottom=trainer,
                hatch=hatch,
                color="white",
                edgecolor=colors,
                linewidth=1.2,
                label=f"{kind}: helper processes (agent, wandb-core)",
            )
        ax.set_xticks(range(len(stores)), [TICKS.get(s, s) for s in stores], fontsize=8)
        ax.set_ylabel("peak RSS (MB)")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # room for the legend above the tallest bar
        top_reps = plan.get("top_reps", plan["reps"])
        ax.set_title(
            f"Memory while logging {plan['points'][-1]:,} points (peaks of trainer and helpers)\n"
            f"{cores} cores, {suite} suite, {top_reps} reps; bars: medians",
            fontsize=9,
        )
        from matplotlib.patches import Patch

        ax.legend(
            handles=[
                Patch(facecolor="#888888", hatch="//", edgecolor="black", label="native: trainer"),
                Patch(
                    facecolor="white", hatch="//", edgecolor="#555555", label="native: helpers (wandb-core)"
                ),
                Patch(facecolor="#888888", edgecolor="black", label="tracelet: trainer"),
                Patch(facecolor="white", edgecolor="#555555", label="tracelet: helpers (agent, wandb-core)"),
            ],
            fontsize=7,
        )
        ax.grid(axis="y", alpha=0.3)
        save(f, "memory.png", "Memory: peak RSS of the training process and of its helper processes, stacked")

    # artifacts: one panel per case and direction, native (hatched) beside tracelet (solid)
    if "artifacts" in ran:
        labels = list(plan["artifacts"])
        f, axes = plt.subplots(2, len(labels), figsize=(4.2 * len(labels), 7.5), squeeze=False)
        for row, way in enumerate(("upload", "download")):
            for col, label in enumerate(labels):
                ax = axes[row][col]
                series = [
                    ("native", "artifacts", f"{way} {label} native MB/s", "//"),
                    ("tracelet", "artifacts", f"{way} {label} tracelet MB/s", ""),
                ]
                _grouped(ax, fig, series, f"{way} speed (MB/s, log scale)", log=True)
                ax.tick_params(axis="x", labelsize=7)
                ax.set_title(f"{way} {label}", fontsize=9)
        f.suptitle(f"Artifacts: until stored, and read back from the store\n{subtitle}", fontsize=9)
        save(
            f,
            "artifacts.png",
            "Artifacts: upload and download speed per size, tracelet against the native call",
        )
    return made


# -- prose drawn from the figures -----------------------------------------------------------------


def _costs(fig: Figures, store: str, kind: str, wheres: Sequence[tuple[int, str]]) -> list[tuple[int, float]]:
    found = [(x, fig.median("scalability", store, f"{kind} µs/point @ {where}")) for x, where in wheres]
    return [(x, c) for x, c in found if c]


def flatness(fig: Figures, store: str, plan: Mapping[str, Any]) -> str:
    """Where tracelet's cost per point stops being flat, and whose cost it is (the native side's line says).

    Below the flat part, fixed costs (opening and closing the run, the last batch's round trip) are
    spread over few points. Above it, if the native client's cost grows alike, the store itself gets
    slower per point; if only tracelet's grows, it is tracelet's delivery, and the trainer's peak memory
    at that size says how large the backlog it carried was.
    """
    sizes = [(p, f"{p:,} points") for p in plan["points"]]
    known = _costs(fig, store, "tracelet", sizes)
    native = dict(_costs(fig, store, "native", sizes))
    if len(known) < 2:
        return "not enough sizes measured"
    low = min(c for _, c in known)
    notes = []
    first, first_cost = known[0]
    if first_cost > 2 * low:
        flat_from = next(p for p, c in known if c <= 1.5 * low)
        notes.append(
            "fixed costs (opening and closing the run, the last round trip) dominate below "
            f"{flat_from:,} points "
            f"({_num(first_cost)} µs/point at {first:,}, {_num(low)} at best)"
        )
    last, last_cost = known[-1]
    if last_cost > 1.3 * low:
        grew = f"it grows again at {last:,} points ({_num(last_cost)} against {_num(low)} µs at best)"
        native_low = min(native.values()) if native else None
        native_last = native.get(last)
        if native_low and native_last and native_last > 1.3 * native_low:
            notes.append(
                f"{grew}, and the native client's alike ({_num(native_low)} → {_num(native_last)} µs): "
                "the store itself gets slower per point as the run grows"
            )
        else:
            trainer = fig.median("memory", store, "tracelet trainer peak MB")
            native_text = f" (native stays at {_num(native_last)} µs)" if native_last else ""
            memory_text = f"; the trainer's peak RSS reached {_num(trainer)} MB" if trainer else ""
            notes.append(
                f"{grew}{native_text}: this is tracelet's delivery, not the store. The run is logged "
                "in about a second, faster than the store takes it, and tracelet's queues are bounded "
                "(100,000 events in the trainer, 100,000 per store in the agent): the rest spills to the "
                "on-disk spool and is read back (py-spy: `Spool.append`, `from_json` in both processes), "
                f"which costs more per point than the in-memory path{memory_text}"
            )
    keys = _costs(fig, store, "tracelet", [(k, f"{k:,} keys") for k in plan["keys"]])
    native_keys = dict(_costs(fig, store, "native", [(k, f"{k:,} keys") for k in plan["keys"]]))
    if len(keys) >= 2:
        (k0, c0), (k1, c1) = keys[0], keys[-1]
        if c1 > 1.3 * c0 or c0 > 1.3 * c1:
            n0, n1 = native_keys.get(k0), native_keys.get(k1)
            alike = n0 and n1 and (n1 > 1.3 * n0) == (c1 > 1.3 * c0)
            notes.append(
                f"over keys, {_num(c0)} µs/point with {k0:,} and {_num(c1)} with {k1:,}"
                + (
                    f", as natively ({_num(n0 or 0)} → {_num(n1 or 0)}): the store's cost is per "
                    + ("row, not per value" if c1 < c0 else "key")
                    if alike
                    else ""
                )
            )
    if not notes:
        high = max(c for _, c in known)
        return f"flat within 1.5× from {first:,} to {last:,} points ({_num(low)}–{_num(high)} µs/point)"
    return "; ".join(notes)


def advice(fig: Figures, plan: Mapping[str, Any]) -> list[str]:
    """'Which backend for which load', from this run's medians."""

    def best(
        measure: str, name: str, high: bool, among: Sequence[str] | None = None
    ) -> tuple[str, float] | None:
        found = [(s, fig.median(measure, s, name)) for s in (among or fig.stores)]
        found2 = [(s, v) for s, v in found if v is not None]
        if not found2:
            return None
        return max(found2, key=lambda x: x[1]) if high else min(found2, key=lambda x: x[1])

    def span(measure: str, name: str, among: Sequence[str]) -> str:
        values = [v for v in (fig.median(measure, s, name) for s in among) if v is not None]
        return f"{_num(min(values))}–{_num(max(values))}" if values else "–"

    lines = []
    # the advice is about the trackers; `local` (a JSONL folder) is the reference, quoted beside them
    tracked = [s for s in fig.stores if s != "local"] or list(fig.stores)
    fast = best("throughput", "tracelet points/s", True, tracked)
    slow = best("throughput", "tracelet points/s", False, tracked)
    if fast and slow:
        local = fig.median("throughput", "local", "tracelet points/s")
        lines.append(
            f"- **Many points** (dense logging, long runs): {LABELS[fast[0]]} took the most, {_num(fast[1])} "
            f"points/s delivered through tracelet, {LABELS[slow[0]]} the fewest ({_num(slow[1])})"
            + (f"; the local folder {_num(local)}." if local else ".")
            + " Delivery runs beside training: this bounds how long `stop_logging()` waits, not a step."
        )
    for store in ("mlflow_server", "mlflow"):
        per_call = fig.median("throughput", store, "native per-call points/s")
        ratio = fig.median("throughput", store, "tracelet ÷ native per-call")
        if per_call and ratio and store in fig.stores:
            lines.append(
                f"- **{LABELS[store]}**: never log one call per value by hand ({_num(per_call)} points/s); "
                f"tracelet's batches deliver {_num(ratio)}× that."
            )
    base = fig.median("overhead", "-", "no-logging step")
    if base is not None:
        lines.append(
            f"- **Fast training loops** ({_num(base)} ms a step): through tracelet every store cost "
            f"{span('overhead', 'tracelet fast loop', fig.stores)} % a step; the stores' own per-step calls "
            f"cost {span('overhead', 'native fast loop', tracked)} %. The store matters little here; logging "
            "in the loop "
            "with a store's own client is what costs."
        )
    small = best("memory", "tracelet total peak MB", False, tracked)
    big = best("memory", "tracelet total peak MB", True, tracked)
    if small and big:
        lines.append(
            f"- **Memory-tight jobs**: {LABELS[small[0]]} peaked lowest, {_num(small[1])} MB "
            "(trainer + agent "
            f"+ helpers) for {plan['points'][-1]:,} points; {LABELS[big[0]]} highest, {_num(big[1])} MB. The "
            f"trainer itself stays at {span('memory', 'tracelet trainer peak MB', fig.stores)} MB "
            "on every store."
        )
    # the single large file (1 MB, *100 MB*, 1,000 files): the case where bytes, not calls, count
    cases = list(plan["artifacts"])
    largest, many = cases[1 if len(cases) > 1 else 0], cases[-1]
    up = best("artifacts", f"upload {largest} tracelet MB/s", True, tracked)
    down = best("artifacts", f"download {largest} tracelet MB/s", True, tracked)
    files = best("artifacts", f"upload {many} tracelet MB/s", True, tracked)
    if up and down and files:
        lines.append(
            f"- **Large artifacts** ({largest}): {LABELS[up[0]]} stored it fastest ({_num(up[1])} MB/s), "
            f"{LABELS[down[0]]} gave it back fastest ({_num(down[1])} MB/s). **Many small files** ({many}): "
            f"{LABELS[files[0]]} ({_num(files[1])} MB/s); each file is its own store call, so bundle "
            "thousands of small files into one archive first."
        )
    many_keys = best("scalability", f"tracelet µs/point @ {plan['keys'][-1]:,} keys", False, tracked)
    one_key = best("scalability", f"tracelet µs/point @ {plan['keys'][0]:,} keys", False, tracked)
    if many_keys and one_key:
        lines.append(
            f"- **Many keys** ({plan['keys'][-1]:,} a step): {LABELS[many_keys[0]]} kept the lowest cost per "
            f"point ({_num(many_keys[1])} µs); with one key, {LABELS[one_key[0]]} ({_num(one_key[1])} µs)."
        )
    return lines


def render(results: Mapping[str, Any], comparison: Any, out: Path, plots: bool = True) -> Path:
    """Write ``report.md`` and, unless ``plots`` is false, the PNGs under ``out``; returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    fig = Figures(results, comparison)
    plan, m, ran = results["plan"], results["machine"], measured(results)
    made = plot_all(fig, results, out) if plots else []
    load = [f"{x:.2f}" for x in m.get("load_average") or []] or ["n/a"]
    load_end = [f"{x:.2f}" for x in m.get("load_average_end") or []] or ["n/a"]
    versions = ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items() if v)
    lines = [
        "# tracelet benchmarks",
        "",
        f"**{results['suite']} suite**, {plan['reps']} interleaved repetitions "
        f"({plan.get('top_reps', plan['reps'])} of the {plan['points'][-1]:,}-point runs), "
        f"{results.get('elapsed_s', 0) / 60:.1f} min. "
        f"Machine: {m.get('cores')} cores ({m.get('usable_cores')} usable), 1-minute load {load[0]} "
        "at the start and "
        f"{load_end[0]} at the end, Python {m.get('python')}, {m.get('platform')}. {versions}. "
        f"Commit `{(m.get('git_commit') or '?')[:10]}`{' (src modified)' if m.get('src_dirty') else ''}."
        + (f" Measures: {', '.join(results['measures'])}." if results.get("measures") else ""),
        "",
        "Every cell is `median [min..max]` over the repetitions. Ratios compare tracelet with the "
        "store's own "
        "client doing the same work on the same kind of store, in the same run: above 1 favours tracelet.",
        "",
        "| store | its native client |",
        "|---|---|",
        *[f"| {LABELS.get(s, s)} | {NATIVE_NOTE.get(s, '')} |" for s in fig.stores],
        "",
    ]
    if results.get("errors"):
        lines += ["**Failed measurements:**", "", *[f"- {e}" for e in results["errors"]], ""]

    tp = plan["throughput_points"]
    if "throughput" in ran:
        lines += [
            "## Throughput",
            "",
            f"{tp:,} points over 10 keys, from the first log call until the run is closed with every "
            "point stored "
            "(tracelet: until `stop_logging()` returns with all delivered). Native per-call: "
            f"{plan['per_call_points']:,} points, one call each.",
            "",
            *_table(
                fig,
                "throughput",
                [
                    ("tracelet ÷ native bulk", "tracelet ÷ native bulk"),
                    ("tracelet ÷ native per-call", "tracelet ÷ native per-call"),
                    ("tracelet, points/s", "tracelet points/s"),
                    ("native bulk, points/s", "native bulk points/s"),
                    ("native per-call, points/s", "native per-call points/s"),
                ],
            ),
            "",
        ]
    if "overhead" in ran:
        lines += [
            "## Training overhead",
            "",
            f"`bench/overhead.py`'s fast loop: a small MLP, one torch thread, about "
            f"{_num(fig.median('overhead', '-', 'no-logging step') or 0)} ms a step here, 5 metrics a "
            "step (the loss as a 0-d tensor). "
            "Overhead = median step time over the median of the no-logging runs (one per repetition). "
            f"{plan['overhead_steps']:,} steps a variant "
            f"({plan['overhead_server_native_steps']} for the MLflow server's native per-step call, ~50 "
            "ms each).",
            "",
            *_table(
                fig,
                "overhead",
                [
                    ("step time native ÷ tracelet", "step time native ÷ tracelet"),
                    ("tracelet overhead", "tracelet fast loop"),
                    ("native per-step call overhead", "native fast loop"),
                ],
            ),
            "",
        ]
    if "latency" in ran:
        lines += [
            "## Caller latency",
            "",
            f"tracelet: {plan['latency_calls']:,} `log_metric` calls of each type, each timed, after a "
            "backlog of "
            f"{plan['latency_backlog']:,} points, so delivery is busy while they run. Native: the "
            "per-call API's own calls "
            "(a tensor through `.item()`, as a user must). `start_logging` includes `import tracelet`; "
            "`stop_logging` waits for everything to land.",
            "",
            *_table(
                fig,
                "latency",
                [
                    ("native ÷ tracelet, float p50", "native ÷ tracelet float p50"),
                    ("native ÷ tracelet, tensor p50", "native ÷ tracelet tensor p50"),
                    ("native ÷ tracelet, float p99", "native ÷ tracelet float p99"),
                    ("native ÷ tracelet, tensor p99", "native ÷ tracelet tensor p99"),
                    ("tracelet float p50 / p99 (µs)", "tracelet float p50"),
                    ("", "tracelet float p99"),
                    ("tracelet tensor p50 / p99 (µs)", "tracelet tensor p50"),
                    ("", "tracelet tensor p99"),
                    ("native float p50 / p99 (µs)", "native float p50"),
                    ("", "native float p99"),
                    ("native tensor p50 / p99 (µs)", "native tensor p50"),
                    ("", "native tensor p99"),
                    ("`start_logging` (s)", "tracelet start_logging"),
                    ("`stop_logging` (s)", "tracelet stop_logging"),
                    ("native run create (s)", "native start"),
                    ("native close (s)", "native close"),
                ],
            ),
            "",
        ]
    if "artifacts" in ran:
        lines += [
            "## Artifacts",
            "",
            "Each artifact timed three ways: how long the caller was blocked (tracelet: `log_artifact`, "
            "which snapshots the file; the native calls block until stored), until it is stored "
            "(tracelet: `log_artifact` then `flush()`), and back (tracelet: one "
            "`tracelet.testing.read_artifact_tree` call; native: MLflow `download_artifacts`; W&B and "
            "ClearML offline have no download call, so their native side reads the files where the client "
            "put them), every byte read. W&B's native call is `Artifact.add_file`/`add_dir` + "
            "`log_artifact`. Extra disk at peak: tracelet's snapshots that waited for a store and are not "
            "its copy (on the file-based stores the snapshot is linked into place: none), native: W&B's "
            "cache copy.",
            "",
            *_table(
                fig,
                "artifacts",
                [
                    *[
                        (f"{label}: caller blocked, tracelet ÷ native", f"block {label} tracelet ÷ native")
                        for label in plan["artifacts"]
                    ],
                    *[
                        (f"{label}: stored, tracelet − native (ms)", f"stored {label} tracelet − native")
                        for label in plan["artifacts"]
                    ],
                    *[
                        (f"{way} {label}: tracelet ÷ native", f"{way} {label} tracelet ÷ native")
                        for way in ("upload", "download")
                        for label in plan["artifacts"]
                    ],
                    *[
                        (f"{label}: extra disk at peak, {kind} (%)", f"extra disk {label} {kind}")
                        for label in plan["artifacts"]
                        for kind in ("tracelet", "native")
                    ],
                    *[
                        (f"{way} {label}, {kind} (MB/s)", f"{way} {label} {kind} MB/s")
                        for way in ("upload", "download")
                        for label in plan["artifacts"]
                        for kind in ("tracelet", "native")
                    ],
                ],
            ),
            "",
        ]
    if "memory" in ran:
        lines += [
            "## Memory",
            "",
            f"Peak RSS while logging {plan['points'][-1]:,} points over 10 keys "
            f"({plan.get('top_reps', plan['reps'])} repetitions, the suite's longest runs), sampled every "
            "50 ms from outside: the "
            "training process, and its helper processes (tracelet's delivery agent; W&B's `wandb-core` "
            "on both sides).",
            "",
            *_table(
                fig,
                "memory",
                [
                    ("native ÷ tracelet, total", "native ÷ tracelet total"),
                    ("tracelet: trainer (MB)", "tracelet trainer peak MB"),
                    ("tracelet: helpers (MB)", "tracelet helpers peak MB"),
                    ("tracelet: total (MB)", "tracelet total peak MB"),
                    ("native: trainer (MB)", "native trainer peak MB"),
                    ("native: helpers (MB)", "native helpers peak MB"),
                    ("native: total (MB)", "native total peak MB"),
                ],
            ),
            "",
        ]
    if "scalability" in ran:
        lines += [
            "## Scalability",
            "",
            "Cost per delivered point (µs), from the first log call until the run is closed, over 10 keys; "
            f"then {plan['keys_points']:,} points over 1 to {plan['keys'][-1]:,} keys.",
            "",
            *_table(
                fig,
                "scalability",
                [
                    *[
                        (f"tracelet @ {p:,} points", f"tracelet µs/point @ {p:,} points")
                        for p in plan["points"]
                    ],
                    *[(f"native @ {p:,} points", f"native µs/point @ {p:,} points") for p in plan["points"]],
                    *[(f"tracelet @ {k:,} keys", f"tracelet µs/point @ {k:,} keys") for k in plan["keys"]],
                    *[(f"native @ {k:,} keys", f"native µs/point @ {k:,} keys") for k in plan["keys"]],
                    *[
                        (f"native ÷ tracelet @ {p:,} points", f"native ÷ tracelet @ {p:,} points")
                        for p in plan["points"]
                    ],
                ],
            ),
            "",
            "Where tracelet's cost per point stops being flat, and whose cost it is:",
            "",
            *[f"- {LABELS.get(s, s)}: {flatness(fig, s, plan)}" for s in fig.stores],
            "",
        ]
    verdicts = list(comparison.targets) if comparison is not None else []
    newly = list(comparison.newly_missed) if comparison is not None else []
    if "sweep" in ran:
        lines += [
            "## Sweep",
            "",
            f"{plan.get('sweep_runs', '?')} runs one after the other in one process, as a hyperparameter "
            "sweep runs them, inside a git repository (tracelet records the commit a run started from); "
            f"each: open a run, log 3 params and {plan.get('sweep_points', 0):,} losses, close it with "
            "everything stored. "
            "The whole sweep is timed from before `import tracelet` (native: before the client's import, "
            "inside its first run) until the last run is closed; `start_logging` is what the call took the "
            "caller, over every run, the first included; a run after the first is the median over runs "
            "2..N, from opening it until `stop_logging()` returned (native: the close). Native: the store's "
            "bulk API, as in the throughput measure. Each target is judged on the median over the "
            "repetitions.",
            "",
            *sweep_table(fig, verdicts),
            "",
        ]
    lines += ["## Targets", "", "What tracelet promises (`bench/targets.py`), judged on this run:", ""]
    lines += [*targets_section(verdicts, newly), ""]
    if made:
        lines += [
            "## Plots",
            "",
            *[f"![{caption}]({name})\n\n*{caption}.*\n" for name, caption in made],
        ]
    lines += [
        "## Trend",
        "",
    ]
    if comparison is None or not comparison.has_baseline:
        key = comparison.key if comparison is not None else "?"
        lines.append(
            f"No baseline for `{key}` yet: nothing compared. `nox -s bench -- --update-baseline` commits one "
            f"(`bench/results/baseline-{key}.json`)."
        )
    else:
        regressed = comparison.regressions
        lines.append(
            f"Compared with `bench/results/baseline-{comparison.key}.json`: "
            f"{len(comparison.verdicts)} figures, "
            f"{len(regressed)} regressed beyond their measured spread."
        )
        lines += ["", *[f"- ⚠ {v.describe()}" for v in regressed]]
        lines += [f"- note: {w}" for w in comparison.warnings]
    advised = advice(fig, plan)
    if advised:
        lines += ["", "## Which backend for which load", "", *advised, ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path

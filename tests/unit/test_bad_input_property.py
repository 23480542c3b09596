"""Generated calls to the public API: each raises on the caller's thread, or lands exactly as given.

``hypothesis`` drives ``log_metric``, ``log_metrics``, ``log_params`` and ``set_tags``
with generated names, values and steps, all into one real run (the ``memory`` fake
records what the store got). For every call the test keeps a model of what must land:

* a call may raise only ``TypeError`` or ``ValueError``, and then nothing of it lands;
* a call that returns lands exactly: names as spelled, values as numbers (NaN as NaN),
  steps as given or one past the key's last, params and tags as strings, secret-looking
  keys as ``***`` (the rules of ``docs/bad-input.md``);
* after 500 calls the writer has delivered everything it was sent, and nothing else.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tracelet
from tests.unit.fakes import run_view
from tracelet.events import Metric, Params, Tags
from tracelet.redaction import Redactor

EXAMPLES = 500

names = st.one_of(
    st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,8}(/[A-Za-z0-9_.\-]{1,6}){0,2}\Z"),
    st.text(max_size=12),
    st.sampled_from(["a/../b", "..", "/x", "x/", "tracelet/y", "system/y", "a b", "é", "n" * 251]),
    st.integers(),
    st.none(),
)
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.booleans(),
    st.text(max_size=5),
    st.none(),
    st.complex_numbers(max_magnitude=10),
    st.lists(st.floats(), max_size=2),
)
steps = st.one_of(st.none(), st.integers(min_value=-3, max_value=10**6), st.floats(), st.text(max_size=3))
param_values = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.none(),
    st.lists(st.integers(), max_size=3),
)
calls = st.one_of(
    st.tuples(st.just("log_metric"), names, values, steps),
    st.tuples(st.just("log_metrics"), st.dictionaries(names, values, max_size=3), steps),
    st.tuples(st.just("log_params"), st.dictionaries(names, param_values, max_size=3)),
    st.tuples(st.just("set_tags"), st.dictionaries(names, param_values, max_size=3)),
)


def _number(value: Any) -> float:
    return float(int(value) if isinstance(value, bool) else value)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_generated_calls_raise_or_land_exactly(tmp_path: Path) -> None:
    exp = tracelet.start_logging(exp_name="generated", backend="memory")
    run_id = exp.runs["memory"]
    redactor = Redactor()
    model: list[tuple[Any, ...]] = []  # what must land, in order
    last_step: dict[str, int] = {}
    params: dict[str, str] = {}
    outcomes = {"raised": 0, "landed": 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(call=calls)
    def one(call: tuple[Any, ...]) -> None:
        method, *args = call
        try:
            getattr(exp, method)(*args)
        except (TypeError, ValueError):
            outcomes["raised"] += 1
            return  # anything else fails the test: only these two may reach the caller
        outcomes["landed"] += 1
        if method == "log_metric":
            name, value, step = args
            step = last_step.get(name, -1) + 1 if step is None else step
            last_step[name] = step
            model.append(("metric", name, _number(value), step))
        elif method == "log_metrics":
            metrics, step = args
            for name, value in metrics.items():
                at = last_step.get(name, -1) + 1 if step is None else step
                last_step[name] = at
                model.append(("metric", name, _number(value), at))
        elif method == "log_params":
            new = {k: redactor.text(str(redactor.value(k, v))) for k, v in args[0].items()}
            new = {k: v for k, v in new.items() if k not in params}
            params.update(new)
            if new:
                model.append(("params", new))
        else:
            tags = {k: redactor.text(str(redactor.value(k, v))) for k, v in args[0].items()}
            if tags:
                model.append(("tags", tags))

    one()
    report = tracelet.stop_logging(flush_timeout=60)
    assert report.ok, report.format()
    assert report["memory"].delivered == report["memory"].sent
    assert outcomes["raised"] > 50, outcomes  # the generators do reach the refusals
    assert outcomes["landed"] > 50, outcomes  # ... and the accepted calls

    landed: list[tuple[Any, ...]] = []
    for event in run_view(run_id).events:
        if isinstance(event, Metric):
            landed.append(("metric", event.name, _number(event.value), event.step))
        elif isinstance(event, Params):
            landed.append(("params", dict(event.values)))
        elif isinstance(event, Tags) and not event.system:
            landed.append(("tags", dict(event.values)))
    assert len(landed) == len(model)
    for got, want in zip(landed, model, strict=True):
        if got[0] == "metric":
            assert got[0:2] == want[0:2]
            assert got[3] == want[3], (got, want)
            assert _same(got[2], want[2]), (got, want)
        else:
            assert got == want

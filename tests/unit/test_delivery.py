"""What both delivery modes share: retries with backoff, batch splitting, the dead-letter file."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

import tracelet
from tests.unit.fakes import REFUSED_NAME, FlakyBackend, release, run_view
from tracelet.delivery import writer as writer_module
from tracelet.delivery.writer import BackendWriter
from tracelet.events import Metric
from tracelet.spool import Spool, sync
from tracelet.testing import read_run

pytestmark = pytest.mark.usefixtures("delivery_mode")


def test_transient_errors_are_retried_and_counted() -> None:
    exp = tracelet.start_logging(backend="flaky", backend_options={"flaky": {"fail_times": 3}})
    for i in range(2000):
        exp.log_metric("loss", float(i), i)
    report = tracelet.stop_logging(flush_timeout=30)
    r = report["flaky"]
    assert r.ok
    assert r.delivered == 2000
    assert r.retries == 3
    assert "retries=3" in report.format()
    assert [(m.step, m.value) for m in run_view(exp.runs["flaky"]).metrics] == [
        (i, float(i)) for i in range(2000)
    ]


def test_a_transient_error_while_closing_the_run_is_retried() -> None:
    """A store that is busy at the very end (sqlite locked by a reader) still gets its run closed."""
    exp = tracelet.start_logging(
        backend="flaky", backend_options={"flaky": {"fail_times": 0, "finish_fails": 2}}
    )
    exp.log_metric("loss", 1.0, 0)
    report = tracelet.stop_logging(status="killed", flush_timeout=30)
    assert report.ok, report.format()
    view = run_view(exp.runs["flaky"])
    assert view.status == "killed"
    assert view._meta()["finish_failures"] == 2


def test_a_partly_applied_batch_is_retried_without_duplicates() -> None:
    exp = tracelet.start_logging(backend="flaky", backend_options={"flaky": {"fail_times": 2, "partial": 7}})
    for i in range(500):
        exp.log_metric("loss", float(i), i)
    report = tracelet.stop_logging(flush_timeout=30)
    assert report.ok
    assert report["flaky"].retries == 2
    steps = [m.step for m in run_view(exp.runs["flaky"]).metrics]
    assert steps == list(range(500))  # the landed prefix was not sent again


def test_one_refused_event_does_not_sink_its_batch() -> None:
    """Like MLflow's INVALID_PARAMETER_VALUE: the batch is split, every good event lands."""
    exp = tracelet.start_logging(backend="refusing")
    for i in range(1000):
        exp.log_metric("loss", float(i), i)
        if i == 600:
            exp.log_metric(REFUSED_NAME, 1.0, i)  # passes tracelet's check; the store refuses it
    report = tracelet.stop_logging()
    r = report["refusing"]
    assert (r.sent, r.delivered, r.failed, r.pending) == (1001, 1000, 1, 0)
    assert r.retries == 0
    assert r.dead_letter_path is not None
    (line,) = Path(r.dead_letter_path).read_text().splitlines()
    dead = json.loads(line)
    assert dead["name"] == REFUSED_NAME
    assert "INVALID_PARAMETER_VALUE" in dead["reason"]
    assert [m.step for m in run_view(exp.runs["refusing"]).metrics] == list(range(1000))


def test_a_dead_letter_is_replayed_by_sync() -> None:
    """Refused while the store refuses it, replayed once the store takes it (the gate opens)."""
    exp = tracelet.start_logging(exp_name="dl", project="p", backend="refusing-local")
    exp.log_metric("ok", 1.0, 0)
    exp.log_metric(REFUSED_NAME, 2.0, 0)
    report = tracelet.stop_logging()
    r = report["refusing-local"]
    assert (r.sent, r.delivered, r.failed, r.pending) == (2, 1, 1, 0)
    assert r.dead_letter_path is not None
    release()  # the store is fixed
    replayed = sync(Path(r.dead_letter_path).parent)
    assert sum(replayed.values()) == 1
    record = read_run("local", exp.runs["refusing-local"])  # type: ignore[arg-type]
    assert record.metrics == {"ok": [(0, 1.0)], REFUSED_NAME: [(0, 2.0)]}
    assert sum(sync(Path(r.dead_letter_path).parent).values()) == 0  # exactly once


def test_a_store_wide_refusal_is_not_split_event_by_event() -> None:
    exp = tracelet.start_logging(backend=["failing", "memory"])
    for i in range(5000):
        exp.log_metric("loss", float(i), i)
    report = tracelet.stop_logging()
    failing = report["failing"]
    assert failing.failed == 5000
    assert failing.dead_letter_path is not None
    reasons = [json.loads(line)["reason"] for line in Path(failing.dead_letter_path).read_text().splitlines()]
    assert len(reasons) == 5000  # every event kept
    assert "refused store-wide: PermissionError: store refuses everything" in reasons
    calls = (run_view(exp.runs["failing"]).dir / "calls.txt").read_text().split()
    assert len(calls) < 100  # not two calls per event
    assert report["memory"].delivered == 5000


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_backoff_doubles_up_to_its_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(writer_module, "_monotonic", clock.monotonic)
    monkeypatch.setattr(writer_module, "_sleep", clock.sleep)
    backend = FlakyBackend({"fail_times": 8})
    from tracelet.backends.base import RunInfo

    backend.start(RunInfo("p", "r"))
    writer = BackendWriter(backend, Spool(tmp_path / "spool", {}), interval=0.01)
    writer.put(("metric", "x", 1.0, 0, 1.0))
    done = threading.Event()

    def deliver() -> None:
        writer._deliver([Metric("x", 1.0, 0, 1.0)], False)
        done.set()

    thread = threading.Thread(target=deliver)
    thread.start()
    thread.join(10)
    assert done.is_set()
    delays = [writer_module.backoff_delay(i) for i in range(8)]
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert clock.now == pytest.approx(sum(delays))  # it waited exactly that long, in short slices
    assert max(clock.sleeps) <= 0.05  # so a stop that gives up is noticed at once
    assert run_view(backend.run_id).metrics == [Metric("x", 1.0, 0, 1.0)]
    assert writer.retries == 8


def test_start_returns_before_the_run_is_open_and_the_early_events_land_in_order() -> None:
    """The store opens its run only when the gate opens: a start that waited for it would never return."""
    exp = tracelet.start_logging(exp_name="early", backend="gated-start", config={"lr": 0.1})
    for i in range(500):
        exp.log_metric("loss", float(i), i)
    assert exp.flush(0.3) is False  # nothing can land while the run is not open
    release()
    report = tracelet.stop_logging(flush_timeout=30)
    assert report.ok, report.format()
    run = run_view(exp.runs["gated-start"])
    assert [(m.step, m.value) for m in run.metrics] == [(i, float(i)) for i in range(500)]
    assert run.status == "finished"


def test_a_store_that_refuses_to_open_is_reported_and_its_events_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exp = tracelet.start_logging(backend="failing", backend_options={"failing": {"fail_start": True}})
    for i in range(10):
        exp.log_metric("x", float(i), i)
    assert exp.runs == {"failing": None}
    r = tracelet.stop_logging()["failing"]
    assert (r.sent, r.delivered, r.failed + r.pending) == (10, 0, 10)
    assert any("no server" in e for e in r.errors)
    assert r.dead_letter_path is not None
    kept = Path(r.dead_letter_path).read_text().splitlines()
    assert len(kept) == 10
    errors = [rec.getMessage() for rec in caplog.records if rec.levelname == "ERROR"]
    assert sum("failing could not open a run" in m for m in errors) == 1

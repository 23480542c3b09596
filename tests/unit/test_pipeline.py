"""Delivery: order, batching, backpressure, the spool, failures and the invariant, in both modes."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest

import tracelet
from tests.unit.fakes import hold, release, run_view, wait_for
from tracelet.api import start_logging
from tracelet.config import resolve
from tracelet.events import Metric
from tracelet.experiment import Experiment
from tracelet.spool import sync
from tracelet.testing import read_run

pytestmark = pytest.mark.usefixtures("delivery_mode")


def experiment(backend: str, **writer_options: int) -> Experiment:
    settings = resolve(exp_name="run", project="proj", backend=[backend], backend_options=None)
    return Experiment(settings, writer_options=writer_options)


def assert_invariant(report: tracelet.DeliveryReport) -> None:
    for r in report.backends.values():
        assert r.sent == r.delivered + r.failed + r.pending + r.dropped, r


def test_each_key_arrives_in_call_order_in_batches() -> None:
    exp = start_logging(backend="memory")
    steps = [5, 3, 3, 9, 0, 1]  # steps going down and repeating must survive as logged
    for i in range(3000):
        exp.log_metric("a", float(i), steps[i % len(steps)])
        exp.log_metric("b", -float(i))
    report = tracelet.stop_logging()
    backend = run_view(exp.runs["memory"])
    a = [(e.step, e.value) for e in backend.events if isinstance(e, Metric) and e.name == "a"]
    assert a == [(steps[i % len(steps)], float(i)) for i in range(3000)]
    b = [e.value for e in backend.events if isinstance(e, Metric) and e.name == "b"]
    assert b == [-float(i) for i in range(3000)]
    assert len(backend.batches) < 6000  # batched, not one call per point
    assert max(backend.batches) > 1
    assert report["memory"].sent == report["memory"].delivered == 6000
    assert_invariant(report)


def test_every_point_reaches_the_store_with_its_own_millisecond_per_key() -> None:
    """The delivery stamps timestamps before anything keeps a point (MLflow's row identity).

    Thousands of points a second share wall-clock milliseconds; each key's stamps must still be
    strictly increasing, whole milliseconds, near the clock, and independent between keys.
    """
    before = time.time()
    exp = start_logging(backend="memory")
    for i in range(3000):
        exp.log_metric("a", float(i), i)
        if i % 2:
            exp.log_metric("b", float(i), i)
    tracelet.stop_logging()
    events = [e for e in run_view(exp.runs["memory"]).events if isinstance(e, Metric)]
    for key, count in (("a", 3000), ("b", 1500)):
        stamps = [round(e.timestamp * 1000) for e in events if e.name == key]
        assert len(stamps) == count
        assert all(later > earlier for earlier, later in itertools.pairwise(stamps))
        assert all(abs(e.timestamp * 1000 - round(e.timestamp * 1000)) < 1e-3 for e in events)
        assert stamps[0] >= int(before * 1000)
    a_first = round(events[0].timestamp * 1000)
    b_first = next(round(e.timestamp * 1000) for e in events if e.name == "b")
    assert b_first - a_first < 3000  # b's clock did not continue after a's


def test_what_waits_for_the_runs_to_open_is_bounded_in_memory_and_lands_in_order() -> None:
    """A store that takes its time to open while the loop logs: memory holds ``maxsize``, the rest spills."""
    exp = experiment("gated-start", maxsize=100)
    for i in range(1000):
        exp.log_metric("loss", float(i), i)
    waiting = exp.spool_dir / "queue" / "events.jsonl"
    wait_for(lambda: waiting.exists() and len(waiting.read_text().splitlines()) >= 900, 10, "the spill")
    release()
    report = exp.stop(flush_timeout=30)
    assert report.ok, report.format()
    assert_invariant(report)
    run = run_view(exp.runs["gated-start"])
    assert [(m.step, m.value) for m in run.metrics] == [(i, float(i)) for i in range(1000)]
    assert not waiting.exists()  # handed over and removed


def test_runs_that_never_open_keep_memory_and_spill_in_order_for_sync(
    monkeypatch: pytest.MonkeyPatch, delivery_mode: str
) -> None:
    """The stop gives up on an open that never comes: what waited in memory goes in front of what spilled.

    In thread mode the open goes on and succeeds once the store answers: those runs are closed
    empty (failed), and nothing is delivered twice. The agent mode killed its agent at the stop.
    """
    from tests.unit.fakes import all_runs

    monkeypatch.setenv("TRACELET_AGENT_TIMEOUT", "1")
    exp = experiment("gated-start", maxsize=100)
    for i in range(1000):
        exp.log_metric("loss", float(i), i)
    r = exp.stop(flush_timeout=1)["gated-start"]
    assert (r.sent, r.delivered, r.pending) == (1000, 0, 1000), r
    release()  # the store opens runs again
    if delivery_mode == "thread":
        wait_for(lambda: [r.status for r in all_runs()] == ["failed"], 10, "the late run to be closed")
    sync(exp.spool_dir)
    late, synced = ([], all_runs()) if delivery_mode == "agent" else ([all_runs()[0]], all_runs()[1:])
    assert [(r.metrics, r.status) for r in late] == [([], "failed")] * len(late)
    (run,) = synced
    assert [(m.step, m.value) for m in run.metrics] == [(i, float(i)) for i in range(1000)]


def test_threads_keep_their_own_order() -> None:
    exp = start_logging(backend="memory")

    def work(key: str) -> None:
        for i in range(2000):
            exp.log_metric(key, float(i), i)

    threads = [threading.Thread(target=work, args=(f"worker{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = tracelet.stop_logging()
    events = run_view(exp.runs["memory"]).events
    for n in range(4):
        assert [e.step for e in events if isinstance(e, Metric) and e.name == f"worker{n}"] == list(
            range(2000)
        )
    assert report["memory"].sent == report["memory"].delivered == 8000


def test_flush_delivers_without_stopping() -> None:
    exp = start_logging(backend="memory")
    exp.log_metric("a", 1.0)
    assert exp.flush(5)
    assert [e.value for e in run_view(exp.runs["memory"]).events] == [1.0]  # type: ignore[union-attr]
    tracelet.stop_logging()


def test_backpressure_bounds_memory_and_loses_nothing() -> None:
    maxsize = 50
    exp = experiment("blocking", maxsize=maxsize, batch_size=10)
    for i in range(100 * maxsize):
        exp.log_metric("loss", float(i), i)
    # In agent mode the surplus reaches the disk asynchronously (shipped, then spooled by the
    # agent): wait for it, with a deadline. Memory stays bounded; everything past it is on disk.
    bound = 99 * maxsize - 200_000 // maxsize
    wait_for(
        lambda: sum(len(p.read_text().splitlines()) for p in exp.spool_dir.rglob("events.jsonl")) >= bound,
        20,
        f"at least {bound} events in the spool",
    )
    release()
    report = exp.stop(flush_timeout=30)
    values = [e.value for e in run_view(exp.runs["blocking"]).metrics]
    assert values == [float(i) for i in range(100 * maxsize)]
    assert report["blocking"].delivered == 100 * maxsize
    assert report.ok
    assert_invariant(report)
    assert not exp.spool_dir.exists()  # delivered everything: nothing left to replay


def test_spool_then_memory_then_spool_keeps_order() -> None:
    exp = experiment("blocking", maxsize=5, batch_size=3)
    for i in range(40):
        exp.log_metric("x", float(i), i)
    release()
    assert exp.flush(10)
    hold()
    for i in range(40, 80):
        exp.log_metric("x", float(i), i)
    release()
    exp.stop(flush_timeout=10)
    assert [e.step for e in run_view(exp.runs["blocking"]).metrics] == list(range(80))


def test_a_failing_backend_never_stops_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    exp = start_logging(backend=["failing", "memory"])
    for i in range(1000):
        exp.log_metric("loss", float(i), i)
    report = tracelet.stop_logging()
    assert report["memory"].delivered == 1000
    assert report["memory"].ok
    failing = report["failing"]
    assert failing.failed == failing.sent == 1000
    assert failing.delivered == 0
    assert "store refuses everything" in failing.errors[0]
    assert failing.dead_letter_path is not None
    dead = Path(failing.dead_letter_path).read_text().splitlines()
    assert len(dead) == 1000  # refused, but kept with the store's reason
    assert "refuses everything" in dead[0]
    assert not report.ok
    assert_invariant(report)

    monkeypatch.setenv("TRACELET_STRICT", "1")
    exp = start_logging(backend=["failing", "memory"])
    exp.log_metric("loss", 1.0)
    with pytest.raises(tracelet.DeliveryError, match=r"failing +sent=1 delivered=0 failed=1"):
        tracelet.stop_logging()
    assert tracelet.get_active_experiment() is None


def test_a_backend_that_cannot_start_is_reported() -> None:
    exp = start_logging(backend=["failing", "memory"], backend_options={"failing": {"fail_start": True}})
    assert exp.runs["failing"] is None
    exp.log_metric("loss", 1.0)
    report = tracelet.stop_logging()
    assert report["failing"].failed == 1
    assert "start failed" in report["failing"].errors[0]
    assert report["memory"].ok


def test_stop_timeout_spools_leftovers_and_sync_replays_them_once(tmp_path: Path) -> None:
    exp = start_logging(exp_name="stalled", project="p", backend="stalling-local")
    for i in range(500):
        exp.log_metric("loss", float(i), i)
    exp.log_params({"lr": 0.1})
    t0 = time.monotonic()
    report = tracelet.stop_logging(flush_timeout=0.5)
    assert time.monotonic() - t0 < 5
    r = report["stalling-local"]
    assert r.pending == 501
    assert r.delivered == 0
    assert r.spool_path
    assert_invariant(report)
    assert report.status == "finished"

    release()  # in thread mode, the stuck write now completes: one batch lands late
    time.sleep(0.3)
    replayed = sync(Path(r.spool_path))
    record = read_run("local", exp.runs["stalling-local"])  # type: ignore[arg-type]
    assert record.metrics["loss"] == [(i, float(i)) for i in range(500)]  # late write + replay, no overlap
    assert record.params == {"lr": "0.1"}
    assert record.status == "finished"
    assert replayed  # the spool was found and replayed (or skipped what landed late)
    again = sync(Path(r.spool_path))
    assert again
    assert sum(again.values()) == 0
    assert read_run("local", exp.runs["stalling-local"]).metrics["loss"] == record.metrics["loss"]  # type: ignore[arg-type]


def test_a_full_spool_disk_never_reaches_training_and_what_it_refused_is_counted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The store is stalled and the disk under the spool is full: training goes on, nothing is hidden."""
    import errno

    from tracelet.spool import Spool

    def disk_full(self: Spool, raws: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Spool, "append", disk_full)  # in this process: the trainer's side, or thread mode
    monkeypatch.setenv("TRACELET_STRICT", "1")
    exp = experiment("blocking", maxsize=50, batch_size=10)
    for i in range(5000):
        exp.log_metric("loss", float(i), i)  # never raises into the training loop
    release()
    with pytest.raises(tracelet.DeliveryError) as info:
        exp.stop(flush_timeout=30)
    r = info.value.report["blocking"]
    assert r.dropped > 0
    assert r.sent == 5000
    assert r.sent == r.delivered + r.failed + r.pending + r.dropped
    assert r.pending == 0  # nothing sits in a spool: it could not be written
    assert any("No space left on device" in e for e in r.errors)
    disk_errors = [
        rec for rec in caplog.records if rec.levelname == "ERROR" and "No space left" in rec.getMessage()
    ]
    assert len(disk_errors) == 1
    assert str(exp.spool_dir) in disk_errors[0].getMessage()
    landed = [e.value for e in run_view(exp.runs["blocking"]).metrics]
    assert len(landed) == r.delivered
    assert landed == sorted(landed)  # what landed is in order, with the dropped ones missing

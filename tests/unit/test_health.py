"""``Experiment.health()`` while the run goes on, and the lag WARNING, in both delivery modes."""

from __future__ import annotations

import logging

import pytest

import tracelet
from tests.unit.fakes import hold, release, run_view, wait_for
from tracelet.delivery.health import MARK_EVERY, Arrivals, LagWatch, Progress, backend_health
from tracelet.report import BackendHealth, DeliveryHealth


def _lag_warnings(caplog: pytest.LogCaptureFixture, backend: str) -> tuple[list[str], list[str]]:
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    behind = [m for m in messages if m.startswith(f"tracelet: {backend} is ") and "behind" in m]
    caught_up = [m for m in messages if m.startswith(f"tracelet: {backend} caught up")]
    return behind, caught_up


@pytest.mark.usefixtures("delivery_mode")
def test_a_stalled_store_shows_in_health_and_warns_once_each_way(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TRACELET_LAG_WARN", "1")
    caplog.set_level(logging.WARNING, logger="tracelet")
    hold()  # the store takes nothing until released
    exp = tracelet.start_logging(backend="blocking")
    for i in range(300):
        exp.log_metric("loss", float(i), i)
    wait_for(lambda: exp.health()["blocking"].lag > 1.5, what="the lag to pass 1.5 s")
    stalled = exp.health()["blocking"]
    assert stalled.accepted == 300
    assert stalled.delivered == 0
    assert stalled.queued + stalled.pending == 300
    wait_for(lambda: _lag_warnings(caplog, "blocking")[0], what="the lag WARNING")
    later = exp.health()["blocking"].lag
    assert later >= stalled.lag  # the same events wait: the lag only grows
    release()
    wait_for(lambda: exp.health()["blocking"].delivered == 300, what="delivery after the release")
    caught_up = exp.health()["blocking"]
    assert caught_up.lag == 0.0
    assert caught_up.queued == caught_up.pending == caught_up.failed == 0
    wait_for(lambda: _lag_warnings(caplog, "blocking")[1], what="the caught-up WARNING")
    report = tracelet.stop_logging(flush_timeout=30)
    assert report.ok, report.format()
    behind, recovered = _lag_warnings(caplog, "blocking")
    assert len(behind) == 1, behind
    assert len(recovered) == 1, recovered
    assert "TRACELET_LAG_WARN=1s" in behind[0]


@pytest.mark.usefixtures("delivery_mode")
def test_retries_and_the_last_error_show_while_the_run_goes_on() -> None:
    exp = tracelet.start_logging(backend="flaky", backend_options={"flaky": {"fail_times": 2}})
    for i in range(50):
        exp.log_metric("loss", float(i), i)
    assert exp.flush(timeout=30)
    wait_for(lambda: exp.health()["flaky"].delivered == 50, what="the acknowledgement")
    health = exp.health()
    assert isinstance(health, DeliveryHealth)
    flaky = health["flaky"]
    assert isinstance(flaky, BackendHealth)
    assert flaky.retries == 2
    assert flaky.last_error is not None
    assert "ConnectionRefusedError" in flaky.last_error
    assert (flaky.lag, flaky.queued, flaky.pending, flaky.failed) == (0.0, 0, 0, 0)
    assert health.lag == 0.0
    assert list(health) == ["flaky"]
    tracelet.stop_logging()


@pytest.mark.usefixtures("delivery_mode")
def test_refused_events_count_as_failed_not_as_lag() -> None:
    exp = tracelet.start_logging(backend="failing")
    for i in range(20):
        exp.log_metric("loss", float(i), i)
    assert exp.flush(timeout=30)
    wait_for(lambda: exp.health()["failing"].failed == 20, what="the refusals to be acknowledged")
    failing = exp.health()["failing"]
    assert failing.delivered == 0
    assert failing.lag == 0.0  # refused and kept for tracelet sync: nothing waits for the store
    assert failing.last_error is not None
    assert "store refuses everything" in failing.last_error
    tracelet.stop_logging()


def test_health_after_the_stop_keeps_the_final_counts() -> None:
    exp = tracelet.start_logging(backend="memory")
    exp.log_metric("loss", 1.0, 0)
    tracelet.stop_logging()
    assert run_view(exp.runs["memory"]).status == "finished"
    final = exp.health()["memory"]
    assert (final.accepted, final.delivered, final.lag) == (1, 1, 0.0)


# -- the parts ---------------------------------------------------------------------------------
def test_arrivals_date_the_oldest_waiting_event_to_within_a_mark() -> None:
    arrivals = Arrivals()
    arrivals.mark(10, 100.0)  # events 0-9 by t=100
    arrivals.mark(25, 100.0 + MARK_EVERY / 2)  # too soon after the last: no mark
    arrivals.mark(10, 100.5)  # nothing new: no mark
    arrivals.mark(25, 101.0)  # events 10-24 by t=101 (the lag of event 10 is under-told by < 1 s here)
    arrivals.mark(40, 102.0)
    assert arrivals.oldest(0) == 100.0
    assert arrivals.oldest(9) == 100.0
    assert arrivals.oldest(10) == 101.0
    assert arrivals.oldest(25) == 102.0
    assert arrivals.oldest(40) is None  # nothing marked waits
    arrivals.forget(10)
    assert arrivals.oldest(10) == 101.0
    assert arrivals.oldest(0) == 101.0  # forgotten marks are never needed: every store passed them


def test_arrivals_stay_short_when_every_store_keeps_up() -> None:
    arrivals = Arrivals()
    for i in range(1, 10_001):
        arrivals.mark(i * 10, i * 1.0)
        arrivals.forget(i * 10 - 10)
    assert len(arrivals) < 200  # sliced off in bulk, not one by one


def test_backend_health_adds_up() -> None:
    arrivals = Arrivals()
    arrivals.mark(100, 10.0)
    progress = Progress(received=90, delivered=50, failed=5, durable=80, retries=3, spooled=25, dropped=1)
    health = backend_health("x", 100, progress, 4, 2, arrivals, 12.5)
    assert health.accepted == 100
    assert health.pending == 29
    assert health.dropped == 3
    assert health.delivered + health.failed + health.pending + health.queued + health.dropped == 100
    assert health.lag == 2.5
    done = backend_health(
        "x",
        100,
        Progress(delivered=100, durable=100),
        0,
        0,
        arrivals,
        99,
    )
    assert done.lag == 0.0


def test_lag_watch_warns_once_each_way(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tracelet")
    watch = LagWatch(10.0)

    def health(lag: float) -> DeliveryHealth:
        return DeliveryHealth({"s": BackendHealth("s", 1, 0, 0, 0, 1, 0, lag, None)})

    for lag in (0.0, 11.0, 30.0, 9.0, 6.0, 4.0, 3.0, 12.0):
        watch.check(health(lag))
    messages = [r.getMessage() for r in caplog.records]
    assert [m.split(" ")[2] for m in messages] == ["is", "caught", "is"]  # 11: behind; 4: back; 12: again
    LagWatch(0).check(health(1e9))  # 0: never
    assert len(caplog.records) == 3

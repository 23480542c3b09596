"""The metric clock: each key's points get final, strictly increasing millisecond timestamps."""

from __future__ import annotations

from tracelet.events import Metric, MetricClock, timestamp_ms


def test_points_sharing_a_millisecond_move_on_one_millisecond_each_per_key() -> None:
    clock = MetricClock()
    t = 1_765_000_000.1234
    stamped = [clock.stamp(("metric", key, 0.0, 0, t)) for key in ("a", "a", "b", "a", "b")]
    assert [round(s[4] * 1000) for s in stamped] == [
        1_765_000_000_123,
        1_765_000_000_124,
        1_765_000_000_123,
        1_765_000_000_125,
        1_765_000_000_124,
    ]


def test_a_clock_going_back_never_moves_a_key_back() -> None:
    clock = MetricClock()
    first = clock.stamp(("metric", "a", 0.0, 0, 100.0))
    second = clock.stamp(("metric", "a", 0.0, 1, 99.0))
    assert timestamp_ms(Metric("a", 0.0, 1, second[4])) == timestamp_ms(Metric("a", 0.0, 0, first[4])) + 1


def test_the_stamp_survives_the_round_trip_through_seconds() -> None:
    """Stamps travel as float seconds; the store's millisecond is exactly the stamped one."""
    clock = MetricClock()
    for ms in range(1_765_000_000_000, 1_765_000_000_000 + 20_000, 7):  # every residue
        raw = clock.stamp(("metric", "k", 0.0, 0, ms / 1000))
        assert timestamp_ms(Metric("k", 0.0, 0, raw[4])) == ms


def test_anything_but_a_metric_is_left_as_it_is() -> None:
    raw = ("params", {"lr": "0.1"})
    assert MetricClock().stamp(raw) is raw


def test_stamping_a_stamped_point_again_changes_nothing() -> None:
    """A replay through a second clock (a thread-mode sync of an agent's spool) keeps each row's identity."""
    first, second = MetricClock(), MetricClock()
    stamped = [first.stamp(("metric", "k", float(i), i, 1_765_000_000.0005)) for i in range(500)]
    assert [second.stamp(raw) for raw in stamped] == stamped

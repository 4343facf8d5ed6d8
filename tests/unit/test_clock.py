"""`protocoop.clock`: one clock for the whole process, which a test (or a replay) can move."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from protocoop.clock import ManualClock, rfc3339, use_clock, utc_now


def test_the_time_is_aware_utc() -> None:
    now = utc_now()
    assert now.tzinfo is not None
    assert now.utcoffset() == timedelta(0)
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)


def test_a_manual_clock_moves_every_reader_and_is_put_back_after() -> None:
    with use_clock(ManualClock()) as clock:
        assert isinstance(clock, ManualClock)
        clock.advance(timedelta(days=3))
        assert utc_now() - datetime.now(UTC) > timedelta(days=3) - timedelta(seconds=5)
        clock.set(datetime(2020, 1, 1, tzinfo=UTC))
        assert abs(utc_now() - datetime(2020, 1, 1, tzinfo=UTC)) < timedelta(seconds=5)
    assert abs(utc_now() - datetime.now(UTC)) < timedelta(seconds=5)


def test_rfc3339_is_utc_with_microseconds_and_a_z() -> None:
    moment = datetime(2026, 11, 26, 12, 0, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    assert rfc3339(moment) == "2026-11-26T10:00:00.000005Z"

"""Time in protocoop: timezone-aware UTC, written as RFC 3339 with a `Z`.

Every module asks `utc_now()` for the time, and `utc_now()` asks the process's clock: the system
clock, unless another was installed with `use_clock` (a test moving time forward to expire a
proposal, or a replay pinning it). One seam, so nothing patches the time module by module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that runs with the system clock, shifted by an offset the caller moves."""

    def __init__(self, offset: timedelta = timedelta(0)) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, by: timedelta) -> None:
        self.offset += by

    def set(self, moment: datetime) -> None:
        """From now on, read `moment` (and on from there as real time passes)."""
        self.offset = moment.astimezone(UTC) - datetime.now(UTC)


_clock: Clock = SystemClock()


def utc_now() -> datetime:
    """The current time, timezone-aware UTC, with microseconds."""
    return _clock.now()


@contextmanager
def use_clock(clock: Clock) -> Iterator[Clock]:
    """Read the time from `clock` inside the block (in this process), then from the one before."""
    global _clock
    previous, _clock = _clock, clock
    try:
        yield clock
    finally:
        _clock = previous


def rfc3339(moment: datetime) -> str:
    """`2026-11-26T10:00:00.123456Z`: UTC, always with microseconds (the hash chain's form)."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"

"""Time in protocoop: timezone-aware UTC, written as RFC 3339 with a `Z`."""

from datetime import UTC, datetime


def utc_now() -> datetime:
    """The current time, timezone-aware UTC, with microseconds."""
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """`2026-11-26T10:00:00.123456Z`: UTC, always with microseconds (the hash chain's form)."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"

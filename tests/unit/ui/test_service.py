"""The dashboard's pure parts: amounts in a community's unit, the balance histogram's buckets, and
the members table's search and sort."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from protocoop.ui.service import BUCKETS, MemberRow, Unit, bucket, sort_and_search


@pytest.mark.parametrize(
    ("scale", "amount", "shown"),
    [
        (0, 3, "3 HOUR"),
        (0, -1234567, "-1,234,567 HOUR"),
        (2, 1250, "12.50 HOUR"),
        (2, -5, "-0.05 HOUR"),
        (3, 1000, "1.000 HOUR"),
    ],
)
def test_amounts_are_shown_in_the_units_scale(scale: int, amount: int, shown: str) -> None:
    assert Unit("HOUR", "hour", scale).format(amount) == shown


@pytest.mark.parametrize(
    ("balance", "lower", "upper", "expected"),
    [
        (0, -100, None, "zero"),
        (-10, -100, None, "0 to 25 % of the floor"),
        (-25, -100, None, "25 to 50 % of the floor"),
        (-99, -100, 50, "75 to 100 % of the floor"),
        (-100, -100, 50, "75 to 100 % of the floor"),
        (-101, -100, 50, "over the floor"),
        (5, -100, None, "credit, no ceiling"),
        (10, -100, 100, "0 to 25 % of the ceiling"),
        (60, -100, 100, "50 to 75 % of the ceiling"),
        (100, -100, 100, "75 to 100 % of the ceiling"),
        (101, -100, 100, "over the ceiling"),
        (-1, 0, None, "over the floor"),
    ],
)
def test_each_balance_falls_in_the_bucket_of_its_limits(
    balance: int, lower: int, upper: int | None, expected: str
) -> None:
    assert expected in BUCKETS
    assert bucket(balance, lower, upper) == expected


def row(member: str, balance: int, *, name: str = "", last: int | None = None) -> MemberRow:
    given = max(balance, 0)
    return MemberRow(
        member=member,
        name=name or member.title(),
        status="active",
        balance=balance,
        lower_limit=-100,
        upper_limit=None,
        given=given,
        received=given - balance,
        exchanges=1 if last else 0,
        reciprocity=None if last is None else 0.5,
        standing="inactive" if last is None else "reciprocal",
        last_exchange_at=None if last is None else datetime(2026, 1, last, tzinfo=UTC),
    )


ROWS = [
    row("alice", 30, last=3),
    row("bob", -30, name="Robert Tables", last=1),
    row("carol", 0),
    row("dave", 30, last=2),
]


def test_search_matches_the_id_or_the_name_in_any_case() -> None:
    assert [r.member for r in sort_and_search(ROWS, "ROBERT", "member", False)] == ["bob"]
    assert [r.member for r in sort_and_search(ROWS, "  Car ", "member", False)] == ["carol"]
    assert [r.member for r in sort_and_search(ROWS, "a", "member", True)] == [
        "dave",
        "carol",
        "bob",  # Robert Tables
        "alice",
    ]


def test_sorting_breaks_ties_by_member_and_puts_missing_values_last_either_way() -> None:
    by_balance = sort_and_search(ROWS, "", "balance", False)
    assert [r.member for r in by_balance] == ["bob", "carol", "alice", "dave"]
    recent_first = sort_and_search(ROWS, "", "last_exchange", True)
    assert [r.member for r in recent_first] == ["alice", "dave", "bob", "carol"]
    oldest_first = sort_and_search(ROWS, "", "last_exchange", False)
    assert [r.member for r in oldest_first] == ["bob", "dave", "alice", "carol"]

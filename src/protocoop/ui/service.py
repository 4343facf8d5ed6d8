"""What the dashboard's pages show, read from the services the API answers with, so a page and
the API never disagree: the same report, the same balances, the same statement."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Case, ColumnElement, Double, and_, case, cast, func, select
from sqlalchemy.orm import Session

from protocoop.balances.service import head_seq, statement_window
from protocoop.communities.service import get_community
from protocoop.db.models import Account, Community, Member
from protocoop.mutuality import figures
from protocoop.mutuality.report import index_of_nets, reciprocity, standing

SortKey = Literal[
    "member", "balance", "lower_limit", "given", "received", "reciprocity", "last_exchange"
]
SORT_KEYS: tuple[SortKey, ...] = (
    "member",
    "balance",
    "lower_limit",
    "given",
    "received",
    "reciprocity",
    "last_exchange",
)


@dataclass(frozen=True, slots=True)
class Unit:
    code: str
    name: str
    scale: int

    def format(self, amount: int) -> str:
        """`amount` minor units as the unit shows them: `-12.50 EUR`, `3 HOUR`."""
        sign = "-" if amount < 0 else ""
        whole, fraction = divmod(abs(amount), 10**self.scale)
        digits = f"{whole:,}" + (f".{fraction:0{self.scale}d}" if self.scale else "")
        return f"{sign}{digits} {self.code}"


def unit_of(session: Session, community_id: str) -> Unit:
    community = get_community(session, community_id)
    return Unit(community.unit_code, community.unit_name, community.unit_scale)


def community_ids(session: Session) -> list[str]:
    """Every community, for an admin to choose from."""
    return list(session.scalars(select(Community.id).order_by(Community.id)))


@dataclass(frozen=True, slots=True)
class MemberRow:
    member: str
    name: str
    status: str
    balance: int
    lower_limit: int
    upper_limit: int | None
    given: int
    received: int
    exchanges: int
    reciprocity: float | None
    standing: str
    last_exchange_at: datetime | None


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def member_rows(session: Session, community_id: str) -> list[MemberRow]:
    """Every member with balance, limits and all-time flows, in id order: the figures posting
    keeps on each account (the mutuality report's whole-history figures), in one statement."""
    threshold = get_community(session, community_id).reciprocity_threshold
    query = (
        select(
            Account.id,
            Member.name,
            Member.status,
            Account.balance,
            Account.lower_limit,
            Account.upper_limit,
            Account.given,
            Account.received,
            Account.exchange_count,
            Account.last_exchange_at,
        )
        .join(Member, and_(Member.community_id == Account.community_id, Member.id == Account.id))
        .where(Account.community_id == community_id)
        .order_by(Account.id)
    )
    # Rows unpacked as tuples: reading ten attributes of each of 10,000 rows by name was half
    # the members page's time.
    return [
        MemberRow(
            member=member,
            name=name,
            status=status,
            balance=balance,
            lower_limit=lower_limit,
            upper_limit=upper_limit,
            given=given,
            received=received,
            exchanges=exchanges,
            reciprocity=reciprocity(given, received),
            standing=standing(given, received, threshold),
            last_exchange_at=_utc(last_exchange_at),
        )
        for (
            member,
            name,
            status,
            balance,
            lower_limit,
            upper_limit,
            given,
            received,
            exchanges,
            last_exchange_at,
        ) in session.execute(query)
    ]


def sort_and_search(
    rows: list[MemberRow], query: str, sort: SortKey, descending: bool
) -> list[MemberRow]:
    """The rows whose id or name contains `query` (any case), ordered by `sort`; a missing
    value (no reciprocity, never exchanged) sorts last either way."""
    needle = query.strip().casefold()
    kept = [r for r in rows if needle in r.member.casefold() or needle in r.name.casefold()]
    if sort == "member":
        return sorted(kept, key=lambda r: r.member, reverse=descending)

    def value(row: MemberRow) -> float | None:
        if sort == "reciprocity":
            return row.reciprocity
        if sort == "last_exchange":
            return row.last_exchange_at.timestamp() if row.last_exchange_at else None
        number: int = getattr(row, sort)
        return number

    present = [r for r in kept if value(r) is not None]
    missing = [r for r in kept if value(r) is None]
    present.sort(key=lambda r: (value(r), r.member), reverse=descending)
    return present + missing


@dataclass(frozen=True, slots=True)
class Month:
    label: str
    """`2026-11`."""
    volume: int
    exchanges: int
    mutuality_index: float | None


def _month_start(year: int, month: int) -> datetime:
    while month < 1:
        year, month = year - 1, month + 12
    while month > 12:
        year, month = year + 1, month - 12
    return datetime(year, month, 1, tzinfo=UTC)


def monthly(session: Session, community_id: str, now: datetime, months: int = 6) -> list[Month]:
    """Volume, exchanges and mutuality index of each of the last `months` calendar months (UTC),
    the current one included, oldest first: each month is a window of the mutuality report.

    A month without a ledger position has no exchange, so it is not asked about; the index needs
    only each member's net, so no `MemberFigures` is built for it."""
    head = head_seq(session, community_id)
    series = []
    for back in range(months - 1, -1, -1):
        start = _month_start(now.year, now.month - back)
        end = _month_start(start.year, start.month + 1)
        from_seq, to_seq = statement_window(session, community_id, start, end)
        if from_seq == to_seq:
            series.append(Month(f"{start:%Y-%m}", 0, 0, None))
            continue
        window = figures.Window(community_id, from_seq, to_seq, head)
        volume, exchanges = figures.totals(session, window)
        nets = (
            given - received
            for member, (given, received, _, _) in figures.flows_by_member(session, window).items()
            if not member.startswith("@")
        )
        series.append(Month(f"{start:%Y-%m}", volume, exchanges, index_of_nets(nets, volume)))
    return series


BUCKETS = (
    "over the floor",
    "75 to 100 % of the floor",
    "50 to 75 % of the floor",
    "25 to 50 % of the floor",
    "0 to 25 % of the floor",
    "zero",
    "0 to 25 % of the ceiling",
    "25 to 50 % of the ceiling",
    "50 to 75 % of the ceiling",
    "75 to 100 % of the ceiling",
    "credit, no ceiling",
    "over the ceiling",
)
"""How far each member's balance has gone towards its limits: debts against the floor (the
lower limit), credits against the ceiling (the upper limit, when there is one)."""


def bucket(balance: int, lower_limit: int, upper_limit: int | None) -> str:
    """The bucket of one balance: the definition `_bucket_column` computes in SQL."""
    if balance == 0:
        return "zero"
    if balance < 0:
        if balance < lower_limit:
            return "over the floor"
        return BUCKETS[4 - min(3, int(balance / lower_limit * 4))]
    if upper_limit is None:
        return "credit, no ceiling"
    if balance > upper_limit:
        return "over the ceiling"
    return BUCKETS[6 + min(3, int(balance / upper_limit * 4))]


def _quarters(share: ColumnElement[Any], buckets: tuple[str, str, str, str]) -> Case[str]:
    """`buckets[min(3, int(share))]` for a `share` from 0 to 4."""
    return case(
        (share >= 3, buckets[3]),
        (share >= 2, buckets[2]),
        (share >= 1, buckets[1]),
        else_=buckets[0],
    )


def _bucket_column() -> Case[str]:
    """`bucket` of each account row, in SQL.

    The shares are the same floating-point quotients as `bucket`'s (`balance / limit * 4`, in
    doubles), so the two agree on every balance and limit within 2**53 minor units. Each share is
    only computed in the branch that knows its limit is not zero (the CASE's order)."""
    balance = cast(Account.balance, Double)
    lower = cast(Account.lower_limit, Double)
    upper = cast(Account.upper_limit, Double)
    floor_buckets = (BUCKETS[4], BUCKETS[3], BUCKETS[2], BUCKETS[1])
    return case(
        (Account.balance == 0, "zero"),
        (Account.balance < Account.lower_limit, "over the floor"),
        (Account.balance < 0, _quarters(balance / lower * 4, floor_buckets)),
        (Account.upper_limit.is_(None), "credit, no ceiling"),
        (Account.balance > Account.upper_limit, "over the ceiling"),
        else_=_quarters(balance / upper * 4, (BUCKETS[6], BUCKETS[7], BUCKETS[8], BUCKETS[9])),
    )


def balance_histogram(session: Session, community_id: str) -> list[tuple[str, int]]:
    """How many members are in each of `BUCKETS`, by their balance now.

    Counted in SQL, one row per bucket: the overview already reads every member for the
    mutuality report, and a second row per member only to count them would double its cost. (The
    report's own rows cannot stand in: they carry no limits, and with a window their balances
    are the window's end, not now.)"""
    buckets = (
        select(_bucket_column().label("bucket"))
        .join(Member, and_(Member.community_id == Account.community_id, Member.id == Account.id))
        .where(Account.community_id == community_id)
        .subquery("buckets")
    )
    # Grouped by the subquery's column: grouping by the CASE itself would repeat its bound
    # parameters, which PostgreSQL does not take for the same expression.
    counts = dict.fromkeys(BUCKETS, 0)
    for name, count in session.execute(
        select(buckets.c.bucket, func.count()).group_by(buckets.c.bucket)
    ):
        counts[name] = int(count)
    return list(counts.items())

"""Balances now and as of any past ledger position.

History is read from the entries' `balance_after`: the balance of an account as of `seq` n is the
`balance_after` of its latest entry with `seq <= n` — one probe of the `(community_id, account_id,
seq)` index, O(log n) however long the history. A time is turned into a position first: the
latest `seq` recorded at or before it (`created_at` never decreases with `seq`).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, bindparam, case, func, literal, select
from sqlalchemy.orm import Session

from protocoop.balances.schemas import (
    AccountBalance,
    BalancePublic,
    BalancesPage,
    Statement,
    StatementLine,
    TrialBalance,
)
from protocoop.clock import utc_now
from protocoop.communities.schemas import Unit
from protocoop.db.models import Account, Community, Entry, Exchange, LedgerHead
from protocoop.db.sums import exact_sum, summed
from protocoop.errors import NotFound, ValidationFailed
from protocoop.ledger.queries import DueForExpiry, due_expiries_exist
from protocoop.pagination import next_cursor

_a = Account.__table__
_e = Entry.__table__
_x = Exchange.__table__


def head_seq(session: Session, community_id: str) -> int:
    """The `seq` of the community's latest exchange (0 before the first)."""
    seq = session.execute(
        select(LedgerHead.last_seq).where(LedgerHead.community_id == community_id)
    ).scalar_one_or_none()
    if seq is None:
        raise NotFound(f"Community {community_id!r} not found.")
    return int(seq)


def seq_at(session: Session, community_id: str, moment: datetime, *, inclusive: bool) -> int:
    """The latest `seq` recorded at (if `inclusive`) or before `moment`; 0 if none."""
    bound = _x.c.created_at <= moment if inclusive else _x.c.created_at < moment
    seq = session.execute(
        select(_x.c.seq)
        .where(_x.c.community_id == community_id, bound)
        .order_by(_x.c.created_at.desc(), _x.c.seq.desc())
        .limit(1)
    ).scalar_one_or_none()
    return int(seq or 0)


def balance_at(session: Session, community_id: str, account_id: str, seq: int) -> int:
    """The account's balance as of ledger position `seq` (0 before its first entry)."""
    balance = session.execute(
        select(_e.c.balance_after)
        .where(_e.c.community_id == community_id, _e.c.account_id == account_id, _e.c.seq <= seq)
        .order_by(_e.c.seq.desc())
        .limit(1)
    ).scalar_one_or_none()
    return int(balance or 0)


def _balance_as_of(community_id: str, seq: int) -> ColumnElement[int]:
    """A column: each account row's balance as of `seq` (correlated index probe)."""
    latest = (
        select(_e.c.balance_after)
        .where(_e.c.community_id == community_id, _e.c.account_id == _a.c.id, _e.c.seq <= seq)
        .order_by(_e.c.seq.desc())
        .limit(1)
        .correlate(_a)
        .scalar_subquery()
    )
    return func.coalesce(latest, literal(0))


def _resolve_position(
    session: Session, community_id: str, as_of: datetime | None, as_of_seq: int | None
) -> tuple[int, int]:
    """(requested position, current head)."""
    head = head_seq(session, community_id)
    if as_of is not None and as_of_seq is not None:
        raise ValidationFailed(
            [{"loc": ["query", "as_of"], "msg": "give as_of or as_of_seq, not both"}]
        )
    if as_of_seq is not None:
        if as_of_seq > head:
            raise ValidationFailed(
                [{"loc": ["query", "as_of_seq"], "msg": f"the ledger's latest seq is {head}"}]
            )
        return as_of_seq, head
    if as_of is not None:
        return seq_at(session, community_id, as_of, inclusive=True), head
    return head, head


@cache
def _balance_row(check_due: bool) -> Select[Any]:
    """The account's balance, limits and reservations, its community's unit and head `seq`
    (and, with `check_due`, whether it has proposals past their time): built once."""
    community: Any = bindparam("community")
    account: Any = bindparam("account")
    due = [due_expiries_exist(community, account, bindparam("now")).label("due")]
    return (
        select(
            _a.c.balance,
            _a.c.lower_limit,
            _a.c.upper_limit,
            _a.c.reserved_debit,
            _a.c.reserved_credit,
            Community.unit_code,
            Community.unit_name,
            Community.unit_scale,
            LedgerHead.last_seq,
            *(due if check_due else []),
        )
        .join(Community, Community.id == _a.c.community_id)
        .join(LedgerHead, LedgerHead.community_id == _a.c.community_id)
        .where(_a.c.community_id == community, _a.c.id == account)
    )


def member_balance(
    session: Session,
    community_id: str,
    account_id: str,
    *,
    as_of: datetime | None = None,
    as_of_seq: int | None = None,
    check_due: bool = False,
) -> BalancePublic:
    """An account's balance and room within its limits, now or at a past position (with the
    current limits and reservations: limit history is not kept). With `check_due`, raises
    `DueForExpiry` when the account has proposals past their time (checked in the same
    statement)."""
    now = as_of is None and as_of_seq is None
    # Now: one statement, the head's seq read with the account (same snapshot either way).
    seq, head = (0, 0) if now else _resolve_position(session, community_id, as_of, as_of_seq)
    parameters = {"community": community_id, "account": account_id, "now": utc_now()}
    row = session.execute(_balance_row(check_due), parameters).first()
    if row is None:
        raise NotFound(f"Member {account_id!r} not found.", member=account_id)
    if check_due and row.due:
        raise DueForExpiry
    if now:
        seq = head = row.last_seq
    balance = row.balance if seq == head else balance_at(session, community_id, account_id, seq)
    return BalancePublic(
        member=account_id,
        balance=balance,
        lower_limit=row.lower_limit,
        upper_limit=row.upper_limit,
        available_to_spend=max(0, balance - row.reserved_debit - row.lower_limit),
        available_to_earn=(
            None
            if row.upper_limit is None
            else max(0, row.upper_limit - balance - row.reserved_credit)
        ),
        reserved_debit=row.reserved_debit,
        reserved_credit=row.reserved_credit,
        as_of_seq=seq,
        unit=Unit(code=row.unit_code, name=row.unit_name, scale=row.unit_scale),
    )


def balances_page(
    session: Session,
    community_id: str,
    *,
    as_of_seq: int | None,
    after: str | None,
    limit: int,
) -> BalancesPage:
    """A page of every account's balance at one position: the head for a first page, the first
    page's position for the next ones (carried in the cursor)."""
    seq, head = _resolve_position(session, community_id, None, as_of_seq)
    balance = _a.c.balance if seq == head else _balance_as_of(community_id, seq)
    query = (
        select(_a.c.id, _a.c.kind, _a.c.lower_limit, _a.c.upper_limit, balance.label("balance"))
        .where(_a.c.community_id == community_id)
        .order_by(_a.c.id)
        .limit(limit + 1)
    )
    if after is not None:
        query = query.where(_a.c.id > after)
    rows = session.execute(query).all()
    total = summed(
        session.execute(
            select(*exact_sum(balance, "total", session.get_bind().dialect.name)).where(
                _a.c.community_id == community_id
            )
        ).one(),
        "total",
    )
    items = [
        AccountBalance(
            account=row.id,
            kind=row.kind,
            balance=row.balance,
            lower_limit=row.lower_limit,
            upper_limit=row.upper_limit,
        )
        for row in rows[:limit]
    ]
    following = next_cursor(rows, limit, lambda row: {"as_of_seq": seq, "after": row.id})
    return BalancesPage(as_of_seq=seq, sum=total, items=items, next_cursor=following)


def every_balance(session: Session, community_id: str, seq: int) -> Iterator[AccountBalance]:
    """Every account's balance as of `seq`, in account order (for CSV)."""
    balance = _balance_as_of(community_id, seq)
    for row in session.execute(
        select(_a.c.id, _a.c.kind, _a.c.lower_limit, _a.c.upper_limit, balance.label("balance"))
        .where(_a.c.community_id == community_id)
        .order_by(_a.c.id)
        .execution_options(yield_per=1000)
    ):
        yield AccountBalance(
            account=row.id,
            kind=row.kind,
            balance=row.balance,
            lower_limit=row.lower_limit,
            upper_limit=row.upper_limit,
        )


def statement_window(
    session: Session, community_id: str, since: datetime | None, until: datetime | None
) -> tuple[int, int]:
    """The positions (from_seq, to_seq] covering exchanges recorded in [since, until)."""
    from_seq = seq_at(session, community_id, since, inclusive=False) if since else 0
    to_seq = (
        seq_at(session, community_id, until, inclusive=False)
        if until
        else head_seq(session, community_id)
    )
    return from_seq, max(from_seq, to_seq)


def statement(
    session: Session,
    community_id: str,
    account_id: str,
    *,
    from_seq: int,
    to_seq: int,
    after_seq: int | None,
    limit: int,
) -> Statement:
    """The account's entries in (from_seq, to_seq] with running balance, opening and closing."""
    require_account(session, community_id, account_id)
    lines = list(
        statement_lines(
            session, community_id, account_id, max(from_seq, after_seq or 0), to_seq, limit + 1
        )
    )
    following = next_cursor(
        lines,
        limit,
        lambda line: {"from_seq": from_seq, "to_seq": to_seq, "after_seq": line.seq},
    )
    return Statement(
        member=account_id,
        opening_balance=balance_at(session, community_id, account_id, from_seq),
        closing_balance=balance_at(session, community_id, account_id, to_seq),
        from_seq=from_seq,
        to_seq=to_seq,
        items=lines[:limit],
        next_cursor=following,
    )


def _lines_query(community_id: str, account_id: str) -> Select[Any]:
    """The account's entries, each with its exchange's time, description and sides."""
    return (
        select(
            _e.c.seq,
            _e.c.exchange_id,
            _e.c.amount,
            _e.c.balance_after,
            _x.c.created_at,
            _x.c.description,
            _x.c.provider,
            _x.c.receiver,
        )
        .join(_x, and_(_x.c.community_id == _e.c.community_id, _x.c.id == _e.c.exchange_id))
        .where(_e.c.community_id == community_id, _e.c.account_id == account_id)
    )


def _line(account_id: str, row: Any) -> StatementLine:
    return StatementLine(
        seq=row.seq,
        exchange_id=row.exchange_id,
        created_at=row.created_at,
        counterparty=_counterparty(account_id, row),
        description=row.description,
        amount=row.amount,
        balance_after=row.balance_after,
    )


def statement_lines(
    session: Session,
    community_id: str,
    account_id: str,
    after_seq: int,
    to_seq: int,
    limit: int | None = None,
) -> Iterator[StatementLine]:
    """The account's entries with `after_seq < seq <= to_seq`, in order."""
    query = (
        _lines_query(community_id, account_id)
        .where(_e.c.seq > after_seq, _e.c.seq <= to_seq)
        .order_by(_e.c.seq)
        .execution_options(yield_per=1000)
    )
    if limit is not None:
        query = query.limit(limit)
    for row in session.execute(query):
        yield _line(account_id, row)


def latest_statement_lines(
    session: Session, community_id: str, account_id: str, to_seq: int, limit: int
) -> list[StatementLine]:
    """The account's last `limit` entries with `seq <= to_seq`, newest first.

    The `(community_id, account_id, seq)` index read backwards from `to_seq`, stopping after
    `limit` rows: the cost is the same however long the account's history (reading the whole
    statement to keep its tail grows with it). Each line's running balance is its entry's
    `balance_after`, so nothing before the first line returned needs reading."""
    query = (
        _lines_query(community_id, account_id)
        .where(_e.c.seq <= to_seq)
        .order_by(_e.c.seq.desc())
        .limit(limit)
    )
    return [_line(account_id, row) for row in session.execute(query)]


def _counterparty(account_id: str, row: Any) -> str:
    """The other side of an entry: the receiver for the provider and vice versa; for any other
    account (a levy into @commons) the exchange's provider."""
    if account_id == row.provider:
        return str(row.receiver)
    return str(row.provider)


def require_account(session: Session, community_id: str, account_id: str) -> None:
    """404 unless the community has this account."""
    found = session.execute(
        select(_a.c.id).where(_a.c.community_id == community_id, _a.c.id == account_id)
    ).first()
    if found is None:
        raise NotFound(f"Member {account_id!r} not found.", member=account_id)


def trial_balance(session: Session, community_id: str) -> TrialBalance:
    """Totals of every account's balance at the head: positives, negatives and their sum."""
    seq = head_seq(session, community_id)
    dialect = session.get_bind().dialect.name
    row = session.execute(
        select(
            func.count().label("accounts"),
            *exact_sum(case((_a.c.balance > 0, _a.c.balance), else_=0), "positive", dialect),
            *exact_sum(case((_a.c.balance < 0, _a.c.balance), else_=0), "negative", dialect),
        ).where(_a.c.community_id == community_id)
    ).one()
    positive, negative = summed(row, "positive"), summed(row, "negative")
    return TrialBalance(
        as_of_seq=seq,
        accounts=int(row.accounts),
        total_positive=positive,
        total_negative=negative,
        sum=positive + negative,
    )

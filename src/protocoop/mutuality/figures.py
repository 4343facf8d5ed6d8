"""The figures that feed the mutuality report, read from SQL — never a Python loop over
exchanges.

A window is a range of ledger positions (from_seq, to_seq]. Its *counted* exchanges leave out
reversals and the exchanges they reversed (a mistake is not a gift).

For the whole history (the default report) the figures are the ones posting keeps up to date
(`accounts.given/received/exchange_count/partner_count`, `pair_flows`, the ledger head's counted
volume): reading them costs one row per account, however long the history. For a narrower window
they are GROUP BY aggregates over the window's exchanges. The full audit checks that the kept
figures equal the aggregates over the whole history.

Sums of amounts pass 64 bits on a long enough history (10^15 at most each): the kept figures are
wide columns, and every SQL sum here is `exact_sum`, read back with `summed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, case, func, literal, select, union_all
from sqlalchemy.orm import Session

from protocoop.db.models import Account, Entry, Exchange, LedgerHead, Member, PairFlow
from protocoop.db.sums import exact_sum, split_difference, summed
from protocoop.mutuality.report import MemberFigures, PairFigures, PartnerFigures

_a = Account.__table__
_e = Entry.__table__
_x = Exchange.__table__
_m = Member.__table__
_h = LedgerHead.__table__
_pf = PairFlow.__table__

PAIR_CANDIDATES = 20


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


@dataclass(frozen=True, slots=True)
class Window:
    """Ledger positions (from_seq, to_seq]."""

    community_id: str
    from_seq: int
    to_seq: int
    head: int
    """The ledger's latest seq when the figures were read."""
    recompute: bool = False
    """Aggregate from the exchanges even over the whole history (the audit checks the kept
    figures against this)."""

    @property
    def whole(self) -> bool:
        """The window covers the whole history, so the kept figures answer it."""
        return self.from_seq == 0 and self.to_seq == self.head and not self.recompute


def _counted(window: Window) -> Any:
    """The window's exchanges that count for reciprocity, as a subquery."""
    reversed_ids = select(_x.c.reverses).where(
        _x.c.community_id == window.community_id,
        _x.c.reverses.is_not(None),
        _x.c.seq <= window.to_seq,
    )
    return (
        select(_x.c.provider, _x.c.receiver, _x.c.amount)
        .where(
            _x.c.community_id == window.community_id,
            _x.c.seq > window.from_seq,
            _x.c.seq <= window.to_seq,
            _x.c.reverses.is_(None),
            _x.c.id.not_in(reversed_ids),
        )
        .subquery("counted")
    )


def _sides(counted: Any) -> Any:
    """Each counted exchange twice: once from the provider's side, once from the receiver's."""
    return union_all(
        select(
            counted.c.provider.label("member"),
            counted.c.receiver.label("other"),
            counted.c.amount.label("given"),
            literal(0).label("received"),
        ),
        select(
            counted.c.receiver.label("member"),
            counted.c.provider.label("other"),
            literal(0).label("given"),
            counted.c.amount.label("received"),
        ),
    ).subquery("sides")


def totals(session: Session, window: Window) -> tuple[int, int]:
    """(volume, number of exchanges) of the window's counted exchanges."""
    if window.whole:
        volume, count = session.execute(
            select(_h.c.counted_volume, _h.c.counted_exchanges).where(
                _h.c.community_id == window.community_id
            )
        ).one()
        return int(volume), int(count)
    counted = _counted(window)
    row = session.execute(
        select(
            *exact_sum(counted.c.amount, "volume", _dialect(session)),
            func.count().label("exchanges"),
        ).select_from(counted)
    ).one()
    return summed(row, "volume"), int(row.exchanges)


def _balance_column(window: Window) -> Any:
    if window.to_seq == window.head:
        return _a.c.balance
    latest = (
        select(_e.c.balance_after)
        .where(
            _e.c.community_id == window.community_id,
            _e.c.account_id == _a.c.id,
            _e.c.seq <= window.to_seq,
        )
        .order_by(_e.c.seq.desc())
        .limit(1)
        .correlate(_a)
        .scalar_subquery()
    )
    return func.coalesce(latest, literal(0))


def _last_exchange_column(window: Window) -> Any:
    """When the account's latest exchange at or before the window's end was recorded."""
    if window.to_seq == window.head:
        return _a.c.last_exchange_at
    last_seq = (
        select(_e.c.seq)
        .where(
            _e.c.community_id == window.community_id,
            _e.c.account_id == _a.c.id,
            _e.c.seq <= window.to_seq,
        )
        .order_by(_e.c.seq.desc())
        .limit(1)
        .correlate(_a)
        .scalar_subquery()
    )
    return (
        select(_x.c.created_at)
        .where(_x.c.community_id == window.community_id, _x.c.seq == last_seq)
        .correlate(_a)
        .scalar_subquery()
    )


@dataclass(frozen=True, slots=True)
class AccountPosition:
    """An account at the window's end."""

    id: str
    kind: str
    balance: int
    lower_limit: int
    upper_limit: int | None
    last_exchange_at: datetime | None


def account_positions(
    session: Session, window: Window, account_id: str | None = None
) -> list[AccountPosition]:
    """Every account's (or one's) balance at the window's end, with limits and last activity."""
    query = (
        select(
            _a.c.id,
            _a.c.kind,
            _a.c.lower_limit,
            _a.c.upper_limit,
            _balance_column(window).label("balance"),
            _last_exchange_column(window).label("last_exchange_at"),
        )
        .where(_a.c.community_id == window.community_id)
        .order_by(_a.c.id)
    )
    if account_id is not None:
        query = query.where(_a.c.id == account_id)
    return [
        AccountPosition(
            id=row.id,
            kind=row.kind,
            balance=int(row.balance),
            lower_limit=row.lower_limit,
            upper_limit=row.upper_limit,
            last_exchange_at=_aware(row.last_exchange_at),
        )
        for row in session.execute(query)
    ]


def _aware(moment: Any) -> datetime | None:
    """Scalar subqueries lose the column type on SQLite: make the time a UTC-aware datetime."""
    if moment is None:
        return None
    parsed: datetime = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _flows_query(window: Window, dialect: str, member_id: str | None = None) -> Select[Any]:
    """Per member: given, received (read them with `summed`), exchanges and distinct partners
    in the window."""
    sides = _sides(_counted(window))
    query = select(
        sides.c.member,
        *exact_sum(sides.c.given, "given", dialect),
        *exact_sum(sides.c.received, "received", dialect),
        func.count().label("exchanges"),
        func.count(sides.c.other.distinct()).label("partners"),
    ).group_by(sides.c.member)
    if member_id is not None:
        query = query.where(sides.c.member == member_id)
    return query


def _kept_flows_query(window: Window, dialect: str, member_id: str | None = None) -> Select[Any]:
    """Per account: the figures posting keeps for the whole history."""
    query = select(
        _a.c.id.label("member"),
        _a.c.given,
        _a.c.received,
        _a.c.exchange_count.label("exchanges"),
        _a.c.partner_count.label("partners"),
    ).where(_a.c.community_id == window.community_id, _a.c.exchange_count > 0)
    if member_id is not None:
        query = query.where(_a.c.id == member_id)
    return query


def member_figures(
    session: Session, window: Window, positions: list[AccountPosition]
) -> list[MemberFigures]:
    """Every member's flows in the window, with its balance and limits at the window's end."""
    query = (_kept_flows_query if window.whole else _flows_query)(window, _dialect(session))
    flows = {row.member: row for row in session.execute(query)}
    members = set(session.scalars(select(_m.c.id).where(_m.c.community_id == window.community_id)))
    figures = []
    for position in positions:
        if position.id not in members:
            continue
        flow = flows.get(position.id)
        figures.append(
            MemberFigures(
                member=position.id,
                given=summed(flow, "given") if flow else 0,
                received=summed(flow, "received") if flow else 0,
                exchanges=int(flow.exchanges) if flow else 0,
                partners=int(flow.partners) if flow else 0,
                balance=position.balance,
                lower_limit=position.lower_limit,
                upper_limit=position.upper_limit,
                last_exchange_at=position.last_exchange_at,
            )
        )
    return figures


def flows_by_member(session: Session, window: Window) -> dict[str, tuple[int, int, int, int]]:
    """member -> (given, received, exchanges, partners) over the window."""
    query = (_kept_flows_query if window.whole else _flows_query)(window, _dialect(session))
    return {
        row.member: (
            summed(row, "given"),
            summed(row, "received"),
            int(row.exchanges),
            int(row.partners),
        )
        for row in session.execute(query)
    }


def most_imbalanced_pairs(
    session: Session, window: Window, limit: int | None = PAIR_CANDIDATES
) -> list[PairFigures]:
    """The `limit` pairs of members whose flows to each other differ most."""
    if window.whole:
        return [
            PairFigures(row.a, row.b, int(row.a_to_b), int(row.b_to_a))
            for row in session.execute(
                select(_pf.c.a, _pf.c.b, _pf.c.a_to_b, _pf.c.b_to_a)
                .where(_pf.c.community_id == window.community_id, _pf.c.exchanges > 0)
                .order_by(_pf.c.imbalance.desc(), _pf.c.a, _pf.c.b)
                .limit(limit)
            )
        ]
    counted = _counted(window)
    forward = counted.c.provider < counted.c.receiver
    oriented = select(
        case((forward, counted.c.provider), else_=counted.c.receiver).label("a"),
        case((forward, counted.c.receiver), else_=counted.c.provider).label("b"),
        case((forward, counted.c.amount), else_=0).label("a_to_b"),
        case((forward, 0), else_=counted.c.amount).label("b_to_a"),
    ).subquery("oriented")
    dialect = _dialect(session)
    grouped = select(
        oriented.c.a,
        oriented.c.b,
        *exact_sum(oriented.c.a_to_b, "a_to_b", dialect),
        *exact_sum(oriented.c.b_to_a, "b_to_a", dialect),
    ).group_by(oriented.c.a, oriented.c.b)
    if limit is None:
        query = grouped
    elif dialect != "sqlite":
        net = func.sum(oriented.c.a_to_b) - func.sum(oriented.c.b_to_a)
        query = grouped.order_by(func.abs(net).desc(), oriented.c.a, oriented.c.b).limit(limit)
    else:
        # SQLite cannot rank by the exact sums in SQL: rank by a REAL approximation, keep every
        # pair at least as imbalanced as the limit-th one (rounding never reorders strictly
        # different values), and rank those exactly below.
        sums = grouped.cte("pair_sums")
        imbalance = func.abs(split_difference("a_to_b", "b_to_a", sums))
        cutoff = (
            select(imbalance).order_by(imbalance.desc()).offset(limit - 1).limit(1)
        ).scalar_subquery()
        query = select(sums).where(imbalance >= func.coalesce(cutoff, literal(-1.0)))
    pairs = [
        PairFigures(row.a, row.b, summed(row, "a_to_b"), summed(row, "b_to_a"))
        for row in session.execute(query)
    ]
    pairs.sort(key=lambda pair: (-abs(pair.a_to_b - pair.b_to_a), pair.a, pair.b))
    return pairs[:limit]


def partner_figures(session: Session, window: Window, member_id: str) -> list[PartnerFigures]:
    """What `member_id` exchanged with each partner in the window."""
    if window.whole:
        figures = []
        for side, other, given, received in (
            (_pf.c.a, _pf.c.b, _pf.c.a_to_b, _pf.c.b_to_a),
            (_pf.c.b, _pf.c.a, _pf.c.b_to_a, _pf.c.a_to_b),
        ):
            figures += [
                PartnerFigures(row.other, int(row.given), int(row.received), int(row.exchanges))
                for row in session.execute(
                    select(
                        other.label("other"),
                        given.label("given"),
                        received.label("received"),
                        _pf.c.exchanges,
                    ).where(
                        _pf.c.community_id == window.community_id,
                        side == member_id,
                        _pf.c.exchanges > 0,
                    )
                )
            ]
        return figures
    sides = _sides(_counted(window))
    dialect = _dialect(session)
    rows = session.execute(
        select(
            sides.c.other,
            *exact_sum(sides.c.given, "given", dialect),
            *exact_sum(sides.c.received, "received", dialect),
            func.count().label("exchanges"),
        )
        .where(sides.c.member == member_id)
        .group_by(sides.c.other)
    ).all()
    return [
        PartnerFigures(row.other, summed(row, "given"), summed(row, "received"), int(row.exchanges))
        for row in rows
    ]


def one_member_figures(
    session: Session, window: Window, position: AccountPosition
) -> MemberFigures:
    """One account's flows in the window, with its position at the window's end."""
    query = _kept_flows_query if window.whole else _flows_query
    flow = session.execute(query(window, _dialect(session), position.id)).first()
    return MemberFigures(
        member=position.id,
        given=summed(flow, "given") if flow else 0,
        received=summed(flow, "received") if flow else 0,
        exchanges=int(flow.exchanges) if flow else 0,
        partners=int(flow.partners) if flow else 0,
        balance=position.balance,
        lower_limit=position.lower_limit,
        upper_limit=position.upper_limit,
        last_exchange_at=position.last_exchange_at,
    )

"""Recompute the ledger's invariants from its entries, trusting nothing the posting code wrote
except the entries themselves.

1. every exchange's entries sum to zero (and it has at least two, at its own seq);
2. every stored balance equals the sum of its entries, and every `balance_after` is the running
   sum in seq order;
3. the community's balances sum to zero;
4. every balance lies within its limits (counting reservations);
5. `seq` runs 1, 2, 3... without gaps, every `prev_hash` is the previous `hash`, every `hash`
   matches the exchange's canonical bytes, and the ledger head points at the last exchange.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from protocoop.audit.schemas import AuditProblem, AuditReport
from protocoop.db.models import Account, Entry, Exchange, LedgerHead
from protocoop.ledger.chain import GENESIS_HASH, ChainedExchange, ChainEntry, verify_chain

_a = Account.__table__
_e = Entry.__table__
_x = Exchange.__table__

MAX_PROBLEMS_PER_CHECK = 100


def audit_community(session: Session, community_id: str) -> AuditReport:
    """The audit of one community's ledger."""
    problems: list[AuditProblem] = []
    problems += _unbalanced_exchanges(session, community_id)
    problems += _stored_balances(session, community_id)
    problems += _running_balances(session, community_id)
    problems += _zero_sum(session, community_id)
    problems += _limits(session, community_id)
    checked, chain_problems = _hash_chain(session, community_id)
    problems += chain_problems
    return AuditReport(ok=not problems, checked_exchanges=checked, problems=problems)


def _unbalanced_exchanges(session: Session, community_id: str) -> list[AuditProblem]:
    per_exchange = (
        select(
            _x.c.id,
            _x.c.seq,
            func.coalesce(func.sum(_e.c.amount), 0).label("total"),
            func.count(_e.c.account_id).label("entries"),
            func.sum(func.abs(_e.c.seq - _x.c.seq)).label("seq_drift"),
        )
        .select_from(_x)
        .outerjoin(_e, and_(_e.c.community_id == _x.c.community_id, _e.c.exchange_id == _x.c.id))
        .where(_x.c.community_id == community_id)
        .group_by(_x.c.id, _x.c.seq)
        .subquery()
    )
    rows = session.execute(
        select(per_exchange)
        .where(
            or_(
                per_exchange.c.total != 0,
                per_exchange.c.entries < 2,
                per_exchange.c.seq_drift != 0,
            )
        )
        .order_by(per_exchange.c.seq)
        .limit(MAX_PROBLEMS_PER_CHECK)
    ).all()
    problems = []
    for row in rows:
        if row.entries < 2:
            code, detail = "missing_entries", f"has {row.entries} entries"
        elif row.total != 0:
            code, detail = "unbalanced_exchange", f"entries sum to {row.total}, not 0"
        else:
            code, detail = "entry_seq_mismatch", "an entry carries another seq than its exchange"
        problems.append(
            AuditProblem(invariant=1, code=code, detail=detail, exchange_id=row.id, seq=row.seq)
        )
    return problems


def _stored_balances(session: Session, community_id: str) -> list[AuditProblem]:
    sums = (
        select(_e.c.account_id, func.sum(_e.c.amount).label("total"))
        .where(_e.c.community_id == community_id)
        .group_by(_e.c.account_id)
        .subquery()
    )
    total = func.coalesce(sums.c.total, 0)
    rows = session.execute(
        select(_a.c.id, _a.c.balance, total.label("total"))
        .select_from(_a)
        .outerjoin(sums, sums.c.account_id == _a.c.id)
        .where(_a.c.community_id == community_id, _a.c.balance != total)
        .order_by(_a.c.id)
        .limit(MAX_PROBLEMS_PER_CHECK)
    ).all()
    return [
        AuditProblem(
            invariant=2,
            code="balance_mismatch",
            detail=f"stored balance {row.balance}, entries sum to {row.total}",
            account=row.id,
        )
        for row in rows
    ]


def _running_balances(session: Session, community_id: str) -> list[AuditProblem]:
    running = (
        select(
            _e.c.exchange_id,
            _e.c.account_id,
            _e.c.seq,
            _e.c.balance_after,
            func.sum(_e.c.amount)
            .over(partition_by=_e.c.account_id, order_by=_e.c.seq)
            .label("running"),
        )
        .where(_e.c.community_id == community_id)
        .subquery()
    )
    rows = session.execute(
        select(running)
        .where(running.c.balance_after != running.c.running)
        .order_by(running.c.seq)
        .limit(MAX_PROBLEMS_PER_CHECK)
    ).all()
    return [
        AuditProblem(
            invariant=2,
            code="running_balance_mismatch",
            detail=f"balance_after {row.balance_after}, running sum {row.running}",
            exchange_id=row.exchange_id,
            account=row.account_id,
            seq=row.seq,
        )
        for row in rows
    ]


def _zero_sum(session: Session, community_id: str) -> list[AuditProblem]:
    total = session.execute(
        select(func.coalesce(func.sum(_a.c.balance), 0)).where(_a.c.community_id == community_id)
    ).scalar_one()
    if total == 0:
        return []
    return [AuditProblem(invariant=3, code="nonzero_sum", detail=f"balances sum to {total}")]


def _limits(session: Session, community_id: str) -> list[AuditProblem]:
    rows = session.execute(
        select(_a.c.id, _a.c.balance, _a.c.lower_limit, _a.c.upper_limit)
        .where(
            _a.c.community_id == community_id,
            or_(
                _a.c.balance - _a.c.reserved_debit < _a.c.lower_limit,
                and_(
                    _a.c.upper_limit.is_not(None),
                    _a.c.balance + _a.c.reserved_credit > _a.c.upper_limit,
                ),
            ),
        )
        .order_by(_a.c.id)
        .limit(MAX_PROBLEMS_PER_CHECK)
    ).all()
    return [
        AuditProblem(
            invariant=4,
            code="outside_limits",
            detail=f"balance {row.balance} outside [{row.lower_limit}, {row.upper_limit}]",
            account=row.id,
        )
        for row in rows
    ]


def _chain_links(session: Session, community_id: str) -> Iterator[tuple[ChainedExchange, str, str]]:
    """Every exchange with its entries, in seq order, streamed."""
    rows = session.execute(
        select(
            _x.c.id,
            _x.c.seq,
            _x.c.provider,
            _x.c.receiver,
            _x.c.amount,
            _x.c.description,
            _x.c.category,
            _x.c.external_id,
            _x.c.reverses,
            _x.c.created_at,
            _x.c.prev_hash,
            _x.c.hash,
            _e.c.account_id,
            _e.c.amount.label("entry_amount"),
            _e.c.balance_after,
        )
        .select_from(_x)
        .outerjoin(_e, and_(_e.c.community_id == _x.c.community_id, _e.c.exchange_id == _x.c.id))
        .where(_x.c.community_id == community_id)
        .order_by(_x.c.seq, _e.c.account_id)
        .execution_options(yield_per=2000)
    )
    current: Any = None
    entries: list[ChainEntry] = []
    for row in rows:
        if current is not None and row.id != current.id:
            yield _chained(community_id, current, entries), current.prev_hash, current.hash
            entries = []
        current = row
        if row.account_id is not None:
            entries.append(ChainEntry(row.account_id, row.entry_amount, row.balance_after))
    if current is not None:
        yield _chained(community_id, current, entries), current.prev_hash, current.hash


def _chained(community_id: str, row: Any, entries: list[ChainEntry]) -> ChainedExchange:
    return ChainedExchange(
        community=community_id,
        seq=row.seq,
        id=row.id,
        provider=row.provider,
        receiver=row.receiver,
        amount=row.amount,
        description=row.description,
        category=row.category,
        external_id=row.external_id,
        reverses=row.reverses,
        created_at=row.created_at,
        entries=tuple(entries),
    )


def _hash_chain(session: Session, community_id: str) -> tuple[int, list[AuditProblem]]:
    problems: list[AuditProblem] = []
    checked = 0
    last_seq, last_hash = 0, GENESIS_HASH

    def counted() -> Iterator[tuple[ChainedExchange, str, str]]:
        nonlocal checked, last_seq, last_hash
        for link in _chain_links(session, community_id):
            checked += 1
            last_seq, last_hash = link[0].seq, link[2]
            yield link

    for seq, code, detail in verify_chain(counted()):
        if len(problems) < MAX_PROBLEMS_PER_CHECK:
            problems.append(AuditProblem(invariant=5, code=code, detail=detail, seq=seq))
    head = session.execute(
        select(LedgerHead.last_seq, LedgerHead.last_hash).where(
            LedgerHead.community_id == community_id
        )
    ).one()
    if (head.last_seq, head.last_hash) != (last_seq, last_hash):
        problems.append(
            AuditProblem(
                invariant=5,
                code="head_mismatch",
                detail=f"the ledger head says seq {head.last_seq}; the last exchange is {last_seq}",
                seq=head.last_seq,
            )
        )
    return checked, problems

"""Reading exchanges back: one, or a page of them.

Completed exchanges live in the append-only ledger (`exchanges`, ordered by `seq`); proposals
that are or were pending live in `pending_exchanges` (ordered by creation). An accepted proposal
is in both under one id, and the ledger's copy is the one shown.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import Exists, Row, Select, and_, exists, select
from sqlalchemy.orm import Session

from protocoop.clock import rfc3339, utc_now
from protocoop.db.models import Entry, Exchange, PendingExchange
from protocoop.errors import NotFound
from protocoop.ledger.records import PostedExchange
from protocoop.ledger.schemas import EntryPublic, ExchangePublic, LevyPublic
from protocoop.pagination import next_cursor
from protocoop.schemas import Page

_x = Exchange.__table__
_e = Entry.__table__
_p = PendingExchange.__table__

PROPOSAL_STATUSES = ("pending", "rejected", "cancelled", "expired")


def _levy(amount: int | None, paid_by: str | None) -> LevyPublic | None:
    return LevyPublic(amount=amount, paid_by=paid_by) if amount else None


def document(posted: PostedExchange) -> dict[str, Any]:
    """The API document of an exchange as just recorded or settled, as plain JSON values: the
    same as `public(posted).model_dump(mode="json")` (a test checks it), built without pydantic
    because posting builds one for every exchange (its answer and its event)."""
    return {
        "id": posted.id,
        "seq": posted.seq,
        "community": posted.community,
        "provider": posted.provider,
        "receiver": posted.receiver,
        "amount": posted.amount,
        "description": posted.description,
        "category": posted.category,
        "external_id": posted.external_id,
        "occurred_at": rfc3339(posted.occurred_at),
        "created_at": rfc3339(posted.created_at),
        "status": posted.status,
        "reverses": posted.reverses,
        "reversed_by": posted.reversed_by,
        "intertrade_id": posted.intertrade_id,
        "metadata": posted.metadata,
        "levy": (
            {"amount": posted.levy_amount, "paid_by": posted.levy_paid_by}
            if posted.levy_amount
            else None
        ),
        "entries": [
            {"account": e.account, "amount": e.amount, "balance_after": e.balance_after}
            for e in posted.entries
        ],
        "prev_hash": posted.prev_hash,
        "hash": posted.hash,
        "initiated_by": posted.initiated_by,
        "expires_at": rfc3339(posted.expires_at) if posted.expires_at else None,
        "resolved_at": rfc3339(posted.resolved_at) if posted.resolved_at else None,
    }


def public(posted: PostedExchange) -> ExchangePublic:
    """The API document of an exchange as just recorded or settled."""
    return ExchangePublic(
        id=posted.id,
        seq=posted.seq,
        community=posted.community,
        provider=posted.provider,
        receiver=posted.receiver,
        amount=posted.amount,
        description=posted.description,
        category=posted.category,
        external_id=posted.external_id,
        occurred_at=posted.occurred_at,
        created_at=posted.created_at,
        status=posted.status,
        reverses=posted.reverses,
        reversed_by=posted.reversed_by,
        intertrade_id=posted.intertrade_id,
        metadata=posted.metadata,
        levy=_levy(posted.levy_amount, posted.levy_paid_by),
        entries=[
            EntryPublic(account=e.account, amount=e.amount, balance_after=e.balance_after)
            for e in posted.entries
        ],
        prev_hash=posted.prev_hash,
        hash=posted.hash,
        initiated_by=posted.initiated_by,
        expires_at=posted.expires_at,
        resolved_at=posted.resolved_at,
    )


def _documents(session: Session, community_id: str, rows: list[Row[Any]]) -> list[ExchangePublic]:
    """Ledger rows with their entries, `reversed_by` and proposal details, in three more
    queries for the page."""
    ids = [row.id for row in rows]
    if not ids:
        return []
    entries: dict[str, list[EntryPublic]] = defaultdict(list)
    for entry in session.execute(
        select(_e.c.exchange_id, _e.c.account_id, _e.c.amount, _e.c.balance_after)
        .where(_e.c.community_id == community_id, _e.c.exchange_id.in_(ids))
        .order_by(_e.c.exchange_id, _e.c.amount, _e.c.account_id)
    ):
        entries[entry.exchange_id].append(
            EntryPublic(
                account=entry.account_id, amount=entry.amount, balance_after=entry.balance_after
            )
        )
    reversed_by = dict(
        session.execute(
            select(_x.c.reverses, _x.c.id).where(
                _x.c.community_id == community_id, _x.c.reverses.in_(ids)
            )
        ).all()
    )
    proposals = {
        row.id: row
        for row in session.execute(
            select(_p.c.id, _p.c.initiated_by, _p.c.expires_at, _p.c.resolved_at).where(
                _p.c.community_id == community_id, _p.c.id.in_(ids)
            )
        )
    }
    documents = []
    for row in rows:
        proposal = proposals.get(row.id)
        documents.append(
            ExchangePublic(
                id=row.id,
                seq=row.seq,
                community=community_id,
                provider=row.provider,
                receiver=row.receiver,
                amount=row.amount,
                description=row.description,
                category=row.category,
                external_id=row.external_id,
                occurred_at=row.occurred_at or row.created_at,
                created_at=row.created_at,
                status="completed",
                reverses=row.reverses,
                reversed_by=reversed_by.get(row.id),
                intertrade_id=row.intertrade_id,
                metadata=row.metadata,
                levy=_levy(row.levy_amount, row.levy_paid_by),
                entries=entries[row.id],
                prev_hash=row.prev_hash,
                hash=row.hash,
                initiated_by=proposal.initiated_by if proposal else None,
                expires_at=proposal.expires_at if proposal else None,
                resolved_at=proposal.resolved_at if proposal else None,
            )
        )
    return documents


def _proposal_document(community_id: str, row: Any) -> ExchangePublic:
    return ExchangePublic(
        id=row.id,
        seq=None,
        community=community_id,
        provider=row.provider,
        receiver=row.receiver,
        amount=row.amount,
        description=row.description,
        category=row.category,
        external_id=row.external_id,
        occurred_at=row.occurred_at or row.created_at,
        created_at=row.created_at,
        status=row.status,
        reverses=None,
        reversed_by=None,
        intertrade_id=None,
        metadata=row.metadata,
        levy=_levy(row.levy_amount, row.levy_paid_by),
        entries=[],
        prev_hash=None,
        hash=None,
        initiated_by=row.initiated_by,
        expires_at=row.expires_at,
        resolved_at=row.resolved_at,
    )


def _exchange_columns() -> Select[Any]:
    return select(
        _x.c.id,
        _x.c.seq,
        _x.c.provider,
        _x.c.receiver,
        _x.c.amount,
        _x.c.description,
        _x.c.category,
        _x.c.external_id,
        _x.c.occurred_at,
        _x.c.created_at,
        _x.c.reverses,
        _x.c.intertrade_id,
        _x.c.metadata,
        _x.c.levy_amount,
        _x.c.levy_paid_by,
        _x.c.prev_hash,
        _x.c.hash,
    )


def get_exchange(session: Session, community_id: str, exchange_id: str) -> ExchangePublic:
    """An exchange by id: from the ledger once completed, else the proposal."""
    row = session.execute(
        _exchange_columns().where(_x.c.community_id == community_id, _x.c.id == exchange_id)
    ).first()
    if row is not None:
        return _documents(session, community_id, [row])[0]
    proposal = session.execute(
        select(_p).where(_p.c.community_id == community_id, _p.c.id == exchange_id)
    ).first()
    if proposal is None:
        raise NotFound(f"Exchange {exchange_id!r} not found.")
    return _proposal_document(community_id, proposal)


def is_due_for_expiry(session: Session, community_id: str, exchange_id: str) -> bool:
    """Whether the exchange is a pending proposal whose time is up (so a read should first
    release it)."""
    return (
        session.execute(
            select(_p.c.id).where(
                _p.c.community_id == community_id,
                _p.c.id == exchange_id,
                _p.c.status == "pending",
                _p.c.expires_at <= utc_now(),
            )
        ).first()
        is not None
    )


def _due(community_id: Any, now: Any, account_id: Any = None) -> Select[Any]:
    query = select(_p.c.id).where(
        _p.c.community_id == community_id, _p.c.status == "pending", _p.c.expires_at <= now
    )
    if account_id is not None:
        query = query.where((_p.c.provider == account_id) | (_p.c.receiver == account_id))
    return query


def has_due_expiries(session: Session, community_id: str, account_id: str | None = None) -> bool:
    """Whether any pending proposal (touching `account_id`, when given) is past its time."""
    query = _due(community_id, utc_now(), account_id)
    return session.execute(query.limit(1)).first() is not None


def due_expiries_exist(community_id: Any, account_id: Any, now: Any) -> Exists:
    """A column for a read's own statement: whether a pending proposal touching `account_id` is
    past its time (arguments are values or bind parameters)."""
    return exists(_due(community_id, now, account_id))


class DueForExpiry(Exception):
    """Raised by a read that found, in its own statement, proposals past their time: they are
    released before it is answered (`ledger.expiry.read_checking_expiry`)."""


def _filtered(
    query: Select[Any],
    community_id: str,
    member: str | None,
    since: datetime | None,
    until: datetime | None,
    seq_bound: Any,
) -> Select[Any]:
    """`query` over exchanges kept to `seq_bound`, those posting to `member`, and `created_at`
    in [since, until)."""
    query = query.where(_x.c.community_id == community_id, seq_bound(_x.c.seq))
    if member is not None:
        query = query.where(
            _x.c.seq.in_(
                select(_e.c.seq).where(
                    _e.c.community_id == community_id,
                    _e.c.account_id == member,
                    seq_bound(_e.c.seq),
                )
            )
        )
    if since is not None:
        query = query.where(_x.c.created_at >= since)
    if until is not None:
        query = query.where(_x.c.created_at < until)
    return query


def list_exchanges(
    session: Session,
    community_id: str,
    *,
    member: str | None,
    since: datetime | None,
    until: datetime | None,
    after_seq: int,
    limit: int,
) -> Page[ExchangePublic]:
    """Completed exchanges in `seq` order after `after_seq`; `member` keeps those posting to
    that account, `since`/`until` bound `created_at` to [since, until)."""
    query = _filtered(
        _exchange_columns(), community_id, member, since, until, lambda seq: seq > after_seq
    )
    rows = list(session.execute(query.order_by(_x.c.seq).limit(limit + 1)).all())
    return Page(
        items=_documents(session, community_id, rows[:limit]),
        next_cursor=next_cursor(rows, limit, lambda row: {"after_seq": row.seq}),
    )


def latest_exchanges(
    session: Session,
    community_id: str,
    *,
    member: str | None,
    since: datetime | None,
    until: datetime | None,
    before_seq: int | None,
    limit: int,
) -> list[ExchangePublic]:
    """Completed exchanges newest first, before `before_seq` when given (filters as
    `list_exchanges`)."""
    bound = (lambda seq: seq < before_seq) if before_seq is not None else (lambda seq: seq > 0)
    query = _filtered(_exchange_columns(), community_id, member, since, until, bound)
    rows = list(session.execute(query.order_by(_x.c.seq.desc()).limit(limit)).all())
    return _documents(session, community_id, rows)


def list_proposals(
    session: Session,
    community_id: str,
    *,
    status: str,
    member: str | None,
    since: datetime | None,
    until: datetime | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> Page[ExchangePublic]:
    """Proposals with `status` (pending, rejected, cancelled, expired) in creation order."""
    query = select(_p).where(_p.c.community_id == community_id, _p.c.status == status)
    if member is not None:
        query = query.where((_p.c.provider == member) | (_p.c.receiver == member))
    if since is not None:
        query = query.where(_p.c.created_at >= since)
    if until is not None:
        query = query.where(_p.c.created_at < until)
    if after is not None:
        created_at, exchange_id = after
        query = query.where(
            (_p.c.created_at > created_at)
            | and_(_p.c.created_at == created_at, _p.c.id > exchange_id)
        )
    rows = list(session.execute(query.order_by(_p.c.created_at, _p.c.id).limit(limit + 1)))
    return Page(
        items=[_proposal_document(community_id, row) for row in rows[:limit]],
        next_cursor=next_cursor(
            rows,
            limit,
            lambda row: {"after_time": row.created_at.isoformat(), "after_id": row.id},
        ),
    )

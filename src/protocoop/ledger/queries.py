"""Reading exchanges back: one, or a page of them in `seq` order."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Select, select
from sqlalchemy.orm import Session

from protocoop.db.models import Entry, Exchange
from protocoop.errors import NotFound
from protocoop.ledger.schemas import EntryPublic, ExchangePublic
from protocoop.ledger.service import PostedExchange
from protocoop.pagination import encode_cursor
from protocoop.schemas import Page

_x = Exchange.__table__
_e = Entry.__table__


def public(posted: PostedExchange) -> ExchangePublic:
    """The API document of a just-recorded exchange."""
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
        reverses=posted.reverses,
        reversed_by=posted.reversed_by,
        metadata=posted.metadata,
        entries=[
            EntryPublic(account=e.account, amount=e.amount, balance_after=e.balance_after)
            for e in posted.entries
        ],
        prev_hash=posted.prev_hash,
        hash=posted.hash,
    )


def _documents(session: Session, community_id: str, rows: list[Row[Any]]) -> list[ExchangePublic]:
    """Exchange rows with their entries and `reversed_by`, in two more queries for the page."""
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
    return [
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
            reverses=row.reverses,
            reversed_by=reversed_by.get(row.id),
            metadata=row.metadata,
            entries=entries[row.id],
            prev_hash=row.prev_hash,
            hash=row.hash,
        )
        for row in rows
    ]


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
        _x.c.metadata,
        _x.c.prev_hash,
        _x.c.hash,
    )


def get_exchange(session: Session, community_id: str, exchange_id: str) -> ExchangePublic:
    row = session.execute(
        _exchange_columns().where(_x.c.community_id == community_id, _x.c.id == exchange_id)
    ).first()
    if row is None:
        raise NotFound(f"Exchange {exchange_id!r} not found.")
    return _documents(session, community_id, [row])[0]


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
    """Exchanges in `seq` order after `after_seq`; `member` keeps those posting to that account,
    `since`/`until` bound `created_at` to [since, until)."""
    query = _exchange_columns().where(_x.c.community_id == community_id, _x.c.seq > after_seq)
    if member is not None:
        query = query.where(
            _x.c.seq.in_(
                select(_e.c.seq).where(
                    _e.c.community_id == community_id,
                    _e.c.account_id == member,
                    _e.c.seq > after_seq,
                )
            )
        )
    if since is not None:
        query = query.where(_x.c.created_at >= since)
    if until is not None:
        query = query.where(_x.c.created_at < until)
    rows = list(session.execute(query.order_by(_x.c.seq).limit(limit + 1)).all())
    next_cursor = encode_cursor({"after_seq": rows[limit - 1].seq}) if len(rows) > limit else None
    return Page(items=_documents(session, community_id, rows[:limit]), next_cursor=next_cursor)

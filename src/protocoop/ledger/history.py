"""The whole history of a community's ledger, streamed in `seq` order (audit, export)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from protocoop.db.models import Entry, Exchange
from protocoop.ledger.chain import ChainedExchange, ChainEntry

_e = Entry.__table__
_x = Exchange.__table__


def chain_links(
    session: Session, community_id: str, *, after_seq: int = 0
) -> Iterator[tuple[ChainedExchange, str, str]]:
    """Every exchange with its entries and its `(prev_hash, hash)`, in seq order, streamed in
    chunks so memory stays flat however long the ledger."""
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
            _x.c.intertrade_id,
            _x.c.created_at,
            _x.c.prev_hash,
            _x.c.hash,
            _e.c.account_id,
            _e.c.amount.label("entry_amount"),
            _e.c.balance_after,
        )
        .select_from(_x)
        .outerjoin(_e, and_(_e.c.community_id == _x.c.community_id, _e.c.exchange_id == _x.c.id))
        .where(_x.c.community_id == community_id, _x.c.seq > after_seq)
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
        intertrade_id=row.intertrade_id,
    )

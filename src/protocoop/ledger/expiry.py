"""Expiry of pending exchanges: lazily, by any read or write that touches one, and by a sweep
the server runs periodically."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from protocoop.clock import utc_now
from protocoop.db import Database
from protocoop.db.models import PendingExchange
from protocoop.ledger.queries import DueForExpiry, has_due_expiries, is_due_for_expiry
from protocoop.ledger.service import expire_due

log = logging.getLogger(__name__)

_p = PendingExchange.__table__
T = TypeVar("T")


def expire_due_for(session: Session, community_id: str, account_id: str) -> int:
    """Release the expired reservations of one account, in the caller's transaction."""
    return expire_due(session, community_id, account_id)


def read_after_expiry(
    db: Database,
    community_id: str,
    read: Callable[[Session], T],
    *,
    account_id: str | None = None,
    exchange_id: str | None = None,
) -> T:
    """`read` in a read transaction, once what has expired among the proposals it shows (those
    of `account_id`, or `exchange_id`, or the community's) is released. The check shares the
    read's transaction: only when something is due does it cost a write and a second read."""
    with db.read() as session:
        if exchange_id is not None:
            due = is_due_for_expiry(session, community_id, exchange_id)
        else:
            due = has_due_expiries(session, community_id, account_id)
        if not due:
            return read(session)
    db.run_write(lambda session: expire_due(session, community_id))
    with db.read() as session:
        return read(session)


def read_checking_expiry(db: Database, community_id: str, read: Callable[[Session, bool], T]) -> T:
    """`read(session, True)` in a read transaction: a read that looks for its due proposals in
    its own statement (`queries.due_expiries_exist`) and raises `DueForExpiry` when it finds
    some, saving `read_after_expiry`'s separate check on every request. They are then released
    and it reads again, without looking."""
    try:
        with db.read() as session:
            return read(session, True)
    except DueForExpiry:
        pass
    db.run_write(lambda session: expire_due(session, community_id))
    with db.read() as session:
        return read(session, False)


def _expire_community(session: Session, community_id: str) -> int:
    return expire_due(session, community_id)


def sweep(db: Database) -> int:
    """Expire every due proposal in every community; returns how many."""
    with db.read() as session:
        communities = list(
            session.scalars(
                select(_p.c.community_id)
                .where(_p.c.status == "pending", _p.c.expires_at <= utc_now())
                .distinct()
            )
        )
    expired = 0
    for community_id in communities:
        expired += db.run_write(partial(_expire_community, community_id=community_id))
    if expired:
        log.info("expired %d pending exchanges", expired)
    return expired

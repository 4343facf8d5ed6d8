"""Writing and reading events.

Every state change writes its event in the same transaction (an outbox). Event ids are assigned
under the community's ledger-head row lock (`db.heads.lock_head`), which every event-writing
transaction holds until it commits: ids therefore follow commit order, without gaps, and a
reader that remembers the last id it saw (`next_after`) sees every event exactly once, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, select, update
from sqlalchemy.orm import Session

from protocoop.clock import utc_now
from protocoop.db.bulk import insert_rows
from protocoop.db.heads import lock_head
from protocoop.db.models import Event, LedgerHead
from protocoop.errors import NotFound

_events = cast(Table, Event.__table__)
_heads = cast(Table, LedgerHead.__table__)

EVENT_TYPES = (
    "exchange.completed",
    "exchange.pending",
    "exchange.rejected",
    "exchange.cancelled",
    "exchange.expired",
    "exchange.reversed",
    "member.created",
    "member.updated",
    "community.updated",
)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to record: its type and the resource as it is after the change."""

    type: str
    data: dict[str, Any]


def write_events(
    session: Session, community_id: str, last_event_id: int, events: Sequence[NewEvent]
) -> int:
    """Insert `events` numbered after `last_event_id` (the caller holds the head lock and
    stores the returned id as the head's new `last_event_id`)."""
    if not events:
        return last_event_id
    now = utc_now()
    insert_rows(
        session.connection(),
        _events,
        [
            {
                "community_id": community_id,
                "id": last_event_id + number,
                "type": event.type,
                "created_at": now,
                "data": event.data,
            }
            for number, event in enumerate(events, start=1)
        ],
    )
    return last_event_id + len(events)


def emit(session: Session, community_id: str, *events: NewEvent) -> None:
    """Record events for a change made outside the posting path, in the caller's transaction."""
    head = lock_head(session.connection(), community_id)
    if head is None:
        raise NotFound(f"Community {community_id!r} not found.")
    new_last = write_events(session, community_id, head.last_event_id, events)
    session.execute(
        update(_heads).where(_heads.c.community_id == community_id).values(last_event_id=new_last)
    )


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int
    type: str
    created_at: datetime
    data: dict[str, Any]


def events_after(session: Session, community_id: str, after: int, limit: int) -> list[StoredEvent]:
    """Up to `limit` events with id > `after`, in order."""
    rows = session.execute(
        select(_events.c.id, _events.c.type, _events.c.created_at, _events.c.data)
        .where(_events.c.community_id == community_id, _events.c.id > after)
        .order_by(_events.c.id)
        .limit(limit)
    ).all()
    return [StoredEvent(row.id, row.type, row.created_at, row.data) for row in rows]

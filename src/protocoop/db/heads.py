"""The ledger head's row lock: one per community, and the first lock every change takes.

The head (`ledger_heads`) assigns `seq`, extends the hash chain and numbers events and audit-log
entries, so every transaction that changes a community locks its head first, before any
account, and holds it until commit. One lock order everywhere means no two changes can deadlock,
and numbers assigned under the lock follow commit order, without gaps.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import ColumnElement, Connection, Row, Table, select

from protocoop.db.models import Community, LedgerHead

heads = cast(Table, LedgerHead.__table__)
communities = cast(Table, Community.__table__)


def lock_head(
    connection: Connection, community_id: str, *columns: ColumnElement[Any]
) -> Row[Any] | None:
    """Lock the community's head (held until commit) and read `columns` of its head and its
    community row (`last_event_id` when none are named); None when there is no such community."""
    chosen = columns or (heads.c.last_event_id,)
    return connection.execute(
        select(*chosen)
        .select_from(heads.join(communities, communities.c.id == heads.c.community_id))
        .where(heads.c.community_id == community_id)
        .with_for_update(of=heads)
    ).first()

"""Recording and reading the admin audit log.

The services that make a change record it here, in the caller's transaction: an entry exists
exactly when its change was committed, and a refused change (rolled back) leaves none. A change
that changes nothing (a PATCH with the current values, revoking a revoked key) records nothing.

Where an entry lives: in the log of the community it concerns (`community.created` is the first
entry of the new community's log; a key of a community is logged in that community); changes that
concern no community — admin keys — are in the instance log (`community_id` '').

Numbering: ids count up 1, 2, 3... per log, gap-free, in commit order, so a reader paging from
the newest entry back (or remembering the highest id it saw) misses nothing.
- A community's entries are numbered under its ledger-head row lock (`lock_head`), which every
  transaction that changes the community takes first and holds until it commits, as events are.
- The instance log has no head row. An instance entry takes the last committed id + 1 inside a
  savepoint; a concurrent transaction that took the same id first makes the insert wait for it,
  and when it commits the insert fails (primary key) and the id is read again. An id n + 1 is thus
  only ever taken once n has committed. (SQLite has a single writer, so it never retries.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast, get_args

from sqlalchemy import Table, func, insert, null, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from protocoop.audit_log.schemas import AuditLogEntryPublic
from protocoop.auth.roles import Principal
from protocoop.clock import utc_now
from protocoop.db.heads import lock_head
from protocoop.db.models import INSTANCE_SCOPE, AuditLogEntry
from protocoop.errors import NotFound, Unavailable
from protocoop.pagination import next_cursor
from protocoop.schemas import Page

_log = cast(Table, AuditLogEntry.__table__)

Action = Literal[
    "community.created",
    "community.updated",
    "member.created",
    "member.updated",
    "api_key.created",
    "api_key.revoked",
    "exchange.reversed",
    "link.created",
    "link.updated",
    "link.deleted",
    "intertrade.reversed",
]
ACTIONS: tuple[str, ...] = get_args(Action)

_INSTANCE_ATTEMPTS = 50

Document = Mapping[str, Any]


def record(
    session: Session,
    community_id: str | None,
    *,
    by: Principal | None,
    action: str,
    target: str,
    before: Document | None,
    after: Document | None,
) -> None:
    """Record that `by` (None: the command line) did `action` to `target` in `community_id`
    (None: the instance), in the caller's transaction."""
    assert action in ACTIONS, action
    row: dict[str, Any] = {
        "community_id": community_id if community_id is not None else INSTANCE_SCOPE,
        "at": utc_now(),
        "actor_key_id": by.key_id if by is not None else None,
        "action": action,
        "target": target,
        "before": dict(before) if before is not None else null(),
        "after": dict(after) if after is not None else null(),
    }
    if community_id is not None:
        if lock_head(session.connection(), community_id) is None:  # held until commit
            raise NotFound(f"Community {community_id!r} not found.")
        row["id"] = _last_id(session, community_id) + 1
        session.execute(insert(_log).values(row))
        return
    for _ in range(_INSTANCE_ATTEMPTS):
        row["id"] = _last_id(session, INSTANCE_SCOPE) + 1
        try:
            with session.begin_nested():
                session.execute(insert(_log).values(row))
            return
        except IntegrityError:
            if _last_id(session, INSTANCE_SCOPE) < row["id"]:
                raise  # the id is still free: the insert failed for another reason
    raise Unavailable("The audit log is busy; retry the request.")


def record_change(
    session: Session,
    community_id: str | None,
    *,
    by: Principal | None,
    action: str,
    target: str,
    before: Document,
    after: Document,
) -> None:
    """Record the fields that differ between two documents of `target`; nothing when none do."""
    old, new = changed_fields(before, after)
    if old or new:
        record(session, community_id, by=by, action=action, target=target, before=old, after=new)


def record_reversal(
    session: Session,
    community_id: str,
    *,
    by: Principal | None,
    exchange_id: str,
    reversal_id: str,
    reason: str,
) -> None:
    """Record that `exchange_id` was reversed by the exchange `reversal_id`."""
    record(
        session,
        community_id,
        by=by,
        action="exchange.reversed",
        target=exchange_id,
        before={"reversed_by": None},
        after={"reversed_by": reversal_id, "reason": reason},
    )


def changed_fields(before: Document, after: Document) -> tuple[dict[str, Any], dict[str, Any]]:
    """The members of two JSON documents that differ, as (old values, new values); nested
    objects (a community's `policy`) are compared member by member."""
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    names = [*after, *(name for name in before if name not in after)]
    for name in names:
        was, now = before.get(name), after.get(name)
        if was == now:
            continue
        if isinstance(was, Mapping) and isinstance(now, Mapping):
            old[name], new[name] = changed_fields(was, now)
        else:
            old[name], new[name] = was, now
    return old, new


def _last_id(session: Session, scope: str) -> int:
    return int(
        session.execute(
            select(func.coalesce(func.max(_log.c.id), 0)).where(_log.c.community_id == scope)
        ).scalar_one()
    )


def list_entries(
    session: Session,
    community_id: str | None,
    *,
    action: str | None,
    target: str | None,
    before_id: int | None,
    limit: int,
) -> Page[AuditLogEntryPublic]:
    """A log's entries, newest first; `action` and `target` keep only those that match."""
    scope = community_id if community_id is not None else INSTANCE_SCOPE
    query = (
        select(
            _log.c.id,
            _log.c.at,
            _log.c.actor_key_id,
            _log.c.action,
            _log.c.target,
            _log.c.before,
            _log.c.after,
        )
        .where(_log.c.community_id == scope)
        .order_by(_log.c.id.desc())
        .limit(limit + 1)
    )
    if action is not None:
        query = query.where(_log.c.action == action)
    if target is not None:
        query = query.where(_log.c.target == target)
    if before_id is not None:
        query = query.where(_log.c.id < before_id)
    rows = session.execute(query).all()
    following = next_cursor(rows, limit, lambda row: {"before": row.id})
    return Page(
        items=[
            AuditLogEntryPublic(
                id=row.id,
                at=row.at,
                actor_key_id=row.actor_key_id,
                action=row.action,
                target=row.target,
                before=row.before,
                after=row.after,
            )
            for row in rows[:limit]
        ],
        next_cursor=following,
    )

"""Members: joining, reading, limits and status.

A member's status moves between `active` and `suspended` freely; `closed` needs a zero balance
and nothing reserved, and is final. A limit change that would leave the balance (counting
reservations) outside the new band is refused with `limit_below_balance`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from protocoop.audit_log.service import record, record_change
from protocoop.auth.roles import Principal
from protocoop.clock import utc_now
from protocoop.communities.service import get_community
from protocoop.db.heads import lock_head
from protocoop.db.models import Account, Member, PendingExchange
from protocoop.errors import (
    AlreadyExists,
    BalanceNotZero,
    InvalidState,
    LimitBelowBalance,
    NotFound,
    ValidationFailed,
)
from protocoop.events.service import NewEvent, emit
from protocoop.ledger.expiry import expire_due_for
from protocoop.members.schemas import MemberCreate, MemberPublic, MemberUpdate
from protocoop.pagination import next_cursor
from protocoop.schemas import Page

_COLUMNS = (
    Member.id,
    Member.name,
    Member.kind,
    Member.status,
    Member.created_at,
    Account.balance,
    Account.lower_limit,
    Account.upper_limit,
    Account.reserved_debit,
    Account.reserved_credit,
)


def _public(row: Row[Any]) -> MemberPublic:
    return MemberPublic(
        id=row.id,
        name=row.name,
        kind=row.kind,
        status=row.status,
        balance=row.balance,
        lower_limit=row.lower_limit,
        upper_limit=row.upper_limit,
        created_at=row.created_at,
    )


def _member_query(community_id: str) -> Any:
    return (
        select(*_COLUMNS)
        .join(Account, (Account.community_id == Member.community_id) & (Account.id == Member.id))
        .where(Member.community_id == community_id)
    )


def create_member(
    session: Session, community_id: str, spec: MemberCreate, *, by: Principal | None = None
) -> MemberPublic:
    """A new member with balance 0; limits not given come from the community's defaults.
    `by` made the change (None: the command line)."""
    community = get_community(session, community_id)
    lock_head(session.connection(), community_id)  # the community exists: get_community said so
    if session.get(Account, (community_id, spec.id)) is not None:
        raise AlreadyExists(f"Member {spec.id!r} already exists.")
    given = spec.model_fields_set
    lower = spec.lower_limit if spec.lower_limit is not None else community.default_lower_limit
    upper = spec.upper_limit if "upper_limit" in given else community.default_upper_limit
    now = utc_now()
    session.add(
        Account(
            community_id=community_id,
            id=spec.id,
            kind="member",
            balance=0,
            lower_limit=lower,
            upper_limit=upper,
            reserved_debit=0,
            reserved_credit=0,
            created_at=now,
        )
    )
    try:
        session.flush()
    except IntegrityError as error:
        raise AlreadyExists(f"Member {spec.id!r} already exists.") from error
    session.add(
        Member(
            community_id=community_id,
            id=spec.id,
            name=spec.name,
            kind=spec.kind,
            status="active",
            created_at=now,
            updated_at=now,
        )
    )
    session.flush()
    created = get_member(session, community_id, spec.id)
    document = created.model_dump(mode="json")
    emit(session, community_id, NewEvent("member.created", document))
    record(
        session,
        community_id,
        by=by,
        action="member.created",
        target=spec.id,
        before=None,
        after=document,
    )
    return created


def get_member(session: Session, community_id: str, member_id: str) -> MemberPublic:
    row = session.execute(_member_query(community_id).where(Member.id == member_id)).first()
    if row is None:
        raise NotFound(f"Member {member_id!r} not found.")
    return _public(row)


def list_members(
    session: Session, community_id: str, *, status: str | None, after: str | None, limit: int
) -> Page[MemberPublic]:
    """Members in id order, optionally only those with `status`."""
    query = _member_query(community_id).order_by(Member.id).limit(limit + 1)
    if status is not None:
        query = query.where(Member.status == status)
    if after is not None:
        query = query.where(Member.id > after)
    rows = session.execute(query).all()
    return Page(
        items=[_public(row) for row in rows[:limit]],
        next_cursor=next_cursor(rows, limit, lambda row: {"after": row.id}),
    )


def update_member(
    session: Session,
    community_id: str,
    member_id: str,
    changes: MemberUpdate,
    *,
    by: Principal | None = None,
) -> MemberPublic:
    """Apply a PATCH under the ledger head's and the account's row locks, so no exchange slips
    in between the check and the change. `by` made the change (None: the command line)."""
    if lock_head(session.connection(), community_id) is None:
        raise NotFound(f"Community {community_id!r} not found.")
    if changes.status == "closed":
        expire_due_for(session, community_id, member_id)
    account = session.get(Account, (community_id, member_id), with_for_update=True)
    member = session.get(Member, (community_id, member_id), with_for_update=True)
    if account is None or member is None:
        raise NotFound(f"Member {member_id!r} not found.")
    fields = changes.model_fields_set
    for required in ("name", "status", "lower_limit"):
        if required in fields and getattr(changes, required) is None:
            raise ValidationFailed([{"loc": ["body", required], "msg": "may not be null"}])
    if member.status == "closed" and fields:
        raise InvalidState("A closed member cannot be changed.", current_status="closed")
    before = get_member(session, community_id, member_id).model_dump(mode="json")

    if "lower_limit" in fields or "upper_limit" in fields:
        lower = changes.lower_limit if "lower_limit" in fields else account.lower_limit
        upper = changes.upper_limit if "upper_limit" in fields else account.upper_limit
        assert lower is not None
        floor = account.balance - account.reserved_debit
        ceiling = account.balance + account.reserved_credit
        if floor < lower or (upper is not None and ceiling > upper):
            reserved = (
                f" (open proposals reserve -{account.reserved_debit}, +{account.reserved_credit})"
                if account.reserved_debit or account.reserved_credit
                else ""
            )
            bounds = f"[{lower}, {upper}]" if upper is not None else f"[{lower}, no upper limit]"
            raise LimitBelowBalance(
                f"Balance {account.balance}{reserved} would lie outside {bounds}.",
                member=member_id,
                balance=account.balance,
                lower_limit=lower,
                upper_limit=upper,
            )
        account.lower_limit = lower
        account.upper_limit = upper

    if changes.status == "closed":
        open_proposals = session.execute(
            select(func.count())
            .select_from(PendingExchange)
            .where(
                PendingExchange.community_id == community_id,
                PendingExchange.status == "pending",
                (PendingExchange.provider == member_id) | (PendingExchange.receiver == member_id),
            )
        ).scalar_one()
        if open_proposals:
            raise InvalidState(
                f"Member {member_id!r} has {open_proposals} pending exchanges; settle them first.",
                current_status=member.status,
                pending=open_proposals,
            )
    if changes.status == "closed" and (
        account.balance or account.reserved_debit or account.reserved_credit
    ):
        raise BalanceNotZero(
            f"Member {member_id!r} has balance {account.balance}; only a zero balance, with "
            "nothing pending, can be closed.",
            member=member_id,
            balance=account.balance,
        )
    if "name" in fields and changes.name is not None:
        member.name = changes.name
    if "status" in fields and changes.status is not None:
        member.status = changes.status
    member.updated_at = utc_now()
    session.flush()
    updated = get_member(session, community_id, member_id)
    after = updated.model_dump(mode="json")
    emit(session, community_id, NewEvent("member.updated", after))
    record_change(
        session,
        community_id,
        by=by,
        action="member.updated",
        target=member_id,
        before=before,
        after=after,
    )
    return updated

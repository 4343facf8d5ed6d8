"""Creating, reading and changing communities."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from protocoop.audit_log.service import record, record_change
from protocoop.auth.roles import Principal, Role
from protocoop.clock import utc_now
from protocoop.communities.schemas import (
    CommunityCreate,
    CommunityPublic,
    CommunityUpdate,
    LevyPolicy,
    Policy,
    PolicyUpdate,
    Unit,
)
from protocoop.db.models import Account, Community, LedgerHead
from protocoop.errors import AlreadyExists, Forbidden, NotFound, ValidationFailed
from protocoop.events.service import NewEvent, emit
from protocoop.ledger.chain import GENESIS_HASH
from protocoop.pagination import next_cursor
from protocoop.schemas import Page

COMMONS = "@commons"
"""The community fund: a system account every community has."""


def public(community: Community) -> CommunityPublic:
    return CommunityPublic(
        id=community.id,
        name=community.name,
        unit=Unit(code=community.unit_code, name=community.unit_name, scale=community.unit_scale),
        default_lower_limit=community.default_lower_limit,
        default_upper_limit=community.default_upper_limit,
        status=community.status,
        policy=Policy(
            reciprocity_threshold=community.reciprocity_threshold,
            near_limit_ratio=community.near_limit_ratio,
            dormant_after_days=community.dormant_after_days,
            levy=(
                LevyPolicy(
                    rate_ppm=community.levy_rate_ppm,
                    minimum=community.levy_minimum or 0,
                    paid_by=community.levy_paid_by,
                )
                if community.levy_rate_ppm is not None
                else None
            ),
        ),
        created_at=community.created_at,
    )


POLICY_FIELDS = ("reciprocity_threshold", "near_limit_ratio", "dormant_after_days")


def _apply_policy(community: Community, policy: PolicyUpdate) -> None:
    for name in POLICY_FIELDS:
        value = getattr(policy, name)
        if name in policy.model_fields_set and value is None:
            raise ValidationFailed([{"loc": ["body", "policy", name], "msg": "may not be null"}])
        if value is not None:
            setattr(community, name, value)
    if "levy" in policy.model_fields_set:
        levy = policy.levy
        community.levy_rate_ppm = levy.rate_ppm if levy else None
        community.levy_minimum = levy.minimum if levy else None
        community.levy_paid_by = levy.paid_by if levy else None


def create_community(
    session: Session, spec: CommunityCreate, *, by: Principal | None = None
) -> CommunityPublic:
    """A new community with an empty ledger and its `@commons` fund (which cannot go below 0),
    made by `by` (None: the command line); the creation is the first entry of its audit log."""
    if session.get(Community, spec.id) is not None:
        raise AlreadyExists(f"Community {spec.id!r} already exists.")
    now = utc_now()
    community = Community(
        id=spec.id,
        name=spec.name,
        unit_code=spec.unit.code,
        unit_name=spec.unit.name,
        unit_scale=spec.unit.scale,
        default_lower_limit=spec.default_lower_limit,
        default_upper_limit=spec.default_upper_limit,
        status="active",
        reciprocity_threshold=0.5,
        near_limit_ratio=0.1,
        dormant_after_days=90,
        created_at=now,
        updated_at=now,
    )
    if spec.policy is not None:
        _apply_policy(community, spec.policy)
    session.add(community)
    try:
        session.flush()
    except IntegrityError as error:
        raise AlreadyExists(f"Community {spec.id!r} already exists.") from error
    session.add(LedgerHead(community_id=spec.id, last_seq=0, last_hash=GENESIS_HASH))
    session.add(
        Account(
            community_id=spec.id,
            id=COMMONS,
            kind="system",
            balance=0,
            lower_limit=0,
            upper_limit=None,
            reserved_debit=0,
            reserved_credit=0,
            created_at=now,
        )
    )
    session.flush()
    created = public(community)
    record(
        session,
        spec.id,
        by=by,
        action="community.created",
        target=spec.id,
        before=None,
        after=created.model_dump(mode="json"),
    )
    return created


def get_community(session: Session, community_id: str, *, lock: bool = False) -> Community:
    community = session.get(Community, community_id, with_for_update=lock)
    if community is None:
        raise NotFound(f"Community {community_id!r} not found.")
    return community


def list_communities(
    session: Session, *, visible_to: Principal | None, after: str | None, limit: int
) -> Page[CommunityPublic]:
    """Communities in id order: all for admins (and the command line), its own for other keys."""
    query = select(Community).order_by(Community.id).limit(limit + 1)
    if visible_to is not None and visible_to.community_id is not None:
        query = query.where(Community.id == visible_to.community_id)
    if after is not None:
        query = query.where(Community.id > after)
    rows = list(session.scalars(query))
    return Page(
        items=[public(c) for c in rows[:limit]],
        next_cursor=next_cursor(rows, limit, lambda row: {"after": row.id}),
    )


def update_community(
    session: Session, community_id: str, changes: CommunityUpdate, *, by: Principal | None
) -> CommunityPublic:
    """Apply a PATCH. Only admins change `status`; default limits affect future members only."""
    community = get_community(session, community_id, lock=True)
    fields = changes.model_fields_set
    if "status" in fields and by is not None and by.role is not Role.ADMIN:
        raise Forbidden("Only an admin may suspend or reactivate a community.")
    for required in ("name", "default_lower_limit", "status", "policy"):
        if required in fields and getattr(changes, required) is None:
            raise ValidationFailed([{"loc": ["body", required], "msg": "may not be null"}])
    before = public(community).model_dump(mode="json")
    for field in ("name", "default_lower_limit", "default_upper_limit", "status"):
        if field in fields:
            setattr(community, field, getattr(changes, field))
    if changes.policy is not None:
        _apply_policy(community, changes.policy)
    community.updated_at = utc_now()
    session.flush()
    updated = public(community)
    after = updated.model_dump(mode="json")
    emit(session, community_id, NewEvent("community.updated", after))
    record_change(
        session,
        community_id,
        by=by,
        action="community.updated",
        target=community_id,
        before=before,
        after=after,
    )
    return updated

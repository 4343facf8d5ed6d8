"""Managing API keys: creating, listing and revoking them (an admin's or a community manager's
work, written to the audit log). Checking a key on a request is `protocoop.auth`'s."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from protocoop.audit_log.service import record, record_change
from protocoop.auth import tokens
from protocoop.auth.roles import Principal, Role
from protocoop.clock import utc_now
from protocoop.db.heads import lock_head
from protocoop.db.models import ApiKey
from protocoop.errors import Forbidden, NotFound, ValidationFailed
from protocoop.keys.schemas import ApiKeyCreated, ApiKeyPublic
from protocoop.pagination import next_cursor
from protocoop.schemas import Page


def public(key: ApiKey) -> ApiKeyPublic:
    return ApiKeyPublic(
        id=key.id,
        role=Role(key.role),
        community=key.community_id,
        label=key.label,
        prefix=key.prefix,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
    )


def create_key(
    session: Session,
    *,
    role: Role,
    community_id: str | None,
    label: str | None,
    created_by: Principal | None,
) -> ApiKeyCreated:
    """Make a key; the token is in the answer and nowhere else.

    `created_by` None means the command line (trusted). A treasurer may only make app and auditor
    keys of its own community. The creation is recorded in the community's audit log (an admin
    key's in the instance log).
    """
    if created_by is not None and created_by.role is not Role.ADMIN:
        if role not in (Role.APP, Role.AUDITOR):
            raise Forbidden("A treasurer may only create app and auditor keys.")
        community_id = community_id or created_by.community_id
        if community_id is None or not created_by.sees(community_id):
            raise NotFound(f"Community {community_id!r} not found.")
    if (role is Role.ADMIN) != (community_id is None):
        raise ValidationFailed(
            [{"loc": ["body", "community"], "msg": "admin keys have no community; others need one"}]
        )
    if community_id is not None and lock_head(session.connection(), community_id) is None:
        raise NotFound(f"Community {community_id!r} not found.")
    token = tokens.new_token()
    key = ApiKey(
        id=tokens.new_key_id(),
        token_hash=tokens.token_hash(token),
        prefix=tokens.shown_prefix(token),
        role=role.value,
        community_id=community_id,
        label=label,
        created_at=utc_now(),
        created_by=created_by.key_id if created_by else None,
    )
    session.add(key)
    session.flush()
    created = public(key)
    record(
        session,
        community_id,
        by=created_by,
        action="api_key.created",
        target=key.id,
        before=None,
        after=created.model_dump(mode="json"),
    )
    return ApiKeyCreated(**created.model_dump(), token=token)


def list_keys(
    session: Session, *, visible_to: Principal | None, after: str | None, limit: int
) -> Page[ApiKeyPublic]:
    """Keys in id order; a treasurer sees only its community's keys. No tokens, ever."""
    query = select(ApiKey).order_by(ApiKey.id).limit(limit + 1)
    if visible_to is not None and visible_to.community_id is not None:
        query = query.where(ApiKey.community_id == visible_to.community_id)
    if after is not None:
        query = query.where(ApiKey.id > after)
    keys = list(session.scalars(query))
    return Page(
        items=[public(key) for key in keys[:limit]],
        next_cursor=next_cursor(keys, limit, lambda key: {"after": key.id}),
    )


def revoke_key(session: Session, key_id: str, *, by: Principal | None) -> ApiKeyPublic:
    """Revoke a key: from the next request on it authenticates nothing. Revoking twice is a no-op.

    A treasurer sees only its community's keys and may revoke only app and auditor keys. The
    revocation is recorded in the key's community's audit log (an admin key's in the instance
    log).
    """
    found = session.execute(
        select(ApiKey.role, ApiKey.community_id).where(ApiKey.id == key_id)
    ).first()
    if found is None or not _may_see_key(by, found.community_id):
        raise NotFound(f"API key {key_id!r} not found.")
    if by is not None and by.role is not Role.ADMIN and found.role not in (Role.APP, Role.AUDITOR):
        raise Forbidden("A treasurer may only revoke app and auditor keys.")
    if found.community_id is not None:
        lock_head(session.connection(), found.community_id)  # the community's lock first
    key = session.get(ApiKey, key_id, with_for_update=True)
    assert key is not None  # keys are never deleted
    before = public(key)
    if key.revoked_at is None:
        key.revoked_at = utc_now()
        session.flush()
    after = public(key)
    record_change(
        session,
        key.community_id,
        by=by,
        action="api_key.revoked",
        target=key.id,
        before=before.model_dump(mode="json"),
        after=after.model_dump(mode="json"),
    )
    return after


def _may_see_key(principal: Principal | None, key_community_id: str | None) -> bool:
    if principal is None or principal.role is Role.ADMIN:
        return True
    return key_community_id is not None and key_community_id == principal.community_id

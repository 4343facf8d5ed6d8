"""Creating, listing, revoking and checking API keys."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from protocoop.auth import tokens
from protocoop.auth.roles import Principal, Role
from protocoop.auth.schemas import ApiKeyCreated, ApiKeyPublic
from protocoop.clock import utc_now
from protocoop.db.models import ApiKey, Community
from protocoop.errors import Forbidden, NotFound, ValidationFailed
from protocoop.pagination import encode_cursor
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
    keys of its own community.
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
    if community_id is not None and session.get(Community, community_id) is None:
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
    return ApiKeyCreated(**public(key).model_dump(), token=token)


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
    next_cursor = encode_cursor({"after": keys[limit - 1].id}) if len(keys) > limit else None
    return Page(items=[public(key) for key in keys[:limit]], next_cursor=next_cursor)


def revoke_key(session: Session, key_id: str, *, by: Principal | None) -> ApiKeyPublic:
    """Revoke a key: from the next request on it authenticates nothing. Revoking twice is a no-op.

    A treasurer sees only its community's keys and may revoke only app and auditor keys.
    """
    key = session.get(ApiKey, key_id, with_for_update=True)
    if key is None or not _may_see_key(by, key):
        raise NotFound(f"API key {key_id!r} not found.")
    if by is not None and by.role is not Role.ADMIN and key.role not in (Role.APP, Role.AUDITOR):
        raise Forbidden("A treasurer may only revoke app and auditor keys.")
    if key.revoked_at is None:
        key.revoked_at = utc_now()
        session.flush()
    return public(key)


def _may_see_key(principal: Principal | None, key: ApiKey) -> bool:
    if principal is None or principal.role is Role.ADMIN:
        return True
    return key.community_id is not None and key.community_id == principal.community_id


def authenticate(session: Session, token: str) -> Principal | None:
    """The principal for a bearer token, or None when it is unknown or revoked (alike)."""
    digest = tokens.token_hash(token)
    row = session.execute(
        select(ApiKey.id, ApiKey.role, ApiKey.community_id, ApiKey.token_hash).where(
            ApiKey.token_hash == digest, ApiKey.revoked_at.is_(None)
        )
    ).first()
    if row is None or not tokens.hashes_match(row.token_hash, digest):
        return None
    return Principal(key_id=row.id, role=Role(row.role), community_id=row.community_id)

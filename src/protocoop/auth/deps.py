"""Who is asking, and may they? FastAPI dependencies that routes declare as `Annotated` aliases.

A key never learns that another community exists: any path under a community it cannot see
answers 404, before its role is even considered. Inside its own community, a role that may not do
something gets 403.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from protocoop.auth import service
from protocoop.auth.roles import ADMINS, MANAGERS, OVERSEERS, POSTERS, READERS, Principal, Role
from protocoop.db import Database
from protocoop.db.models import Community
from protocoop.errors import Forbidden, NotFound, Unauthorized
from protocoop.schemas import COMMUNITY_ID_PATTERN

_COMMUNITY_ID = re.compile(COMMUNITY_ID_PATTERN)
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer pcp_...`")


def get_database(request: Request) -> Database:
    """The process's database."""
    db: Database = request.app.state.db
    return db


DatabaseDep = Annotated[Database, Depends(get_database)]


def authenticate(
    db: DatabaseDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The principal behind the bearer token; unknown and revoked tokens are the same 401."""
    if credentials is None or not credentials.credentials:
        raise Unauthorized("Send an API key as `Authorization: Bearer <token>`.")
    with db.read() as session:
        principal = service.authenticate(session, credentials.credentials)
    if principal is None:
        raise Unauthorized("Unknown or revoked API key.")
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]


def require_roles(roles: frozenset[Role]) -> Callable[[Principal], Principal]:
    """A dependency that lets through only `roles` (for routes outside any community)."""

    def dependency(principal: PrincipalDep) -> Principal:
        if principal.role not in roles:
            raise Forbidden(f"The {principal.role.value} role may not do this.")
        return principal

    dependency.allowed_roles = roles  # type: ignore[attr-defined]
    return dependency


def community_exists(request: Request, db: Database, community_id: str) -> bool:
    """Whether the community exists. Communities are never deleted, so a yes is remembered."""
    known: set[str] = request.app.state.known_communities
    if community_id in known:
        return True
    with db.read() as session:
        found = session.get(Community, community_id) is not None
    if found:
        known.add(community_id)
    return found


def in_community(roles: frozenset[Role]) -> Callable[..., Principal]:
    """A dependency for routes under `/v1/communities/{community_id}`: 404 for a community the key
    cannot see or that does not exist, then 403 for a role not in `roles`."""

    def dependency(
        request: Request,
        principal: PrincipalDep,
        db: DatabaseDep,
        community_id: Annotated[str, Path(max_length=63)],
    ) -> Principal:
        if (
            not principal.sees(community_id)
            or not _COMMUNITY_ID.match(community_id)
            or not community_exists(request, db, community_id)
        ):
            raise NotFound(f"Community {community_id!r} not found.")
        if principal.role not in roles:
            raise Forbidden(f"The {principal.role.value} role may not do this.")
        return principal

    dependency.allowed_roles = roles  # type: ignore[attr-defined]
    return dependency


Reader = Annotated[Principal, Depends(in_community(READERS))]
"""Any key of the community (or admin)."""
Overseer = Annotated[Principal, Depends(in_community(OVERSEERS))]
"""Treasurer, auditor or admin: community-wide reports."""
Poster = Annotated[Principal, Depends(in_community(POSTERS))]
"""App, treasurer or admin: post and settle exchanges."""
Manager = Annotated[Principal, Depends(in_community(MANAGERS))]
"""Treasurer or admin: members, limits, reversals, settings."""
Admin = Annotated[Principal, Depends(require_roles(ADMINS))]
KeyManager = Annotated[Principal, Depends(require_roles(MANAGERS))]

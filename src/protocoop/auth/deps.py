"""Who is asking, and may they? FastAPI dependencies that routes declare as `Annotated` aliases.

A key never learns that another community exists: any path under a community it cannot see
answers 404, before its role is even considered. Inside its own community, a role that may not do
something gets 403.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from protocoop.auth import service
from protocoop.auth.cache import (
    UNKNOWN_OR_REVOKED,
    PrincipalCache,
    UnconfirmedKey,
    needs_confirmation,
    unconfirmed_key,
)
from protocoop.auth.ratelimit import RateLimiter
from protocoop.auth.roles import ADMINS, MANAGERS, OVERSEERS, POSTERS, READERS, Principal, Role
from protocoop.auth.tokens import token_hash
from protocoop.config import Settings
from protocoop.db import Database
from protocoop.db.models import Community
from protocoop.errors import Forbidden, NotFound, Unauthorized
from protocoop.schemas import COMMUNITY_ID_PATTERN

_COMMUNITY_ID = re.compile(COMMUNITY_ID_PATTERN)
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer pcp_...`")


async def get_database(request: Request) -> Database:
    """The process's database. (`async` only so that FastAPI calls it on the event loop rather
    than hopping to a worker thread for every request.)"""
    db: Database = request.app.state.db
    return db


DatabaseDep = Annotated[Database, Depends(get_database)]


def revalidates_key(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a write endpoint that checks its key again inside the transaction that records it,
    so it may authenticate from the short-lived cache like a read."""
    endpoint.revalidates_key = True  # type: ignore[attr-defined]
    return endpoint


def _may_use_cache(request: Request) -> bool:
    if request.method in ("GET", "HEAD"):
        return True
    endpoint = getattr(request.scope.get("route"), "endpoint", None)
    return bool(getattr(endpoint, "revalidates_key", False))


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The principal behind the bearer token; unknown and revoked tokens are the same 401.

    (It and the role checks below take the database from the request rather than as a
    dependency of their own: every level of the dependency tree costs each request's
    resolution, and these run on every request.)"""
    if credentials is None or not credentials.credentials:
        raise Unauthorized("Send an API key as `Authorization: Bearer <token>`.")
    cache: PrincipalCache = request.app.state.principals
    digest = token_hash(credentials.credentials)
    principal = cache.get(digest) if _may_use_cache(request) else None
    # A cached key is checked by the request's first transaction (`auth.cache`).
    unconfirmed_key.set(UnconfirmedKey(principal.key_id) if principal is not None else None)
    if principal is None:
        db: Database = request.app.state.db

        def look_up() -> Principal | None:
            return db.run_read(
                lambda session: service.authenticate(session, credentials.credentials)
            )

        principal = await run_in_threadpool(look_up)
        if principal is None:
            raise Unauthorized(UNKNOWN_OR_REVOKED)
        cache.put(digest, principal)
    limiter: RateLimiter = request.app.state.rate_limiter
    limiter.admit(principal.key_id)  # 429 rate_limited when the key's bucket is empty
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]


async def confirm_cached_key(db: Database) -> None:
    """Check a key that came from the cache now, in a transaction of its own, unless one of the
    request's transactions already did: for answers that would otherwise not touch the database
    (a refusal, `/metrics`), so a revoked key gets its 401 there too."""
    if not needs_confirmation():
        return

    def check() -> None:
        # Beginning the transaction runs the check (`auth.cache.confirm_in_transaction`).
        db.run_read(lambda session: session.connection())

    await run_in_threadpool(check)


def require_roles(roles: frozenset[Role]) -> Callable[..., Awaitable[Principal]]:
    """A dependency that lets through only `roles` (for routes outside any community)."""

    async def dependency(request: Request, principal: PrincipalDep) -> Principal:
        if principal.role not in roles:
            await confirm_cached_key(request.app.state.db)
            raise Forbidden(f"The {principal.role.value} role may not do this.")
        return principal

    dependency.allowed_roles = roles  # type: ignore[attr-defined]
    return dependency


async def community_exists(request: Request, db: Database, community_id: str) -> bool:
    """Whether the community exists. Communities are never deleted, so a yes is remembered."""
    known: set[str] = request.app.state.known_communities
    if community_id in known:
        return True

    def look_up() -> bool:
        return db.run_read(lambda session: session.get(Community, community_id) is not None)

    found = await run_in_threadpool(look_up)
    if found:
        known.add(community_id)
    return found


def in_community(roles: frozenset[Role]) -> Callable[..., Awaitable[Principal]]:
    """A dependency for routes under `/v1/communities/{community_id}`: 404 for a community the key
    cannot see or that does not exist, then 403 for a role not in `roles`."""

    async def dependency(
        request: Request,
        principal: PrincipalDep,
        community_id: Annotated[str, Path(max_length=63)],
    ) -> Principal:
        db: Database = request.app.state.db
        if (
            not principal.sees(community_id)
            or not _COMMUNITY_ID.match(community_id)
            or not await community_exists(request, db, community_id)
        ):
            await confirm_cached_key(db)
            raise NotFound(f"Community {community_id!r} not found.")
        if principal.role not in roles:
            await confirm_cached_key(db)
            raise Forbidden(f"The {principal.role.value} role may not do this.")
        return principal

    dependency.allowed_roles = roles  # type: ignore[attr-defined]
    return dependency


async def read_metrics(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Who may read `/metrics`, which shows every community's activity: anyone when the operator
    made it public (`PROTOCOOP_METRICS_PUBLIC`), else the metrics token
    (`PROTOCOOP_METRICS_TOKEN`) or an admin key."""
    settings: Settings = request.app.state.settings
    if settings.metrics_public:
        return
    token = settings.metrics_token
    if (
        token is not None
        and credentials is not None
        and hmac.compare_digest(credentials.credentials.encode(), token.get_secret_value().encode())
    ):
        return
    principal = await authenticate(request, credentials)
    await confirm_cached_key(request.app.state.db)
    if principal.role not in ADMINS:
        raise Forbidden(f"The {principal.role.value} role may not do this.")


read_metrics.allowed_roles = ADMINS  # type: ignore[attr-defined]


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
LinkReader = Annotated[Principal, Depends(require_roles(OVERSEERS))]
"""Admins see every link; a treasurer or auditor those of its own community."""
MetricsReader = Annotated[None, Depends(read_metrics)]
"""The metrics token or an admin key (anyone when `/metrics` is public)."""

"""Checking the API key a request carries: is it live, and whose is it."""

from __future__ import annotations

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from protocoop.auth import tokens
from protocoop.auth.roles import Principal, Role
from protocoop.db.models import ApiKey

_LIVE_KEY_SQL = {
    "qmark": "SELECT 1 FROM api_keys WHERE id = ? AND revoked_at IS NULL",
    "format": "SELECT 1 FROM api_keys WHERE id = %s AND revoked_at IS NULL",
}
"""`key_is_live`'s query, as the driver takes it: it runs on every request that authenticated from
the cache, and SQL sent as is skips SQLAlchemy's statement handling, which here costs several
times the query itself."""


def key_is_live(connection: Connection, key_id: str) -> bool:
    """Whether the key exists and has not been revoked, as the caller's transaction sees it."""
    style = "qmark" if connection.dialect.paramstyle == "qmark" else "format"
    return connection.exec_driver_sql(_LIVE_KEY_SQL[style], (key_id,)).first() is not None


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

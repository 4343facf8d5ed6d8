"""A cache of authenticated tokens, so hot read and posting paths skip a transaction of their own
per request — without letting a revoked key through.

A principal found here is only provisional: the request's first database transaction checks, as
its very first statement, that the key is still live (`confirm_in_transaction`, run on every
session's `after_begin`), and answers 401 if it was revoked since. The check shares the snapshot
the request then reads from, so a key revoked before the request began — through the API on any
worker, or with `protocoop keys revoke` from another process — is refused on its next request:
reads fail the check, posts are checked again inside the group-commit transaction that records
them, and every other write looks its key up afresh. A request that would answer without a
transaction (a 403 or 404 refusal, `/metrics`) runs the check first (`deps.confirm_cached_key`);
only a request refused before it is looked at (422 for malformed input, 429) is answered without.
"""

from __future__ import annotations

import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, event
from sqlalchemy.orm import Session

from protocoop.auth import service
from protocoop.auth.roles import Principal
from protocoop.errors import Unauthorized

UNKNOWN_OR_REVOKED = "Unknown or revoked API key."


class PrincipalCache:
    """Token hash -> principal, each entry kept for `ttl` seconds (0 turns caching off)."""

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> Principal | None:
        if not self.ttl:
            return None
        entry = self._entries.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, digest: str, principal: Principal) -> None:
        if not self.ttl:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[digest] = (time.monotonic() + self.ttl, principal)

    def forget_key(self, key_id: str) -> None:
        """Drop a revoked key at once (this process then refuses it without a check)."""
        with self._lock:
            for digest in [d for d, (_, p) in self._entries.items() if p.key_id == key_id]:
                del self._entries[digest]


@dataclass(slots=True)
class UnconfirmedKey:
    """A key this request authenticated from the cache, not yet checked in the database."""

    key_id: str
    confirmed: bool = False


unconfirmed_key: ContextVar[UnconfirmedKey | None] = ContextVar(
    "protocoop_unconfirmed_key", default=None
)
"""Set by `authenticate` for each request (None when it looked the key up). The request's worker
threads see the same object (they run in copies of its context), so one check serves them all."""


def confirm_in_transaction(connection: Connection) -> None:
    """Check the request's cached key in the transaction just begun, once per request: 401 when
    it was revoked since it was cached."""
    pending = unconfirmed_key.get()
    if pending is None or pending.confirmed:
        return
    if not service.key_is_live(connection, pending.key_id):
        raise Unauthorized(UNKNOWN_OR_REVOKED)
    pending.confirmed = True


def needs_confirmation() -> bool:
    """Whether this request's key came from the cache and no transaction has checked it yet."""
    pending = unconfirmed_key.get()
    return pending is not None and not pending.confirmed


def _on_begin(_session: Session, _transaction: Any, connection: Connection) -> None:
    confirm_in_transaction(connection)


def install_key_check() -> None:
    """Make the first transaction of every request check a cached key (idempotent)."""
    if not event.contains(Session, "after_begin", _on_begin):
        event.listen(Session, "after_begin", _on_begin)

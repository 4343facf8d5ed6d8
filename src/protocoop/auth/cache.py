"""A short-lived cache of authenticated tokens, so hot read and posting paths skip a database
round trip per request.

Revocation stays immediate where it matters: a revoked key is dropped from this process's cache
at once; posts are re-checked against the database inside the transaction that records them
(group commit), so no write is ever accepted from a revoked key; other writes always look the key
up. Only reads served by *another* worker process may still succeed for up to `ttl` seconds after
a revocation.
"""

from __future__ import annotations

import threading
import time

from protocoop.auth.roles import Principal


class PrincipalCache:
    """Token hash -> principal, each entry trusted for `ttl` seconds (0 turns caching off)."""

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
        """Drop a revoked key at once."""
        with self._lock:
            for digest in [d for d, (_, p) in self._entries.items() if p.key_id == key_id]:
                del self._entries[digest]

"""A per-key rate limit: a token bucket for each API key, in this process's memory.

A key may make `per_minute` requests a minute on average and up to `per_minute` at once (a full
bucket); a request that finds the bucket empty is `429 rate_limited` with `Retry-After` saying
when the next one will be let through. The buckets live in one process: a server with N workers
lets a key make up to N times the limit, and a restart refills every bucket.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from protocoop.errors import RateLimited

_PRUNE_ABOVE = 10_000
"""Buckets kept before full ones (keys idle for a minute or more) are dropped."""


class RateLimiter:
    """Token buckets keyed by API key id; `per_minute` 0 turns the limit off."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._refill_per_s = per_minute / 60
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        """key id -> (tokens left, when they were counted)."""
        self._lock = threading.Lock()

    def admit(self, key_id: str) -> None:
        """Take one request from the key's bucket, or raise `RateLimited` when it is empty."""
        if not self.per_minute:
            return
        with self._lock:
            now = self._clock()
            tokens, counted_at = self._buckets.get(key_id, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - counted_at) * self._refill_per_s)
            if tokens >= 1:
                self._buckets[key_id] = (tokens - 1, now)
                if len(self._buckets) > _PRUNE_ABOVE:
                    self._prune(now)
                return
            self._buckets[key_id] = (tokens, now)
        wait = max(1, math.ceil((1 - tokens) / self._refill_per_s))
        raise RateLimited(
            f"This API key may make {self.per_minute} requests a minute; retry in {wait} s.",
            retry_after=wait,
        )

    def _prune(self, now: float) -> None:
        full_after = 60.0
        self._buckets = {
            key: bucket for key, bucket in self._buckets.items() if now - bucket[1] < full_after
        }

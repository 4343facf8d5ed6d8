"""Planner statistics that keep up with the ledger, with no ANALYZE by hand and no autovacuum.

Why: PostgreSQL plans each foreign-key check once per connection and keeps the plan (a generic
plan, cached for the connection's life until the table's statistics or definition change). With
no statistics at all, the planner takes `community_id = $1` to match one row in 200, so for the
check of `entries -> exchanges (community_id, id)` any index of `exchanges` that starts with
`community_id` looks as good as the primary key while the table is small, and it picked one
(`uq_exchanges_community_id_reverses`): `Index Cond: community_id = $1, Filter: id = $2`. Every
entry then walked every exchange of its community: a 1000-exchange batch cost 0.55 s at 1k
exchanges, 2.4 s at 10k, and hit the statement timeout further on, on a connection that was
never replaced and a table nothing analyzed (autovacuum off). Once `exchanges` has statistics
(one community_id value, unique ids), the primary key wins at every size.

What: after a commit, at most once every `interval_s` per process, a background thread asks
PostgreSQL which of the tables the ledger grows have at least doubled in size (in pages, at
least `MIN_PAGES`) since they were last analyzed (`pg_class.relpages`, which ANALYZE, VACUUM and
autovacuum all set) and ANALYZEs those, one process at a time (an advisory lock). ANALYZE
invalidates every connection's cached plans of the table, so the next check of each connection is
planned with statistics. A table whose statistics say "empty" while it has live rows is analyzed
again without waiting for it to double: an ANALYZE (autovacuum's, say) that runs while the first
batch is still uncommitted counts none of its rows (`reltuples` 0 over all its pages), and every
plan then takes the table for empty. Tables are never analyzed while nearly empty (statistics
that say "empty" are trusted by the planner), and the work is logarithmic in the ledger's size: a
table of a million exchanges has been analyzed about a dozen times. With autovacuum on, it
usually analyzes first and this finds nothing to do. SQLite is left alone: its planner does not
cache plans by table size this way.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy import Engine, event, text

log = logging.getLogger(__name__)

GROWING_TABLES = (
    "exchanges",
    "entries",
    "pair_flows",
    "idempotency_records",
    "pending_exchanges",
    "accounts",
    "members",
    "audit_log",
)
"""The tables that grow with use and that the posting path's statements and checks read, or that
have indexes which compete for a plan (`events` has only its primary key: it is left out, as
analyzing it costs the most of all)."""

MIN_PAGES = 16
"""A table smaller than this (128 kB) is never analyzed here: it is too small for a plan on it to
cost much, and statistics taken while it is nearly empty would say so."""

LOCK_KEY = 0x70726F746F  # pg_try_advisory_xact_lock key: one process analyzes at a time

GROWN = text(
    """
    SELECT c.relname
    FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid,
         LATERAL (SELECT pg_relation_size(c.oid) / current_setting('block_size')::int) p(pages)
    WHERE c.relnamespace = current_schema()::regnamespace
      AND c.relkind = 'r'
      AND c.relname = ANY(:tables)
      AND p.pages >= :min_pages
      AND (p.pages >= 2 * c.relpages
           -- analyzed while its rows were not yet committed (autovacuum can): "empty"
           OR (c.reltuples = 0 AND coalesce(s.n_live_tup, 0) > 0))
    ORDER BY c.relname
    """
)


def analyze_grown(engine: Engine) -> list[str]:
    """ANALYZE the growing tables that have doubled since they were last analyzed (none while
    another process does it); returns the tables analyzed."""
    with engine.connect() as connection, connection.begin():
        if not connection.execute(text(f"SELECT pg_try_advisory_xact_lock({LOCK_KEY})")).scalar():
            return []
        grown = list(
            connection.execute(
                GROWN, {"tables": list(GROWING_TABLES), "min_pages": MIN_PAGES}
            ).scalars()
        )
        if grown:
            # never queue behind a VACUUM or a migration: the next check tries again
            connection.execute(text("SET LOCAL lock_timeout = '1s'"))
            connection.execute(text("ANALYZE " + ", ".join(f'"{name}"' for name in grown)))
    return grown


class StatisticsKeeper:
    """Runs `analyze_grown` in the background after commits, at most once per `interval_s`."""

    def __init__(self, engine: Engine, interval_s: float) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._thread: threading.Thread | None = None

    def install(self) -> None:
        event.listen(self.engine, "commit", self._committed)

    def _committed(self, _connection: Any) -> None:
        now = time.monotonic()
        if now < self._next_check:  # the common case: one comparison
            return
        with self._lock:
            if now < self._next_check:
                return
            if self._thread is not None and self._thread.is_alive():
                return
            self._next_check = now + self.interval_s
            self._thread = threading.Thread(
                target=self._check, name="protocoop-statistics", daemon=True
            )
            self._thread.start()

    def _check(self) -> None:
        try:
            started = time.monotonic()
            analyzed = analyze_grown(self.engine)
            if analyzed:
                log.info(
                    "analyzed %s (grown 2x since last analyzed) in %.0f ms",
                    ", ".join(analyzed),
                    (time.monotonic() - started) * 1000,
                )
        except Exception as error:  # the next commit's check tries again
            log.warning("statistics check failed: %s", error)

    def wait(self, timeout_s: float = 2.0) -> None:
        """Let a check under way finish (before the engine's connections are closed)."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

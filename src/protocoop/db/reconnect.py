"""Connections the database closed: a restart, `pg_terminate_backend`, a proxy's idle timeout.

SQLAlchemy notices such a failure (`DBAPIError.connection_invalidated`), discards the connection
and, because a restart ends them all at once, every other pooled connection opened before that
moment (the pool's `_invalidate`: each is replaced at its next checkout). What is left to decide
is the transaction that was running on it; nothing committed, so it runs again on a new
connection:

- a write that lost its connection before its COMMIT was sent (`Database.run_write`). One that
  loses it *during* COMMIT may or may not have committed: on PostgreSQL it noted its transaction
  id before committing, and a new connection asks `pg_xact_status` which it was — committed, the
  work's result stands; aborted, it runs again; unknown (the database is gone too), 503, and the
  client's retry with the same Idempotency-Key finds out;
- a read in `Database.run_read`, on a new snapshot;
- a `GET` or `HEAD` whose read transaction (`with db.read()`) lost its connection: the request is
  answered again from the start (`protocoop.replay`), provided nothing of the first answer was
  sent yet. A GET changes nothing a client could tell apart.

When the database is really unavailable, the new connection cannot be made and the request is
answered 503 as before. A connection the watchdog cut because the server stopped answering is
not "lost" in this sense: the server hangs, and waiting for it again would only double the wait.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from protocoop.db.errors import DatabaseUnavailable

log = logging.getLogger(__name__)


class ConnectionLost(DatabaseUnavailable):
    """The database closed the connection before the transaction committed: nothing was
    recorded, and the same work may run again at once on a new connection."""


@dataclass
class LostConnections:
    """Whether a transaction of the request being answered lost its connection."""

    seen: bool = False


_current: ContextVar[LostConnections | None] = ContextVar(
    "protocoop_lost_connections", default=None
)


@contextmanager
def noting_lost_connections() -> Iterator[LostConnections]:
    """Note, for the block (and the threads it hands work to), whether a transaction lost its
    connection."""
    noted = LostConnections()
    token = _current.set(noted)
    try:
        yield noted
    finally:
        _current.reset(token)


def connection_lost(reason: BaseException | None) -> ConnectionLost:
    """The error for a transaction that lost its connection before COMMIT (and a note for
    `protocoop.replay` that the request may be answered again)."""
    noted = _current.get()
    if noted is not None:
        noted.seen = True
    log.info("database connection lost (%s); reconnecting", _first_line(reason))
    return ConnectionLost("The database connection was lost; retry with the same Idempotency-Key.")


def _first_line(error: BaseException | None) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__

"""A client-side deadline for PostgreSQL statements, for a server that stops answering.

`statement_timeout` and `lock_timeout` are enforced by the server: a server that hangs (a frozen
host, a network path that silently drops packets, a process stopped by a debugger) enforces
nothing, and the driver waits on its socket for as long as the operating system keeps the TCP
connection open, which can be many minutes. Every request waiting on that connection, and the
group-commit writer, would hang with it.

`Watchdog` keeps a deadline per connection while a statement, commit or rollback runs on it (and
while the pool pings a connection before handing it out); one thread shuts down the socket of a
connection whose deadline passes. The driver then fails at once as if the server had closed the
connection; SQLAlchemy sees a disconnect and discards the connection, and the request is answered
`503 unavailable` (not run again, as work on a connection the server closed is: this server
hangs). Rows fetched while a result is streamed are not watched (only the statement that
produced them), so a long export is never cut short.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import InvalidatePoolError

log = logging.getLogger(__name__)

INFO_KEY = "protocoop_watchdog"
"""Where the watchdog is kept in each pooled connection's `info`, for code that talks to the
driver directly (`Connection.info[INFO_KEY]`)."""


class Watchdog:
    """Shuts down the socket of any watched connection that outlives its deadline."""

    def __init__(self, limit_s: float, ping_limit_s: float) -> None:
        self.limit_s = limit_s
        self.ping_limit_s = ping_limit_s
        self._armed: dict[int, tuple[float, float, Any]] = {}
        """id(driver connection) -> (deadline, limit, driver connection)."""
        self._wake = threading.Condition()
        self._next_check = math.inf
        """When the thread looks next (it need not be woken for a later deadline)."""
        self._thread: threading.Thread | None = None
        self._cut: weakref.WeakSet[Any] = weakref.WeakSet()
        """Driver connections this watchdog cut off."""

    def cut(self, driver_connection: Any) -> bool:
        """Whether this watchdog cut `driver_connection` off (the server did not answer)."""
        with self._wake:
            return driver_connection in self._cut

    def arm(self, driver_connection: Any, limit_s: float | None = None) -> None:
        """Watch `driver_connection` until `disarm`, for at most `limit_s` (default: the
        statement limit) from now."""
        limit_s = self.limit_s if limit_s is None else limit_s
        deadline = time.monotonic() + limit_s
        with self._wake:
            self._armed[id(driver_connection)] = (deadline, limit_s, driver_connection)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="protocoop-db-watchdog", daemon=True
                )
                self._thread.start()
            if deadline < self._next_check:  # rare: statements share one limit
                self._wake.notify()

    def disarm(self, driver_connection: Any) -> None:
        """Stop watching; once this returns the watchdog will not touch the connection."""
        with self._wake:
            self._armed.pop(id(driver_connection), None)

    @contextmanager
    def watching(self, driver_connection: Any, limit_s: float | None = None) -> Iterator[None]:
        """Watch `driver_connection` for the block."""
        self.arm(driver_connection, limit_s)
        try:
            yield
        finally:
            self.disarm(driver_connection)

    def _run(self) -> None:
        with self._wake:
            while True:
                now = time.monotonic()
                overdue = [key for key, armed in self._armed.items() if armed[0] <= now]
                for key in overdue:
                    _, limit_s, driver_connection = self._armed.pop(key)
                    self._cut.add(driver_connection)
                    _break(driver_connection, limit_s)
                self._next_check = min(
                    (armed[0] for armed in self._armed.values()), default=math.inf
                )
                self._wake.wait(
                    timeout=None if self._next_check == math.inf else self._next_check - now
                )


def _break(driver_connection: Any, limit_s: float) -> None:
    """Shut down the connection's socket (both ways): the waiting driver call fails at once."""
    try:
        if driver_connection.closed:
            return
        fd = driver_connection.pgconn.socket
        with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as duplicate:
            duplicate.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError, AttributeError) as error:  # closed in the meantime
        log.debug("watchdog: connection already gone (%s)", error)
        return
    log.warning(
        "database did not answer within %.1fs: connection dropped (the server is hung, or the "
        "network between us is)",
        limit_s,
    )


def _driver(connection: Connection | None) -> Any:
    """The driver connection behind `connection`, or None (never reconnects)."""
    if connection is None or connection.closed or connection.invalidated:
        return None
    return connection.connection.dbapi_connection


PING_IDLE_S = 1.0
"""A connection back in the pool for less than this is handed out without a ping (like
HikariCP's `aliveBypassWindowMs`). Should the server have closed it in that second, the
statement fails instead, SQLAlchemy discards the pool's connections, and the transaction runs
again on a new one (`protocoop.db.reconnect`)."""
_RETURNED_AT = "protocoop_returned_at"
_CUT = "protocoop_cut_by_watchdog"


def mark_cut(error: BaseException) -> None:
    """Say that `error` is the failure of a statement the watchdog cut off (for statements run
    outside SQLAlchemy's execution, whose `handle_error` event does this for the rest)."""
    setattr(error, _CUT, True)


def cut_by_watchdog(error: BaseException) -> bool:
    """Whether `error` is the failure of a statement whose connection the watchdog cut off
    because the server did not answer in time (a hung server, not a closed connection)."""
    return bool(getattr(error, _CUT, False))


def install(engine: Engine, watchdog: Watchdog, *, ping: bool) -> None:
    """Watch every statement, commit and rollback of `engine`'s connections; with `ping`, also
    check each pooled connection (with a deadline) before handing it out, in place of
    SQLAlchemy's `pool_pre_ping`, which waits without one."""

    @event.listens_for(engine, "connect")
    def _remember(_driver_connection: Any, record: Any) -> None:
        record.info[INFO_KEY] = watchdog

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(connection: Connection, *_: Any) -> None:
        driver_connection = _driver(connection)
        if driver_connection is not None:
            watchdog.arm(driver_connection)

    @event.listens_for(engine, "after_cursor_execute")
    def _statement_done(connection: Connection, *_: Any) -> None:
        driver_connection = _driver(connection)
        if driver_connection is not None:
            watchdog.disarm(driver_connection)

    @event.listens_for(engine, "handle_error")
    def _failed(context: Any) -> None:
        driver_connection = _driver(context.connection)
        if driver_connection is not None:
            watchdog.disarm(driver_connection)
            if context.sqlalchemy_exception is not None and watchdog.cut(driver_connection):
                mark_cut(context.sqlalchemy_exception)

    # Disarmed when the connection goes back to the pool (after its reset).
    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _ending(connection: Connection) -> None:
        driver_connection = _driver(connection)
        if driver_connection is not None:
            watchdog.arm(driver_connection)

    @event.listens_for(engine, "checkin")
    def _returned(driver_connection: Any, record: Any) -> None:
        if driver_connection is not None:
            watchdog.disarm(driver_connection)
        record.info[_RETURNED_AT] = time.monotonic()

    if ping:

        @event.listens_for(engine, "checkout")
        def _ping(driver_connection: Any, record: Any, _proxy: Any) -> None:
            if time.monotonic() - record.info.get(_RETURNED_AT, -math.inf) < PING_IDLE_S:
                return  # it worked a moment ago: under load, a ping per transaction is waste
            try:
                with watchdog.watching(driver_connection, watchdog.ping_limit_s):
                    engine.dialect.do_ping(driver_connection)
            except Exception as error:
                # as pool_pre_ping does: discard every connection made before now, reconnect
                raise InvalidatePoolError(f"ping failed: {error}") from error

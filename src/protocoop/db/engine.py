"""Engines, sessions and transactions for SQLite (embedded) and PostgreSQL (production).

Two ways into the database:
- `Database.read()`: a snapshot. On PostgreSQL a READ ONLY REPEATABLE READ transaction; on SQLite a
  deferred `BEGIN` (WAL readers see one snapshot until they end).
- `Database.write()` / `Database.run_write()`: a read-write transaction that commits once. On SQLite
  it starts with `BEGIN IMMEDIATE`, taking the write lock up front so two writers never deadlock on
  a lock upgrade; on PostgreSQL, deadlocks and serialization failures are retried a bounded number
  of times. A database that cannot be reached, or a lock not granted in time, becomes
  `DatabaseUnavailable` (503 to clients), which they may retry with the same Idempotency-Key.
- A connection the database closed before COMMIT (a restart, `pg_terminate_backend`) becomes
  `ConnectionLost`, which `run_write` and `run_read` answer by running the work again on a new
  connection (`protocoop.db.reconnect`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from protocoop.config import Settings
from protocoop.db.errors import DatabaseUnavailable, SchemaMissing
from protocoop.db.reconnect import ConnectionLost, connection_lost
from protocoop.db.statistics import StatisticsKeeper
from protocoop.db.watchdog import Watchdog, cut_by_watchdog
from protocoop.db.watchdog import install as install_watchdog

log = logging.getLogger(__name__)

T = TypeVar("T")

_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
CURRENT_XID_SQL = "SELECT pg_current_xact_id()::text"
_CURRENT_XID = text(CURRENT_XID_SQL)
_XACT_STATUS = text("SELECT pg_xact_status(CAST(:xid AS xid8))")
"""A write transaction notes its id before COMMIT; if the connection is lost during COMMIT, a new
connection asks whether it took effect (PostgreSQL 13+), so the work is neither lost nor run
twice."""
_NOTED_XID = "protocoop.transaction_id"
_UNDEFINED_TABLE = "42P01"
_SQLITE_BEGIN = "protocoop_sqlite_begin"


def note_transaction_id(session: Session, xid: str | None) -> None:
    """Remember the id of `session`'s PostgreSQL transaction, read in a round trip the caller
    made anyway, so that `Database.write` need not ask for it before COMMIT."""
    if xid is not None:
        session.info[_NOTED_XID] = xid


def make_engine(settings: Settings, *, pooled: bool = True) -> Engine:
    """An engine for `settings.database_url` with protocoop's connection setup."""
    url = settings.database_url
    kwargs: dict[str, Any] = {}
    if not pooled:
        kwargs["poolclass"] = NullPool
    if settings.is_sqlite:
        kwargs["connect_args"] = {
            "timeout": settings.sqlite_busy_timeout_ms / 1000,
            "check_same_thread": False,
        }
        if pooled:
            kwargs["pool_size"] = settings.db_pool_size
            kwargs["max_overflow"] = 2 * settings.db_pool_size
            # as on PostgreSQL: a request waits this long for a free connection, then 503
            kwargs["pool_timeout"] = settings.db_connect_timeout_s
        engine = create_engine(url, **kwargs)
        _configure_sqlite(engine, settings)
        return engine

    options = "-c timezone=UTC"
    if settings.db_statement_timeout_ms:
        options += f" -c statement_timeout={settings.db_statement_timeout_ms}"
        options += f" -c lock_timeout={settings.db_statement_timeout_ms}"
    kwargs["connect_args"] = {"connect_timeout": settings.db_connect_timeout_s, "options": options}
    # A server that stops answering enforces no statement timeout: the watchdog does, from here.
    watchdog = (
        Watchdog(
            limit_s=settings.db_statement_timeout_ms / 1000 + settings.db_connect_timeout_s,
            ping_limit_s=settings.db_connect_timeout_s,
        )
        if settings.db_statement_timeout_ms
        else None
    )
    if pooled:
        kwargs.update(
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_pool_size,
            pool_timeout=settings.db_connect_timeout_s,
            pool_pre_ping=watchdog is None,  # else the watchdog pings, with a deadline
            # Plans that stay good as the ledger grows come from statistics kept up to date
            # (`protocoop.db.statistics`), not from replacing connections.
            pool_recycle=settings.db_pool_recycle_s,
        )
    engine = create_engine(url, **kwargs)
    if watchdog is not None:
        install_watchdog(engine, watchdog, ping=pooled)
    return engine


def _configure_sqlite(engine: Engine, settings: Settings) -> None:
    """Take transaction control away from pysqlite (which would begin lazily, before the first
    write only) and set the pragmas a ledger needs on every new connection."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(settings.sqlite_busy_timeout_ms)}")
            cursor.execute(f"PRAGMA synchronous={settings.sqlite_synchronous}")
            cursor.execute(f"PRAGMA cache_size=-{int(settings.sqlite_cache_mib) * 1024}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


def write_engine(engine: Engine) -> Engine:
    """The same engine (sharing its pool) configured for read-write transactions."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})
    return engine.execution_options(isolation_level="READ COMMITTED")


def read_engine(engine: Engine) -> Engine:
    """The same engine (sharing its pool) configured for consistent read-only snapshots."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(**{_SQLITE_BEGIN: "DEFERRED"})
    return engine.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)


def is_retryable(error: DBAPIError) -> bool:
    """A deadlock or serialization failure: the transaction may simply be run again."""
    return getattr(error.orig, "sqlstate", None) in _RETRYABLE_SQLSTATES


_CLOSED_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})
"""admin_shutdown (pg_terminate_backend), crash_shutdown, cannot_connect_now."""
_CLOSED_SOCKET = ("socket closed", "server closed the connection", "consuming input failed")
"""How psycopg words a connection whose socket the server closed under a running statement
(without a SQLSTATE, and sometimes before SQLAlchemy sees the connection as broken)."""


def lost_connection(error: DBAPIError) -> bool:
    """The database closed the connection, rather than stopped answering or refused the work.
    SQLAlchemy usually notices (and discards it and every pooled connection opened before it);
    when psycopg reports a closed socket before the connection counts as broken, the pool's
    failed reset discards it instead."""
    if cut_by_watchdog(error):
        return False
    if error.connection_invalidated:
        return True
    orig = error.orig
    if not type(orig).__module__.startswith("psycopg"):
        return False
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is not None:
        return sqlstate in _CLOSED_SQLSTATES
    message = str(orig)
    return any(words in message for words in _CLOSED_SOCKET)


def schema_missing(error: BaseException) -> bool:
    """Whether `error` says a table protocoop needs does not exist: the database was never
    migrated (PostgreSQL `undefined_table`, SQLite `no such table`). Retrying cannot help."""
    if not isinstance(error, DBAPIError):
        return False
    if getattr(error.orig, "sqlstate", None) == _UNDEFINED_TABLE:
        return True
    return str(error.orig).startswith("no such table")


def as_unavailable(error: DBAPIError | PoolTimeout) -> Exception:
    """The error to show a client for a database failure that is not its fault."""
    if isinstance(error, IntegrityError):
        return error
    if schema_missing(error):
        log.warning("%s", SchemaMissing.advice)
        return SchemaMissing()
    reason = error.orig if isinstance(error, DBAPIError) else error
    log.warning("database unavailable: %s", _first_line(reason))
    return DatabaseUnavailable("The database is unavailable; retry with the same Idempotency-Key.")


def is_outage(error: BaseException) -> bool:
    """Whether `error` says the database failed rather than the request: it could not be reached
    or lost the connection, a lock or statement timed out, no connection was free in time, or
    SQLite stayed busy. Running the same work again at once would fail the same way."""
    if isinstance(error, DatabaseUnavailable):
        cause = error.__cause__
        return cause is None or is_outage(cause)
    if isinstance(error, DBAPIError):
        return isinstance(error, OperationalError) or error.connection_invalidated
    return isinstance(error, PoolTimeout)


def _first_line(error: BaseException | None) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class Database:
    """The process's database: one engine and pool, two transaction flavours."""

    def __init__(self, settings: Settings, *, pooled: bool = True) -> None:
        self.settings = settings
        self.engine = make_engine(settings, pooled=pooled)
        self.dialect = self.engine.dialect.name
        self._reader = sessionmaker(read_engine(self.engine), expire_on_commit=False)
        self._writer = sessionmaker(write_engine(self.engine), expire_on_commit=False)
        self._sqlite_writer = threading.Lock() if self.dialect == "sqlite" else None
        self._statistics: StatisticsKeeper | None = None
        if self.dialect == "postgresql" and pooled and settings.db_statistics_check_s:
            self._statistics = StatisticsKeeper(self.engine, settings.db_statistics_check_s)
            self._statistics.install()

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only snapshot transaction; database failures become `DatabaseUnavailable`."""
        try:
            with self._reader() as session, session.begin():
                yield session
        except DBAPIError as error:
            if lost_connection(error):
                raise connection_lost(error.orig) from error
            raise as_unavailable(error) from error
        except PoolTimeout as error:
            raise as_unavailable(error) from error

    def run_read(self, work: Callable[[Session], T]) -> T:
        """Run `work` in a read transaction, again on a new connection if it lost its own."""
        attempts = self.settings.db_retry_attempts
        for attempt in range(1, attempts + 1):
            try:
                with self.read() as session:
                    return work(session)
            except ConnectionLost:
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One read-write transaction, committed when the block ends without error.

        SQLite allows one writer at a time; this process's writers queue on a lock of their
        own rather than in SQLite's busy loop, which sleeps and retries and so lets a waiting
        writer miss its turn until the busy timeout. Other processes still wait in SQLite."""
        if self._sqlite_writer is not None:
            timeout = self.settings.sqlite_busy_timeout_ms / 1000
            if not self._sqlite_writer.acquire(timeout=timeout):
                raise DatabaseUnavailable(
                    "The database is busy; retry with the same Idempotency-Key."
                )
        committing = False
        xid: str | None = None
        try:
            with self._writer() as session, session.begin():
                yield session
                session.flush()
                if self._sqlite_writer is None:
                    xid = session.info.pop(_NOTED_XID, None)
                    if xid is None:
                        xid = session.execute(_CURRENT_XID).scalar_one()
                committing = True  # from here on, a lost connection leaves the outcome unknown
        except DBAPIError as error:
            if is_retryable(error) or isinstance(error, IntegrityError):
                raise
            if lost_connection(error):
                outcome = self._outcome(xid) if committing else "aborted"
                if outcome == "committed":
                    log.info("database connection lost (%s) after COMMIT took effect", error.orig)
                    return  # the work's result stands
                if outcome == "aborted":
                    raise connection_lost(error.orig) from error
            raise as_unavailable(error) from error
        except PoolTimeout as error:  # every connection busy for `pool_timeout`: not a 500
            raise as_unavailable(error) from error
        finally:
            if self._sqlite_writer is not None:
                self._sqlite_writer.release()

    def _outcome(self, xid: str | None) -> str | None:
        """Whether the PostgreSQL transaction `xid`, whose connection was lost during COMMIT,
        committed ("committed", "aborted"), asked on a new connection; None when that cannot be
        known (the database is unreachable too)."""
        if xid is None:
            return None
        try:
            with self.engine.connect() as connection:
                status = connection.execute(_XACT_STATUS, {"xid": xid}).scalar()
        except (DBAPIError, PoolTimeout):
            return None
        return str(status) if status is not None else None

    def run_write(self, work: Callable[[Session], T]) -> T:
        """Run `work` in a write transaction, retrying deadlocks and serialization failures, and
        a transaction whose connection was lost before COMMIT (on a new connection)."""
        attempts = self.settings.db_retry_attempts
        for attempt in range(1, attempts + 1):
            try:
                with self.write() as session:
                    return work(session)
            except ConnectionLost:
                if attempt == attempts:
                    raise
                continue
            except DBAPIError as error:
                if not is_retryable(error):
                    raise
                if attempt == attempts:
                    raise as_unavailable(error) from error
                log.info("retrying transaction after %s (attempt %d)", error.orig, attempt)
                time.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        if self._statistics is not None:
            self._statistics.wait()
        self.engine.dispose()

"""Test databases: which backends run, and creating, emptying and dropping PostgreSQL databases
named `protocoop_test_<random>` on the server `PROTOCOOP_TEST_POSTGRES_URL` names."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url

from protocoop.db import Database
from protocoop.db.base import Base

POSTGRES_ENV = "PROTOCOOP_TEST_POSTGRES_URL"
IN_CI = os.environ.get("CI", "").lower() == "true"
BACKENDS = ["sqlite", "postgresql"]


def create_postgres_database(server_url: str) -> str:
    """Create an empty database named protocoop_test_<random>; returns its URL."""
    name = f"protocoop_test_{secrets.token_hex(6)}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(server_url: str, database_url: str) -> None:
    name = make_url(database_url).database
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def driver_url(database_url: str) -> str:
    """`database_url` as psycopg itself takes it (no SQLAlchemy driver name)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(False)


def terminate_backend(database_url: str, pid: int) -> None:
    """End PostgreSQL session `pid`, as an operator or a restart would; returns once it is gone."""
    with psycopg.connect(driver_url(database_url), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            time.sleep(0.005)


def truncate_postgres(url: str) -> None:
    """Empty every table of a migrated PostgreSQL database (the append-only ones too)."""
    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    engine = create_engine(url)
    with engine.begin() as connection:
        # The append-only tables refuse TRUNCATE; a replica session fires no triggers.
        connection.execute(text("SET LOCAL session_replication_role = replica"))
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


LEDGER_TABLES = ("exchanges", "entries", "intertrades")


@contextmanager
def tampering(db: Database) -> Iterator[Connection]:
    """A raw connection on which the append-only triggers are out of the way (as a person with
    direct database access could arrange), put back afterwards."""
    with db.engine.begin() as connection:
        if db.is_sqlite:
            for table in LEDGER_TABLES:
                for action in ("update", "delete"):
                    connection.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_{action}"))
        else:
            for table in LEDGER_TABLES:
                connection.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only"))
    try:
        with db.engine.begin() as connection:
            yield connection
    finally:
        if not db.is_sqlite:  # the PostgreSQL database is shared by the session's tests
            with db.engine.begin() as connection:
                for table in LEDGER_TABLES:
                    connection.execute(
                        text(f"ALTER TABLE {table} ENABLE TRIGGER {table}_append_only")
                    )

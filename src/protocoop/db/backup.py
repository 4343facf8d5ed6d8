"""Backups and restores of the whole database, consistent while the server runs.

SQLite: SQLite's online backup API (`sqlite3.Connection.backup`) copies every page in one step
inside one read transaction, so the copy is one consistent snapshot even while the server keeps
writing (WAL readers do not block writers). The backup is a plain, self-contained SQLite file.
A restore copies it into the configured database file the same way.

PostgreSQL: `pg_dump --format=custom`, run on a snapshot that protocoop exports from a
REPEATABLE READ transaction, so that the ledger positions it reports are exactly the ones in the
dump; a restore runs `pg_restore --single-transaction` (all or nothing) into the configured
database. Both tools must be on PATH (`postgresql-client`), at least as new as the server.

Either way a restore refuses to write over a database that already holds tables unless forced.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from protocoop.config import Settings

_LEDGER_POSITIONS = "SELECT community_id, last_seq FROM ledger_heads ORDER BY community_id"
_USER_TABLES = """
    SELECT count(*) FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
"""


class BackupError(RuntimeError):
    """The backup or restore could not be done (a tool, file or database problem)."""


class RestoreRefused(Exception):
    """The restore would overwrite data and was not forced."""


@dataclass(frozen=True)
class BackupReport:
    """What a backup holds, or what a restore brought back: each community's ledger position."""

    location: str
    """The backup file written, or the database restored into."""
    positions: dict[str, int]
    """Community id -> `seq` of its latest exchange in the backup."""

    def summary(self) -> str:
        where = ", ".join(f"{c} at seq {seq}" for c, seq in self.positions.items())
        count = len(self.positions)
        return f"{count} communit{'y' if count == 1 else 'ies'}" + (f" ({where})" if where else "")


def backup(settings: Settings, output: Path) -> BackupReport:
    """Write a consistent backup of the configured database to `output` (replaced atomically)."""
    output = output.resolve()
    if not output.parent.is_dir():
        raise BackupError(f"{output.parent} is not a directory")
    if settings.is_sqlite:
        return _sqlite_backup(_sqlite_path(settings), output, settings)
    return _postgres_backup(make_url(settings.database_url), output)


def restore(settings: Settings, source: Path, *, force: bool = False) -> BackupReport:
    """Restore the backup `source` into the configured database, which must be empty (no
    tables) unless `force`."""
    source = source.resolve()
    if not source.is_file():
        raise BackupError(f"{source} does not exist or is not a file")
    if settings.is_sqlite:
        return _sqlite_restore(source, _sqlite_path(settings), settings, force=force)
    return _postgres_restore(source, make_url(settings.database_url), force=force)


# --- SQLite --------------------------------------------------------------------------------------


def _sqlite_path(settings: Settings) -> Path:
    database = make_url(settings.database_url).database
    if not database or database == ":memory:":
        raise BackupError("the configured SQLite database is in memory: there is nothing to copy")
    return Path(database).resolve()


@contextlib.contextmanager
def _sqlite(path: Path, settings: Settings, *, mode: str) -> Iterator[sqlite3.Connection]:
    """A connection in autocommit mode; `mode` is SQLite's `ro`, `rw` or `rwc` (may create)."""
    uri = f"{path.as_uri()}?mode={mode}"
    try:
        connection = sqlite3.connect(
            uri, uri=True, timeout=settings.sqlite_busy_timeout_ms / 1000, isolation_level=None
        )
    except sqlite3.Error as error:
        raise BackupError(f"cannot open {path}: {error}") from error
    try:
        yield connection
    except sqlite3.Error as error:
        raise BackupError(f"{path}: {error}") from error
    finally:
        connection.close()


def _sqlite_positions(connection: sqlite3.Connection, path: Path) -> dict[str, int]:
    try:
        rows = connection.execute(_LEDGER_POSITIONS).fetchall()
    except sqlite3.DatabaseError as error:
        raise BackupError(f"{path} is not a protocoop database: {error}") from error
    return {str(community): int(seq) for community, seq in rows}


def _sqlite_backup(source: Path, output: Path, settings: Settings) -> BackupReport:
    if not source.is_file():
        raise BackupError(f"there is no database at {source}")
    with (
        _atomic_file(output) as partial,
        _sqlite(source, settings, mode="rw") as src,
        _sqlite(partial, settings, mode="rw") as dst,
    ):
        src.backup(dst)  # every page in one step: one read transaction, one snapshot
        # self-contained: no -wal file beside it
        dst.execute("PRAGMA journal_mode=DELETE")
        positions = _sqlite_positions(dst, source)
        if dst.execute("PRAGMA quick_check").fetchone() != ("ok",):
            raise BackupError(f"the copy of {source} failed its integrity check")
    return BackupReport(str(output), positions)


def _sqlite_restore(source: Path, target: Path, settings: Settings, *, force: bool) -> BackupReport:
    with _sqlite(source, settings, mode="ro") as src:
        try:
            integrity = src.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as error:
            raise BackupError(f"{source} is not a SQLite backup: {error}") from error
        if integrity != ("ok",):
            raise BackupError(f"{source} failed its integrity check: {integrity[0]}")
        positions = _sqlite_positions(src, source)
        if not target.parent.is_dir():
            raise BackupError(f"{target.parent} is not a directory")
        with _sqlite(target, settings, mode="rwc") as dst:
            tables = dst.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'")
            count = int(tables.fetchone()[0])
            if count and not force:
                raise RestoreRefused(
                    f"{target} is not empty ({count} tables); restore into a new file, or pass "
                    "--force to replace everything in it"
                )
            src.backup(dst)  # takes the write lock: fails (busy) while a server writes to it
            dst.execute("PRAGMA journal_mode=WAL")
    return BackupReport(str(target), positions)


# --- PostgreSQL ----------------------------------------------------------------------------------


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} is not on PATH: install the PostgreSQL client tools (e.g. "
            f"`apt install postgresql-client`), at least the server's version"
        )
    return found


def _libpq(url: URL) -> tuple[str, dict[str, str]]:
    """A libpq connection string for `url` without its password, and an environment that
    carries the password (so it never shows in a process listing)."""
    from psycopg.conninfo import make_conninfo

    params: dict[str, str] = {}
    for key, value in url.query.items():
        params[key] = value if isinstance(value, str) else value[-1]
    given: dict[str, str | int | None] = {
        "dbname": url.database,
        "user": url.username,
        "host": url.host,
        "port": url.port,
    }
    params.update({key: str(value) for key, value in given.items() if value is not None})
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    return make_conninfo(**params), env


def _run(command: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        first = lines[0] if lines else f"exit status {result.returncode}"
        raise BackupError(f"{Path(command[0]).name} failed: {first}")


def _postgres_backup(url: URL, output: Path) -> BackupReport:
    pg_dump = _tool("pg_dump")
    conninfo, env = _libpq(url)
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection = connection.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            with connection.begin():
                # pg_dump reads the same snapshot, so these positions are the dump's.
                snapshot = connection.execute(text("SELECT pg_export_snapshot()")).scalar_one()
                rows = connection.execute(text(_LEDGER_POSITIONS)).all()
                positions = {str(community): int(seq) for community, seq in rows}
                with _atomic_file(output) as partial:
                    _run(
                        [
                            pg_dump,
                            "--format=custom",
                            f"--snapshot={snapshot}",
                            f"--file={partial}",
                            f"--dbname={conninfo}",
                        ],
                        env,
                    )
    finally:
        engine.dispose()
    return BackupReport(str(output), positions)


def _postgres_restore(source: Path, url: URL, *, force: bool) -> BackupReport:
    pg_restore = _tool("pg_restore")
    conninfo, env = _libpq(url)
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            count = int(connection.execute(text(_USER_TABLES)).scalar_one())
        if count and not force:
            raise RestoreRefused(
                f"database {url.database} is not empty ({count} tables and sequences); restore "
                "into a new database (createdb), or pass --force to replace what the backup holds"
            )
        command = [pg_restore, "--single-transaction", "--exit-on-error", "--no-owner"]
        command += ["--no-privileges", f"--dbname={conninfo}"]
        if force:
            command += ["--clean", "--if-exists"]
        _run([*command, str(source)], env)
        with engine.connect() as connection:
            rows = connection.execute(text(_LEDGER_POSITIONS)).all()
    finally:
        engine.dispose()
    where = f"database {url.database}"
    return BackupReport(where, {str(community): int(seq) for community, seq in rows})


# --- files ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` that becomes `path` (durably) when the block succeeds."""
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    partial = Path(name)
    try:
        yield partial
        with partial.open("rb") as written:
            os.fsync(written.fileno())
        partial.replace(path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    finally:
        partial.unlink(missing_ok=True)

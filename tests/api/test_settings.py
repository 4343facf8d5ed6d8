"""Settings come from `PROTOCOOP_*` variables and a `.env` file, and every database connection is
set up the way a ledger needs (SQLite pragmas; PostgreSQL time zone and timeouts)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from protocoop.config import Settings
from protocoop.db import Database


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No PROTOCOOP_* variables, and a working directory without a `.env` file."""
    for name in list(os.environ):
        if name.startswith("PROTOCOOP_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_are_an_embedded_database_that_migrates_itself(clean_environment: Path) -> None:
    settings = Settings()
    assert settings.database_url == "sqlite:///./protocoop.db"
    assert (settings.host, settings.port, settings.log_level) == ("127.0.0.1", 8000, "info")
    assert settings.auto_migrate is True
    assert settings.sqlite_synchronous == "FULL"


def test_environment_variables_with_the_prefix_configure_the_service(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROTOCOOP_DATABASE_URL", "postgresql+psycopg://ledger@db/protocoop")
    monkeypatch.setenv("PROTOCOOP_HOST", "0.0.0.0")
    monkeypatch.setenv("PROTOCOOP_PORT", "9000")
    monkeypatch.setenv("PROTOCOOP_LOG_LEVEL", "debug")
    monkeypatch.setenv("DATABASE_URL", "sqlite:///ignored.db")  # no prefix: not ours

    settings = Settings()

    assert settings.database_url == "postgresql+psycopg://ledger@db/protocoop"
    assert (settings.host, settings.port, settings.log_level) == ("0.0.0.0", 9000, "debug")
    assert settings.auto_migrate is False  # PostgreSQL is migrated by its admin


def test_auto_migrate_and_synchronous_can_be_set(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROTOCOOP_DATABASE_URL", "postgresql+psycopg://ledger@db/protocoop")
    monkeypatch.setenv("PROTOCOOP_AUTO_MIGRATE", "true")
    monkeypatch.setenv("PROTOCOOP_SQLITE_SYNCHRONOUS", "NORMAL")
    settings = Settings()
    assert settings.auto_migrate is True
    assert settings.sqlite_synchronous == "NORMAL"

    monkeypatch.setenv("PROTOCOOP_DATABASE_URL", "sqlite:///x.db")
    monkeypatch.setenv("PROTOCOOP_AUTO_MIGRATE", "false")
    assert Settings().auto_migrate is False


def test_dotenv_file_is_read_and_the_environment_wins(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_environment / ".env").write_text(
        "PROTOCOOP_PORT=8123\nPROTOCOOP_DATABASE_URL=sqlite:///from-dotenv.db\n"
    )
    assert Settings().port == 8123
    assert Settings().database_url == "sqlite:///from-dotenv.db"

    monkeypatch.setenv("PROTOCOOP_PORT", "8124")
    assert Settings().port == 8124


def test_impossible_settings_are_refused(
    clean_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (
        ("PROTOCOOP_PORT", "0"),
        ("PROTOCOOP_PORT", "http"),
        ("PROTOCOOP_LOG_LEVEL", "chatty"),
        ("PROTOCOOP_SQLITE_SYNCHRONOUS", "SOMETIMES"),
        ("PROTOCOOP_MAX_BODY_BYTES", "10"),
        ("PROTOCOOP_IDEMPOTENCY_RETENTION_HOURS", "1"),
    ):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValidationError):
            Settings()
        monkeypatch.delenv(name)


def test_only_sqlite_and_postgresql_urls_are_accepted_and_a_refusal_hides_the_password(
    clean_environment: Path,
) -> None:
    for url in (
        "sqlite:///./protocoop.db",
        "sqlite+pysqlite:////srv/protocoop/protocoop.db",
        "postgresql://ledger:s3cret@db/protocoop",
        "postgresql+psycopg://ledger:s3cret@db:5432/protocoop?sslmode=require",
    ):
        assert Settings(database_url=url).database_url == url  # type: ignore[call-arg]
    for url in (
        "mysql://ledger:s3cret@db.example.org/protocoop",
        "postgresql+asyncpg://ledger:s3cret@db/protocoop",
        "sqlite+aiosqlite:///./protocoop.db",
        "mysql//ledger:s3cret@db",  # not even a URL
    ):
        with pytest.raises(ValidationError) as refused:
            Settings(database_url=url)  # type: ignore[call-arg]
        assert "unsupported database URL" in str(refused.value), url
        assert "(sqlite or postgresql" in str(refused.value), url
        assert "s3cret" not in str(refused.value), url


@pytest.mark.parametrize(("synchronous", "level"), [("FULL", 2), ("NORMAL", 1), ("EXTRA", 3)])
def test_every_sqlite_connection_gets_the_ledger_pragmas(
    tmp_path: Path, synchronous: str, level: int
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        database_url=f"sqlite:///{tmp_path / 'p.db'}",
        sqlite_synchronous=synchronous,
        sqlite_busy_timeout_ms=1234,
        sqlite_cache_mib=48,
        _env_file=None,
    )
    db = Database(settings)
    try:
        for _ in range(2):  # a second connection from the pool is set up the same way
            with db.engine.connect() as connection:
                pragma = lambda name: connection.execute(text(f"PRAGMA {name}")).scalar()  # noqa: E731
                assert pragma("journal_mode") == "wal"
                assert pragma("foreign_keys") == 1
                assert pragma("synchronous") == level
                assert pragma("busy_timeout") == 1234
                assert pragma("cache_size") == -48 * 1024  # negative: KiB, not pages
            db.engine.pool.dispose()
    finally:
        db.dispose()


def test_postgresql_connections_use_utc_and_a_statement_timeout(postgres_url: str) -> None:
    settings = Settings(  # type: ignore[call-arg]
        database_url=postgres_url, db_statement_timeout_ms=2500, _env_file=None
    )
    db = Database(settings)
    try:
        with db.engine.connect() as connection:
            assert connection.execute(text("SHOW timezone")).scalar() == "UTC"
            assert connection.execute(text("SHOW statement_timeout")).scalar() == "2500ms"
    finally:
        db.dispose()

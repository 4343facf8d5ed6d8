"""Migrations are the only way the schema is made: up, down and up again on both databases, models
and migrations agree, the real `alembic` command works from the repository, and `/readyz` tells
whether the database is there and migrated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect

from protocoop.app import create_app
from protocoop.config import Settings
from protocoop.db import Database, migrate
from protocoop.db.base import Base
from tests.support.checks import problem

REPO_ROOT = Path(__file__).resolve().parents[2]
ALEMBIC = Path(sys.executable).parent / "alembic"
FOUNDATION_TABLES = {
    "communities",
    "members",
    "accounts",
    "api_keys",
    "exchanges",
    "entries",
    "idempotency_records",
}


def _tables(database_url: str) -> set[str]:
    engine = create_engine(database_url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _current(database_url: str) -> set[str]:
    db = Database(Settings(database_url=database_url, _env_file=None))  # type: ignore[call-arg]
    try:
        return migrate.current_revisions(db.engine)
    finally:
        db.dispose()


def _settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, auto_migrate=False, _env_file=None)  # type: ignore[call-arg]


def test_upgrade_downgrade_upgrade_leaves_every_table(empty_database_url: str) -> None:
    every_model_table = {table.name for table in Base.metadata.sorted_tables}
    assert every_model_table >= FOUNDATION_TABLES

    migrate.upgrade(empty_database_url)
    assert _tables(empty_database_url) >= every_model_table
    assert _current(empty_database_url) == migrate.head_revisions()

    migrate.downgrade(empty_database_url, "base")
    assert _tables(empty_database_url) <= {"alembic_version"}
    assert _current(empty_database_url) == set()

    migrate.upgrade(empty_database_url)
    assert _tables(empty_database_url) >= every_model_table
    assert _current(empty_database_url) == migrate.head_revisions()
    migrate.check(empty_database_url)  # raises when models and migrations disagree


def _alembic(*arguments: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PROTOCOOP_DATABASE_URL": database_url}
    return subprocess.run(
        [str(ALEMBIC), *arguments],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_alembic_command_upgrades_and_checks_from_the_repository(
    empty_database_url: str,
) -> None:
    upgraded = _alembic("upgrade", "head", database_url=empty_database_url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert _tables(empty_database_url) >= FOUNDATION_TABLES
    assert _current(empty_database_url) == migrate.head_revisions()

    checked = _alembic("check", database_url=empty_database_url)
    assert checked.returncode == 0, checked.stderr
    assert "No new upgrade operations detected" in checked.stdout + checked.stderr


def test_readyz_is_503_until_the_database_is_migrated(empty_database_url: str) -> None:
    settings = _settings(empty_database_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        body = problem(client.get("/readyz"), 503, "unavailable")
        assert "upgrade" in body["detail"]
        assert client.get("/healthz").status_code == 200

        migrate.upgrade(empty_database_url)

        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready"}


def test_readyz_is_503_after_a_downgrade(empty_database_url: str) -> None:
    """Not at head is not ready, even if some schema is there."""
    migrate.upgrade(empty_database_url)
    settings = _settings(empty_database_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/readyz").status_code == 200
        migrate.downgrade(empty_database_url, "base")
        problem(client.get("/readyz"), 503, "unavailable")


def test_readyz_is_503_when_the_database_cannot_be_reached() -> None:
    settings = Settings(  # type: ignore[call-arg]
        database_url="postgresql+psycopg://postgres@127.0.0.1:9/protocoop",
        db_connect_timeout_s=2,
        _env_file=None,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        problem(client.get("/readyz"), 503, "unavailable")
        assert client.get("/healthz").status_code == 200  # alive, just not ready
        # and an API request says so too, instead of failing with a 500
        response = client.get(
            "/v1/communities", headers={"Authorization": "Bearer pcp_" + "A" * 43}
        )
        problem(response, 503, "unavailable")
        assert response.headers["retry-after"]


def test_embedded_database_is_migrated_when_the_app_starts(tmp_path: Path) -> None:
    """`auto_migrate` (the SQLite default) makes a missing database file ready on startup."""
    url = f"sqlite:///{tmp_path / 'new.db'}"
    settings = Settings(database_url=url, _env_file=None)  # type: ignore[call-arg]
    assert settings.auto_migrate is True
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/readyz").status_code == 200
    assert _tables(url) >= FOUNDATION_TABLES

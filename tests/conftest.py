"""Fixtures that run every API test on SQLite (a temporary file) and on PostgreSQL (a database
created for this test session and dropped after it).

PostgreSQL comes from `PROTOCOOP_TEST_POSTGRES_URL`, a URL of a server where the user may create
databases (e.g. `postgresql+psycopg://postgres@127.0.0.1:5432/postgres`). Without it the
PostgreSQL half is skipped, except under `CI=true`, where its absence fails the run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from protocoop.app import create_app
from protocoop.auth.roles import Role
from protocoop.config import Settings
from protocoop.db import Database, migrate
from tests.support.api import Api, create_community, create_member, make_key
from tests.support.databases import (
    BACKENDS,
    IN_CI,
    POSTGRES_ENV,
    create_postgres_database,
    drop_postgres_database,
    truncate_postgres,
)

pytest_plugins = [
    "tests.support.live_server",
    "tests.support.faults",
    "tests.support.private_postgres",
]


def pytest_sessionstart(session: pytest.Session) -> None:
    if IN_CI and not os.environ.get(POSTGRES_ENV):
        raise pytest.UsageError(f"CI=true but {POSTGRES_ENV} is not set: PostgreSQL tests must run")


SERVER_FIXTURES = {"live_server", "forked_server", "private_postgres"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that runs a real server or cluster (all of `tests/system/`, and any test asking
    for one) is `slow` (`-m "not slow"` leaves them out while iterating). Those whose group
    commits, timeouts and crash windows need the machine's cores say `pytestmark =
    pytest.mark.exclusive`: `make test` runs them one at a time after the rest."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.path.parent.name == "system" or fixtures & SERVER_FIXTURES:
            item.add_marker(pytest.mark.slow)


# --- databases ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies (much faster than migrating per test)."""
    path = tmp_path_factory.mktemp("template") / "protocoop.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(
            f"PostgreSQL tests need {POSTGRES_ENV} "
            "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres)"
        )
    return url


@pytest.fixture(scope="session")
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A migrated PostgreSQL database for this test session, emptied before each test."""
    url = create_postgres_database(postgres_server_url)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        drop_postgres_database(postgres_server_url, url)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Which database the test runs on."""
    return str(request.param)


@pytest.fixture(scope="session")
def shared_sqlite_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SQLite file the API tests use, reset from the template before each test."""
    return tmp_path_factory.mktemp("shared") / "protocoop.db"


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> str:
    """An empty, migrated database of the test's backend."""
    if backend == "sqlite":
        path: Path = request.getfixturevalue("shared_sqlite_path")
        url = f"sqlite:///{path}"
        _quiesce_app(url)
        for leftover in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            leftover.unlink(missing_ok=True)
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return url
    url = request.getfixturevalue("postgres_url")
    _quiesce_app(url)
    truncate_postgres(url)
    return str(url)


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings for the test's database. No background housekeeping: the shared app outlives
    each test's database, which is reset under it (tests call the sweep themselves)."""
    return Settings(  # type: ignore[call-arg]
        database_url=database_url, auto_migrate=False, expiry_sweep_s=0, _env_file=None
    )


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    """Direct database access for arranging and inspecting, beside the API."""
    database = Database(settings)
    yield database
    database.dispose()


# --- the API -----------------------------------------------------------------------------------


_APPS: dict[str, tuple[Any, TestClient]] = {}
"""One running app (and client) per database URL for the whole session: building an app and
preparing its routes costs more than most tests, and each test gets its database reset anyway."""


def _quiesce_app(url: str) -> None:
    """Before a database is reset: close the shared app's connections and forget its caches."""
    if url in _APPS:
        app = _APPS[url][0]
        app.state.db.dispose()
        app.state.known_communities.clear()


@pytest.fixture(scope="session", autouse=True)
def _close_shared_apps() -> Iterator[None]:
    yield
    for _, test_client in _APPS.values():
        test_client.__exit__(None, None, None)
    _APPS.clear()


@pytest.fixture
def app(settings: Settings) -> Any:
    """The application on the test's (freshly reset) database."""
    if settings.database_url not in _APPS:
        application = create_app(settings)
        test_client = TestClient(application, raise_server_exceptions=False)
        test_client.__enter__()
        _APPS[settings.database_url] = (application, test_client)
    return _APPS[settings.database_url][0]


@pytest.fixture
def client(app: Any, settings: Settings) -> TestClient:
    """An unauthenticated client; see `api` for one that sends a key."""
    return _APPS[settings.database_url][1]


@pytest.fixture
def admin_token(db: Database) -> str:
    return make_key(db, Role.ADMIN)


@pytest.fixture
def api(client: TestClient, admin_token: str) -> Api:
    """The API as an admin."""
    return Api(client, admin_token)


@pytest.fixture
def community(api: Api) -> dict[str, Any]:
    """A community `riverside` (default lower limit -100, no upper cap) with members alice,
    bob and carol."""
    created = create_community(api)
    for member in ("alice", "bob", "carol"):
        create_member(api, "riverside", member)
    return created


@pytest.fixture
def keys(db: Database, community: dict[str, Any]) -> dict[str, str]:
    """A token of every role for `riverside`, plus `admin`."""
    tokens = {
        role.value: make_key(db, role, "riverside") for role in Role if role is not Role.ADMIN
    }
    tokens["admin"] = make_key(db, Role.ADMIN)
    return tokens


# --- databases that have never been migrated (migrations, command line, server) ----------------


@pytest.fixture
def empty_database_url(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[str]:
    """A database of the test's backend that has never been migrated: a SQLite file that does not
    exist yet, or a PostgreSQL database created for this test and dropped after it."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    server_url: str = request.getfixturevalue("postgres_server_url")
    url = create_postgres_database(server_url)
    try:
        yield url
    finally:
        drop_postgres_database(server_url, url)

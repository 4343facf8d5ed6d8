"""Plans that stay good as the ledger grows, on PostgreSQL, with no ANALYZE by hand and no
autovacuum (`protocoop.db.statistics`).

A connection plans each foreign-key check once and keeps the plan. Planned on a never-analyzed
`exchanges`, the check of a new entry (`community_id = $1 AND id = $2`) used an index on
`community_id` alone and walked every exchange of the community per entry, so batches slowed
down without bound on a server that was never restarted. The server now analyzes a growing table
each time it doubles (never while it is nearly empty), which replaces every connection's plan.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

from protocoop.app import create_app
from protocoop.auth.roles import Role
from protocoop.config import Settings
from protocoop.db import Database, migrate
from protocoop.db.statistics import GROWING_TABLES, analyze_grown
from tests.support.api import Api, create_community, create_member, make_key
from tests.support.databases import create_postgres_database, drop_postgres_database

# The statement PostgreSQL runs for the foreign key entries -> exchanges, for each new entry.
FK_CHECK = (
    "SELECT 1 FROM ONLY exchanges x WHERE community_id::text = $1::text AND id::text = $2::text "
    "FOR KEY SHARE OF x"
)


@pytest.fixture
def fresh_url(postgres_server_url: str) -> Iterator[str]:
    """A newly created and migrated PostgreSQL database, never analyzed (not the shared test
    database, whose tables earlier tests have filled and emptied)."""
    url = create_postgres_database(postgres_server_url)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        drop_postgres_database(postgres_server_url, url)


def _settings(url: str) -> Settings:
    return Settings(  # type: ignore[call-arg]
        database_url=url,
        auto_migrate=False,
        expiry_sweep_s=0,
        db_statistics_check_s=0.05,
        _env_file=None,
    )


def _check_plan(connection: Connection) -> str:
    rows = connection.execute(text("EXPLAIN EXECUTE fk_check('riverside', 'x')")).scalars()
    return "\n".join(str(row) for row in rows)


def _analyzed(connection: Connection) -> dict[str, float]:
    rows = connection.execute(
        text("SELECT relname, reltuples FROM pg_class WHERE relname = ANY(:tables)"),
        {"tables": list(GROWING_TABLES)},
    )
    return {str(name): float(tuples) for name, tuples in rows}


def test_a_connection_planned_on_an_empty_ledger_checks_each_entry_by_primary_key_once_it_grew(
    fresh_url: str,
) -> None:
    watcher = create_engine(fresh_url, poolclass=NullPool)
    try:
        with watcher.connect() as connection:
            # a connection that outlives the growth, with its check planned on the empty table
            connection.execute(text("SET plan_cache_mode = force_generic_plan"))
            connection.execute(text(f"PREPARE fk_check(text, text) AS {FK_CHECK}"))
            _check_plan(connection)
            connection.commit()

            settings = _settings(fresh_url)
            db = Database(settings)
            try:
                with TestClient(create_app(settings)) as client:
                    api = Api(client, make_key(db, Role.ADMIN))
                    create_community(api, default_lower_limit=-(10**9))
                    for member in ("alice", "bob"):
                        create_member(api, "riverside", member)
                    poster = api.as_(make_key(db, Role.APP, "riverside"))
                    for number in range(2):
                        body: dict[str, Any] = {
                            "exchanges": [
                                {
                                    "provider": ("alice", "bob")[n % 2],
                                    "receiver": ("bob", "alice")[n % 2],
                                    "amount": 1,
                                    "description": f"batch {number} item {n}",
                                }
                                for n in range(500)
                            ]
                        }
                        response = poster.post(
                            "/v1/communities/riverside/exchanges:batch", json=body
                        )
                        assert response.status_code == 201, response.text
                    # the server checks after a commit, in the background: any request commits
                    plan = _check_plan(connection)
                    for _ in range(100):
                        if "pk_exchanges" in plan:
                            break
                        time.sleep(0.1)
                        poster.get("/v1/communities/riverside/members/alice")
                        plan = _check_plan(connection)
            finally:
                db.dispose()

            # the same connection, never replaced: the check reads the one exchange it names
            assert "pk_exchanges" in plan, plan
            assert "Filter" not in plan, plan
            assert _analyzed(connection)["exchanges"] >= 500  # analyzed, never while empty
    finally:
        watcher.dispose()


def test_nearly_empty_tables_are_never_analyzed(fresh_url: str) -> None:
    """Statistics that say "empty" would be trusted by the planner long after they are wrong."""
    engine = create_engine(fresh_url)
    try:
        assert analyze_grown(engine) == []
        with engine.connect() as connection:
            assert set(_analyzed(connection).values()) == {-1.0}  # never analyzed
    finally:
        engine.dispose()

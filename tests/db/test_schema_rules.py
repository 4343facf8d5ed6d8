"""Rules the migrated schema itself must keep, whatever the Python code does.

docs/design.md §4's scale-out rule: every table that belongs to a community has `community_id`
first in its primary key and in every unique constraint, and its foreign keys to other community
tables carry `community_id` (what Citus needs to co-locate a community's rows). It is checked on
the *migrated PostgreSQL schema*, not on the models, so a migration that breaks it fails here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, inspect, text, update
from sqlalchemy.engine import Inspector
from sqlalchemy.exc import DBAPIError

from protocoop.db import Database
from protocoop.db.models import Account
from tests.support.api import Api
from tests.support.checks import give

GLOBAL_TABLES = frozenset({"communities", "api_keys"})
"""Small tables shared by every community (reference tables on a sharded cluster)."""


def community_tables(inspector: Inspector, schema: str | None = None) -> set[str]:
    """Tables with a `community_id` column, except the global ones."""
    return {
        table
        for table in inspector.get_table_names(schema=schema)
        if table not in GLOBAL_TABLES
        and any(c["name"] == "community_id" for c in inspector.get_columns(table, schema=schema))
    }


def scale_out_violations(inspector: Inspector, schema: str | None = None) -> list[str]:
    """Every way the schema breaks docs/design.md §4's rule, one line each (empty when it holds)."""
    owned = community_tables(inspector, schema)
    violations: list[str] = []
    not_first = "does not start with community_id"
    for table in sorted(owned):
        primary_key = inspector.get_pk_constraint(table, schema=schema)["constrained_columns"]
        if primary_key[:1] != ["community_id"]:
            violations.append(f"{table}: primary key {primary_key} {not_first}")
        for unique in inspector.get_unique_constraints(table, schema=schema):
            columns = unique["column_names"]
            if columns[:1] != ["community_id"]:
                violations.append(f"{table}: unique {unique['name']} {columns} {not_first}")
        for index in inspector.get_indexes(table, schema=schema):
            columns = list(index["column_names"])
            if index["unique"] and columns[:1] != ["community_id"]:
                violations.append(f"{table}: unique index {index['name']} {columns} {not_first}")
        for foreign_key in inspector.get_foreign_keys(table, schema=schema):
            if foreign_key["referred_table"] not in owned:
                continue
            columns, referred = foreign_key["constrained_columns"], foreign_key["referred_columns"]
            pairs = dict(zip(columns, referred, strict=True))
            if pairs.get("community_id") != "community_id":
                name, target = foreign_key["name"], foreign_key["referred_table"]
                violations.append(
                    f"{table}: foreign key {name} to {target} {columns} -> {referred} "
                    "does not carry community_id"
                )
    return violations


@pytest.fixture
def postgres_engine(postgres_url: str) -> Iterator[Engine]:
    engine = create_engine(postgres_url)
    yield engine
    engine.dispose()


def test_community_tables_keep_community_id_first_in_keys_and_in_foreign_keys(
    postgres_engine: Engine,
) -> None:
    inspector = inspect(postgres_engine)
    owned = community_tables(inspector)

    # the tables the spec names as community-owned are all there, and all checked
    assert {"accounts", "members", "exchanges", "entries", "idempotency_records"} <= owned
    assert scale_out_violations(inspector) == []


def test_the_schema_rule_check_catches_each_kind_of_violation(postgres_engine: Engine) -> None:
    """The check above fails on tables that break the rule (in a probe schema, dropped after)."""
    with postgres_engine.begin() as connection:
        connection.execute(text("DROP SCHEMA IF EXISTS rule_probe CASCADE"))
        connection.execute(text("CREATE SCHEMA rule_probe"))
        for statement in (
            "CREATE TABLE rule_probe.communities (id text PRIMARY KEY)",
            "CREATE TABLE rule_probe.good (community_id text, id text, code text,"
            " PRIMARY KEY (community_id, id), UNIQUE (community_id, code))",
            "CREATE TABLE rule_probe.id_first (id text PRIMARY KEY, community_id text)",
            "CREATE TABLE rule_probe.global_code (community_id text, id text, code text UNIQUE,"
            " PRIMARY KEY (community_id, id))",
            "CREATE TABLE rule_probe.code_index (community_id text, id text, code text,"
            " PRIMARY KEY (community_id, id))",
            "CREATE UNIQUE INDEX code_then_community ON rule_probe.code_index (code, community_id)",
            "CREATE TABLE rule_probe.crossed (community_id text, id text, good_id text,"
            " PRIMARY KEY (community_id, id),"
            " FOREIGN KEY (good_id, community_id) REFERENCES rule_probe.good (community_id, id))",
            "CREATE TABLE rule_probe.fine_ref (community_id text REFERENCES rule_probe.communities,"
            " id text, good_id text, PRIMARY KEY (community_id, id),"
            " FOREIGN KEY (community_id, good_id) REFERENCES rule_probe.good (community_id, id))",
        ):
            connection.execute(text(statement))
    try:
        violations = scale_out_violations(inspect(postgres_engine), schema="rule_probe")
    finally:
        with postgres_engine.begin() as connection:
            connection.execute(text("DROP SCHEMA rule_probe CASCADE"))

    flagged = sorted({line.split(":")[0] for line in violations})
    assert flagged == ["code_index", "crossed", "global_code", "id_first"], violations


# --- invariants the database enforces on its own (both backends) -------------------------------


def _write(db: Database, statement: Any) -> None:
    with db.engine.begin() as connection:
        connection.execute(statement)


def test_database_refuses_a_balance_outside_the_limits(
    api: Api, db: Database, community: dict[str, Any]
) -> None:
    """Invariant 4 holds even for a write that bypasses the service: a CHECK constraint."""
    api.patch("/v1/communities/riverside/members/alice", json={"upper_limit": 50})
    alice = (Account.community_id == "riverside") & (Account.id == "alice")

    for balance in (-101, 51):
        with pytest.raises(DBAPIError):
            _write(db, update(Account).where(alice).values(balance=balance))
    with pytest.raises(DBAPIError):  # limits that exclude the balance
        _write(db, update(Account).where(alice).values(lower_limit=5))
    with pytest.raises(DBAPIError):
        _write(db, update(Account).where(alice).values(upper_limit=-1))
    commons = (Account.community_id == "riverside") & (Account.id == "@commons")
    with pytest.raises(DBAPIError):  # the community fund cannot go below 0
        _write(db, update(Account).where(commons).values(balance=-1))

    member = api.get("/v1/communities/riverside/members/alice").json()
    assert (member["balance"], member["lower_limit"], member["upper_limit"]) == (0, -100, 50)
    _write(db, update(Account).where(alice).values(balance=-100))  # the edges are inside


def test_database_refuses_to_rewrite_or_delete_ledger_history(
    api: Api, db: Database, community: dict[str, Any]
) -> None:
    """Invariant 6: exchanges and entries are append-only, enforced by the migrated schema."""
    exchange = give(api, "riverside", "alice", "bob", 5)

    for statement in (
        "UPDATE exchanges SET amount = 500",
        "UPDATE exchanges SET description = 'rewritten'",
        "DELETE FROM exchanges",
        "UPDATE entries SET amount = amount * 100",
        "DELETE FROM entries",
    ):
        with pytest.raises(DBAPIError):
            _write(db, text(statement))

    again = api.get(f"/v1/communities/riverside/exchanges/{exchange['id']}").json()
    assert (again["amount"], again["description"]) == (5, exchange["description"])
    assert sorted(e["amount"] for e in again["entries"]) == [-5, 5]


def test_database_refuses_to_truncate_the_append_only_tables(
    api: Api, db: Database, community: dict[str, Any]
) -> None:
    """TRUNCATE fires no row triggers: on PostgreSQL statement triggers refuse it, alone or
    cascaded from a table that refers to them. (SQLite has no TRUNCATE.)"""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("TRUNCATE is PostgreSQL's")
    give(api, "riverside", "alice", "bob", 5)

    def counts() -> dict[str, int]:
        with db.engine.connect() as connection:
            return {
                table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in ("exchanges", "entries", "audit_log")
            }

    before = counts()
    assert all(before.values()), before
    for statement in (
        "TRUNCATE exchanges CASCADE",
        "TRUNCATE entries",
        "TRUNCATE audit_log",
        "TRUNCATE intertrades",
        "TRUNCATE exchanges, entries, intertrades, audit_log",
        "TRUNCATE communities CASCADE",
    ):
        with pytest.raises(DBAPIError, match="append-only: TRUNCATE is refused"):
            _write(db, text(statement))
    assert counts() == before
    assert api.get("/v1/communities/riverside/exchanges").json()["items"]

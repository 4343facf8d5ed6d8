"""The audit recomputes the invariants from the entries: it passes on an honest ledger and names
what was altered when someone edits the tables behind the service's back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from protocoop import cli
from protocoop.config import get_settings
from protocoop.db import Database
from tests.support.api import Api
from tests.support.databases import tampering
from tests.support.ledger import audit, posted, reverse


@pytest.fixture
def ledger(api: Api, community: dict) -> list[dict[str, Any]]:
    """A small honest history: four exchanges and one reversal."""
    records = [
        posted(api, "alice", "bob", 10),
        posted(api, "bob", "carol", 4, category="food"),
        posted(api, "carol", "alice", 7, external_id="x-1"),
        posted(api, "alice", "carol", 2),
    ]
    records.append(reverse(api, records[1]["id"]).json())
    return records


def clean(report: dict[str, Any]) -> dict[str, Any]:
    """The fields of an audit report that say whether the ledger holds."""
    return {key: report[key] for key in ("ok", "checked_exchanges", "problems")}


def invariants(report: dict[str, Any]) -> set[int]:
    return {p["invariant"] for p in report["problems"]}


def codes(report: dict[str, Any]) -> set[str]:
    return {p["code"] for p in report["problems"]}


def run_check(db: Database, *args: str) -> Any:
    """`protocoop check` against the test's database."""
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(
            cli.app,
            ["check", *args],
            env={
                "PROTOCOOP_DATABASE_URL": db.settings.database_url,
                "PROTOCOOP_AUTO_MIGRATE": "false",
            },
        )
    finally:
        get_settings.cache_clear()


def test_audit_of_an_honest_ledger_is_ok(api: Api, ledger: list[dict[str, Any]]) -> None:
    assert clean(audit(api)) == {"ok": True, "checked_exchanges": 5, "problems": []}


def test_audit_of_an_empty_ledger_is_ok(api: Api, community: dict) -> None:
    assert clean(audit(api)) == {"ok": True, "checked_exchanges": 0, "problems": []}


Tamper = Callable[[Connection, list[dict[str, Any]]], None]


def _change_entry_amount(connection: Connection, ledger: list[dict[str, Any]]) -> None:
    connection.execute(
        text(
            "UPDATE entries SET amount = amount + 1 WHERE exchange_id = :x AND account_id = 'bob'"
        ),
        {"x": ledger[0]["id"]},
    )


def _change_balance_after(connection: Connection, ledger: list[dict[str, Any]]) -> None:
    connection.execute(
        text(
            "UPDATE entries SET balance_after = balance_after + 5 "
            "WHERE exchange_id = :x AND account_id = 'carol'"
        ),
        {"x": ledger[2]["id"]},
    )


def _change_description(connection: Connection, ledger: list[dict[str, Any]]) -> None:
    connection.execute(
        text("UPDATE exchanges SET description = 'something else' WHERE id = :x"),
        {"x": ledger[1]["id"]},
    )


def _change_amount_and_entries_consistently(
    connection: Connection, ledger: list[dict[str, Any]]
) -> None:
    # The last exchange, rewritten so that every sum still adds up: only the chain can tell.
    last = ledger[3]
    connection.execute(text("UPDATE exchanges SET amount = 3 WHERE id = :x"), {"x": last["id"]})
    for account, delta in (("alice", 1), ("carol", -1)):
        connection.execute(
            text(
                "UPDATE entries SET amount = amount + :d, balance_after = balance_after + :d "
                "WHERE exchange_id = :x AND account_id = :a"
            ),
            {"d": delta, "x": last["id"], "a": account},
        )
        connection.execute(
            text("UPDATE accounts SET balance = balance + :d WHERE id = :a"),
            {"d": delta, "a": account},
        )


def _change_account_balance(connection: Connection, ledger: list[dict[str, Any]]) -> None:
    connection.execute(text("UPDATE accounts SET balance = balance + 1 WHERE id = 'alice'"))


def _delete_entries(connection: Connection, ledger: list[dict[str, Any]]) -> None:
    connection.execute(text("DELETE FROM entries WHERE exchange_id = :x"), {"x": ledger[2]["id"]})


def _delete_exchange(connection: Connection, ledger: list[dict[str, Any]]) -> None:
    # A whole exchange vanishes, the balances rewritten to match: seq has a gap.
    victim = ledger[2]
    for entry in victim["entries"]:
        connection.execute(
            text("UPDATE accounts SET balance = balance - :d WHERE id = :a"),
            {"d": entry["amount"], "a": entry["account"]},
        )
    connection.execute(text("DELETE FROM entries WHERE exchange_id = :x"), {"x": victim["id"]})
    connection.execute(text("DELETE FROM exchanges WHERE id = :x"), {"x": victim["id"]})


TAMPERINGS: dict[str, tuple[Tamper, set[int], str]] = {
    "entry amount changed": (_change_entry_amount, {1, 2, 5}, "unbalanced_exchange"),
    "entry balance_after changed": (_change_balance_after, {2, 5}, "running_balance_mismatch"),
    "exchange description changed": (_change_description, {5}, "hash_mismatch"),
    "amount rewritten consistently": (
        _change_amount_and_entries_consistently,
        {5},
        "hash_mismatch",
    ),
    "account balance changed": (_change_account_balance, {2, 3}, "balance_mismatch"),
    "exchange entries deleted": (_delete_entries, {1, 2, 5}, "missing_entries"),
    "exchange deleted": (_delete_exchange, {2, 5}, "seq_gap"),
}


@pytest.mark.parametrize("case", list(TAMPERINGS))
def test_audit_reports_a_ledger_altered_in_sql(
    api: Api, db: Database, ledger: list[dict[str, Any]], case: str
) -> None:
    tamper, expected_invariants, expected_code = TAMPERINGS[case]
    with tampering(db) as connection:
        tamper(connection, ledger)

    report = audit(api)

    assert report["ok"] is False
    assert expected_invariants <= invariants(report), report["problems"]
    assert expected_code in codes(report), report["problems"]
    assert run_check(db).exit_code == 1


def test_audit_names_the_altered_exchange_and_account(
    api: Api, db: Database, ledger: list[dict[str, Any]]
) -> None:
    with tampering(db) as connection:
        _change_entry_amount(connection, ledger)

    problems = audit(api)["problems"]

    unbalanced = [p for p in problems if p["code"] == "unbalanced_exchange"]
    assert [(p["exchange_id"], p["seq"]) for p in unbalanced] == [(ledger[0]["id"], 1)]
    assert {p["account"] for p in problems if p["code"] == "balance_mismatch"} == {"bob"}
    assert {p["seq"] for p in problems if p["code"] == "hash_mismatch"} == {1}


def test_check_command_passes_on_an_honest_ledger(
    api: Api, db: Database, ledger: list[dict[str, Any]]
) -> None:
    result = run_check(db)
    assert result.exit_code == 0, result.output
    assert "riverside" in result.output


def test_check_command_fails_naming_the_problem(
    api: Api, db: Database, ledger: list[dict[str, Any]]
) -> None:
    with tampering(db) as connection:
        _change_description(connection, ledger)

    result = run_check(db, "--community", "riverside")

    assert result.exit_code == 1
    assert "riverside" in result.output
    assert "hash_mismatch" in result.output  # the first problem, by its code


# --- the ledger tables refuse to be edited -----------------------------------------------------


APPEND_ONLY_VIOLATIONS = [
    "UPDATE exchanges SET description = 'rewritten' WHERE id = :x",
    "UPDATE exchanges SET amount = 1 WHERE id = :x",
    "DELETE FROM exchanges WHERE id = :x",
    "UPDATE entries SET amount = amount + 1 WHERE exchange_id = :x",
    "UPDATE entries SET balance_after = 0 WHERE exchange_id = :x",
    "DELETE FROM entries WHERE exchange_id = :x",
]


def test_ledger_tables_refuse_update_and_delete(
    api: Api, db: Database, ledger: list[dict[str, Any]], subtests: Any
) -> None:
    for statement in APPEND_ONLY_VIOLATIONS:
        with (
            subtests.test(statement=statement),
            pytest.raises(DBAPIError, match="append-only"),
            db.engine.begin() as connection,
        ):
            connection.execute(text(statement), {"x": ledger[3]["id"]})

    assert clean(audit(api)) == {"ok": True, "checked_exchanges": 5, "problems": []}

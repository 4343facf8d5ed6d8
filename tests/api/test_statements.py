"""A member's statement: entries with running balance between an opening and a closing balance."""

from __future__ import annotations

import csv
import io
import time
from typing import Any

import pytest

from tests.support.api import Api
from tests.support.ledger import C, forged_cursor, posted, problem, reverse

STATEMENT = f"{C}/members/alice/statement"


@pytest.fixture
def history(api: Api, community: dict) -> list[dict[str, Any]]:
    """Three periods of alice's exchanges, separated in time; returns every exchange posted."""
    records = [posted(api, "alice", "bob", 10), posted(api, "carol", "alice", 3)]
    time.sleep(0.02)
    records += [
        posted(api, "bob", "carol", 4),  # not alice's
        posted(api, "alice", "carol", 6, description="Soup for the party"),
        posted(api, "bob", "alice", 2),
    ]
    time.sleep(0.02)
    records += [posted(api, "alice", "bob", 1)]
    records.append(reverse(api, records[0]["id"], reason="duplicate").json())
    return records


def test_statement_lists_every_entry_with_its_running_balance(
    api: Api, history: list[dict[str, Any]]
) -> None:
    statement = api.get(STATEMENT).json()

    assert statement["member"] == "alice"
    assert statement["opening_balance"] == 0
    assert statement["closing_balance"] == 10 - 3 + 6 - 2 + 1 - 10
    assert statement["next_cursor"] is None
    lines = [
        (i["seq"], i["counterparty"], i["amount"], i["balance_after"]) for i in statement["items"]
    ]
    assert lines == [
        (1, "bob", 10, 10),
        (2, "carol", -3, 7),
        (4, "carol", 6, 13),
        (5, "bob", -2, 11),
        (6, "bob", 1, 12),
        (7, "bob", -10, 2),
    ]
    fourth = statement["items"][2]
    assert fourth["exchange_id"] == history[3]["id"]
    assert fourth["description"] == "Soup for the party"
    assert fourth["created_at"] == history[3]["created_at"]
    assert statement["items"][-1]["description"] == "duplicate"


def test_statement_window_has_opening_and_closing_balances(
    api: Api, history: list[dict[str, Any]]
) -> None:
    since, until = history[2]["created_at"], history[5]["created_at"]

    statement = api.get(STATEMENT, params={"since": since, "until": until}).json()

    assert statement["opening_balance"] == 7
    assert [i["seq"] for i in statement["items"]] == [4, 5]
    assert statement["closing_balance"] == 11
    running = statement["opening_balance"]
    for item in statement["items"]:
        running += item["amount"]
        assert item["balance_after"] == running
    assert running == statement["closing_balance"]


def test_statement_since_alone_runs_to_now_and_until_alone_from_the_start(
    api: Api, history: list[dict[str, Any]]
) -> None:
    late = api.get(STATEMENT, params={"since": history[5]["created_at"]}).json()
    assert (late["opening_balance"], late["closing_balance"]) == (11, 2)
    assert [i["seq"] for i in late["items"]] == [6, 7]

    early = api.get(STATEMENT, params={"until": history[2]["created_at"]}).json()
    assert (early["opening_balance"], early["closing_balance"]) == (0, 7)
    assert [i["seq"] for i in early["items"]] == [1, 2]


def test_statement_of_an_empty_window_keeps_the_balance(
    api: Api, history: list[dict[str, Any]]
) -> None:
    moment = history[3]["created_at"]
    empty = api.get(STATEMENT, params={"since": moment, "until": moment}).json()
    assert empty["items"] == []
    assert empty["opening_balance"] == empty["closing_balance"] == 7

    future = api.get(STATEMENT, params={"since": "2999-01-01T00:00:00Z"}).json()
    assert future["items"] == []
    assert future["opening_balance"] == future["closing_balance"] == 2


def test_statement_pages_follow_the_cursor_in_the_same_window(
    api: Api, history: list[dict[str, Any]]
) -> None:
    first = api.get(STATEMENT, params={"limit": 4}).json()
    posted(api, "alice", "carol", 9)  # after the statement's window
    second = api.get(STATEMENT, params={"limit": 4, "cursor": first["next_cursor"]}).json()

    assert [i["seq"] for i in first["items"]] == [1, 2, 4, 5]
    assert [i["seq"] for i in second["items"]] == [6, 7]
    assert second["next_cursor"] is None
    assert first["closing_balance"] == second["closing_balance"] == 2
    assert first["opening_balance"] == second["opening_balance"] == 0


def test_statement_refuses_a_cursor_whose_window_is_not_one_it_gave(
    api: Api, history: list[dict[str, Any]]
) -> None:
    head = len(history)
    for position in (
        {"from_seq": 5, "to_seq": 2, "after_seq": 3},  # a window that ends before it starts
        {"from_seq": 2, "to_seq": 5, "after_seq": 1},  # a page before the window
        {"from_seq": 2, "to_seq": 5, "after_seq": 6},  # a page after it
        {"from_seq": 0, "to_seq": head + 1, "after_seq": 1},  # beyond the ledger
    ):
        for accept in ("application/json", "text/csv"):
            response = api.get(
                STATEMENT, params={"cursor": forged_cursor(position)}, headers={"Accept": accept}
            )
            problem(response, 422, "validation_error")
    inside = forged_cursor({"from_seq": 0, "to_seq": head, "after_seq": 2})
    page = api.get(STATEMENT, params={"cursor": inside})
    assert page.status_code == 200, page.text
    assert page.json()["items"][0]["seq"] == 4


def test_statement_as_csv_gives_the_whole_window(api: Api, history: list[dict[str, Any]]) -> None:
    response = api.get(
        STATEMENT,
        params={"since": history[2]["created_at"], "limit": 1},
        headers={"Accept": "text/csv"},
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [
        (int(r["seq"]), r["counterparty"], int(r["amount"]), int(r["balance_after"])) for r in rows
    ] == [
        (4, "carol", 6, 13),
        (5, "bob", -2, 11),
        (6, "bob", 1, 12),
        (7, "bob", -10, 2),
    ]
    assert rows[0]["exchange_id"] == history[3]["id"]
    assert rows[0]["description"] == "Soup for the party"
    assert rows[0]["created_at"] == history[3]["created_at"]


def test_statement_of_the_commons_fund(api: Api, keys: dict[str, str]) -> None:
    posted(api.as_(keys["treasurer"]), "@commons", "bob", 5, description="Annual levy")
    statement = api.get(f"{C}/members/@commons/statement").json()
    assert [(i["counterparty"], i["amount"], i["balance_after"]) for i in statement["items"]] == [
        ("bob", 5, 5)
    ]


def test_statement_of_an_unknown_member_is_not_found(api: Api, community: dict) -> None:
    problem(api.get(f"{C}/members/zelda/statement"), 404, "not_found")
    problem(
        api.get(f"{C}/members/zelda/statement", headers={"Accept": "text/csv"}), 404, "not_found"
    )


def test_statement_refuses_bad_windows_and_cursors(api: Api, community: dict) -> None:
    problem(api.get(STATEMENT, params={"since": "last week"}), 422, "validation_error")
    problem(api.get(STATEMENT, params={"until": "2026-01-01T00:00:00"}), 422, "validation_error")
    problem(api.get(STATEMENT, params={"cursor": "xyz"}), 422, "validation_error")
    for moment in ("9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+01:00"):
        problem(api.get(STATEMENT, params={"since": moment}), 422, "validation_error")
    for position in (
        {"from_seq": "0", "to_seq": 1, "after_seq": 0},
        {"from_seq": 0, "to_seq": "1", "after_seq": 0},
        {"from_seq": 0, "to_seq": 1, "after_seq": "0"},
        {"from_seq": 0, "to_seq": 1},
    ):
        for accept in ("application/json", "text/csv"):
            response = api.get(
                STATEMENT, params={"cursor": forged_cursor(position)}, headers={"Accept": accept}
            )
            problem(response, 422, "validation_error")

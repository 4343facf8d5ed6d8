"""Balances now and in the past, the community snapshot, the trial balance, and who reads them."""

from __future__ import annotations

import csv
import io
from typing import Any

from tests.support.api import Api, create_member
from tests.support.ledger import (
    C,
    balance,
    balances,
    forged_cursor,
    posted,
    problem,
    reverse,
    set_member,
)


def test_balance_shows_the_room_left_within_the_limits(api: Api, keys: dict[str, str]) -> None:
    posted(api, "alice", "bob", 30)

    bob = balance(api.as_(keys["app"]), "bob")

    assert bob == {
        **bob,
        "member": "bob",
        "balance": -30,
        "lower_limit": -100,
        "upper_limit": None,
        "available_to_spend": 70,
        "available_to_earn": None,
        "as_of_seq": 1,
        "unit": {"code": "HOUR", "name": "hour", "scale": 0},
    }
    assert set(bob) >= {
        "member",
        "balance",
        "lower_limit",
        "upper_limit",
        "available_to_spend",
        "available_to_earn",
        "as_of_seq",
        "unit",
    }


def test_balance_with_an_upper_limit_shows_what_is_left_to_earn(api: Api, community: dict) -> None:
    set_member(api, "alice", upper_limit=50)
    posted(api, "alice", "bob", 30)

    alice = balance(api, "alice")
    assert (alice["balance"], alice["upper_limit"], alice["available_to_earn"]) == (30, 50, 20)
    assert alice["available_to_spend"] == 130


def test_balance_of_a_new_member_is_zero_at_the_current_position(api: Api, community: dict) -> None:
    posted(api, "alice", "bob", 3)
    create_member(api, "riverside", "dan", lower_limit=-20, upper_limit=10)

    dan = balance(api, "dan")
    assert (dan["balance"], dan["as_of_seq"]) == (0, 1)
    assert (dan["available_to_spend"], dan["available_to_earn"]) == (20, 10)


def test_balance_of_an_unknown_member_is_not_found(api: Api, community: dict) -> None:
    problem(api.get(f"{C}/members/zelda/balance"), 404, "not_found")


def test_historical_balances_match_the_balances_after_each_exchange(
    api: Api, community: dict
) -> None:
    steps = [
        ("alice", "bob", 10),
        ("bob", "carol", 4),
        ("carol", "alice", 25),
        ("bob", "alice", 7),
        ("alice", "carol", 1),
    ]
    history: list[tuple[dict[str, Any], dict[str, int]]] = []
    for provider, receiver, amount in steps:
        record = posted(api, provider, receiver, amount)
        history.append((record, balances(api)))
    reversal = reverse(api, history[0][0]["id"]).json()
    history.append((reversal, balances(api)))

    for member in ("alice", "bob", "carol"):
        assert balance(api, member, as_of_seq=0)["balance"] == 0
        for record, then in history:
            by_seq = balance(api, member, as_of_seq=record["seq"])
            assert (by_seq["balance"], by_seq["as_of_seq"]) == (then[member], record["seq"])
            by_time = balance(api, member, as_of=record["created_at"])
            assert (by_time["balance"], by_time["as_of_seq"]) == (then[member], record["seq"])


def test_balance_as_of_a_time_before_the_first_exchange_is_zero(api: Api, community: dict) -> None:
    posted(api, "alice", "bob", 10)

    early = balance(api, "alice", as_of="2000-01-01T00:00:00Z")
    assert (early["balance"], early["as_of_seq"]) == (0, 0)
    later = balance(api, "alice", as_of="2999-01-01T00:00:00+02:00")
    assert (later["balance"], later["as_of_seq"]) == (10, 1)


def test_balance_as_of_an_unusable_position_is_refused(api: Api, community: dict) -> None:
    posted(api, "alice", "bob", 10)
    path = f"{C}/members/alice/balance"

    problem(api.get(path, params={"as_of_seq": 2}), 422, "validation_error")
    problem(api.get(path, params={"as_of_seq": -1}), 422, "validation_error")
    problem(api.get(path, params={"as_of_seq": "one"}), 422, "validation_error")
    problem(api.get(path, params={"as_of": "yesterday"}), 422, "validation_error")
    problem(api.get(path, params={"as_of": "2026-01-01T00:00:00"}), 422, "validation_error")
    for moment in ("9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+01:00"):
        problem(api.get(path, params={"as_of": moment}), 422, "validation_error")
    problem(
        api.get(path, params={"as_of_seq": 1, "as_of": "2026-01-01T00:00:00Z"}),
        422,
        "validation_error",
    )


# --- the community snapshot --------------------------------------------------------------------


def test_balances_list_every_account_summing_to_zero(api: Api, keys: dict[str, str]) -> None:
    posted(api, "alice", "bob", 10)
    posted(api.as_(keys["treasurer"]), "@commons", "carol", 4)

    page = api.as_(keys["auditor"]).get(f"{C}/balances").json()

    assert page["as_of_seq"] == 2
    assert page["sum"] == 0
    assert page["next_cursor"] is None
    assert page["items"] == [
        {
            "account": "@commons",
            "kind": "system",
            "balance": 4,
            "lower_limit": 0,
            "upper_limit": None,
        },
        {
            "account": "alice",
            "kind": "member",
            "balance": 10,
            "lower_limit": -100,
            "upper_limit": None,
        },
        {
            "account": "bob",
            "kind": "member",
            "balance": -10,
            "lower_limit": -100,
            "upper_limit": None,
        },
        {
            "account": "carol",
            "kind": "member",
            "balance": -4,
            "lower_limit": -100,
            "upper_limit": None,
        },
    ]


def test_balance_pages_stay_on_the_first_pages_snapshot(api: Api, community: dict) -> None:
    for member in ("dan", "erin", "finn"):
        create_member(api, "riverside", member)
    posted(api, "alice", "bob", 10)
    posted(api, "erin", "finn", 3)

    first = api.get(f"{C}/balances", params={"limit": 3}).json()
    posted(api, "bob", "alice", 50)  # recorded between the page requests
    posted(api, "finn", "dan", 8)
    second = api.get(f"{C}/balances", params={"limit": 3, "cursor": first["next_cursor"]}).json()
    assert second["next_cursor"] is not None
    third = api.get(f"{C}/balances", params={"limit": 3, "cursor": second["next_cursor"]}).json()

    assert first["as_of_seq"] == second["as_of_seq"] == third["as_of_seq"] == 2
    assert first["sum"] == second["sum"] == third["sum"] == 0
    assert third["next_cursor"] is None
    snapshot = {i["account"]: i["balance"] for p in (first, second, third) for i in p["items"]}
    assert snapshot == {
        "@commons": 0,
        "alice": 10,
        "bob": -10,
        "carol": 0,
        "dan": 0,
        "erin": 3,
        "finn": -3,
    }
    now = api.get(f"{C}/balances").json()
    assert now["as_of_seq"] == 4
    assert {i["account"]: i["balance"] for i in now["items"]}["finn"] == 5


def test_balances_refuse_a_cursor_they_did_not_give(api: Api, community: dict) -> None:
    posted(api, "alice", "bob", 10)
    for position in (
        {"as_of_seq": "1", "after": "alice"},
        {"as_of_seq": 1, "after": 5},
        {"as_of_seq": 2, "after": "alice"},  # beyond the head
        {"as_of_seq": 1},
    ):
        response = api.get(f"{C}/balances", params={"cursor": forged_cursor(position)})
        problem(response, 422, "validation_error")


def test_balances_as_csv_give_the_whole_snapshot(api: Api, community: dict) -> None:
    for n in range(5):
        create_member(api, "riverside", f"m{n}")
    posted(api, "alice", "bob", 10)
    posted(api, "m3", "m1", 2)

    response = api.get(f"{C}/balances", params={"limit": 2}, headers={"Accept": "text/csv"})

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["account"] for r in rows] == [
        "'@commons",  # a spreadsheet would read `@` as a formula (see test_csv_safety.py)
        "alice",
        "bob",
        "carol",
        "m0",
        "m1",
        "m2",
        "m3",
        "m4",
    ]
    assert {r["account"]: int(r["balance"]) for r in rows if r["balance"] != "0"} == {
        "alice": 10,
        "bob": -10,
        "m1": -2,
        "m3": 2,
    }
    assert sum(int(r["balance"]) for r in rows) == 0
    assert rows[1] == {
        "account": "alice",
        "kind": "member",
        "balance": "10",
        "lower_limit": "-100",
        "upper_limit": "",
    }


def test_trial_balance_totals_positives_and_negatives(api: Api, keys: dict[str, str]) -> None:
    posted(api, "alice", "bob", 10)
    posted(api, "carol", "bob", 5)
    posted(api, "bob", "alice", 3)

    trial = api.as_(keys["auditor"]).get(f"{C}/trial-balance")

    assert trial.status_code == 200, trial.text
    assert trial.json() == {
        **trial.json(),
        "as_of_seq": 3,
        "accounts": 4,
        "total_positive": 12,
        "total_negative": -12,
        "sum": 0,
    }


def test_trial_balance_of_an_empty_ledger_is_all_zero(api: Api, community: dict) -> None:
    trial = api.get(f"{C}/trial-balance").json()
    assert (trial["as_of_seq"], trial["total_positive"], trial["total_negative"], trial["sum"]) == (
        0,
        0,
        0,
        0,
    )


# --- who may read what -------------------------------------------------------------------------


def test_app_key_reads_member_balances_and_statements_but_not_community_reports(
    api: Api, keys: dict[str, str]
) -> None:
    posted(api, "alice", "bob", 2)
    app = api.as_(keys["app"])
    assert app.get(f"{C}/members/bob/balance").json()["balance"] == -2
    assert app.get(f"{C}/members/bob/statement").json()["closing_balance"] == -2
    for path in ("/balances", "/trial-balance", "/audit"):
        problem(app.get(f"{C}{path}"), 403, "forbidden")
        problem(app.get(f"{C}{path}", headers={"Accept": "text/csv"}), 403, "forbidden")


def test_auditor_may_read_every_report(api: Api, keys: dict[str, str]) -> None:
    posted(api, "alice", "bob", 2)
    auditor = api.as_(keys["auditor"])
    for path in (
        "/balances",
        "/trial-balance",
        "/audit",
        "/members/bob/balance",
        "/members/bob/statement",
        "/exchanges",
    ):
        assert auditor.get(f"{C}{path}").status_code == 200, path


def test_reports_of_another_community_are_not_found(api: Api, keys: dict[str, str]) -> None:
    from tests.support.api import create_community

    create_community(api, "hillside")
    create_member(api, "hillside", "dora")
    for path in (
        "/balances",
        "/trial-balance",
        "/audit",
        "/members/dora/balance",
        "/members/dora/statement",
    ):
        response = api.as_(keys["treasurer"]).get(f"/v1/communities/hillside{path}")
        problem(response, 404, "not_found")


def test_reports_need_a_key(api: Api, community: dict) -> None:
    for path in ("/balances", "/members/bob/balance", "/members/bob/statement"):
        problem(api.as_(None).get(f"{C}{path}"), 401, "unauthorized")

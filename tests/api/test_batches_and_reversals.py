"""Batches (all or nothing, limits on running balances) and reversals (once, within limits)."""

from __future__ import annotations

import itertools
from typing import Any

from tests.support.api import Api, create_member
from tests.support.ledger import (
    BATCH,
    EXCHANGES,
    GENESIS,
    all_exchanges,
    audit,
    balances,
    exchange,
    ledger_state,
    posted,
    problem,
    reverse,
    set_member,
)


def post_batch(api: Api, items: list[dict[str, Any]], **kwargs: Any) -> Any:
    return api.post(BATCH, json={"exchanges": items}, **kwargs)


# --- batches -----------------------------------------------------------------------------------


def test_batch_records_every_item_in_order_with_consecutive_seqs(
    api: Api, keys: dict[str, str]
) -> None:
    posted(api, "alice", "bob", 1)
    items = [
        exchange("alice", "bob", 2),
        exchange("bob", "carol", 3),
        exchange("carol", "alice", 4),
    ]

    response = post_batch(api.as_(keys["app"]), items)

    assert response.status_code == 201, response.text
    recorded = response.json()["exchanges"]
    assert [(x["provider"], x["receiver"], x["amount"]) for x in recorded] == [
        ("alice", "bob", 2),
        ("bob", "carol", 3),
        ("carol", "alice", 4),
    ]
    assert [x["seq"] for x in recorded] == [2, 3, 4]
    assert recorded[0]["prev_hash"] == all_exchanges(api)[0]["hash"]
    for previous, current in itertools.pairwise(recorded):
        assert current["prev_hash"] == previous["hash"]
    assert balances(api) == {"@commons": 0, "alice": -1, "bob": 0, "carol": 1}
    assert all_exchanges(api)[1:] == recorded


def test_batch_entries_show_running_balances_within_the_batch(api: Api, community: dict) -> None:
    recorded = post_batch(
        api, [exchange("alice", "bob", 5), exchange("alice", "bob", 5), exchange("bob", "alice", 2)]
    ).json()["exchanges"]

    bob_after = [{e["account"]: e["balance_after"] for e in x["entries"]}["bob"] for x in recorded]
    assert bob_after == [-5, -10, -8]


def test_batch_with_one_refused_item_records_nothing_and_names_the_item(
    api: Api, community: dict
) -> None:
    posted(api, "alice", "bob", 1)
    before = ledger_state(api)

    items = [
        exchange("alice", "bob", 2),
        exchange("carol", "carol", 1),
        exchange("bob", "alice", 1),
    ]
    body = problem(post_batch(api, items), 422, "same_member")

    assert body["index"] == 1
    assert ledger_state(api) == before
    assert posted(api, "alice", "bob", 1)["seq"] == 2  # no seq was used up


def test_batch_refusal_of_a_later_item_undoes_the_earlier_ones(api: Api, community: dict) -> None:
    create_member(api, "riverside", "dan")
    set_member(api, "dan", status="suspended")
    before = ledger_state(api)

    for bad_item, status, code in (
        (exchange("alice", "zelda", 1), 404, "not_found"),
        (exchange("dan", "alice", 1), 409, "member_inactive"),
        (exchange("carol", "bob", 101), 409, "limit_exceeded"),
    ):
        items = [exchange("alice", "bob", 1), exchange("bob", "carol", 1), bad_item]
        body = problem(post_batch(api, items), status, code)
        assert body["index"] == 2
    assert ledger_state(api) == before


def test_batch_limits_apply_to_the_running_balance_within_the_batch(
    api: Api, community: dict
) -> None:
    # Each item alone fits bob's lower limit of -100; together they do not.
    before = ledger_state(api)
    body = problem(
        post_batch(api, [exchange("alice", "bob", 60), exchange("carol", "bob", 60)]),
        409,
        "limit_exceeded",
    )
    assert (body["index"], body["member"], body["limit"]) == (1, "bob", "lower")
    assert (body["balance"], body["attempted"]) == (-60, 60)
    assert ledger_state(api) == before

    # An earlier item may also make room for a later one.
    recorded = post_batch(
        api,
        [exchange("alice", "bob", 60), exchange("bob", "carol", 30), exchange("carol", "bob", 70)],
    )
    assert recorded.status_code == 201, recorded.text
    assert balances(api)["bob"] == -100


def test_batch_upper_limits_apply_to_the_running_balance(api: Api, community: dict) -> None:
    set_member(api, "carol", upper_limit=10)
    body = problem(
        post_batch(api, [exchange("carol", "alice", 6), exchange("carol", "bob", 6)]),
        409,
        "limit_exceeded",
    )
    assert (body["index"], body["member"], body["limit"], body["balance"]) == (
        1,
        "carol",
        "upper",
        6,
    )


def test_batch_of_a_thousand_items_is_recorded(api: Api, community: dict) -> None:
    items = [
        exchange("alice", "bob", 1) if i % 2 else exchange("bob", "alice", 1) for i in range(1000)
    ]

    response = post_batch(api, items)

    assert response.status_code == 201, response.text
    recorded = response.json()["exchanges"]
    assert [x["seq"] for x in recorded] == list(range(1, 1001))
    assert balances(api) == {"@commons": 0, "alice": 0, "bob": 0, "carol": 0}
    assert audit(api)["ok"] is True
    assert audit(api)["checked_exchanges"] == 1000


def test_batch_of_no_items_or_more_than_a_thousand_is_refused(api: Api, community: dict) -> None:
    before = ledger_state(api)
    for size in (0, 1001):
        problem(post_batch(api, [exchange("alice", "bob", 1)] * size), 422, "validation_error")
    problem(api.post(BATCH, json={}), 422, "validation_error")
    problem(
        api.post(BATCH, json={"exchanges": exchange("alice", "bob", 1)}), 422, "validation_error"
    )
    assert ledger_state(api) == before


def test_batch_with_an_invalid_item_is_refused_naming_its_position(
    api: Api, community: dict
) -> None:
    before = ledger_state(api)
    body = problem(
        post_batch(api, [exchange("alice", "bob", 1), exchange("alice", "bob", "2")]),  # type: ignore[arg-type]
        422,
        "validation_error",
    )
    assert any(1 in e["loc"] for e in body["errors"]), body["errors"]
    assert ledger_state(api) == before


def test_batch_repeating_an_external_id_is_refused(api: Api, community: dict) -> None:
    before = ledger_state(api)
    items = [
        exchange("alice", "bob", 1, external_id="a"),
        exchange("bob", "carol", 1, external_id="b"),
        exchange("carol", "alice", 1, external_id="a"),
    ]
    problem(post_batch(api, items), 422, "validation_error")
    assert ledger_state(api) == before


def test_batch_reusing_a_recorded_external_id_is_refused_naming_item_and_exchange(
    api: Api, community: dict
) -> None:
    first = posted(api, "alice", "bob", 1, external_id="a")
    before = ledger_state(api)
    items = [
        exchange("bob", "carol", 1, external_id="b"),
        exchange("carol", "alice", 1, external_id="a"),
    ]

    body = problem(post_batch(api, items), 409, "duplicate_external_id")
    assert (body["index"], body["exchange_id"]) == (1, first["id"])
    assert ledger_state(api) == before


def test_batch_may_not_move_the_commons_fund_with_an_app_key(
    api: Api, keys: dict[str, str]
) -> None:
    before = ledger_state(api)
    items = [exchange("alice", "bob", 1), exchange("@commons", "carol", 1)]
    problem(post_batch(api.as_(keys["app"]), items), 403, "forbidden")
    assert ledger_state(api) == before


# --- reversals ---------------------------------------------------------------------------------


def test_reversal_swaps_the_parties_and_links_both_exchanges(
    api: Api, keys: dict[str, str]
) -> None:
    original = posted(api, "alice", "bob", 8, category="garden", external_id="job-9")
    posted(api, "carol", "alice", 2)

    response = reverse(api.as_(keys["treasurer"]), original["id"], reason="never happened")

    assert response.status_code == 201, response.text
    reversal = response.json()
    assert (reversal["provider"], reversal["receiver"], reversal["amount"]) == ("bob", "alice", 8)
    assert reversal["reverses"] == original["id"]
    assert reversal["reversed_by"] is None
    assert reversal["description"] == "never happened"
    assert reversal["status"] == "completed"
    assert reversal["seq"] == 3
    assert reversal["id"] != original["id"]
    assert reversal["prev_hash"] == all_exchanges(api)[1]["hash"] != GENESIS
    assert {e["account"]: (e["amount"], e["balance_after"]) for e in reversal["entries"]} == {
        "alice": (-8, -2),
        "bob": (8, 0),
    }
    assert balances(api) == {"@commons": 0, "alice": -2, "bob": 0, "carol": 2}

    again = api.get(f"{EXCHANGES}/{original['id']}").json()
    assert again["reversed_by"] == reversal["id"]
    assert {k: v for k, v in again.items() if k != "reversed_by"} == {
        k: v for k, v in original.items() if k != "reversed_by"
    }
    assert api.get(f"{EXCHANGES}/{reversal['id']}").json() == reversal
    listed = {x["id"]: x for x in all_exchanges(api)}
    assert listed[original["id"]]["reversed_by"] == reversal["id"]
    assert listed[reversal["id"]]["reverses"] == original["id"]
    assert audit(api)["ok"] is True


def test_exchange_can_be_reversed_only_once(api: Api, community: dict) -> None:
    original = posted(api, "alice", "bob", 8)
    first = reverse(api, original["id"])
    assert first.status_code == 201, first.text
    before = ledger_state(api)

    problem(reverse(api, original["id"]), 409, "invalid_state")
    assert ledger_state(api) == before


def test_reversal_may_itself_be_reversed(api: Api, community: dict) -> None:
    original = posted(api, "alice", "bob", 8)
    reversal = reverse(api, original["id"]).json()

    again = reverse(api, reversal["id"])

    assert again.status_code == 201, again.text
    assert (again.json()["provider"], again.json()["receiver"]) == ("alice", "bob")
    assert balances(api)["alice"] == 8


def test_reversal_that_would_break_a_limit_is_refused(api: Api, community: dict) -> None:
    original = posted(api, "alice", "bob", 80)  # alice at +80
    posted(api, "carol", "alice", 100)  # alice at -20
    posted(api, "bob", "alice", 50)  # alice at -70: undoing her +80 would take her to -150
    before = ledger_state(api)

    body = problem(reverse(api, original["id"]), 409, "limit_exceeded")

    assert (body["member"], body["limit"], body["balance"], body["attempted"]) == (
        "alice",
        "lower",
        -70,
        80,
    )
    assert ledger_state(api) == before
    assert api.get(f"{EXCHANGES}/{original['id']}").json()["reversed_by"] is None


def test_reversal_respects_upper_limits_too(api: Api, community: dict) -> None:
    original = posted(api, "alice", "bob", 5)  # bob at -5
    set_member(api, "bob", upper_limit=3)
    posted(api, "bob", "carol", 8)  # bob at +3, at his cap
    problem(reverse(api, original["id"]), 409, "limit_exceeded")


def test_reversal_of_an_unknown_exchange_is_not_found(api: Api, community: dict) -> None:
    before = ledger_state(api)
    for exchange_id in ("00000000-0000-4000-8000-000000000000", "not-a-uuid", "x" * 300):
        problem(reverse(api, exchange_id), 404, "not_found")
    assert ledger_state(api) == before


def test_reversal_names_the_exchange_in_either_case(api: Api, community: dict) -> None:
    original = posted(api, "alice", "bob", 8)
    response = reverse(api, original["id"].upper())
    assert response.status_code == 201, response.text
    assert response.json()["reverses"] == original["id"]
    assert balances(api) == {"@commons": 0, "alice": 0, "bob": 0, "carol": 0}
    problem(reverse(api, original["id"]), 409, "invalid_state")


def test_reversal_without_a_body_says_the_reason_is_missing(api: Api, community: dict) -> None:
    original = posted(api, "alice", "bob", 8)
    before = ledger_state(api)
    body = problem(api.post(f"{EXCHANGES}/{original['id']}/reverse"), 422, "validation_error")
    assert body["errors"], body
    problem(api.post(f"{EXCHANGES}/not-a-uuid/reverse", json={"reason": "x"}), 404, "not_found")
    assert ledger_state(api) == before


def test_only_treasurer_or_admin_may_reverse(api: Api, keys: dict[str, str]) -> None:
    original = posted(api, "alice", "bob", 8)
    before = ledger_state(api)

    for role in ("app", "auditor"):
        problem(reverse(api.as_(keys[role]), original["id"]), 403, "forbidden")
    assert ledger_state(api) == before
    assert reverse(api.as_(keys["admin"]), original["id"]).status_code == 201


def test_reversal_needs_a_reason(api: Api, community: dict) -> None:
    original = posted(api, "alice", "bob", 8)
    before = ledger_state(api)
    for body in ({}, {"reason": ""}, {"reason": "r" * 501}, {"reason": "x", "amount": 3}):
        response = api.post(f"{EXCHANGES}/{original['id']}/reverse", json=body)
        problem(response, 422, "validation_error")
    assert ledger_state(api) == before


def test_reversal_of_a_suspended_members_exchange_is_allowed(api: Api, community: dict) -> None:
    original = posted(api, "alice", "bob", 8)
    set_member(api, "bob", status="suspended")
    response = reverse(api, original["id"])
    assert response.status_code == 201, response.text
    assert balances(api)["bob"] == 0


def test_reversal_involving_a_closed_member_is_refused(api: Api, community: dict) -> None:
    original = posted(api, "alice", "bob", 8)
    posted(api, "bob", "carol", 8)  # bob back at 0, so he can leave
    set_member(api, "bob", status="closed")
    before = ledger_state(api)

    body = problem(reverse(api, original["id"]), 409, "member_inactive")

    assert body["member"] == "bob"
    assert ledger_state(api) == before

"""Posting exchanges, and reading them back one at a time or as a filtered, paginated list."""

from __future__ import annotations

import itertools
import re
import time
from typing import Any

from tests.support.api import Api
from tests.support.ledger import (
    EXCHANGES,
    GENESIS,
    all_exchanges,
    balances,
    forged_cursor,
    posted,
    problem,
)

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def test_posted_exchange_is_returned_with_its_entries_seq_and_hash(
    api: Api, keys: dict[str, str]
) -> None:
    response = api.as_(keys["app"]).post(
        EXCHANGES,
        json={
            "provider": "alice",
            "receiver": "bob",
            "amount": 3,
            "description": "Fixed the bike",
            "category": "repairs",
            "external_id": "app-123",
            "occurred_at": "2026-11-25T09:30:00+01:00",
            "metadata": {"ticket": 7, "tags": ["bike"]},
        },
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) >= {
        "id",
        "seq",
        "community",
        "provider",
        "receiver",
        "amount",
        "description",
        "category",
        "external_id",
        "occurred_at",
        "created_at",
        "status",
        "reverses",
        "reversed_by",
        "metadata",
        "entries",
        "prev_hash",
        "hash",
    }
    assert UUID.match(body["id"])
    assert body["seq"] == 1
    assert body["community"] == "riverside"
    assert (body["provider"], body["receiver"], body["amount"]) == ("alice", "bob", 3)
    assert body["description"] == "Fixed the bike"
    assert body["category"] == "repairs"
    assert body["external_id"] == "app-123"
    assert body["occurred_at"] == "2026-11-25T08:30:00.000000Z"
    assert RFC3339_UTC.match(body["created_at"])
    assert body["status"] == "completed"
    assert body["reverses"] is None
    assert body["reversed_by"] is None
    assert body["metadata"] == {"ticket": 7, "tags": ["bike"]}
    assert sorted((e["account"], e["amount"], e["balance_after"]) for e in body["entries"]) == [
        ("alice", 3, 3),
        ("bob", -3, -3),
    ]
    assert body["prev_hash"] == GENESIS
    assert HEX64.match(body["hash"])
    assert body["hash"] != GENESIS


def test_exchange_moves_credit_from_receiver_to_provider(api: Api, community: dict) -> None:
    posted(api, "alice", "bob", 10)
    posted(api, "carol", "alice", 4)

    assert balances(api) == {"@commons": 0, "alice": 6, "bob": -10, "carol": 4}
    members = {m["id"]: m["balance"] for m in api.get(f"{EXCHANGES[:-10]}/members").json()["items"]}
    assert members == {"alice": 6, "bob": -10, "carol": 4}


def test_occurred_at_defaults_to_the_recording_time(api: Api, community: dict) -> None:
    body = posted(api, "alice", "bob", 1)
    assert body["occurred_at"] == body["created_at"]
    assert body["category"] is None
    assert body["external_id"] is None
    assert body["metadata"] is None


def test_seq_starts_at_one_without_gaps_and_each_prev_hash_is_the_previous_hash(
    api: Api, community: dict
) -> None:
    documents = [
        posted(api, *pair, amount)
        for amount, pair in enumerate(
            [
                ("alice", "bob"),
                ("bob", "carol"),
                ("carol", "alice"),
                ("alice", "carol"),
                ("bob", "alice"),
            ],
            start=1,
        )
    ]

    assert [d["seq"] for d in documents] == [1, 2, 3, 4, 5]
    assert documents[0]["prev_hash"] == GENESIS
    for previous, current in itertools.pairwise(documents):
        assert current["prev_hash"] == previous["hash"]
    assert len({d["hash"] for d in documents}) == 5


def test_entries_carry_each_accounts_running_balance(api: Api, community: dict) -> None:
    posted(api, "alice", "bob", 10)
    second = posted(api, "bob", "alice", 4)

    assert {e["account"]: (e["amount"], e["balance_after"]) for e in second["entries"]} == {
        "bob": (4, -6),
        "alice": (-4, 6),
    }


def test_get_exchange_returns_the_document_that_posting_returned(
    api: Api, keys: dict[str, str]
) -> None:
    first = posted(api, "alice", "bob", 5, metadata={"k": "v"}, category="food")

    for role in ("app", "auditor", "treasurer", "admin"):
        response = api.as_(keys[role]).get(f"{EXCHANGES}/{first['id']}")
        assert response.status_code == 200, (role, response.text)
        assert response.json() == first


def test_get_unknown_exchange_is_not_found(api: Api, community: dict) -> None:
    response = api.get(f"{EXCHANGES}/00000000-0000-4000-8000-000000000000")
    problem(response, 404, "not_found")


def test_exchange_of_another_community_is_not_found(api: Api, keys: dict[str, str]) -> None:
    from tests.support.api import create_community, create_member

    create_community(api, "hillside")
    create_member(api, "hillside", "dora")
    create_member(api, "hillside", "ed")
    elsewhere = api.post(
        "/v1/communities/hillside/exchanges",
        json={"provider": "dora", "receiver": "ed", "amount": 1, "description": "x"},
    ).json()

    response = api.as_(keys["app"]).get(f"{EXCHANGES}/{elsewhere['id']}")
    problem(response, 404, "not_found")
    response = api.as_(keys["app"]).get(f"/v1/communities/hillside/exchanges/{elsewhere['id']}")
    problem(response, 404, "not_found")


# --- listing -----------------------------------------------------------------------------------


def _seed(api: Api) -> list[dict[str, Any]]:
    pairs = [
        ("alice", "bob"),
        ("bob", "carol"),
        ("carol", "alice"),
        ("alice", "carol"),
        ("bob", "alice"),
        ("carol", "bob"),
        ("alice", "bob"),
    ]
    return [posted(api, p, r, n) for n, (p, r) in enumerate(pairs, start=1)]


def test_listing_gives_every_exchange_in_seq_order_as_posted(api: Api, community: dict) -> None:
    documents = _seed(api)

    listed = api.get(EXCHANGES).json()
    assert listed["next_cursor"] is None
    assert listed["items"] == documents


def test_listing_by_member_keeps_only_exchanges_it_took_part_in(api: Api, community: dict) -> None:
    documents = _seed(api)

    listed = all_exchanges(api, member="carol")
    expected = [d["seq"] for d in documents if "carol" in (d["provider"], d["receiver"])]
    assert [d["seq"] for d in listed] == expected == [2, 3, 4, 6]


def test_listing_after_seq_starts_after_that_position(api: Api, community: dict) -> None:
    _seed(api)

    assert [d["seq"] for d in all_exchanges(api, after_seq=4)] == [5, 6, 7]
    assert [d["seq"] for d in all_exchanges(api, after_seq=4, member="bob")] == [5, 6, 7]
    assert all_exchanges(api, after_seq=7) == []


def test_listing_since_and_until_bound_the_recording_time(api: Api, community: dict) -> None:
    early = [posted(api, "alice", "bob", 1), posted(api, "bob", "alice", 1)]
    time.sleep(0.01)
    late = [posted(api, "carol", "bob", 1), posted(api, "bob", "carol", 1)]
    boundary = late[0]["created_at"]

    assert [d["seq"] for d in all_exchanges(api, since=boundary)] == [d["seq"] for d in late]
    assert [d["seq"] for d in all_exchanges(api, until=boundary)] == [d["seq"] for d in early]
    assert all_exchanges(api, since=boundary, until=boundary) == []
    assert [d["seq"] for d in all_exchanges(api, since=early[1]["created_at"], until=boundary)] == [
        2
    ]


def test_listing_pages_follow_the_cursor_without_losing_or_repeating(
    api: Api, community: dict
) -> None:
    documents = _seed(api)

    seen: list[int] = []
    page = api.get(EXCHANGES, params={"limit": 3}).json()
    sizes = []
    while True:
        sizes.append(len(page["items"]))
        seen += [d["seq"] for d in page["items"]]
        if page["next_cursor"] is None:
            break
        page = api.get(EXCHANGES, params={"limit": 3, "cursor": page["next_cursor"]}).json()
    assert seen == [d["seq"] for d in documents]
    assert sizes == [3, 3, 1]


def test_listing_pages_by_member_follow_the_cursor(api: Api, community: dict) -> None:
    _seed(api)

    first = api.get(EXCHANGES, params={"limit": 2, "member": "carol"}).json()
    assert [d["seq"] for d in first["items"]] == [2, 3]
    second = api.get(
        EXCHANGES, params={"limit": 2, "member": "carol", "cursor": first["next_cursor"]}
    ).json()
    assert [d["seq"] for d in second["items"]] == [4, 6]


def test_listing_refuses_a_cursor_it_did_not_give(api: Api, community: dict) -> None:
    _seed(api)
    problem(api.get(EXCHANGES, params={"cursor": "not-a-cursor"}), 422, "validation_error")
    for position in ({"after_seq": "3"}, {"after_seq": -1}, {"after_seq": 2, "x": 1}, {}):
        response = api.get(EXCHANGES, params={"cursor": forged_cursor(position)})
        problem(response, 422, "validation_error")
    for moment in ("9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+01:00"):
        problem(api.get(EXCHANGES, params={"until": moment}), 422, "validation_error")
    problem(api.get(EXCHANGES, params={"limit": 0}), 422, "validation_error")
    problem(api.get(EXCHANGES, params={"limit": 1001}), 422, "validation_error")
    problem(api.get(EXCHANGES, params={"since": "yesterday"}), 422, "validation_error")


def test_every_role_of_the_community_may_list_exchanges(api: Api, keys: dict[str, str]) -> None:
    posted(api, "alice", "bob", 2)
    for role in ("app", "auditor", "treasurer"):
        response = api.as_(keys[role]).get(EXCHANGES)
        assert response.status_code == 200, (role, response.text)
        assert len(response.json()["items"]) == 1

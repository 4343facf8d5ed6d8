"""Anyone can recompute the hash chain from what the API returns, as docs/design.md §1 describes:
hash = sha256_hex(prev_hash + canonical JSON), the first prev_hash 64 zeros. The
recomputation is written from the contract (tests/ledger_helpers.recompute_hash), not from
protocoop's own code."""

from __future__ import annotations

from typing import Any

from tests.support.api import Api, create_community, create_member
from tests.support.ledger import (
    BATCH,
    GENESIS,
    all_exchanges,
    exchange,
    posted,
    recompute_hash,
    reverse,
)


def verify(documents: list[dict[str, Any]]) -> None:
    """Walk the chain from seq 1: every link must hold."""
    prev_hash = GENESIS
    for expected_seq, document in enumerate(documents, start=1):
        assert document["seq"] == expected_seq
        assert document["prev_hash"] == prev_hash, f"seq {expected_seq}: broken link"
        assert recompute_hash(prev_hash, document) == document["hash"], f"seq {expected_seq}"
        prev_hash = document["hash"]


def test_chain_recomputed_from_the_api_matches_every_stored_hash(
    api: Api, keys: dict[str, str]
) -> None:
    first = posted(api, "alice", "bob", 5)
    posted(
        api,
        "bob",
        "carol",
        2,
        category="repairs",
        external_id="rep-1",
        occurred_at="2026-01-02T03:04:05+02:00",
        metadata={"not": "hashed"},
    )
    posted(api, "carol", "alice", 9, description='Brot & "Gemüse" für 🐝 — ½ Tag\\n')
    api.post(
        BATCH, json={"exchanges": [exchange("alice", "carol", 1), exchange("carol", "bob", 3)]}
    )
    reverse(api, first["id"], reason="entered twice")
    posted(api.as_(keys["treasurer"]), "@commons", "alice", 4)

    documents = all_exchanges(api)

    assert len(documents) == 7
    verify(documents)
    for document in documents:
        assert api.get(f"/v1/communities/riverside/exchanges/{document['id']}").json() == document


def test_posting_response_carries_a_verifiable_link(api: Api, community: dict) -> None:
    one = posted(api, "alice", "bob", 5)
    two = posted(api, "bob", "alice", 5)
    assert recompute_hash(GENESIS, one) == one["hash"]
    assert recompute_hash(one["hash"], two) == two["hash"]


def test_any_change_to_a_covered_field_changes_the_hash(api: Api, community: dict) -> None:
    document = posted(api, "alice", "bob", 5, category="food")
    changes: dict[str, Any] = {
        "amount": 6,
        "description": "other",
        "provider": "carol",
        "category": None,
        "external_id": "x",
        "created_at": "2026-01-01T00:00:00.000001Z",
        "seq": 2,
        "entries": [
            {"account": "alice", "amount": 5, "balance_after": 6},
            {"account": "bob", "amount": -5, "balance_after": -5},
        ],
    }
    for field, value in changes.items():
        assert recompute_hash(GENESIS, {**document, field: value}) != document["hash"], field
    # metadata and occurred_at are outside the chain
    assert recompute_hash(GENESIS, {**document, "metadata": {"a": 1}}) == document["hash"]


def test_each_community_has_its_own_chain(api: Api, community: dict) -> None:
    create_community(api, "hillside")
    create_member(api, "hillside", "dora")
    create_member(api, "hillside", "ed")
    posted(api, "alice", "bob", 1)
    elsewhere = api.post(
        "/v1/communities/hillside/exchanges", json=exchange("dora", "ed", 1)
    ).json()
    posted(api, "bob", "alice", 1)

    assert (elsewhere["seq"], elsewhere["prev_hash"]) == (1, GENESIS)
    assert recompute_hash(GENESIS, elsewhere) == elsewhere["hash"]
    verify(all_exchanges(api))

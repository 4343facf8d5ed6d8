"""Every refusal of a posting says why and leaves the ledger exactly as it was."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.support.api import Api, create_member
from tests.support.ledger import (
    EXCHANGES,
    C,
    exchange,
    ledger_state,
    post,
    posted,
    problem,
    set_member,
)


@pytest.fixture
def ledger(api: Api, community: dict) -> Api:
    """riverside with some history: alice +10, bob -7, carol -3."""
    posted(api, "alice", "bob", 7)
    posted(api, "alice", "carol", 3)
    return api


@contextmanager
def changes_nothing(api: Api) -> Iterator[None]:
    """Assert that the block leaves every balance and the number of exchanges as they were."""
    before = ledger_state(api)
    yield
    assert ledger_state(api) == before


def test_exchange_with_oneself_is_refused_and_changes_nothing(ledger: Api) -> None:
    with changes_nothing(ledger):
        body = problem(post(ledger, "alice", "alice", 1), 422, "same_member")
    assert "detail" in body
    assert "title" in body
    assert "type" in body


def test_exchange_with_unknown_member_is_not_found_and_changes_nothing(ledger: Api) -> None:
    with changes_nothing(ledger):
        for provider, receiver in (("zelda", "alice"), ("alice", "zelda")):
            body = problem(post(ledger, provider, receiver, 1), 404, "not_found")
            assert "zelda" in body["detail"]


def test_exchange_with_suspended_or_closed_member_is_refused_and_changes_nothing(
    ledger: Api,
) -> None:
    create_member(ledger, "riverside", "dan")
    create_member(ledger, "riverside", "eve")
    set_member(ledger, "dan", status="suspended")
    set_member(ledger, "eve", status="closed")

    with changes_nothing(ledger):
        for inactive in ("dan", "eve"):
            for provider, receiver in ((inactive, "alice"), ("alice", inactive)):
                body = problem(post(ledger, provider, receiver, 1), 409, "member_inactive")
                assert body["member"] == inactive


def test_suspended_member_may_trade_again_once_reactivated(ledger: Api) -> None:
    set_member(ledger, "bob", status="suspended")
    problem(post(ledger, "bob", "alice", 1), 409, "member_inactive")
    set_member(ledger, "bob", status="active")
    assert post(ledger, "bob", "alice", 1).status_code == 201


def test_exchange_beyond_lower_limit_is_refused_and_changes_nothing(ledger: Api) -> None:
    # bob is at -7 with a lower limit of -100: 93 more fits, 94 does not.
    with changes_nothing(ledger):
        body = problem(post(ledger, "carol", "bob", 94), 409, "limit_exceeded")
    assert body["member"] == "bob"
    assert body["limit"] == "lower"
    assert body["balance"] == -7
    assert body["attempted"] == 94

    reaching = posted(ledger, "carol", "bob", 93)
    assert {e["account"]: e["balance_after"] for e in reaching["entries"]}["bob"] == -100
    with changes_nothing(ledger):
        body = problem(post(ledger, "carol", "bob", 1), 409, "limit_exceeded")
    assert (body["member"], body["limit"], body["balance"], body["attempted"]) == (
        "bob",
        "lower",
        -100,
        1,
    )


def test_exchange_beyond_upper_limit_is_refused_and_changes_nothing(ledger: Api) -> None:
    set_member(ledger, "alice", upper_limit=15)  # alice is at +10

    with changes_nothing(ledger):
        body = problem(post(ledger, "alice", "bob", 6), 409, "limit_exceeded")
    assert (body["member"], body["limit"], body["balance"], body["attempted"]) == (
        "alice",
        "upper",
        10,
        6,
    )
    assert post(ledger, "alice", "bob", 5).status_code == 201


def test_member_created_with_an_upper_limit_cannot_earn_past_it(ledger: Api) -> None:
    create_member(ledger, "riverside", "erin", upper_limit=2)
    with changes_nothing(ledger):
        body = problem(post(ledger, "erin", "alice", 3), 409, "limit_exceeded")
    assert (body["member"], body["limit"], body["balance"]) == ("erin", "upper", 0)


def test_largest_amount_is_accepted_when_limits_allow(ledger: Api) -> None:
    create_member(ledger, "riverside", "whale", lower_limit=-(10**15))
    record = posted(ledger, "alice", "whale", 10**15)
    assert record["amount"] == 10**15
    assert {e["account"]: e["balance_after"] for e in record["entries"]} == {
        "whale": -(10**15),
        "alice": 10**15 + 10,
    }


def test_edges_of_description_and_metadata_are_accepted(ledger: Api) -> None:
    long_text = posted(ledger, "alice", "bob", 1, description="d" * 500)
    assert long_text["description"] == "d" * 500
    # {"b":"…"} is 8 bytes of JSON around the value: 4088 characters make exactly 4 KiB.
    full = posted(ledger, "alice", "bob", 1, metadata={"b": "x" * 4088})
    assert full["metadata"] == {"b": "x" * 4088}
    unicode = posted(ledger, "alice", "bob", 1, description="Gemüse 🥕 für alle")
    assert ledger.get(f"{EXCHANGES}/{unicode['id']}").json()["description"] == "Gemüse 🥕 für alle"


def nested(levels: int) -> dict[str, Any]:
    """A metadata object `levels` deep, itself the first level: {"a": {"a": ... {}}}."""
    document: dict[str, Any] = {}
    for _ in range(levels - 1):
        document = {"a": document}
    return document


def nested_lists(levels: int) -> dict[str, Any]:
    """A metadata object holding lists, `levels` deep in all: {"a": [[...[]]]}."""
    document: list[Any] = []
    for _ in range(levels - 2):
        document = [document]
    return {"a": document}


ODD_METADATA: dict[str, dict[str, Any]] = {
    "an integer of 2^63": {"n": 2**63},
    "an integer below -2^63": {"n": -(2**63) - 1},
    "an integer of 2^64 in a list": {"n": [1, 2**64]},
    "an integer of 30 digits": {"n": 10**30},
    "nested 33 levels": nested(33),
    "nested 253 levels": nested(253),
    "lists nested 33 levels": nested_lists(33),
    "lists nested 300 levels": nested_lists(300),
}
"""Metadata that neither the response encoder nor every JSON reader could take back."""


def test_metadata_the_api_could_not_give_back_is_refused_everywhere(
    ledger: Api, subtests: Any
) -> None:
    """Posts, batches and proposals alike, with an Idempotency-Key or without: 422 naming
    `metadata`, and nothing recorded."""
    with changes_nothing(ledger):
        for case, metadata in ODD_METADATA.items():
            item = exchange("alice", "bob", 1, metadata=metadata)
            for kind, path, body in (
                ("post", EXCHANGES, item),
                ("batch", f"{EXCHANGES}:batch", {"exchanges": [item]}),
                ("proposal", EXCHANGES, {**item, "pending": True}),
            ):
                for keyed in (False, True):
                    headers = {"Idempotency-Key": str(uuid.uuid4())} if keyed else {}
                    with subtests.test(case=case, kind=kind, keyed=keyed):
                        refused = problem(
                            ledger.post(path, json=body, headers=headers), 422, "validation_error"
                        )
                        assert any("metadata" in error["loc"] for error in refused["errors"])


def test_metadata_at_its_bounds_is_kept_exactly(ledger: Api) -> None:
    # 32 levels in all, the metadata object counting as the first.
    metadata = {"most": 2**63 - 1, "least": -(2**63), "deep": nested(31), "lists": nested_lists(31)}
    record = posted(ledger, "alice", "bob", 1, metadata=metadata)
    assert record["metadata"] == metadata
    assert ledger.get(f"{EXCHANGES}/{record['id']}").json()["metadata"] == metadata


INVALID_BODIES: dict[str, dict[str, Any]] = {
    "amount zero": exchange("alice", "bob", 0),
    "amount negative": exchange("alice", "bob", -5),
    "amount above 10^15": exchange("alice", "bob", 10**15 + 1),
    "amount as string": exchange("alice", "bob", "7"),  # type: ignore[arg-type]
    "amount as float": exchange("alice", "bob", 7.0),  # type: ignore[arg-type]
    "amount fractional": exchange("alice", "bob", 1.5),  # type: ignore[arg-type]
    "amount as boolean": exchange("alice", "bob", True),
    "amount null": exchange("alice", "bob", None),  # type: ignore[arg-type]
    "amount missing": {"provider": "alice", "receiver": "bob", "description": "x"},
    "description empty": exchange("alice", "bob", 1, description=""),
    "description 501 chars": exchange("alice", "bob", 1, description="d" * 501),
    "description not a string": exchange("alice", "bob", 1, description=5),
    "description missing": {"provider": "alice", "receiver": "bob", "amount": 1},
    "metadata over 4 KiB": exchange("alice", "bob", 1, metadata={"b": "x" * 4089}),
    "metadata a list": exchange("alice", "bob", 1, metadata=[1, 2]),
    "metadata a string": exchange("alice", "bob", 1, metadata="{}"),
    "metadata a number": exchange("alice", "bob", 1, metadata=5),
    "unknown field": exchange("alice", "bob", 1, colour="blue"),
    "occurred_at not a time": exchange("alice", "bob", 1, occurred_at="yesterday"),
    "occurred_at without offset": exchange("alice", "bob", 1, occurred_at="2026-11-26T10:00:00"),
    "occurred_at a date": exchange("alice", "bob", 1, occurred_at="2026-11-26"),
    "occurred_at a number": exchange("alice", "bob", 1, occurred_at=1790000000),
    "occurred_at past year 9999 in UTC": exchange(
        "alice", "bob", 1, occurred_at="9999-12-31T23:59:59-05:00"
    ),
    "occurred_at before year 1 in UTC": exchange(
        "alice", "bob", 1, occurred_at="0001-01-01T00:00:00+01:00"
    ),
    "provider not an id": exchange("Alice Smith", "bob", 1),
    "receiver not a string": exchange("alice", 7, 1),  # type: ignore[arg-type]
    "external_id empty": exchange("alice", "bob", 1, external_id=""),
    "description with NUL": exchange("alice", "bob", 1, description="a\x00b"),
}

INVALID_RAW_BODIES: dict[str, bytes] = {
    "metadata with NaN": b'{"provider":"alice","receiver":"bob","amount":1,"description":"x",'
    b'"metadata":{"x":NaN}}',
    "metadata with Infinity": b'{"provider":"alice","receiver":"bob","amount":1,'
    b'"description":"x","metadata":{"x":[Infinity]}}',
    "description with a lone surrogate": b'{"provider":"alice","receiver":"bob","amount":1,'
    b'"description":"\\ud800"}',
    "amount NaN": b'{"provider":"alice","receiver":"bob","amount":NaN,"description":"x"}',
    "not JSON": b'{"provider":"alice",',
    "a JSON list": b"[]",
    "empty body": b"",
}


def test_invalid_exchanges_are_refused_with_validation_error_and_change_nothing(
    ledger: Api, subtests: Any
) -> None:
    with changes_nothing(ledger):
        for case, body in INVALID_BODIES.items():
            with subtests.test(case=case):
                refused = problem(ledger.post(EXCHANGES, json=body), 422, "validation_error")
                assert refused["errors"]
                assert all("loc" in e and "msg" in e for e in refused["errors"])
        for case, raw in INVALID_RAW_BODIES.items():
            with subtests.test(case=case):
                response = ledger.post(
                    EXCHANGES, content=raw, headers={"Content-Type": "application/json"}
                )
                problem(response, 422, "validation_error")


def test_duplicate_external_id_is_refused_naming_the_first_exchange(ledger: Api) -> None:
    first = posted(ledger, "alice", "bob", 2, external_id="order-1")

    with changes_nothing(ledger):
        body = problem(
            post(ledger, "carol", "alice", 5, external_id="order-1"), 409, "duplicate_external_id"
        )
    assert body["exchange_id"] == first["id"]


def test_external_id_is_unique_per_community_only(api: Api, keys: dict[str, str]) -> None:
    from tests.support.api import create_community

    create_community(api, "hillside")
    create_member(api, "hillside", "dora")
    create_member(api, "hillside", "ed")
    posted(api, "alice", "bob", 1, external_id="shared-id")
    elsewhere = api.post(
        "/v1/communities/hillside/exchanges",
        json=exchange("dora", "ed", 1, external_id="shared-id"),
    )
    assert elsewhere.status_code == 201, elsewhere.text


def test_app_key_may_not_move_the_commons_fund(ledger: Api, keys: dict[str, str]) -> None:
    app = ledger.as_(keys["app"])
    with changes_nothing(ledger):
        problem(post(app, "@commons", "alice", 1), 403, "forbidden")
        problem(post(app, "alice", "@commons", 1), 403, "forbidden")


def test_treasurer_may_pay_into_the_commons_fund(ledger: Api, keys: dict[str, str]) -> None:
    record = posted(ledger.as_(keys["treasurer"]), "@commons", "alice", 4, description="levy")
    assert {e["account"]: e["amount"] for e in record["entries"]} == {"@commons": 4, "alice": -4}


def test_auditor_may_not_post_exchanges(ledger: Api, keys: dict[str, str]) -> None:
    with changes_nothing(ledger):
        problem(post(ledger.as_(keys["auditor"]), "alice", "bob", 1), 403, "forbidden")


def test_posting_without_a_key_is_unauthorized(ledger: Api) -> None:
    with changes_nothing(ledger):
        problem(post(ledger.as_(None), "alice", "bob", 1), 401, "unauthorized")


def test_suspended_community_records_no_exchanges(ledger: Api) -> None:
    suspended = ledger.patch(C, json={"status": "suspended"})
    assert suspended.status_code == 200, suspended.text

    with changes_nothing(ledger):
        problem(post(ledger, "alice", "bob", 1), 409, "invalid_state")
        problem(
            ledger.post(f"{EXCHANGES}:batch", json={"exchanges": [exchange("alice", "bob", 1)]}),
            409,
            "invalid_state",
        )

    assert ledger.patch(C, json={"status": "active"}).status_code == 200
    assert post(ledger, "alice", "bob", 1).status_code == 201

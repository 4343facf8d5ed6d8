"""Retrying a POST with the same Idempotency-Key records it once and answers as the first time."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from protocoop.auth.roles import Role
from protocoop.db import Database
from protocoop.errors import RequestInProgress
from protocoop.idempotency import IdempotencyKey, InFlight
from tests.support.api import Api, make_key
from tests.support.ledger import (
    BATCH,
    EXCHANGES,
    all_exchanges,
    exchange,
    ledger_state,
    posted,
    problem,
    reverse,
    set_member,
)
from tests.support.workflows import get_exchange, make_overdue, proposed, reserved, settle


def with_key(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


def idempotency_rows(db: Database) -> list[Any]:
    with db.engine.connect() as connection:
        return list(
            connection.execute(
                text("SELECT community_id, key, status_code FROM idempotency_records ORDER BY key")
            )
        )


def test_retry_with_same_key_and_body_returns_the_first_response_and_records_once(
    api: Api, keys: dict[str, str]
) -> None:
    app = api.as_(keys["app"])
    body = exchange("alice", "bob", 5, external_id="ord-1")

    first = app.post(EXCHANGES, json=body, headers=with_key("k-1"))
    retry = app.post(EXCHANGES, json=body, headers=with_key("k-1"))

    assert first.status_code == retry.status_code == 201
    assert retry.content == first.content
    assert retry.headers["content-type"] == first.headers["content-type"]
    assert len(all_exchanges(api)) == 1
    assert ledger_state(api)[0]["bob"] == -5


def test_retry_after_later_changes_still_returns_the_first_response(
    api: Api, community: dict
) -> None:
    body = exchange("alice", "bob", 5)
    first = api.post(EXCHANGES, json=body, headers=with_key("k-1"))
    reverse(api, first.json()["id"])
    posted(api, "carol", "bob", 1)

    retry = api.post(EXCHANGES, json=body, headers=with_key("k-1"))

    assert (retry.status_code, retry.content) == (201, first.content)
    assert len(all_exchanges(api)) == 3


def test_same_key_with_a_different_body_is_refused_and_records_nothing(
    api: Api, community: dict
) -> None:
    api.post(EXCHANGES, json=exchange("alice", "bob", 5), headers=with_key("k-1"))
    before = ledger_state(api)

    for other in (exchange("alice", "bob", 6), exchange("bob", "alice", 5)):
        response = api.post(EXCHANGES, json=other, headers=with_key("k-1"))
        problem(response, 422, "idempotency_key_reused")
    response = api.post(
        BATCH, json={"exchanges": [exchange("alice", "bob", 5)]}, headers=with_key("k-1")
    )
    problem(response, 422, "idempotency_key_reused")
    assert ledger_state(api) == before


def test_refusal_is_replayed_even_after_the_limit_is_raised(api: Api, community: dict) -> None:
    body = exchange("alice", "bob", 150)  # bob's lower limit is -100
    first = api.post(EXCHANGES, json=body, headers=with_key("k-1"))
    problem(first, 409, "limit_exceeded")

    set_member(api, "bob", lower_limit=-500)
    retry = api.post(EXCHANGES, json=body, headers=with_key("k-1"))

    assert (retry.status_code, retry.content) == (409, first.content)
    assert all_exchanges(api) == []
    fresh = api.post(EXCHANGES, json=body, headers=with_key("k-2"))
    assert fresh.status_code == 201, fresh.text


def test_keys_are_scoped_to_the_api_key(api: Api, db: Database, keys: dict[str, str]) -> None:
    first_app = api.as_(keys["app"])
    second_app = api.as_(make_key(db, Role.APP, "riverside"))

    one = first_app.post(EXCHANGES, json=exchange("alice", "bob", 1), headers=with_key("shared"))
    two = second_app.post(EXCHANGES, json=exchange("bob", "carol", 2), headers=with_key("shared"))

    assert one.status_code == two.status_code == 201
    assert one.json()["id"] != two.json()["id"]
    assert len(all_exchanges(api)) == 2


def test_batch_retry_records_the_batch_once(api: Api, community: dict) -> None:
    body = {"exchanges": [exchange("alice", "bob", 1), exchange("bob", "carol", 2)]}

    first = api.post(BATCH, json=body, headers=with_key("batch-1"))
    retry = api.post(BATCH, json=body, headers=with_key("batch-1"))

    assert first.status_code == retry.status_code == 201
    assert retry.content == first.content
    assert len(all_exchanges(api)) == 2


def test_reversal_retry_returns_the_reversal_not_a_refusal(api: Api, community: dict) -> None:
    original = posted(api, "alice", "bob", 4)

    first = reverse(api, original["id"], headers=with_key("undo-1"))
    retry = reverse(api, original["id"], headers=with_key("undo-1"))

    assert first.status_code == retry.status_code == 201
    assert retry.content == first.content
    assert len(all_exchanges(api)) == 2


def test_reversal_retry_records_one_reversal_in_the_audit_log(api: Api, community: dict) -> None:
    original = posted(api, "alice", "bob", 4)

    first = reverse(api, original["id"], headers=with_key("undo-audit"))
    retry = reverse(api, original["id"], headers=with_key("undo-audit"))

    assert retry.headers.get("Idempotent-Replayed") == "true"
    assert retry.content == first.content
    log = api.get("/v1/communities/riverside/audit-log", params={"limit": 100}).json()["items"]
    reversals = [e for e in log if e["action"] == "exchange.reversed"]
    assert [(e["target"], e["after"]["reversed_by"]) for e in reversals] == [
        (original["id"], first.json()["id"])
    ]


def test_settlement_key_reused_for_another_action_is_refused_and_settles_nothing(
    api: Api, community: dict
) -> None:
    proposal = proposed(api, "alice", "bob", 5)
    first = settle(api, proposal["id"], "reject", headers=with_key("settle-1"))

    reused = settle(api, proposal["id"], "accept", headers=with_key("settle-1"))
    other = proposed(api, "carol", "bob", 2)
    elsewhere = settle(api, other["id"], "reject", headers=with_key("settle-1"))

    assert first.status_code == 200, first.text
    problem(reused, 422, "idempotency_key_reused")
    problem(elsewhere, 422, "idempotency_key_reused")
    assert get_exchange(api, proposal["id"])["status"] == "rejected"
    assert get_exchange(api, other["id"])["status"] == "pending"
    assert all_exchanges(api) == []


def test_settling_an_expired_proposal_with_a_key_keeps_the_expiry_and_replays_the_409(
    api: Api, db: Database, community: dict
) -> None:
    proposal = proposed(api, "alice", "bob", 5)
    make_overdue(db, proposal["id"])

    first = settle(api, proposal["id"], "accept", headers=with_key("late-accept"))
    again = settle(api, proposal["id"], "accept", headers=with_key("late-accept"))

    assert problem(first, 409, "invalid_state")["current_status"] == "expired"
    assert (again.status_code, again.content) == (409, first.content)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert get_exchange(api, proposal["id"])["status"] == "expired"
    assert reserved(api, "bob") == (0, 0)
    assert all_exchanges(api) == []
    assert [(r.key, r.status_code) for r in idempotency_rows(db)] == [("late-accept", 409)]


def test_refused_settlement_of_a_system_account_is_remembered_with_its_key(
    api: Api, keys: dict[str, str]
) -> None:
    app, treasurer = api.as_(keys["app"]), api.as_(keys["treasurer"])
    posted(treasurer, "@commons", "carol", 10)
    from_commons = proposed(treasurer, "@commons", "alice", 5)

    first = settle(app, from_commons["id"], "accept", headers=with_key("commons-1"))
    again = settle(app, from_commons["id"], "accept", headers=with_key("commons-1"))

    problem(first, 403, "forbidden")
    assert (again.status_code, again.content) == (403, first.content)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert get_exchange(api, from_commons["id"])["status"] == "pending"


def test_unusable_idempotency_key_is_refused(api: Api, community: dict) -> None:
    before = ledger_state(api)
    for key in ("k" * 256, "naïve".encode()):
        response = api.post(
            EXCHANGES, json=exchange("alice", "bob", 1), headers={"Idempotency-Key": key}
        )
        problem(response, 422, "validation_error")
    assert ledger_state(api) == before


def test_idempotency_record_is_written_with_the_exchange(
    api: Api, db: Database, community: dict
) -> None:
    response = api.post(EXCHANGES, json=exchange("alice", "bob", 1), headers=with_key("k-ok"))
    assert response.status_code == 201

    assert [(r.community_id, r.key, r.status_code) for r in idempotency_rows(db)] == [
        ("riverside", "k-ok", 201)
    ]


def test_refusal_is_remembered_but_an_invalid_request_is_not(
    api: Api, db: Database, community: dict
) -> None:
    refused = api.post(EXCHANGES, json=exchange("alice", "bob", 500), headers=with_key("k-409"))
    problem(refused, 409, "limit_exceeded")
    invalid = api.post(EXCHANGES, json=exchange("alice", "bob", 0), headers=with_key("k-422"))
    problem(invalid, 422, "validation_error")

    assert [(r.key, r.status_code) for r in idempotency_rows(db)] == [("k-409", 409)]
    # The invalid request was not remembered: the key is still free for a valid request.
    fixed = api.post(EXCHANGES, json=exchange("alice", "bob", 1), headers=with_key("k-422"))
    assert fixed.status_code == 201, fixed.text


def test_second_claim_of_a_running_key_is_request_in_progress() -> None:
    in_flight = InFlight()
    key = IdempotencyKey(api_key_id="key_0123456789abcdef", key="k-1", fingerprint="f")
    other_api_key = IdempotencyKey(api_key_id="key_fedcba9876543210", key="k-1", fingerprint="f")

    with in_flight.claim("riverside", key):
        with pytest.raises(RequestInProgress) as refused, in_flight.claim("riverside", key):
            pass  # pragma: no cover
        assert refused.value.status == 409
        assert refused.value.code == "request_in_progress"
        with in_flight.claim("riverside", other_api_key), in_flight.claim("hillside", key):
            pass
    with in_flight.claim("riverside", key):  # released once the first request ends
        pass

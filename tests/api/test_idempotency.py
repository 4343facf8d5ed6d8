"""Idempotency-Key on the foundation's POSTs (communities, members, api keys): a retry gets the
first answer, byte for byte, and writes nothing again."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from protocoop.auth.roles import Role
from protocoop.db import Database
from protocoop.db.models import ApiKey, Community
from tests.support.api import Api, create_community, make_key
from tests.support.checks import member_state, members, problem

MEMBERS = "/v1/communities/riverside/members"
REPLAYED = "idempotent-replayed"
UNIT = {"code": "HOUR", "name": "hour", "scale": 0}


def _key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


def test_retried_member_creation_returns_the_first_answer_and_creates_one_member(
    api: Api, community: dict[str, Any]
) -> None:
    body = {"id": "dave", "name": "Dave", "lower_limit": -10}

    first = api.post(MEMBERS, json=body, headers=_key("join-dave"))
    retry = api.post(MEMBERS, json=body, headers=_key("join-dave"))
    # the same request, differently formatted, is still the same request
    reformatted = api.post(
        MEMBERS,
        content=b'{ "lower_limit" : -10,\n  "name": "Dave", "id": "dave" }',
        headers={**_key("join-dave"), "Content-Type": "application/json"},
    )

    assert first.status_code == 201, first.text
    assert REPLAYED not in first.headers
    for again in (retry, reformatted):
        assert again.status_code == 201
        assert again.content == first.content
        assert again.headers["content-type"] == first.headers["content-type"]
        assert again.headers[REPLAYED] == "true"
    assert [m["id"] for m in members(api, "riverside")] == ["alice", "bob", "carol", "dave"]


def test_retried_community_creation_returns_the_first_answer_and_creates_one(
    api: Api, db: Database
) -> None:
    body = {"id": "riverside", "name": "Riverside", "unit": UNIT, "default_lower_limit": -5}

    first = api.post("/v1/communities", json=body, headers=_key("c-1"))
    retry = api.post("/v1/communities", json=body, headers=_key("c-1"))

    assert first.status_code == retry.status_code == 201
    assert retry.content == first.content
    assert retry.headers[REPLAYED] == "true"
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Community)) == 1
    # without the key, the same body is a second attempt, refused as a duplicate
    problem(api.post("/v1/communities", json=body), 409, "already_exists")


def test_same_key_with_another_body_is_refused_and_writes_nothing(
    api: Api, community: dict[str, Any]
) -> None:
    api.post(MEMBERS, json={"id": "dave", "name": "Dave"}, headers=_key("k1"))
    before = member_state(api, "riverside")

    for body in (
        {"id": "erin", "name": "Erin"},
        {"id": "dave", "name": "Dave", "kind": "organization"},
        {"id": "dave", "name": "David"},
    ):
        problem(api.post(MEMBERS, json=body, headers=_key("k1")), 422, "idempotency_key_reused")
    # the same key on another route is another request too
    response = api.post(
        "/v1/communities",
        json={"id": "dave", "name": "D", "unit": UNIT, "default_lower_limit": 0},
        headers=_key("k1"),
    )
    assert response.status_code in (201, 422)  # keys may be scoped per community; never a replay
    assert REPLAYED not in response.headers
    assert member_state(api, "riverside") == before


def test_a_refusal_is_replayed_as_the_same_refusal(api: Api, community: dict[str, Any]) -> None:
    first = api.post(MEMBERS, json={"id": "alice", "name": "Alice 2"}, headers=_key("dup"))
    problem(first, 409, "already_exists")

    retry = api.post(MEMBERS, json={"id": "alice", "name": "Alice 2"}, headers=_key("dup"))

    assert retry.status_code == 409
    assert retry.content == first.content
    assert retry.headers["content-type"].startswith("application/problem+json")
    assert retry.headers[REPLAYED] == "true"
    assert api.get(f"{MEMBERS}/alice").json()["name"] == "Alice"


def test_a_request_refused_as_invalid_does_not_use_up_its_key(
    api: Api, community: dict[str, Any]
) -> None:
    invalid = api.post(MEMBERS, json={"id": "dave", "name": ""}, headers=_key("fix-me"))
    problem(invalid, 422, "validation_error")

    fixed = api.post(MEMBERS, json={"id": "dave", "name": "Dave"}, headers=_key("fix-me"))

    assert fixed.status_code == 201, fixed.text
    assert REPLAYED not in fixed.headers


def test_keys_are_scoped_to_the_api_key_that_sent_them(
    api: Api, db: Database, community: dict[str, Any]
) -> None:
    other_admin = api.as_(make_key(db, Role.ADMIN))
    treasurer = api.as_(make_key(db, Role.TREASURER, "riverside"))

    by_admin = api.post(MEMBERS, json={"id": "dave", "name": "Dave"}, headers=_key("shared"))
    by_other = other_admin.post(MEMBERS, json={"id": "erin", "name": "E"}, headers=_key("shared"))
    by_treasurer = treasurer.post(
        MEMBERS, json={"id": "dave", "name": "Dave"}, headers=_key("shared")
    )

    assert by_admin.status_code == 201, by_admin.text
    assert by_other.status_code == 201, by_other.text
    assert REPLAYED not in by_other.headers
    # the treasurer's identical request is its own first request: dave now exists
    problem(by_treasurer, 409, "already_exists")
    assert REPLAYED not in by_treasurer.headers
    assert {"dave", "erin"} <= {m["id"] for m in members(api, "riverside")}


def test_replayed_key_creation_does_not_show_the_token_again(api: Api, db: Database) -> None:
    create_community(api, "riverside")
    body = {"role": "app", "community": "riverside", "label": "shop"}

    first = api.post("/v1/api-keys", json=body, headers=_key("new-app-key"))
    retry = api.post("/v1/api-keys", json=body, headers=_key("new-app-key"))

    assert first.status_code == retry.status_code == 201
    created, replayed = first.json(), retry.json()
    assert "token" in created
    assert "token" not in replayed
    assert created["token"] not in retry.text
    assert replayed == {k: v for k, v in created.items() if k != "token"}
    assert retry.headers[REPLAYED] == "true"
    with db.read() as session:
        app_keys = session.scalar(
            select(func.count()).select_from(ApiKey).where(ApiKey.role == "app")
        )
    assert app_keys == 1
    assert api.as_(created["token"]).get("/v1/communities/riverside").status_code == 200

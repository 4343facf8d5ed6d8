"""Members: joining with default or explicit limits, listing, status rules and limit rules."""

from __future__ import annotations

from typing import Any

from protocoop.auth.roles import Role
from protocoop.db import Database
from tests.support.api import Api, create_community, create_member, make_key
from tests.support.checks import (
    RFC3339_UTC,
    cursor_of,
    give,
    member_state,
    members,
    problem,
    validation_problem,
    walk_pages,
)

C = "/v1/communities/riverside"
MEMBERS = f"{C}/members"
SHAPE = ("id", "name", "kind", "status", "balance", "lower_limit", "upper_limit", "created_at")
"""The fields of a member document clients may rely on (more may be added)."""


def test_new_member_has_balance_zero_and_the_community_default_limits(api: Api) -> None:
    create_community(api, "riverside", default_lower_limit=-100, default_upper_limit=500)

    response = api.post(MEMBERS, json={"id": "alice", "name": "Alice Martin"})

    assert response.status_code == 201, response.text
    body = response.json()
    assert RFC3339_UTC.match(body["created_at"]), body
    assert {field: body[field] for field in SHAPE if field != "created_at"} == {
        "id": "alice",
        "name": "Alice Martin",
        "kind": "person",
        "status": "active",
        "balance": 0,
        "lower_limit": -100,
        "upper_limit": 500,
    }
    assert api.get(f"{MEMBERS}/alice").json() == body


def test_explicit_limits_replace_the_defaults_and_explicit_null_means_no_cap(api: Api) -> None:
    create_community(api, "riverside", default_lower_limit=-100, default_upper_limit=500)

    explicit = create_member(
        api, "riverside", "bakery-coop", kind="organization", lower_limit=-2000, upper_limit=9000
    )
    uncapped = create_member(api, "riverside", "bob", upper_limit=None)
    absent = create_member(api, "riverside", "carol")
    zero = create_member(api, "riverside", "dan", lower_limit=0, upper_limit=0)

    assert (explicit["kind"], explicit["lower_limit"], explicit["upper_limit"]) == (
        "organization",
        -2000,
        9000,
    )
    assert (uncapped["lower_limit"], uncapped["upper_limit"]) == (-100, None)
    assert (absent["lower_limit"], absent["upper_limit"]) == (-100, 500)
    assert (zero["lower_limit"], zero["upper_limit"]) == (0, 0)
    stored = {m["id"]: (m["lower_limit"], m["upper_limit"]) for m in members(api, "riverside")}
    assert stored == {
        "bakery-coop": (-2000, 9000),
        "bob": (-100, None),
        "carol": (-100, 500),
        "dan": (0, 0),
    }


def test_uncapped_member_can_earn_past_the_community_default_cap(api: Api) -> None:
    """`upper_limit: null` really is no cap: the database lets the balance past 500."""
    create_community(api, "riverside", default_lower_limit=-1000, default_upper_limit=500)
    create_member(api, "riverside", "alice", upper_limit=None)
    create_member(api, "riverside", "bob")

    give(api, "riverside", "alice", "bob", 800)

    assert api.get(f"{MEMBERS}/alice").json()["balance"] == 800


def test_duplicate_member_id_is_refused_and_the_first_is_kept(api: Api) -> None:
    create_community(api, "riverside")
    create_member(api, "riverside", "alice", name="Alice Martin")

    problem(api.post(MEMBERS, json={"id": "alice", "name": "Another Alice"}), 409, "already_exists")

    assert member_state(api, "riverside") == [
        ("alice", "Alice Martin", "person", "active", 0, -100, None)
    ]


def test_same_member_id_may_exist_in_two_communities(api: Api) -> None:
    create_community(api, "riverside")
    create_community(api, "hillside")
    create_member(api, "riverside", "alice", name="River Alice")
    create_member(api, "hillside", "alice", name="Hill Alice")

    assert api.get(f"{MEMBERS}/alice").json()["name"] == "River Alice"
    assert api.get("/v1/communities/hillside/members/alice").json()["name"] == "Hill Alice"


def test_invalid_members_are_refused_and_nothing_is_created(api: Api) -> None:
    create_community(api, "riverside")
    for body in (
        {"id": "Alice", "name": "A"},
        {"id": "@commons", "name": "A"},
        {"id": "-alice", "name": "A"},
        {"id": "a" * 64, "name": "A"},
        {"id": "alice"},
        {"name": "Alice"},
        {"id": "alice", "name": ""},
        {"id": "alice", "name": "x" * 201},
        {"id": "alice", "name": "A", "kind": "robot"},
        {"id": "alice", "name": "A", "lower_limit": 1},
        {"id": "alice", "name": "A", "upper_limit": -1},
        {"id": "alice", "name": "A", "lower_limit": -(10**15) - 1},
        {"id": "alice", "name": "A", "upper_limit": 10**15 + 1},
        {"id": "alice", "name": "A", "status": "closed"},
        {"id": "alice", "name": "A", "balance": 100},
    ):
        validation_problem(api.post(MEMBERS, json=body))
    assert members(api, "riverside") == []


def test_member_of_unknown_community_or_unknown_member_is_not_found(api: Api) -> None:
    create_community(api, "riverside")
    problem(
        api.post("/v1/communities/nowhere/members", json={"id": "a", "name": "A"}), 404, "not_found"
    )
    problem(api.get("/v1/communities/nowhere/members"), 404, "not_found")
    problem(api.get(f"{MEMBERS}/ghost"), 404, "not_found")
    problem(api.patch(f"{MEMBERS}/ghost", json={"name": "Boo"}), 404, "not_found")


def test_members_are_listed_page_by_page_and_filtered_by_status(api: Api) -> None:
    create_community(api, "riverside")
    ids = ["alice", "bob", "carol", "dan", "erin"]
    for member_id in reversed(ids):
        create_member(api, "riverside", member_id)
    api.patch(f"{MEMBERS}/bob", json={"status": "suspended"})
    api.patch(f"{MEMBERS}/erin", json={"status": "suspended"})
    api.patch(f"{MEMBERS}/dan", json={"status": "closed"})

    assert walk_pages(api, MEMBERS, limit=2) == [["alice", "bob"], ["carol", "dan"], ["erin"]]
    assert walk_pages(api, MEMBERS, limit=1, status="suspended") == [["bob"], ["erin"]]
    assert [m["id"] for m in members(api, "riverside", status="active")] == ["alice", "carol"]
    assert [m["id"] for m in members(api, "riverside", status="closed")] == ["dan"]
    page = api.get(MEMBERS, params={"limit": 5}).json()
    assert [m["id"] for m in page["items"]] == ids
    assert page["next_cursor"] is None
    assert all(set(SHAPE) <= set(m) for m in page["items"])


def test_member_list_refuses_bad_filters_and_damaged_cursors(api: Api) -> None:
    create_community(api, "riverside")
    create_member(api, "riverside", "alice")
    validation_problem(api.get(MEMBERS, params={"status": "sleeping"}))
    validation_problem(api.get(MEMBERS, params={"limit": 0}))
    for cursor in ("%%%", cursor_of({"after": 7}), cursor_of({"after": ["alice"]}), "e30"):
        validation_problem(api.get(MEMBERS, params={"cursor": cursor}))


def test_system_accounts_are_not_members(api: Api) -> None:
    create_community(api, "riverside")
    assert members(api, "riverside") == []
    problem(api.get(f"{MEMBERS}/@commons"), 404, "not_found")
    problem(api.patch(f"{MEMBERS}/@commons", json={"status": "closed"}), 404, "not_found")


def test_treasurer_changes_name_status_and_limits(api: Api, db: Database) -> None:
    create_community(api, "riverside")
    create_member(api, "riverside", "alice")
    treasurer = api.as_(make_key(db, Role.TREASURER, "riverside"))

    response = treasurer.patch(
        f"{MEMBERS}/alice",
        json={"name": "Alice M.", "status": "suspended", "lower_limit": -40, "upper_limit": 60},
    )

    assert response.status_code == 200, response.text
    changed = {field: response.json()[field] for field in SHAPE if field != "created_at"}
    assert changed == {
        "id": "alice",
        "name": "Alice M.",
        "kind": "person",
        "status": "suspended",
        "balance": 0,
        "lower_limit": -40,
        "upper_limit": 60,
    }
    assert api.get(f"{MEMBERS}/alice").json() == response.json()


def test_suspended_member_may_be_made_active_again(api: Api) -> None:
    create_community(api, "riverside")
    create_member(api, "riverside", "alice")
    create_member(api, "riverside", "bob")
    api.patch(f"{MEMBERS}/alice", json={"status": "suspended"})

    response = api.patch(f"{MEMBERS}/alice", json={"status": "active"})

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "active"
    give(api, "riverside", "alice", "bob", 5)  # and takes part in exchanges again


def test_absent_fields_stay_and_upper_limit_null_removes_the_cap(api: Api) -> None:
    create_community(api, "riverside", default_upper_limit=50)
    create_member(api, "riverside", "alice", name="Alice", lower_limit=-30)

    response = api.patch(f"{MEMBERS}/alice", json={"upper_limit": None})

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["name"], body["status"], body["lower_limit"], body["upper_limit"]) == (
        "Alice",
        "active",
        -30,
        None,
    )
    unchanged = api.patch(f"{MEMBERS}/alice", json={})
    assert unchanged.status_code == 200
    assert unchanged.json() == api.get(f"{MEMBERS}/alice").json()


def test_invalid_member_changes_are_refused_and_change_nothing(api: Api) -> None:
    create_community(api, "riverside")
    create_member(api, "riverside", "alice")
    before = member_state(api, "riverside")
    for changes in (
        {"name": None},
        {"name": ""},
        {"status": None},
        {"status": "deleted"},
        {"lower_limit": None},
        {"lower_limit": 10},
        {"upper_limit": -10},
        {"lower_limit": "-10"},
        {"upper_limit": 10.0},
        {"balance": 5},
        {"id": "alicia"},
        {"kind": "organization"},
    ):
        validation_problem(api.patch(f"{MEMBERS}/alice", json=changes))
    assert member_state(api, "riverside") == before


def test_member_with_a_balance_cannot_be_closed(api: Api) -> None:
    create_community(api, "riverside")
    create_member(api, "riverside", "alice")
    create_member(api, "riverside", "bob")
    give(api, "riverside", "alice", "bob", 5)
    before = member_state(api, "riverside")

    for member_id, balance in (("alice", 5), ("bob", -5)):
        body = problem(
            api.patch(f"{MEMBERS}/{member_id}", json={"status": "closed"}), 409, "balance_not_zero"
        )
        assert body["balance"] == balance
        # a refused close changes nothing else sent with it either
        problem(
            api.patch(f"{MEMBERS}/{member_id}", json={"status": "closed", "name": "Gone"}),
            409,
            "balance_not_zero",
        )
    assert member_state(api, "riverside") == before


def test_member_back_at_zero_can_be_closed_and_closed_is_final(api: Api) -> None:
    create_community(api, "riverside")
    create_member(api, "riverside", "alice")
    create_member(api, "riverside", "bob")
    give(api, "riverside", "alice", "bob", 5)
    give(api, "riverside", "bob", "alice", 5)

    closed = api.patch(f"{MEMBERS}/alice", json={"status": "closed"})
    assert closed.status_code == 200, closed.text
    assert closed.json()["status"] == "closed"

    before = member_state(api, "riverside")
    for changes in (
        {"status": "active"},
        {"status": "suspended"},
        {"status": "closed"},
        {"name": "Alice again"},
        {"lower_limit": -1},
    ):
        problem(api.patch(f"{MEMBERS}/alice", json=changes), 409, "invalid_state")
    assert member_state(api, "riverside") == before


def test_limit_that_would_leave_the_balance_outside_is_refused_and_changes_nothing(
    api: Api,
) -> None:
    create_community(api, "riverside", default_lower_limit=-100, default_upper_limit=100)
    create_member(api, "riverside", "alice")
    create_member(api, "riverside", "bob")
    give(api, "riverside", "alice", "bob", 40)  # alice +40, bob -40
    before = member_state(api, "riverside")

    refused: list[tuple[str, dict[str, Any]]] = [
        ("bob", {"lower_limit": -39}),
        ("bob", {"lower_limit": 0}),
        ("bob", {"lower_limit": -39, "name": "Bobby"}),
        ("alice", {"upper_limit": 39}),
        ("alice", {"upper_limit": 0, "lower_limit": -500}),
        ("alice", {"upper_limit": 39, "status": "suspended"}),
    ]
    for member_id, changes in refused:
        response = api.patch(f"{MEMBERS}/{member_id}", json=changes)
        body = problem(response, 409, "limit_below_balance")
        assert body["balance"] == (40 if member_id == "alice" else -40), body
        assert "reserve" not in body["detail"], body  # no proposals: nothing reserved to mention
    assert member_state(api, "riverside") == before

    # limits exactly at the balance keep it inside: accepted
    assert api.patch(f"{MEMBERS}/bob", json={"lower_limit": -40}).json()["lower_limit"] == -40
    assert api.patch(f"{MEMBERS}/alice", json={"upper_limit": 40}).json()["upper_limit"] == 40


def test_lowered_limit_is_enforced_on_the_next_exchange(api: Api) -> None:
    create_community(api, "riverside")
    create_member(api, "riverside", "alice")
    create_member(api, "riverside", "bob")
    api.patch(f"{MEMBERS}/bob", json={"lower_limit": -10})

    response = api.post(
        f"{C}/exchanges",
        json={"provider": "alice", "receiver": "bob", "amount": 11, "description": "too much"},
    )

    problem(response, 409, "limit_exceeded")
    assert api.get(f"{MEMBERS}/bob").json()["balance"] == 0


def test_only_treasurers_and_admins_manage_members(api: Api, db: Database) -> None:
    create_community(api, "riverside")
    create_member(api, "riverside", "alice")
    treasurer = api.as_(make_key(db, Role.TREASURER, "riverside"))
    assert treasurer.post(MEMBERS, json={"id": "bob", "name": "Bob"}).status_code == 201
    before = member_state(api, "riverside")

    for role in (Role.APP, Role.AUDITOR):
        other = api.as_(make_key(db, role, "riverside"))
        problem(other.post(MEMBERS, json={"id": "carol", "name": "C"}), 403, "forbidden")
        problem(other.patch(f"{MEMBERS}/alice", json={"name": "X"}), 403, "forbidden")
        # but every role reads members
        assert [m["id"] for m in other.get(MEMBERS).json()["items"]] == ["alice", "bob"]
        assert other.get(f"{MEMBERS}/alice").status_code == 200
    assert member_state(api, "riverside") == before

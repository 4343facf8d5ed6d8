"""Communities: creating, listing, reading and changing them, and who may do what."""

from __future__ import annotations

from sqlalchemy import select

from protocoop.auth.roles import Role
from protocoop.db import Database
from protocoop.db.models import Account
from tests.support.api import Api, create_community, make_key
from tests.support.checks import (
    RFC3339_UTC,
    cursor_of,
    problem,
    validation_problem,
    walk_pages,
)

UNIT = {"code": "HOUR", "name": "hour", "scale": 0}
SHAPE = (
    "id", "name", "unit", "default_lower_limit", "default_upper_limit", "status", "created_at"
)  # fmt: skip
"""The fields of a community document clients may rely on (more may be added)."""


def test_created_community_is_returned_with_its_unit_limits_and_status(api: Api) -> None:
    response = api.post(
        "/v1/communities",
        json={
            "id": "riverside-timebank",
            "name": "Riverside Timebank",
            "unit": {"code": "EUR", "name": "euro", "scale": 2},
            "default_lower_limit": -5000,
            "default_upper_limit": 20000,
        },
    )

    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert RFC3339_UTC.match(body["created_at"]), body
    assert {field: body[field] for field in SHAPE if field != "created_at"} == {
        "id": "riverside-timebank",
        "name": "Riverside Timebank",
        "unit": {"code": "EUR", "name": "euro", "scale": 2},
        "default_lower_limit": -5000,
        "default_upper_limit": 20000,
        "status": "active",
    }
    again = api.get("/v1/communities/riverside-timebank")
    assert again.status_code == 200
    assert again.json() == body


def test_default_upper_limit_may_be_left_out_meaning_no_cap(api: Api) -> None:
    created = create_community(api, "open-sky")
    assert created["default_upper_limit"] is None
    assert created["default_lower_limit"] == -100


def test_new_community_has_a_commons_fund_with_zero_balance(api: Api, db: Database) -> None:
    create_community(api, "riverside")

    with db.read() as session:
        accounts = session.scalars(select(Account).where(Account.community_id == "riverside")).all()
    assert [(a.id, a.kind, a.balance) for a in accounts] == [("@commons", "system", 0)]


def test_commons_fund_takes_part_in_exchanges(api: Api) -> None:
    """`@commons` is a real account of the new community, with a lower limit of 0."""
    create_community(api, "riverside")
    api.post("/v1/communities/riverside/members", json={"id": "alice", "name": "Alice"})

    response = api.post(
        "/v1/communities/riverside/exchanges",
        json={"provider": "alice", "receiver": "@commons", "amount": 1, "description": "x"},
    )
    assert problem(response, 409, "limit_exceeded")["member"] == "@commons"

    response = api.post(
        "/v1/communities/riverside/exchanges",
        json={"provider": "@commons", "receiver": "alice", "amount": 3, "description": "grant"},
    )
    assert response.status_code == 201, response.text


def test_duplicate_community_id_is_refused_and_the_first_is_kept(api: Api) -> None:
    create_community(api, "riverside", name="The first")

    response = api.post(
        "/v1/communities",
        json={"id": "riverside", "name": "The second", "unit": UNIT, "default_lower_limit": 0},
    )

    problem(response, 409, "already_exists")
    assert api.get("/v1/communities/riverside").json()["name"] == "The first"
    assert [c["id"] for c in api.get("/v1/communities").json()["items"]] == ["riverside"]


def test_community_ids_must_be_slugs(api: Api) -> None:
    for community_id in (
        "A", "a", "Riverside", "-riverside", "river side", "river_side", "x" * 64, "@commons", "",
    ):  # fmt: skip
        response = api.post(
            "/v1/communities",
            json={"id": community_id, "name": "X", "unit": UNIT, "default_lower_limit": 0},
        )
        validation_problem(response)
    assert api.get("/v1/communities").json()["items"] == []


def test_community_with_impossible_unit_or_limits_is_refused(api: Api) -> None:
    for fields in (
        {"default_lower_limit": 1},
        {"default_upper_limit": -1},
        {"unit": {"code": "HOUR", "name": "hour", "scale": 7}},
        {"unit": {"code": "HOUR", "name": "hour", "scale": -1}},
        {"unit": {"code": "hour", "name": "hour", "scale": 0}},
        {"unit": {"code": "HOUR", "name": "", "scale": 0}},
        {"unit": {"code": "HOUR", "name": "hour", "scale": 0, "symbol": "h"}},
        {"name": ""},
        {"name": "   "},
        {"status": "suspended"},
    ):
        body = {"id": "riverside", "name": "R", "unit": UNIT, "default_lower_limit": -10, **fields}
        validation_problem(api.post("/v1/communities", json=body))
    problem(api.get("/v1/communities/riverside"), 404, "not_found")


def test_admin_lists_every_community_and_other_keys_only_their_own(api: Api, db: Database) -> None:
    for community_id in ("bakers", "riverside", "anchor"):
        create_community(api, community_id)

    assert [c["id"] for c in api.get("/v1/communities").json()["items"]] == [
        "anchor",
        "bakers",
        "riverside",
    ]
    for role in (Role.TREASURER, Role.APP, Role.AUDITOR):
        token = make_key(db, role, "bakers")
        response = api.as_(token).get("/v1/communities")
        assert response.status_code == 200, response.text
        assert [c["id"] for c in response.json()["items"]] == ["bakers"], role
        assert response.json()["next_cursor"] is None


def test_every_role_reads_its_own_community(api: Api, db: Database) -> None:
    create_community(api, "riverside")
    for role in (Role.TREASURER, Role.APP, Role.AUDITOR):
        token = make_key(db, role, "riverside")
        response = api.as_(token).get("/v1/communities/riverside")
        assert response.status_code == 200, (role, response.text)
        assert response.json()["id"] == "riverside"


def test_unknown_community_is_not_found(api: Api) -> None:
    problem(api.get("/v1/communities/nowhere"), 404, "not_found")
    problem(api.patch("/v1/communities/nowhere", json={"name": "X"}), 404, "not_found")


def test_communities_are_listed_page_by_page(api: Api) -> None:
    ids = [f"community-{n}" for n in range(5)]
    for community_id in reversed(ids):
        create_community(api, community_id)

    assert walk_pages(api, "/v1/communities", limit=2) == [ids[0:2], ids[2:4], ids[4:5]]
    assert walk_pages(api, "/v1/communities", limit=5) == [ids]
    assert walk_pages(api, "/v1/communities", limit=1000) == [ids]
    default_page = api.get("/v1/communities").json()
    assert [c["id"] for c in default_page["items"]] == ids
    assert default_page["next_cursor"] is None


def test_damaged_cursor_is_refused(api: Api) -> None:
    create_community(api, "riverside")
    for cursor in (
        "garbage!!",
        "bm90IGpzb24",  # base64 of "not json"
        cursor_of([1, 2]),
        cursor_of({"after": 5}),  # the right field with the wrong type
        cursor_of({"after": "a", "extra": 1}),
        cursor_of({"somewhere": "else"}),
        cursor_of({"after": "x" * 300}),
        cursor_of({"after": None}),
        "x" * 3000,
    ):
        validation_problem(api.get("/v1/communities", params={"cursor": cursor}))


def test_limit_outside_one_to_a_thousand_is_refused(api: Api) -> None:
    for limit in ("0", "-1", "1001", "two", "1.5", "9" * 5000):
        validation_problem(api.get("/v1/communities", params={"limit": limit}))


def test_admin_changes_name_and_default_limits(api: Api) -> None:
    created = create_community(api, "riverside")

    response = api.patch(
        "/v1/communities/riverside",
        json={"name": "Riverside Commons", "default_lower_limit": -50, "default_upper_limit": 80},
    )

    assert response.status_code == 200, response.text
    assert response.json() == {
        **created,
        "name": "Riverside Commons",
        "default_lower_limit": -50,
        "default_upper_limit": 80,
    }
    assert api.get("/v1/communities/riverside").json() == response.json()


def test_default_upper_limit_can_be_removed_with_null(api: Api) -> None:
    create_community(api, "riverside", default_upper_limit=80)
    response = api.patch("/v1/communities/riverside", json={"default_upper_limit": None})
    assert response.status_code == 200, response.text
    assert api.get("/v1/communities/riverside").json()["default_upper_limit"] is None


def test_changed_default_limits_apply_to_members_created_afterwards(api: Api) -> None:
    create_community(api, "riverside")
    before = api.post("/v1/communities/riverside/members", json={"id": "alice", "name": "A"})
    api.patch(
        "/v1/communities/riverside", json={"default_lower_limit": -7, "default_upper_limit": 9}
    )
    after = api.post("/v1/communities/riverside/members", json={"id": "bob", "name": "B"})

    alice = api.get("/v1/communities/riverside/members/alice").json()
    assert (before.json()["lower_limit"], alice["lower_limit"], alice["upper_limit"]) == (
        -100,
        -100,
        None,
    )
    assert (after.json()["lower_limit"], after.json()["upper_limit"]) == (-7, 9)


def test_treasurer_may_rename_its_community_but_not_change_its_status(
    api: Api, db: Database
) -> None:
    create_community(api, "riverside")
    treasurer = api.as_(make_key(db, Role.TREASURER, "riverside"))

    renamed = treasurer.patch("/v1/communities/riverside", json={"name": "Riverside Co-op"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "Riverside Co-op"

    problem(
        treasurer.patch("/v1/communities/riverside", json={"status": "suspended"}),
        403,
        "forbidden",
    )
    assert api.get("/v1/communities/riverside").json()["status"] == "active"


def test_admin_suspends_and_reactivates_a_community(api: Api) -> None:
    create_community(api, "riverside")
    suspended = api.patch("/v1/communities/riverside", json={"status": "suspended"})
    assert suspended.status_code == 200, suspended.text
    assert api.get("/v1/communities/riverside").json()["status"] == "suspended"
    api.patch("/v1/communities/riverside", json={"status": "active"})
    assert api.get("/v1/communities/riverside").json()["status"] == "active"


def test_app_and_auditor_cannot_change_the_community(api: Api, db: Database) -> None:
    created = create_community(api, "riverside")
    for role in (Role.APP, Role.AUDITOR):
        other = api.as_(make_key(db, role, "riverside"))
        for changes in ({"name": "Mine"}, {"default_lower_limit": -1000}, {"status": "suspended"}):
            problem(other.patch("/v1/communities/riverside", json=changes), 403, "forbidden")
    assert api.get("/v1/communities/riverside").json() == created


def test_only_admins_create_communities(api: Api, db: Database) -> None:
    create_community(api, "riverside")
    for role in (Role.TREASURER, Role.APP, Role.AUDITOR):
        other = api.as_(make_key(db, role, "riverside"))
        response = other.post(
            "/v1/communities",
            json={"id": "another", "name": "Another", "unit": UNIT, "default_lower_limit": 0},
        )
        problem(response, 403, "forbidden")
    problem(api.get("/v1/communities/another"), 404, "not_found")


def test_invalid_community_changes_are_refused_and_change_nothing(api: Api) -> None:
    created = create_community(api, "riverside")
    for changes in (
        {"name": None},
        {"name": ""},
        {"default_lower_limit": None},
        {"default_lower_limit": 5},
        {"default_lower_limit": "-5"},
        {"default_upper_limit": -5},
        {"status": "closed"},
        {"status": None},
        {"unit": {"code": "EUR", "name": "euro", "scale": 2}},
        {"id": "renamed"},
    ):
        validation_problem(api.patch("/v1/communities/riverside", json=changes))
    assert api.get("/v1/communities/riverside").json() == created

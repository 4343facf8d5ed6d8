"""The admin audit log: every change that is not an exchange is recorded with the key that made
it, when, and the values before and after — in the same transaction as the change, so refusals
record nothing — and the log itself can only grow."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from protocoop.auth.roles import Role
from protocoop.db import Database
from protocoop.keys import service as keys_service
from protocoop.members import service as members_service
from protocoop.members.schemas import MemberCreate
from tests.support.api import Api, create_community, create_member, every_item, make_key
from tests.support.checks import RFC3339_UTC, give, problem

LOG = "/v1/communities/riverside/audit-log"
INSTANCE_LOG = "/v1/audit-log"
KEYS = "/v1/api-keys"


def entries(api: Api, path: str = LOG, **params: Any) -> list[dict[str, Any]]:
    """Every entry of a log, newest first (following the cursor)."""
    return every_item(api.get, path, **params)


def key_id(api: Api, token: str) -> str:
    """The id of the key behind `token` (as an admin sees it listed)."""
    listed = api.get(KEYS, params={"limit": 1000}).json()["items"]
    (found,) = [k["id"] for k in listed if token.startswith(k["prefix"])]
    return str(found)


def new_key(api: Api, role: str, community: str | None = "riverside") -> dict[str, Any]:
    response = api.post(KEYS, json={"role": role, "community": community})
    assert response.status_code == 201, response.text
    return dict(response.json())


def only(items: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [item for item in items if item["action"] == action]


# --- what is recorded --------------------------------------------------------------------------


def test_each_kind_of_change_is_recorded_with_its_actor_and_values(
    api: Api, admin_token: str
) -> None:
    admin = key_id(api, admin_token)
    create_community(api, "riverside", default_lower_limit=-100)
    treasurer_key = new_key(api, "treasurer")
    treasurer = api.as_(treasurer_key["token"])
    alice = create_member(treasurer, "riverside", "alice")
    create_member(treasurer, "riverside", "bob", lower_limit=-50, upper_limit=500)
    original = give(treasurer, "riverside", "alice", "bob", 7)

    def patch(who: Api, path: str, body: dict[str, Any]) -> None:
        response = who.patch(path, json=body)
        assert response.status_code == 200, response.text

    patch(treasurer, "/v1/communities/riverside/members/bob", {"name": "Robert", "upper_limit": 9})
    patch(treasurer, "/v1/communities/riverside/members/bob", {"status": "suspended"})
    patch(
        treasurer,
        "/v1/communities/riverside",
        {
            "name": "Riverside Timebank",
            "default_upper_limit": 300,
            "policy": {"levy": {"rate_ppm": 20_000, "paid_by": "receiver"}},
        },
    )
    patch(api, "/v1/communities/riverside", {"status": "suspended"})
    patch(api, "/v1/communities/riverside", {"status": "active"})
    reversal = treasurer.post(
        f"/v1/communities/riverside/exchanges/{original['id']}/reverse", json={"reason": "typo"}
    )
    assert reversal.status_code == 201, reversal.text
    app_key = new_key(treasurer, "app")
    assert treasurer.delete(f"{KEYS}/{app_key['id']}").status_code == 204

    auditor = api.as_(make_key_for(api, "auditor"))
    newest, *log = entries(auditor)
    assert [newest, *log] == entries(api)
    assert [e["id"] for e in [newest, *log]] == list(range(len(log) + 1, 0, -1))
    assert (newest["action"], newest["after"]["role"]) == ("api_key.created", "auditor")
    assert [e["action"] for e in reversed(log)] == [
        "community.created",
        "api_key.created",
        "member.created",
        "member.created",
        "member.updated",
        "member.updated",
        "community.updated",
        "community.updated",
        "community.updated",
        "exchange.reversed",
        "api_key.created",
        "api_key.revoked",
    ]
    for entry in log:
        assert RFC3339_UTC.match(entry["at"]), entry
    at = [entry["at"] for entry in reversed(log)]
    assert at == sorted(at)

    by_treasurer = treasurer_key["id"]
    created, key_made, made_alice, made_bob = list(reversed(log))[:4]
    assert (created["actor_key_id"], created["target"], created["before"]) == (
        admin,
        "riverside",
        None,
    )
    assert created["after"]["name"] == "Riverside"
    assert created["after"]["default_lower_limit"] == -100
    assert (key_made["actor_key_id"], key_made["target"]) == (admin, by_treasurer)
    assert key_made["after"]["role"] == "treasurer"
    assert key_made["before"] is None
    assert "token" not in key_made["after"]
    assert treasurer_key["token"] not in str(log)
    assert (made_alice["actor_key_id"], made_alice["target"]) == (by_treasurer, "alice")
    assert made_alice["after"] == alice
    assert made_bob["after"]["lower_limit"] == -50
    assert made_bob["after"]["upper_limit"] == 500

    renamed, suspended = only(log, "member.updated")[::-1]
    assert renamed["target"] == "bob"
    assert renamed["actor_key_id"] == by_treasurer
    assert renamed["before"] == {"name": "Bob", "upper_limit": 500}
    assert renamed["after"] == {"name": "Robert", "upper_limit": 9}
    assert (suspended["before"], suspended["after"]) == (
        {"status": "active"},
        {"status": "suspended"},
    )

    settings, suspension, reactivation = only(log, "community.updated")[::-1]
    assert settings["actor_key_id"] == by_treasurer
    assert settings["target"] == "riverside"
    assert settings["before"] == {
        "name": "Riverside",
        "default_upper_limit": None,
        "policy": {"levy": None},
    }
    assert settings["after"] == {
        "name": "Riverside Timebank",
        "default_upper_limit": 300,
        "policy": {"levy": {"rate_ppm": 20_000, "minimum": 0, "paid_by": "receiver"}},
    }
    assert (suspension["actor_key_id"], suspension["after"]) == (admin, {"status": "suspended"})
    assert (reactivation["before"], reactivation["after"]) == (
        {"status": "suspended"},
        {"status": "active"},
    )

    (reversed_entry,) = only(log, "exchange.reversed")
    assert reversed_entry["actor_key_id"] == by_treasurer
    assert reversed_entry["target"] == original["id"]
    assert reversed_entry["before"] == {"reversed_by": None}
    assert reversed_entry["after"] == {"reversed_by": reversal.json()["id"], "reason": "typo"}

    app_made, app_revoked = only(log, "api_key.created")[0], only(log, "api_key.revoked")[0]
    assert (app_made["actor_key_id"], app_made["target"]) == (by_treasurer, app_key["id"])
    assert app_made["after"]["role"] == "app"
    assert app_made["after"]["revoked_at"] is None
    assert (app_revoked["actor_key_id"], app_revoked["target"]) == (by_treasurer, app_key["id"])
    assert app_revoked["before"] == {"revoked_at": None}
    assert RFC3339_UTC.match(app_revoked["after"]["revoked_at"])


def make_key_for(api: Api, role: str) -> str:
    return str(new_key(api, role)["token"])


def test_exchanges_are_not_in_the_audit_log(api: Api, community: dict[str, Any]) -> None:
    before = entries(api)

    give(api, "riverside", "alice", "bob", 3)
    give(api, "riverside", "bob", "carol", 2)

    assert entries(api) == before


def test_command_line_changes_are_recorded_without_an_actor(
    api: Api, db: Database, community: dict[str, Any]
) -> None:
    make_key(db, Role.APP, "riverside")  # as `protocoop keys create` does
    db.run_write(
        lambda session: members_service.create_member(
            session, "riverside", MemberCreate.model_validate({"id": "dan", "name": "Dan"})
        )
    )

    newest = entries(api)[:2]

    assert [(e["action"], e["actor_key_id"]) for e in newest] == [
        ("member.created", None),
        ("api_key.created", None),
    ]
    assert newest[0]["target"] == "dan"


def test_admin_keys_are_recorded_in_the_instance_log_and_nowhere_else(
    api: Api, admin_token: str, community: dict[str, Any]
) -> None:
    admin = key_id(api, admin_token)
    community_log = entries(api)

    second = new_key(api, "admin", None)
    assert api.delete(f"{KEYS}/{second['id']}").status_code == 204

    log = entries(api, INSTANCE_LOG)
    assert [(e["id"], e["action"], e["target"], e["actor_key_id"]) for e in log] == [
        (3, "api_key.revoked", second["id"], admin),
        (2, "api_key.created", second["id"], admin),
        (1, "api_key.created", admin, None),  # the fixture's key, made as the command line does
    ]
    assert log[1]["after"]["role"] == "admin"
    assert log[1]["after"]["community"] is None
    assert entries(api) == community_log


def test_changes_that_change_nothing_record_nothing(
    api: Api, keys: dict[str, str], community: dict[str, Any]
) -> None:
    app_key = new_key(api, "app")
    assert api.delete(f"{KEYS}/{app_key['id']}").status_code == 204
    before = entries(api)

    same = api.patch("/v1/communities/riverside/members/alice", json={"name": "Alice"})
    assert same.status_code == 200, same.text
    assert api.patch("/v1/communities/riverside", json={}).status_code == 200
    assert api.delete(f"{KEYS}/{app_key['id']}").status_code == 204  # already revoked

    assert entries(api) == before


# --- what is not recorded: refusals ------------------------------------------------------------


def test_refused_changes_record_nothing(api: Api, keys: dict[str, str]) -> None:
    treasurer, app = api.as_(keys["treasurer"]), api.as_(keys["app"])
    give(api, "riverside", "alice", "bob", 60)  # bob at -60
    reversed_once = give(api, "riverside", "carol", "alice", 5)
    assert (
        api.post(
            f"/v1/communities/riverside/exchanges/{reversed_once['id']}/reverse",
            json={"reason": "x"},
        ).status_code
        == 201
    )
    before = entries(api)
    instance_before = entries(api, INSTANCE_LOG)

    refusals = [
        (treasurer.patch("/v1/communities/riverside/members/bob", json={"lower_limit": 0}), 409),
        (treasurer.patch("/v1/communities/riverside/members/zed", json={"name": "Z"}), 404),
        (treasurer.patch("/v1/communities/riverside/members/bob", json={"name": None}), 422),
        (treasurer.patch("/v1/communities/riverside", json={"status": "suspended"}), 403),
        (treasurer.patch("/v1/communities/riverside", json={"name": ""}), 422),
        (app.patch("/v1/communities/riverside/members/bob", json={"name": "B"}), 403),
        (app.post("/v1/communities/riverside/members", json={"id": "dan", "name": "D"}), 403),
        (treasurer.post("/v1/communities/riverside/members", json={"id": "bob", "name": "B"}), 409),
        (
            treasurer.post(
                "/v1/communities/riverside/members",
                json={"id": "bob", "name": "B"},
                headers={"Idempotency-Key": "refused-1"},
            ),
            409,
        ),
        (treasurer.post(KEYS, json={"role": "treasurer", "community": "riverside"}), 403),
        (treasurer.post(KEYS, json={"role": "app", "community": "elsewhere"}), 404),
        (api.post(KEYS, json={"role": "app"}), 422),
        (app.post(KEYS, json={"role": "app", "community": "riverside"}), 403),
        (treasurer.delete(f"{KEYS}/key_0000000000000000"), 404),
        (
            api.post(
                "/v1/communities",
                json={
                    "id": "riverside",
                    "name": "R",
                    "unit": {"code": "HOUR", "name": "hour"},
                    "default_lower_limit": 0,
                },
            ),
            409,
        ),
        (
            treasurer.post(
                f"/v1/communities/riverside/exchanges/{reversed_once['id']}/reverse",
                json={"reason": "again"},
            ),
            409,
        ),
    ]

    for response, status in refusals:
        assert response.status_code == status, response.text
    treasurer_id = key_id(api, keys["treasurer"])
    assert treasurer.delete(f"{KEYS}/{key_id(api, keys['admin'])}").status_code == 404
    assert treasurer.delete(f"{KEYS}/{treasurer_id}").status_code == 403
    assert entries(api) == before
    assert entries(api, INSTANCE_LOG) == instance_before


def test_a_closing_refused_for_its_balance_records_nothing(api: Api, keys: dict[str, str]) -> None:
    give(api, "riverside", "alice", "bob", 5)
    before = entries(api)

    refused = api.as_(keys["treasurer"]).patch(
        "/v1/communities/riverside/members/bob", json={"status": "closed", "name": "Gone"}
    )

    problem(refused, 409, "balance_not_zero")
    assert entries(api) == before


def test_a_reversal_refused_by_a_limit_records_nothing(api: Api, keys: dict[str, str]) -> None:
    original = give(api, "riverside", "alice", "bob", 100)  # alice at +100
    give(api, "riverside", "carol", "alice", 100)  # alice at 0
    limited = api.patch("/v1/communities/riverside/members/alice", json={"lower_limit": -50})
    assert limited.status_code == 200, limited.text
    before = entries(api)

    refused = api.as_(keys["treasurer"]).post(
        f"/v1/communities/riverside/exchanges/{original['id']}/reverse", json={"reason": "no"}
    )

    problem(refused, 409, "limit_exceeded")
    assert entries(api) == before


# --- append-only -------------------------------------------------------------------------------


def test_the_log_cannot_be_rewritten_or_deleted(
    api: Api, db: Database, community: dict[str, Any]
) -> None:
    before = entries(api)

    for statement in (
        "UPDATE audit_log SET actor_key_id = NULL",
        "UPDATE audit_log SET action = 'member.created' WHERE action = 'community.created'",
        "DELETE FROM audit_log",
        "DELETE FROM audit_log WHERE id = 1",
    ):
        with pytest.raises(DBAPIError), db.engine.begin() as connection:
            connection.execute(text(statement))

    assert entries(api) == before
    assert len(before) >= 4


# --- who may read it ---------------------------------------------------------------------------


def test_treasurers_auditors_and_admins_read_their_communitys_log_and_nobody_else(
    api: Api, db: Database, keys: dict[str, str]
) -> None:
    create_community(api, "hillside")
    hillside_treasurer = make_key(db, Role.TREASURER, "hillside")

    for role in ("treasurer", "auditor", "admin"):
        response = api.as_(keys[role]).get(LOG)
        assert response.status_code == 200, (role, response.text)
        assert response.json()["items"], role
    problem(api.as_(keys["app"]).get(LOG), 403, "forbidden")
    problem(api.as_(hillside_treasurer).get(LOG), 404, "not_found")
    problem(api.as_(keys["treasurer"]).get("/v1/communities/hillside/audit-log"), 404, "not_found")
    problem(api.get("/v1/communities/nowhere/audit-log"), 404, "not_found")
    problem(api.as_(None).get(LOG), 401, "unauthorized")

    assert api.get(INSTANCE_LOG).status_code == 200
    for role in ("treasurer", "auditor", "app"):
        problem(api.as_(keys[role]).get(INSTANCE_LOG), 403, "forbidden")
    problem(api.as_(None).get(INSTANCE_LOG), 401, "unauthorized")


def test_hillside_sees_only_its_own_entries(api: Api, community: dict[str, Any]) -> None:
    create_community(api, "hillside")
    create_member(api, "hillside", "dora")

    hillside = entries(api, "/v1/communities/hillside/audit-log")

    assert [(e["id"], e["action"], e["target"]) for e in hillside] == [
        (2, "member.created", "dora"),
        (1, "community.created", "hillside"),
    ]
    assert "dora" not in str(entries(api))


# --- pages and filters -------------------------------------------------------------------------


def test_pages_go_from_newest_to_oldest_and_filters_narrow_them(
    api: Api, community: dict[str, Any]
) -> None:
    for member in ("dan", "erin", "frank", "gina"):
        create_member(api, "riverside", member)
    api.patch("/v1/communities/riverside/members/alice", json={"name": "Alice A."})
    every = entries(api)

    pages: list[list[int]] = []
    params: dict[str, Any] = {"limit": 3}
    while True:
        page = api.get(LOG, params=params).json()
        pages.append([item["id"] for item in page["items"]])
        if page["next_cursor"] is None:
            break
        params = {"limit": 3, "cursor": page["next_cursor"]}

    assert [i for page in pages for i in page] == [e["id"] for e in every]
    assert all(len(page) == 3 for page in pages[:-1])
    assert [e["id"] for e in every] == sorted((e["id"] for e in every), reverse=True)

    created = entries(api, action="member.created")
    assert [e["target"] for e in created] == [
        "gina",
        "frank",
        "erin",
        "dan",
        "carol",
        "bob",
        "alice",
    ]
    about_alice = entries(api, target="alice")
    assert [e["action"] for e in about_alice] == ["member.updated", "member.created"]
    assert entries(api, action="member.updated", target="bob") == []

    for bad in (
        {"action": "member.deleted"},
        {"target": "Not An Id"},
        {"cursor": "garbage"},
        {"limit": 0},
    ):
        problem(api.get(LOG, params=bad), 422, "validation_error")


# --- numbering under concurrency ---------------------------------------------------------------


def test_concurrent_changes_get_gap_free_ids_in_each_log(
    api: Api, db: Database, community: dict[str, Any]
) -> None:
    """Writers racing in one community (numbered under its ledger-head lock) and on admin keys
    (numbered by retrying the next free id) never share or skip an id."""
    errors: list[BaseException] = []

    def members(worker: int) -> None:
        try:
            for n in range(5):
                spec = MemberCreate.model_validate({"id": f"w{worker}-{n}", "name": "W"})
                db.run_write(
                    lambda session, spec=spec: members_service.create_member(
                        session, "riverside", spec
                    )
                )
        except BaseException as error:
            errors.append(error)

    def admin_keys() -> None:
        try:
            for _ in range(5):
                db.run_write(
                    lambda session: keys_service.create_key(
                        session, role=Role.ADMIN, community_id=None, label=None, created_by=None
                    )
                )
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=members, args=(w,)) for w in range(4)]
    threads += [threading.Thread(target=admin_keys) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    community_ids = [e["id"] for e in entries(api)]
    assert community_ids == list(range(len(community_ids), 0, -1))
    assert len(only(entries(api), "member.created")) == 3 + 20
    instance_ids = [e["id"] for e in entries(api, INSTANCE_LOG)]
    assert instance_ids == list(range(1 + 20, 0, -1))

"""API keys: shown once, stored as hashes, revoked at once, handed out only as roles allow."""

from __future__ import annotations

import hashlib

from sqlalchemy import select

from protocoop.auth.roles import Role
from protocoop.db import Database
from protocoop.db.models import ApiKey
from protocoop.keys import service as keys_service
from tests.support.api import Api, create_community, make_key
from tests.support.checks import RFC3339_UTC, problem, validation_problem

KEYS = "/v1/api-keys"


def test_created_key_shows_its_token_once_and_the_token_works(api: Api) -> None:
    create_community(api, "riverside")

    response = api.post(KEYS, json={"role": "app", "community": "riverside", "label": "shop"})

    assert response.status_code == 201, response.text
    created = response.json()
    assert created["id"].startswith("key_")
    assert (created["role"], created["community"], created["label"]) == ("app", "riverside", "shop")
    assert created["token"].startswith("pcp_")
    assert len(created["token"]) >= 40
    assert created["token"].startswith(created["prefix"])
    assert created["prefix"] != created["token"]
    assert RFC3339_UTC.match(created["created_at"])

    app = api.as_(created["token"])
    assert [c["id"] for c in app.get("/v1/communities").json()["items"]] == ["riverside"]
    assert app.get("/v1/communities/riverside/members").status_code == 200


def test_admin_key_made_over_the_api_sees_every_community(api: Api) -> None:
    create_community(api, "riverside")
    create_community(api, "hillside")
    created = api.post(KEYS, json={"role": "admin", "label": "second admin"}).json()
    assert created["community"] is None
    listed = api.as_(created["token"]).get("/v1/communities").json()["items"]
    assert [c["id"] for c in listed] == ["hillside", "riverside"]


def test_listing_never_shows_tokens(api: Api, admin_token: str) -> None:
    create_community(api, "riverside")
    tokens = [
        api.post(KEYS, json={"role": role, "community": "riverside"}).json()["token"]
        for role in ("treasurer", "app", "auditor")
    ]

    response = api.get(KEYS)

    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert len(items) == 4
    assert all("token" not in item for item in items)
    for token in [*tokens, admin_token]:
        assert token not in response.text
    assert {(item["role"], item["community"]) for item in items} == {
        ("admin", None),
        ("treasurer", "riverside"),
        ("app", "riverside"),
        ("auditor", "riverside"),
    }


def test_keys_are_listed_page_by_page(api: Api, db: Database) -> None:
    create_community(api, "riverside")
    for _ in range(4):
        make_key(db, Role.APP, "riverside")
    seen: list[str] = []
    params: dict[str, object] = {"limit": 2}
    pages = 0
    while True:
        page = api.get(KEYS, params=params).json()
        pages += 1
        seen.extend(item["id"] for item in page["items"])
        if page["next_cursor"] is None:
            break
        params = {"limit": 2, "cursor": page["next_cursor"]}
    assert pages == 3
    assert len(seen) == len(set(seen)) == 5


def test_only_the_token_hash_is_stored(api: Api, db: Database) -> None:
    create_community(api, "riverside")
    created = api.post(KEYS, json={"role": "auditor", "community": "riverside"}).json()

    with db.read() as session:
        row = session.scalars(select(ApiKey).where(ApiKey.id == created["id"])).one()
        stored = [str(getattr(row, column.key)) for column in ApiKey.__mapper__.columns]
    assert row.token_hash == hashlib.sha256(created["token"].encode()).hexdigest()
    assert not any(created["token"] in value for value in stored)
    assert not any(created["token"][len(created["prefix"]) :] in value for value in stored)


def test_revoked_key_fails_on_the_very_next_request(api: Api) -> None:
    create_community(api, "riverside")
    created = api.post(KEYS, json={"role": "app", "community": "riverside"}).json()
    app = api.as_(created["token"])
    assert app.get("/v1/communities/riverside").status_code == 200

    revoked = api.delete(f"{KEYS}/{created['id']}")

    assert revoked.status_code == 204
    assert revoked.content == b""
    problem(app.get("/v1/communities/riverside"), 401, "unauthorized")
    listed = {item["id"]: item for item in api.get(KEYS).json()["items"]}
    assert RFC3339_UTC.match(listed[created["id"]]["revoked_at"])
    # revoking again is harmless; the key stays revoked
    assert api.delete(f"{KEYS}/{created['id']}").status_code == 204
    problem(app.get("/v1/communities/riverside"), 401, "unauthorized")


def test_key_revoked_elsewhere_is_refused_on_its_next_request_though_this_server_cached_it(
    api: Api, db: Database
) -> None:
    """Revoked by another worker or by `protocoop keys revoke` (which cannot touch this process's
    cache): the next request is 401, whatever it asks for."""
    create_community(api, "riverside")
    create_community(api, "hillside")
    for member in ("alice", "bob"):
        api.post("/v1/communities/riverside/members", json={"id": member, "name": member})
    app_key = api.post(KEYS, json={"role": "app", "community": "riverside"}).json()
    admin_key = api.post(KEYS, json={"role": "admin"}).json()
    app, admin = api.as_(app_key["token"]), api.as_(admin_key["token"])
    c = "/v1/communities/riverside"
    exchange = {"provider": "alice", "receiver": "bob", "amount": 1, "description": "tea"}
    assert app.get(f"{c}/members/alice/balance").status_code == 200  # now cached
    assert app.post(f"{c}/exchanges", json=exchange).status_code == 201
    assert admin.get(KEYS).status_code == 200

    for key in (app_key, admin_key):
        db.run_write(lambda session, key=key: keys_service.revoke_key(session, key["id"], by=None))

    answers = {
        "balance": app.get(f"{c}/members/alice/balance"),
        "statement as CSV": app.get(f"{c}/members/alice/statement", headers={"Accept": "text/csv"}),
        "exchanges": app.get(f"{c}/exchanges"),
        "a report its role may not read": app.get(f"{c}/balances"),
        "another community": app.get("/v1/communities/hillside"),
        "a post": app.post(f"{c}/exchanges", json=exchange),
        "keys, as admin": admin.get(KEYS),
        "metrics, as admin": admin.get("/metrics"),
    }
    for what, answer in answers.items():
        assert answer.status_code == 401, f"{what}: {answer.status_code} {answer.text[:200]}"
        problem(answer, 401, "unauthorized")
    assert len(api.get(f"{c}/exchanges").json()["items"]) == 1


def test_revoked_and_unknown_tokens_get_the_same_answer(api: Api) -> None:
    create_community(api, "riverside")
    created = api.post(KEYS, json={"role": "app", "community": "riverside"}).json()
    api.delete(f"{KEYS}/{created['id']}")

    revoked = api.as_(created["token"]).get("/v1/communities/riverside")
    unknown = api.as_("pcp_" + "A" * 43).get("/v1/communities/riverside")

    problem(revoked, 401, "unauthorized")
    assert revoked.content == unknown.content
    assert revoked.headers["www-authenticate"] == unknown.headers["www-authenticate"]


def test_admin_that_revokes_its_own_key_is_locked_out_at_once(api: Api) -> None:
    """An admin that revokes its own key is locked out from the next request on."""
    own = api.post(KEYS, json={"role": "admin"}).json()
    me = api.as_(own["token"])
    assert me.delete(f"{KEYS}/{own['id']}").status_code == 204
    problem(me.get(KEYS), 401, "unauthorized")


def test_unknown_key_id_cannot_be_revoked(api: Api) -> None:
    problem(api.delete(f"{KEYS}/key_0123456789abcdef"), 404, "not_found")
    validation_problem(api.delete(f"{KEYS}/not-a-key-id"))


def test_treasurer_creates_app_and_auditor_keys_of_its_own_community(
    api: Api, db: Database
) -> None:
    create_community(api, "riverside")
    treasurer = api.as_(make_key(db, Role.TREASURER, "riverside"))

    app_key = treasurer.post(KEYS, json={"role": "app", "community": "riverside"})
    auditor_key = treasurer.post(KEYS, json={"role": "auditor"})  # community: its own

    assert app_key.status_code == 201, app_key.text
    assert auditor_key.status_code == 201, auditor_key.text
    assert auditor_key.json()["community"] == "riverside"
    for created in (app_key.json(), auditor_key.json()):
        assert api.as_(created["token"]).get("/v1/communities/riverside").status_code == 200
    listed = treasurer.get(KEYS).json()["items"]
    assert {item["role"] for item in listed} == {"treasurer", "app", "auditor"}
    assert treasurer.delete(f"{KEYS}/{app_key.json()['id']}").status_code == 204
    problem(api.as_(app_key.json()["token"]).get("/v1/communities"), 401, "unauthorized")


def test_treasurer_cannot_reach_beyond_its_community_or_role(api: Api, db: Database) -> None:
    create_community(api, "riverside")
    create_community(api, "hillside")
    treasurer = api.as_(make_key(db, Role.TREASURER, "riverside"))
    hillside_app = api.post(KEYS, json={"role": "app", "community": "hillside"}).json()
    riverside_treasurer = api.post(KEYS, json={"role": "treasurer", "community": "riverside"})
    keys_before = {item["id"] for item in api.get(KEYS).json()["items"]}

    problem(treasurer.post(KEYS, json={"role": "app", "community": "hillside"}), 404, "not_found")
    problem(treasurer.post(KEYS, json={"role": "app", "community": "nowhere"}), 404, "not_found")
    problem(treasurer.post(KEYS, json={"role": "treasurer"}), 403, "forbidden")
    problem(treasurer.post(KEYS, json={"role": "admin"}), 403, "forbidden")
    problem(treasurer.delete(f"{KEYS}/{hillside_app['id']}"), 404, "not_found")
    problem(treasurer.delete(f"{KEYS}/{riverside_treasurer.json()['id']}"), 403, "forbidden")
    assert {item["community"] for item in treasurer.get(KEYS).json()["items"]} == {"riverside"}

    assert {item["id"] for item in api.get(KEYS).json()["items"]} == keys_before
    assert api.as_(hillside_app["token"]).get("/v1/communities/hillside").status_code == 200


def test_app_and_auditor_keys_cannot_manage_keys(api: Api, db: Database) -> None:
    create_community(api, "riverside")
    victim = api.post(KEYS, json={"role": "app", "community": "riverside"}).json()
    for role in (Role.APP, Role.AUDITOR):
        other = api.as_(make_key(db, role, "riverside"))
        problem(other.post(KEYS, json={"role": "app"}), 403, "forbidden")
        problem(other.get(KEYS), 403, "forbidden")
        problem(other.delete(f"{KEYS}/{victim['id']}"), 403, "forbidden")
    assert api.as_(victim["token"]).get("/v1/communities").status_code == 200


def test_keys_must_match_their_role(api: Api) -> None:
    create_community(api, "riverside")
    keys_before = api.get(KEYS).json()["items"]
    validation_problem(api.post(KEYS, json={"role": "app"}))  # needs a community
    validation_problem(api.post(KEYS, json={"role": "admin", "community": "riverside"}))
    validation_problem(api.post(KEYS, json={"role": "owner", "community": "riverside"}))
    validation_problem(api.post(KEYS, json={"role": "app", "community": "Not A Slug"}))
    validation_problem(api.post(KEYS, json={"role": "app", "community": "riverside", "x": 1}))
    validation_problem(api.post(KEYS, json={"role": "app", "community": "riverside", "label": 7}))
    problem(api.post(KEYS, json={"role": "app", "community": "nowhere"}), 404, "not_found")
    assert api.get(KEYS).json()["items"] == keys_before

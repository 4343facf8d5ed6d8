"""Tenant isolation: a key of one community never sees another, on any route under
`/v1/communities/{community_id}` — including routes added after this test was written, since the
routes are read from the app's OpenAPI document — and inside its own community each role may do
only what the spec's role table says."""

from __future__ import annotations

import re
from typing import Any

import pytest

from protocoop.app import create_app
from protocoop.auth.roles import Role
from protocoop.config import Settings
from protocoop.db import Database
from tests.support.api import Api, create_community, create_member, make_key
from tests.support.checks import give, member_state

COMMUNITY_PREFIX = "/v1/communities/{community_id}"
PATH_PARAMETER = re.compile(r"\{(\w+)\}")
ALL_ROLES = frozenset(Role)
OVERSEERS = frozenset({Role.ADMIN, Role.TREASURER, Role.AUDITOR})
POSTERS = frozenset({Role.ADMIN, Role.TREASURER, Role.APP})
MANAGERS = frozenset({Role.ADMIN, Role.TREASURER})


def _community_routes() -> list[tuple[str, str]]:
    """Every (method, path) the app serves under one community, from its OpenAPI document."""
    app = create_app(Settings(database_url="sqlite://", _env_file=None))  # type: ignore[call-arg]
    return sorted(
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if path == COMMUNITY_PREFIX or path.startswith(COMMUNITY_PREFIX + "/")
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    )


COMMUNITY_ROUTES = _community_routes()

ROLE_RULES: dict[tuple[str, str], frozenset[Role]] = {
    ("GET", COMMUNITY_PREFIX): ALL_ROLES,
    ("PATCH", COMMUNITY_PREFIX): MANAGERS,
    ("POST", f"{COMMUNITY_PREFIX}/members"): MANAGERS,
    ("GET", f"{COMMUNITY_PREFIX}/members"): ALL_ROLES,
    ("GET", f"{COMMUNITY_PREFIX}/members/{{member_id}}"): ALL_ROLES,
    ("PATCH", f"{COMMUNITY_PREFIX}/members/{{member_id}}"): MANAGERS,
    ("POST", f"{COMMUNITY_PREFIX}/exchanges"): POSTERS,
    ("POST", f"{COMMUNITY_PREFIX}/exchanges:batch"): POSTERS,
    ("GET", f"{COMMUNITY_PREFIX}/exchanges"): ALL_ROLES,
    ("GET", f"{COMMUNITY_PREFIX}/exchanges/{{exchange_id}}"): ALL_ROLES,
    ("POST", f"{COMMUNITY_PREFIX}/exchanges/{{exchange_id}}/reverse"): MANAGERS,
    ("GET", f"{COMMUNITY_PREFIX}/members/{{member_id}}/balance"): ALL_ROLES,
    ("GET", f"{COMMUNITY_PREFIX}/balances"): OVERSEERS,
    ("GET", f"{COMMUNITY_PREFIX}/members/{{member_id}}/statement"): ALL_ROLES,
    ("GET", f"{COMMUNITY_PREFIX}/trial-balance"): OVERSEERS,
    ("GET", f"{COMMUNITY_PREFIX}/mutuality"): OVERSEERS,
    ("GET", f"{COMMUNITY_PREFIX}/members/{{member_id}}/mutuality"): ALL_ROLES,
    ("GET", f"{COMMUNITY_PREFIX}/audit"): OVERSEERS,
}
"""docs/design.md §2's role table for the routes under one community."""

WRITES: dict[tuple[str, str], dict[str, Any]] = {
    ("PATCH", COMMUNITY_PREFIX): {"name": "Taken over", "default_lower_limit": -999},
    ("POST", f"{COMMUNITY_PREFIX}/members"): {"id": "mallory", "name": "Mallory"},
    ("PATCH", f"{COMMUNITY_PREFIX}/members/{{member_id}}"): {"name": "Renamed", "lower_limit": 0},
    ("POST", f"{COMMUNITY_PREFIX}/exchanges"): {
        "provider": "alice", "receiver": "bob", "amount": 1, "description": "sneaky",
    },
    ("POST", f"{COMMUNITY_PREFIX}/exchanges:batch"): {
        "exchanges": [{"provider": "alice", "receiver": "bob", "amount": 1, "description": "x"}],
    },
    ("POST", f"{COMMUNITY_PREFIX}/exchanges/{{exchange_id}}/reverse"): {"reason": "undo"},
}  # fmt: skip
"""Bodies that would succeed if the key were allowed (for other routes, `{}` is sent)."""


def _route_id(route: tuple[str, str]) -> str:
    method, path = route
    return f"{method} {path.removeprefix('/v1/communities/')}"


def _path(template: str, community: str, exchange_id: str) -> str:
    """`template` with plausible values: real members and a real exchange of the community."""
    values = {"community_id": community, "member_id": "alice", "exchange_id": exchange_id}
    return PATH_PARAMETER.sub(lambda match: values.get(match.group(1), "alice"), template)


@pytest.fixture
def tenants(api: Api, db: Database) -> dict[str, Any]:
    """Communities `alpha` and `beta`, each with members alice and bob and one exchange, and a
    key of every role for alpha."""
    exchanges = {}
    for community in ("alpha", "beta"):
        create_community(api, community)
        create_member(api, community, "alice")
        create_member(api, community, "bob")
        exchanges[community] = give(api, community, "alice", "bob", 5)["id"]
    tokens = {role: make_key(db, role, "alpha") for role in ALL_ROLES if role is not Role.ADMIN}
    tokens[Role.ADMIN] = make_key(db, Role.ADMIN)
    return {"exchanges": exchanges, "tokens": tokens}


def _state(api: Api, community: str) -> tuple[Any, ...]:
    """What no refused request may change: the community, its members, balances and exchanges."""
    exchanges = api.get(f"/v1/communities/{community}/exchanges", params={"limit": 1000})
    return (
        api.get(f"/v1/communities/{community}").json(),
        member_state(api, community),
        [e["id"] for e in exchanges.json()["items"]],
    )


def test_the_foundation_routes_are_all_checked() -> None:
    for route in (
        ("GET", COMMUNITY_PREFIX),
        ("PATCH", COMMUNITY_PREFIX),
        ("POST", f"{COMMUNITY_PREFIX}/members"),
        ("GET", f"{COMMUNITY_PREFIX}/members"),
        ("GET", f"{COMMUNITY_PREFIX}/members/{{member_id}}"),
        ("PATCH", f"{COMMUNITY_PREFIX}/members/{{member_id}}"),
    ):
        assert route in COMMUNITY_ROUTES, route


def _refusal(response: Any, status: int, code: str) -> str | None:
    """None when `response` is the problem `code` with `status`, else what it was instead."""
    if (
        response.status_code == status
        and response.headers["content-type"].startswith("application/problem+json")
        and response.json().get("code") == code
    ):
        return None
    return f"{response.status_code} {response.text[:200]}"


def test_keys_of_one_community_get_404_for_another_or_a_missing_one(
    api: Api, tenants: dict[str, Any]
) -> None:
    """Every route (one test, so that the two communities are made once): a failure lists each
    route, role and answer that broke isolation."""
    beta_before = _state(api, "beta")
    exchange_id = tenants["exchanges"]["beta"]
    leaks: list[str] = []

    for route in COMMUNITY_ROUTES:
        method, template = route
        body = WRITES.get(route, {}) if method != "GET" else None
        for role, token in tenants["tokens"].items():
            key = api.as_(token)
            missing = key.request(method, _path(template, "nowhere", exchange_id), json=body)
            if (wrong := _refusal(missing, 404, "not_found")) is not None:
                leaks.append(f"{_route_id(route)} as {role} on a missing community: {wrong}")
            if role is Role.ADMIN:
                continue  # admin keys see every community
            other = key.request(method, _path(template, "beta", exchange_id), json=body)
            if (wrong := _refusal(other, 404, "not_found")) is not None:
                leaks.append(f"{_route_id(route)} as {role} of alpha on beta: {wrong}")

    assert leaks == []
    assert _state(api, "beta") == beta_before


def test_roles_inside_a_community_follow_the_role_table(api: Api, tenants: dict[str, Any]) -> None:
    alpha_before = _state(api, "alpha")
    exchange_id = tenants["exchanges"]["alpha"]
    wrong_answers: list[str] = []
    checked = [route for route in COMMUNITY_ROUTES if route in ROLE_RULES]

    for route in checked:
        method, template = route
        path = _path(template, "alpha", exchange_id)
        allowed = ROLE_RULES[route]
        for role in sorted(ALL_ROLES - allowed):
            body = WRITES.get(route, {}) if method != "GET" else None
            response = api.as_(tenants["tokens"][role]).request(method, path, json=body)
            if (wrong := _refusal(response, 403, "forbidden")) is not None:
                wrong_answers.append(f"{_route_id(route)} as {role} should be 403: {wrong}")
    assert wrong_answers == []
    assert _state(api, "alpha") == alpha_before

    for route in checked:
        method, template = route
        path = _path(template, "alpha", exchange_id)
        for role in sorted(ROLE_RULES[route]):
            # an empty body: allowed roles get past authorisation without changing anything
            body = {} if method != "GET" else None
            response = api.as_(tenants["tokens"][role]).request(method, path, json=body)
            if response.status_code in (401, 403, 404) or response.status_code >= 500:
                wrong_answers.append(
                    f"{_route_id(route)} as {role} should be allowed: "
                    f"{response.status_code} {response.text[:200]}"
                )
    assert wrong_answers == []

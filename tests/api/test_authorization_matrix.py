"""The authorization matrix: every route the app serves, as a key of every role, in the key's own
community and in another one, answers exactly as docs/design.md §2's role table says — allowed, `403
forbidden` (a role not allowed in its own community) or `404 not_found` (any key of another
community, as if it did not exist) — and without a key, `401`.

The routes come from the app itself. `MATRIX` below is the role table written out: a route the app
serves without an entry in it, or an entry for a route the app no longer serves, fails the test, so
whoever adds a route must decide who may call it. The roles each route's dependencies let through
(`allowed_roles`) must agree with the table too.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts

from protocoop.app import create_app
from protocoop.auth.deps import authenticate
from protocoop.auth.roles import Role
from protocoop.config import Settings
from protocoop.db import Database
from protocoop.openapi import api_routes
from tests.support.api import Api, create_community, create_member, make_key
from tests.support.checks import give

ADMIN, TREASURER, APP, AUDITOR = Role.ADMIN, Role.TREASURER, Role.APP, Role.AUDITOR
ROLES = (ADMIN, TREASURER, APP, AUDITOR)
PUBLIC = None
"""No key needed."""
ANY_KEY = frozenset(ROLES)
OVERSEERS = frozenset({ADMIN, TREASURER, AUDITOR})
POSTERS = frozenset({ADMIN, TREASURER, APP})
MANAGERS = frozenset({ADMIN, TREASURER})
ADMIN_ONLY = frozenset({ADMIN})

C = "/v1/communities/{community_id}"
X = f"{C}/exchanges/{{exchange_id}}"
M = f"{C}/members/{{member_id}}"
L = "/v1/links/{link_id}"
IT = f"{C}/intertrades/{{intertrade_id}}"

MATRIX: dict[tuple[str, str], frozenset[Role] | None] = {
    # operations and documentation
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): ADMIN_ONLY,  # or PROTOCOOP_METRICS_TOKEN; public only when configured
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    # outside any community
    ("POST", "/v1/communities"): ADMIN_ONLY,
    ("GET", "/v1/communities"): ANY_KEY,  # admin: all; others: their own
    ("POST", "/v1/api-keys"): MANAGERS,  # treasurer: app and auditor keys of its community
    ("GET", "/v1/api-keys"): MANAGERS,  # treasurer: its community's
    ("DELETE", "/v1/api-keys/{key_id}"): MANAGERS,  # treasurer: its community's app/auditor keys
    ("GET", "/v1/audit-log"): ADMIN_ONLY,
    ("POST", "/v1/links"): ADMIN_ONLY,
    ("GET", "/v1/links"): OVERSEERS,  # admin: all; treasurer, auditor: their community's
    ("GET", L): OVERSEERS,
    ("PATCH", L): ADMIN_ONLY,
    ("DELETE", L): ADMIN_ONLY,
    # one community
    ("GET", C): ANY_KEY,
    ("PATCH", C): MANAGERS,
    ("POST", f"{C}/members"): MANAGERS,
    ("GET", f"{C}/members"): ANY_KEY,
    ("GET", M): ANY_KEY,
    ("PATCH", M): MANAGERS,
    ("GET", f"{M}/balance"): ANY_KEY,
    ("GET", f"{M}/statement"): ANY_KEY,
    ("GET", f"{M}/mutuality"): ANY_KEY,
    ("POST", f"{C}/exchanges"): POSTERS,
    ("POST", f"{C}/exchanges:batch"): POSTERS,
    ("GET", f"{C}/exchanges"): ANY_KEY,
    ("GET", X): ANY_KEY,
    ("POST", f"{X}/reverse"): MANAGERS,
    ("POST", f"{X}/accept"): POSTERS,
    ("POST", f"{X}/reject"): POSTERS,
    ("POST", f"{X}/cancel"): POSTERS,
    ("GET", f"{C}/balances"): OVERSEERS,
    ("GET", f"{C}/trial-balance"): OVERSEERS,
    ("GET", f"{C}/mutuality"): OVERSEERS,
    ("GET", f"{C}/audit"): OVERSEERS,
    ("GET", f"{C}/audit-log"): OVERSEERS,
    ("GET", f"{C}/events"): ANY_KEY,
    ("POST", f"{C}/intertrades"): POSTERS,  # a key of the receiver's community
    ("GET", IT): ANY_KEY,
    ("POST", f"{IT}/reverse"): MANAGERS,
}  # fmt: skip
"""(method, path) -> the roles that may call it (docs/design.md §2), or PUBLIC."""

KEYS_OF_A_COMMUNITY = {("POST", "/v1/api-keys"), ("DELETE", "/v1/api-keys/{key_id}")}
"""Routes outside the community paths that act on one community's keys: for another community's
keys they answer 404 like any community path."""

OWN, OTHER = "alpha", "beta"
PATH_PARAMETER = re.compile(r"\{(\w+)\}")


DASHBOARD = "/ui"
"""The dashboard's pages authenticate with a session cookie, not a bearer token, and answer a
redirect to sign in, not 401: `tests/api/test_ui.py` checks who sees which of them."""


def served_routes(app: Any) -> set[tuple[str, str]]:
    """Every (method, path) of the API the app serves, documented or not (HEAD and the
    dashboard's pages aside)."""
    return {
        (method, str(route.path_format))
        for route in iter_route_contexts(app.routes)
        for method in route.methods or ()
        if method != "HEAD" and str(route.path_format).split("/")[1:2] != [DASHBOARD.strip("/")]
    }


def declared_roles(route: Any) -> frozenset[Role] | None:
    """The roles a route's dependencies let through: PUBLIC without authentication or a role
    guard, every role when it authenticates without a role guard."""
    calls: list[Any] = []
    pending = list(route.dependant.dependencies)
    while pending:
        dependant = pending.pop()
        calls.append(dependant.call)
        pending.extend(dependant.dependencies)
    if authenticate not in calls and not any(hasattr(call, "allowed_roles") for call in calls):
        return PUBLIC
    allowed = ANY_KEY
    for call in calls:
        allowed &= getattr(call, "allowed_roles", ANY_KEY)
    return allowed


@dataclass
class Call:
    """One request: values for the path's parameters, and a body."""

    path_values: dict[str, str] = field(default_factory=dict)
    json: Any = None


@dataclass
class World:
    """Communities alpha and beta (members alice, bob, carol; one exchange each), a key of every
    role for alpha, and fresh resources on demand, made as the admin."""

    api: Api
    tokens: dict[Role, str]
    exchanges: dict[str, str]
    link: str = ""
    intertrades: dict[str, str] = field(default_factory=dict)
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def fresh(self, prefix: str) -> str:
        return f"{prefix}-{next(self.counter)}"

    def exchange(self, community: str, *, pending: bool = False) -> str:
        body = exchange_body(self, pending=pending)
        response = self.api.post(f"/v1/communities/{community}/exchanges", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def intertrade(self, community: str) -> str:
        """alice of the other community gives bob of `community` 1 unit."""
        other = OTHER if community == OWN else OWN
        body = intertrade_body(self, other)
        response = self.api.post(f"/v1/communities/{community}/intertrades", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def unlinked_pair(self) -> dict[str, Any]:
        """A link's body for two new communities."""
        pair = [self.fresh("linked") for _ in range(2)]
        for community in pair:
            create_community(self.api, community)
        return {"a": pair[0], "b": pair[1], "rate": {"a": 1, "b": 1}, "a_cap": 10, "b_cap": 10}

    def new_link(self) -> str:
        """A link between two new communities."""
        response = self.api.post("/v1/links", json=self.unlinked_pair())
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def key(self, community: str) -> str:
        body = {"role": "app", "community": community}
        response = self.api.post("/v1/api-keys", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


def exchange_body(world: World, *, pending: bool = False) -> dict[str, Any]:
    """1 hour between alice and bob, in alternating directions so that no limit is reached."""
    provider, receiver = ("alice", "bob") if next(world.counter) % 2 else ("bob", "alice")
    body: dict[str, Any] = {
        "provider": provider,
        "receiver": receiver,
        "amount": 1,
        "description": "matrix",
    }
    return {**body, "pending": True} if pending else body


def intertrade_body(world: World, provider_community: str) -> dict[str, Any]:
    return {
        "provider": f"{provider_community}/alice",
        "receiver": "bob",
        "amount": 1,
        "description": "matrix",
    }


Builder = Callable[[World, str], Call]

CALLS: dict[tuple[str, str], Builder] = {
    ("POST", "/v1/communities"): lambda w, c: Call(
        json={
            "id": w.fresh("made"),
            "name": "Made",
            "unit": {"code": "HOUR", "name": "hour", "scale": 0},
            "default_lower_limit": -10,
        }
    ),
    ("PATCH", C): lambda w, c: Call(json={"name": w.fresh("Renamed")}),
    ("POST", f"{C}/members"): lambda w, c: Call(json={"id": w.fresh("member"), "name": "New"}),
    ("PATCH", M): lambda w, c: Call(json={"name": w.fresh("Alice")}),
    ("POST", f"{C}/exchanges"): lambda w, c: Call(json=exchange_body(w)),
    ("POST", f"{C}/exchanges:batch"): lambda w, c: Call(
        json={"exchanges": [exchange_body(w), exchange_body(w)]}
    ),
    ("POST", f"{X}/reverse"): lambda w, c: Call(
        {"exchange_id": w.exchange(c)}, json={"reason": "undo"}
    ),
    ("POST", f"{X}/accept"): lambda w, c: Call({"exchange_id": w.exchange(c, pending=True)}),
    ("POST", f"{X}/reject"): lambda w, c: Call({"exchange_id": w.exchange(c, pending=True)}),
    ("POST", f"{X}/cancel"): lambda w, c: Call({"exchange_id": w.exchange(c, pending=True)}),
    ("POST", "/v1/api-keys"): lambda w, c: Call(json={"role": "auditor", "community": c}),
    ("DELETE", "/v1/api-keys/{key_id}"): lambda w, c: Call({"key_id": w.key(c)}),
    ("POST", "/v1/links"): lambda w, c: Call(json=w.unlinked_pair()),
    ("PATCH", L): lambda w, c: Call(json={"a_cap": 100}),
    ("DELETE", L): lambda w, c: Call({"link_id": w.new_link()}),
    ("POST", f"{C}/intertrades"): lambda w, c: Call(
        json=intertrade_body(w, OTHER if c == OWN else OWN)
    ),
    ("POST", f"{IT}/reverse"): lambda w, c: Call(
        {"intertrade_id": w.intertrade(c)}, json={"reason": "undo"}
    ),
}
"""Requests that succeed when the role may make them. Other routes get the path filled with
existing resources (alice, the community's exchange) and, if they take one, an empty body: a
route added later is still checked for who may call it."""


def request_for(world: World, method: str, template: str, community: str) -> tuple[str, Any]:
    call = CALLS.get((method, template), lambda w, c: Call())(world, community)
    values = {
        "community_id": community,
        "member_id": "alice",
        "exchange_id": world.exchanges[community],
        "link_id": world.link,
        "intertrade_id": world.intertrades.get(community, "none"),
        **call.path_values,
    }
    path = PATH_PARAMETER.sub(lambda match: values.get(match.group(1), "alice"), template)
    body = call.json
    if body is None and (method, template) not in CALLS and method in ("POST", "PUT", "PATCH"):
        body = {}
    return path, body


def _names(roles: frozenset[Role] | None) -> str:
    return "no key" if roles is None else ", ".join(sorted(role.value for role in roles))


def expected(route: tuple[str, str], role: Role, community: str) -> int | None:
    """None when `role` may make the request in `community`, else 403 or 404."""
    allowed = MATRIX[route]
    assert allowed is not PUBLIC
    in_path = route[1].startswith(C)
    about_a_community = in_path or route in KEYS_OF_A_COMMUNITY
    if (
        about_a_community
        and community != OWN
        and role is not ADMIN
        and (in_path or role in allowed)
    ):
        return 404  # a key never learns that another community exists
    return None if role in allowed else 403


def outcome(response: Any, must_succeed: bool) -> str | None:
    """What was wrong with an answer to an allowed request, or None."""
    status = response.status_code
    if status in (401, 403, 404) or status >= 500:
        return f"{status} {response.text[:300]}"
    if must_succeed and not 200 <= status < 300:
        return f"{status} {response.text[:300]}"
    return None


def refusal(response: Any, status: int) -> str | None:
    """None when `response` is the problem document for `status`, else what it was."""
    code = {401: "unauthorized", 403: "forbidden", 404: "not_found"}[status]
    if (
        response.status_code == status
        and response.headers["content-type"].startswith("application/problem+json")
        and response.json().get("code") == code
    ):
        return None
    return f"{response.status_code} {response.text[:300]}"


@pytest.fixture
def world(api: Api, db: Database) -> World:
    exchanges = {}
    for community in (OWN, OTHER):
        create_community(api, community)
        for member in ("alice", "bob", "carol"):
            create_member(api, community, member)
        exchanges[community] = give(api, community, "alice", "bob", 5)["id"]
    tokens = {role: make_key(db, role, OWN) for role in ROLES if role is not ADMIN}
    tokens[ADMIN] = make_key(db, ADMIN)
    world = World(api=api, tokens=tokens, exchanges=exchanges)
    link = {"a": OWN, "b": OTHER, "rate": {"a": 1, "b": 1}, "a_cap": 1000, "b_cap": 1000}
    response = api.post("/v1/links", json=link)
    assert response.status_code == 201, response.text
    world.link = response.json()["id"]
    world.intertrades = {community: world.intertrade(community) for community in (OWN, OTHER)}
    return world


def test_every_route_answers_every_role_as_the_role_table_says(app: Any, world: World) -> None:
    served = served_routes(app)
    assert sorted(served - MATRIX.keys()) == [], "routes without an entry in MATRIX: add them"
    assert sorted(MATRIX.keys() - served) == [], "MATRIX names routes the app no longer serves"
    disagreements = [
        f"{method} {route.path_format}: dependencies allow {_names(declared)}, MATRIX says "
        f"{_names(MATRIX[(method, str(route.path_format))])}"
        for route in api_routes(app.routes)
        for method in route.methods or ()
        if (method, str(route.path_format)) in served
        and (declared := declared_roles(route)) != MATRIX[(method, str(route.path_format))]
    ]
    assert disagreements == []
    api = world.api
    wrong: list[str] = []

    for route in sorted(served):
        method, template = route
        if MATRIX[route] is PUBLIC:
            for token in (None, world.tokens[APP]):
                response = api.as_(token).request(method, template)
                if response.status_code != 200:
                    wrong.append(f"{method} {template} (public): {response.status_code}")
            continue
        for token, name in ((None, "no key"), ("pcp_not-a-key", "an unknown key")):
            path, body = request_for(world, method, template, OWN)
            response = api.as_(token).request(method, path, json=body)
            if (problem := refusal(response, 401)) is not None:
                wrong.append(f"{method} {template} with {name}: {problem} instead of 401")
        for role, community in itertools.product(ROLES, (OWN, OTHER)):
            path, body = request_for(world, method, template, community)
            response = api.as_(world.tokens[role]).request(method, path, json=body)
            whose = "its own" if community == OWN else "another"
            where = f"{method} {template} as {role.value} in {whose} community"
            status = expected(route, role, community)
            if status is None:
                problem = outcome(response, route in CALLS or method == "GET")
                if problem is not None:
                    wrong.append(f"{where}: {problem} instead of allowed")
            elif (problem := refusal(response, status)) is not None:
                wrong.append(f"{where}: {problem} instead of {status}")

    assert wrong == [], "\n".join(wrong)


def test_lists_outside_communities_show_a_key_only_its_own_community(
    api: Api, world: World
) -> None:
    for role in (TREASURER, APP, AUDITOR):
        listed = api.as_(world.tokens[role]).get("/v1/communities").json()["items"]
        assert [community["id"] for community in listed] == [OWN]
    keys = api.as_(world.tokens[TREASURER]).get("/v1/api-keys", params={"limit": 1000})
    assert {key["community"] for key in keys.json()["items"]} == {OWN}
    everything = api.as_(world.tokens[ADMIN]).get("/v1/communities").json()["items"]
    assert {community["id"] for community in everything} >= {OWN, OTHER}


def test_every_documented_operation_is_among_the_routes_the_matrix_checks() -> None:
    """Guards `served_routes`: if it stopped seeing the routes of included routers, the
    completeness check above would pass on nothing."""
    app = create_app(Settings(database_url="sqlite://", _env_file=None))  # type: ignore[call-arg]
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    assert len(documented) > 20
    assert documented <= served_routes(app)

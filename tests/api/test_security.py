"""Security details: security headers on every answer, CORS only when configured, a per-key
rate limit, `/metrics` only for those the operator lets read it, revoked and unknown tokens
alike, and tokens never in the logs."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from protocoop.app import create_app
from protocoop.auth.ratelimit import RateLimiter
from protocoop.config import Settings
from protocoop.security import API_CONTENT_SECURITY_POLICY
from tests.support.api import Api
from tests.support.checks import give, problem

COMMUNITY = "/v1/communities/riverside"
BASIC_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


def assert_secured(response: Any, csp: str | None = API_CONTENT_SECURITY_POLICY) -> None:
    for name, value in BASIC_HEADERS.items():
        assert response.headers.get(name) == value, (response.request.url, name, response.headers)
    if csp is not None:
        assert response.headers.get("content-security-policy") == csp, response.headers


@pytest.fixture
def app_with(settings: Settings) -> Iterator[Any]:
    """Build an app of its own on the test's database, with some settings changed."""
    clients: list[TestClient] = []

    def build(**changes: Any) -> TestClient:
        client = TestClient(
            create_app(settings.model_copy(update=changes)), raise_server_exceptions=False
        )
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


# --- security headers --------------------------------------------------------------------------


def test_every_answer_carries_the_security_headers_errors_included(
    api: Api, keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = api.as_(keys["app"])
    answers = [
        api.get(COMMUNITY),
        api.post(f"{COMMUNITY}/members", json={"id": "dan", "name": "Dan"}),
        api.post(f"{COMMUNITY}/exchanges", json={"provider": "alice", "receiver": "bob"}),
        api.delete("/v1/api-keys/key_0000000000000000"),
        api.as_(None).get(COMMUNITY),
        api.as_("pcp_unknown").get(COMMUNITY),
        app.patch(COMMUNITY, json={"name": "x"}),
        api.get("/v1/communities/nowhere"),
        api.request("PUT", COMMUNITY),
        api.post(f"{COMMUNITY}/members", content=b"x" * (2 * 1024 * 1024)),
        api.post(f"{COMMUNITY}/members", json={"id": "dan", "name": "Again"}),
        api.get("/healthz"),
        api.get("/metrics"),
        api.get("/openapi.json"),
        api.get("/no/such/route"),
    ]
    statuses = {response.status_code for response in answers}
    assert statuses >= {200, 201, 401, 403, 404, 405, 409, 413, 422}, statuses
    for response in answers:
        assert_secured(response)

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr("protocoop.communities.service.get_community", broken)
    crashed = api.get(COMMUNITY)
    problem(crashed, 500, "internal_error")
    assert_secured(crashed)


def _inline_script_hashes(html: str) -> list[str]:
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    ]


def _policy(response: Any) -> dict[str, list[str]]:
    directives = [d.strip().split() for d in response.headers["content-security-policy"].split(";")]
    return {d[0]: d[1:] for d in directives if d}


def test_docs_pages_get_a_policy_that_lets_exactly_their_assets_run(api: Api) -> None:
    swagger = api.as_(None).get("/docs")
    redoc = api.as_(None).get("/redoc")

    assert swagger.status_code == redoc.status_code == 200
    for page in (swagger, redoc):
        assert_secured(page, csp=None)
        policy = _policy(page)
        assert policy["default-src"] == ["'none'"]
        assert policy["frame-ancestors"] == ["'none'"]
        assert "'unsafe-inline'" not in policy["script-src"]
        assert "'unsafe-eval'" not in policy["script-src"]
        assert policy["connect-src"] == ["'self'"]  # /openapi.json and "Try it out" only
        for src in re.findall(r'<script src="([^"]+)"', page.text):
            assert any(src.startswith(allowed) for allowed in policy["script-src"]), src
        for href in re.findall(r'<link[^>]*href="([^"]+)"', page.text):
            allowed = policy["style-src"] + policy["img-src"]
            assert any(href.startswith(source) for source in allowed), href

    swagger_policy = _policy(swagger)
    hashes = _inline_script_hashes(swagger.text)
    assert hashes
    assert all(h in swagger_policy["script-src"] for h in hashes)
    assert "validatorUrl" in swagger.text  # no badge loaded from swagger.io
    assert "blob:" in _policy(redoc)["worker-src"]
    assert api.get("/openapi.json").headers["content-security-policy"] == (
        API_CONTENT_SECURITY_POLICY
    )


# --- CORS --------------------------------------------------------------------------------------


def _preflight(client: TestClient, origin: str) -> Any:
    return client.options(
        COMMUNITY,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )


def test_cors_is_off_unless_origins_are_configured(api: Api, admin_token: str) -> None:
    preflight = _preflight(api.client, "https://app.example.org")
    simple = api.get(COMMUNITY, headers={"Origin": "https://app.example.org"})

    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code == 405
    assert "access-control-allow-origin" not in simple.headers
    assert_secured(preflight)


def test_configured_origins_and_only_they_may_call_from_a_browser(
    app_with: Any, api: Api, community: dict[str, Any]
) -> None:
    client = app_with(cors_origins="https://app.example.org, https://portal.example.net")
    auth = {"Authorization": f"Bearer {api.token}"}

    allowed = _preflight(client, "https://portal.example.net")
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["access-control-allow-origin"] == "https://portal.example.net"
    assert "PATCH" in allowed.headers["access-control-allow-methods"]
    for header in ("authorization", "content-type", "idempotency-key"):
        assert header in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in allowed.headers
    assert_secured(allowed)

    refused = _preflight(client, "https://evil.example.com")
    assert "access-control-allow-origin" not in refused.headers

    read = client.get(COMMUNITY, headers={**auth, "Origin": "https://app.example.org"})
    assert read.status_code == 200
    assert read.headers["access-control-allow-origin"] == "https://app.example.org"
    assert "x-request-id" in read.headers["access-control-expose-headers"].lower()
    assert "retry-after" in read.headers["access-control-expose-headers"].lower()
    assert_secured(read)
    other = client.get(COMMUNITY, headers={**auth, "Origin": "https://evil.example.com"})
    assert "access-control-allow-origin" not in other.headers


def test_a_refused_preflight_is_a_problem_document(
    app_with: Any, api: Api, community: dict[str, Any]
) -> None:
    client = app_with(cors_origins="https://app.example.org")
    for origin, method, headers in (
        ("https://evil.example.com", "PATCH", "authorization"),
        ("https://app.example.org", "PUT", "authorization"),
        ("https://app.example.org", "PATCH", "x-something-else"),
    ):
        refused = client.options(
            COMMUNITY,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": headers,
            },
        )
        assert refused.status_code == 400, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        body = refused.json()
        assert (body["status"], body["code"]) == (400, "cors_refused")
        assert "Disallowed CORS" in body["detail"]
        if origin != "https://app.example.org":
            assert "access-control-allow-origin" not in refused.headers
        assert_secured(refused)


def test_cors_origins_setting_is_a_comma_separated_list() -> None:
    settings = Settings(cors_origins=" https://a.example , ,https://b.example", _env_file=None)  # type: ignore[call-arg]
    assert settings.cors_origin_list == ["https://a.example", "https://b.example"]
    assert Settings(_env_file=None).cors_origin_list == []  # type: ignore[call-arg]


# --- rate limit --------------------------------------------------------------------------------


@contextmanager
def rate_limited(app: Any, limiter: RateLimiter) -> Iterator[None]:
    """Run with `limiter` in place of the app's. (pytest's monkeypatch cannot restore an
    attribute of Starlette's `State`.)"""
    previous = app.state.rate_limiter
    app.state.rate_limiter = limiter
    try:
        yield
    finally:
        app.state.rate_limiter = previous


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_past_its_rate_gets_429_with_retry_after_and_other_keys_go_on(
    api: Api, app: Any, keys: dict[str, str]
) -> None:
    clock = FakeClock()
    with rate_limited(app, RateLimiter(3, clock=clock)):
        a_key_past_its_rate(api, keys, clock)


def a_key_past_its_rate(api: Api, keys: dict[str, str], clock: FakeClock) -> None:
    auditor, treasurer = api.as_(keys["auditor"]), api.as_(keys["treasurer"])

    assert [auditor.get(COMMUNITY).status_code for _ in range(3)] == [200, 200, 200]
    limited = auditor.get(COMMUNITY)
    body = problem(limited, 429, "rate_limited")
    assert limited.headers["retry-after"] == "20"  # 3 a minute: one more every 20 s
    assert body["retry_after"] == 20
    assert_secured(limited)
    problem(
        auditor.post(f"{COMMUNITY}/members", json={"id": "dan", "name": "D"}), 429, "rate_limited"
    )

    assert treasurer.get(COMMUNITY).status_code == 200  # another key has its own bucket
    assert api.as_("pcp_unknown").get(COMMUNITY).status_code == 401  # no key: nothing to count

    clock.now += 19
    problem(auditor.get(COMMUNITY), 429, "rate_limited")
    clock.now += 1
    assert auditor.get(COMMUNITY).status_code == 200
    problem(auditor.get(COMMUNITY), 429, "rate_limited")
    clock.now += 3600
    assert [auditor.get(COMMUNITY).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_posting_is_rate_limited_too(api: Api, app: Any, keys: dict[str, str]) -> None:
    poster = api.as_(keys["app"])

    with rate_limited(app, RateLimiter(2, clock=FakeClock())):
        give(poster, "riverside", "alice", "bob", 1)
        give(poster, "riverside", "alice", "bob", 1)
        refused = poster.post(
            f"{COMMUNITY}/exchanges",
            json={"provider": "alice", "receiver": "bob", "amount": 1, "description": "third"},
        )

    problem(refused, 429, "rate_limited")
    assert refused.headers["retry-after"] == "30"
    listed = api.get(f"{COMMUNITY}/exchanges").json()["items"]
    assert [x["description"] for x in listed].count("third") == 0


def test_the_rate_limit_is_off_by_default_and_set_by_its_setting(
    api: Api, keys: dict[str, str], app_with: Any
) -> None:
    assert Settings(_env_file=None).rate_limit_per_minute == 0  # type: ignore[call-arg]
    auditor = api.as_(keys["auditor"])
    assert {auditor.get(COMMUNITY).status_code for _ in range(70)} == {200}

    limited = app_with(rate_limit_per_minute=2)
    auth = {"Authorization": f"Bearer {keys['auditor']}"}
    statuses = [limited.get(COMMUNITY, headers=auth).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_429_is_documented_on_every_authenticated_route(api: Api) -> None:
    document = api.get("/openapi.json").json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if "401" in responses:
                assert "429" in responses, (method, path)
                assert "Retry-After" in responses["429"]["headers"], (method, path)


# --- metrics -----------------------------------------------------------------------------------

METRICS_TOKEN = "metrics-" + "s3cret" * 4


def test_metrics_need_an_admin_key_by_default(api: Api, keys: dict[str, str]) -> None:
    """`/metrics` counts every community's exchanges and refusals: not for anyone's eyes."""
    assert Settings(_env_file=None).metrics_public is False  # type: ignore[call-arg]
    give(api.as_(keys["app"]), "riverside", "alice", "bob", 1)

    for token in (None, "pcp_" + "C" * 43, METRICS_TOKEN):  # no token is configured
        problem(api.as_(token).get("/metrics"), 401, "unauthorized")
    for role in ("treasurer", "app", "auditor"):
        problem(api.as_(keys[role]).get("/metrics"), 403, "forbidden")
    allowed = api.as_(keys["admin"]).get("/metrics")
    assert allowed.status_code == 200
    assert allowed.headers["content-type"].startswith("text/plain")
    assert "protocoop_exchanges" in allowed.text


def test_the_metrics_token_reads_metrics_and_nothing_else(
    api: Api, keys: dict[str, str], app_with: Any
) -> None:
    client = app_with(metrics_token=SecretStr(METRICS_TOKEN))

    def metrics(token: str | None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return client.get("/metrics", headers=headers)

    assert metrics(METRICS_TOKEN).status_code == 200
    assert "protocoop_exchanges" in metrics(METRICS_TOKEN).text
    assert metrics(keys["admin"]).status_code == 200
    problem(metrics(keys["auditor"]), 403, "forbidden")
    for wrong in (None, METRICS_TOKEN[:-1], METRICS_TOKEN + "x", "pcp_" + "C" * 43):
        problem(metrics(wrong), 401, "unauthorized")
    as_api_key = client.get(COMMUNITY, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    problem(as_api_key, 401, "unauthorized")


def test_metrics_are_open_only_when_the_operator_says_so(app_with: Any) -> None:
    client = app_with(metrics_public=True)
    opened = client.get("/metrics")
    assert opened.status_code == 200
    assert "protocoop_exchanges" in opened.text


def test_a_short_metrics_token_is_refused_and_an_empty_one_means_none() -> None:
    with pytest.raises(ValueError, match="at least 16 characters"):
        Settings(metrics_token="short", _env_file=None)  # type: ignore[call-arg]
    assert Settings(metrics_token="", _env_file=None).metrics_token is None  # type: ignore[call-arg]
    assert Settings(_env_file=None).metrics_token is None  # type: ignore[call-arg]


# --- tokens ------------------------------------------------------------------------------------


def test_revoked_and_unknown_tokens_get_the_same_401_on_writes_too(
    api: Api, keys: dict[str, str]
) -> None:
    created = api.post("/v1/api-keys", json={"role": "app", "community": "riverside"}).json()
    token = created["token"]
    give(api.as_(token), "riverside", "alice", "bob", 1)  # the key works, and is cached
    assert api.delete(f"/v1/api-keys/{created['id']}").status_code == 204
    unknown = "pcp_" + "B" * 43

    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", COMMUNITY, {}),
        (
            "POST",
            f"{COMMUNITY}/exchanges",
            {"json": {"provider": "alice", "receiver": "bob", "amount": 1, "description": "x"}},
        ),
        ("PATCH", f"{COMMUNITY}/members/alice", {"json": {"name": "A"}}),
        ("GET", "/v1/api-keys", {}),
    ]
    for method, path, extra in requests:
        revoked = api.as_(token).request(method, path, **extra)
        never_was = api.as_(unknown).request(method, path, **extra)
        problem(revoked, 401, "unauthorized")
        assert revoked.content == never_was.content, path
        assert revoked.headers["www-authenticate"] == never_was.headers["www-authenticate"]


class _Everything(logging.Handler):
    """Keeps every record, as text that holds all a formatter could print: the message, its
    arguments, the traceback and every extra field."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.texts: list[str] = []
        self._format = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self._format.format(record) + " " + repr(vars(record)))


@pytest.fixture
def every_log_record() -> Iterator[_Everything]:
    handler = _Everything()
    root = logging.getLogger()
    loud = [root, logging.getLogger("sqlalchemy.engine"), logging.getLogger("protocoop")]
    levels = [logger.level for logger in loud]
    root.addHandler(handler)
    for logger in loud:
        logger.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    for logger, level in zip(loud, levels, strict=True):
        logger.setLevel(level)


def test_tokens_never_reach_the_logs_even_when_requests_fail(
    api: Api,
    keys: dict[str, str],
    app_with: Any,
    every_log_record: _Everything,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = app_with(access_log=True, log_level="debug", rate_limit_per_minute=1000)
    created = api.post("/v1/api-keys", json={"role": "app", "community": "riverside"}).json()
    revoked_token = created["token"]
    assert api.delete(f"/v1/api-keys/{created['id']}").status_code == 204
    secrets = [*keys.values(), api.token, revoked_token, "pcp_" + "Z" * 43]

    def call(token: str, method: str, path: str, scheme: str = "Bearer", **extra: Any) -> Any:
        headers = {"Authorization": f"{scheme} {token}", **extra.pop("headers", {})}
        return client.request(method, path, headers=headers, **extra)

    member = {"json": {"id": "dan", "name": "Dan"}}
    exchange = {"json": {"provider": "alice", "receiver": "bob", "amount": 1, "description": "d"}}
    statuses = {
        call(keys["admin"], "GET", COMMUNITY).status_code,
        call(keys["treasurer"], "POST", f"{COMMUNITY}/members", **member).status_code,
        call(keys["treasurer"], "POST", f"{COMMUNITY}/members", **member).status_code,
        call(keys["app"], "POST", f"{COMMUNITY}/exchanges", **exchange).status_code,
        call(keys["app"], "POST", f"{COMMUNITY}/exchanges", json={"amount": "7"}).status_code,
        call(keys["app"], "PATCH", COMMUNITY, json={"name": "x"}).status_code,
        call(keys["auditor"], "GET", "/v1/communities/nowhere").status_code,
        call(keys["auditor"], "GET", f"{COMMUNITY}/audit-log").status_code,
        call(revoked_token, "GET", COMMUNITY).status_code,
        call("pcp_" + "Z" * 43, "POST", f"{COMMUNITY}/exchanges", **exchange).status_code,
        call(keys["admin"], "GET", COMMUNITY, scheme="Basic").status_code,
        call(keys["admin"], "GET", COMMUNITY, scheme="Token").status_code,
        call(keys["admin"], "DELETE", COMMUNITY).status_code,
        call(
            keys["admin"],
            "POST",
            f"{COMMUNITY}/members",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        ).status_code,
        call(keys["admin"], "POST", f"{COMMUNITY}/members", content=b"x" * (2 << 20)).status_code,
    }
    with rate_limited(client.app, RateLimiter(1, clock=FakeClock())):
        statuses |= {call(keys["auditor"], "GET", COMMUNITY).status_code for _ in range(2)}

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr("protocoop.members.service.get_member", broken)
    statuses.add(call(keys["admin"], "GET", f"{COMMUNITY}/members/alice").status_code)

    assert statuses >= {200, 201, 401, 403, 404, 405, 409, 413, 422, 429, 500}, statuses
    logged = "\n".join(every_log_record.texts)
    assert "unexpected error" in logged
    assert "a bug" in logged
    assert '"route"' in logged or "'route'" in logged  # the access log too
    for secret in secrets:
        assert secret not in logged
        assert secret[12:] not in logged  # not even the part after the prefix listings show

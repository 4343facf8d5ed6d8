"""Bad requests of every kind get an RFC 9457 problem with the documented code, never a 500, and
change nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tests.support.api import Api, create_member
from tests.support.checks import give, member_state, members, problem, validation_problem

C = "/v1/communities/riverside"
MEMBERS = f"{C}/members"
JSON = "application/json"
ONE_MIB = 1024 * 1024


def _member(**fields: Any) -> bytes:
    """The JSON text of a member body, with `fields` spliced in as raw JSON text."""
    parts = ['"id":"dave"', '"name":"Dave"', *(f'"{k}":{v}' for k, v in fields.items())]
    return ("{" + ",".join(parts) + "}").encode()


UNREADABLE_MEMBER_BODIES: list[tuple[str, bytes, str | None]] = [
    ("truncated JSON", b'{"id": "dave", "name": ', JSON),
    ("unquoted keys", b"{id: dave, name: Dave}", JSON),
    ("single quotes", b"{'id': 'dave', 'name': 'Dave'}", JSON),
    ("trailing garbage", b'{"id":"dave","name":"Dave"}}', JSON),
    ("not UTF-8", b'{"id":"dave","name":"\xff\xfe"}', JSON),
    ("binary", b"\x00\x01\x02\x03", JSON),
    ("empty body", b"", JSON),
    ("whitespace only", b"   \n", JSON),
    ("JSON array", b'[{"id":"dave","name":"Dave"}]', JSON),
    ("JSON null", b"null", JSON),
    ("JSON string", b'"dave"', JSON),
    ("JSON number", b"42", JSON),
    ("deeply nested", _member(x="[" * 100_000 + "]" * 100_000), JSON),
    ("text/plain", _member(), "text/plain"),
    ("form encoded", b"id=dave&name=Dave", "application/x-www-form-urlencoded"),
    ("no content type", _member(), None),
    # a string, a float or a boolean where an integer belongs
    ("string limit", _member(lower_limit='"-7"'), JSON),
    ("float limit", _member(lower_limit="-7.0"), JSON),
    ("fractional limit", _member(lower_limit="-1.5"), JSON),
    ("exponent limit", _member(lower_limit="-7e0"), JSON),
    ("boolean limit", _member(lower_limit="true"), JSON),
    ("false limit", _member(upper_limit="false"), JSON),
    ("list limit", _member(lower_limit="[-7]"), JSON),
    ("object limit", _member(lower_limit='{"value":-7}'), JSON),
    ("NaN limit", _member(lower_limit="NaN"), JSON),
    ("infinite limit", _member(lower_limit="-Infinity"), JSON),
    # numbers too big for any account
    ("10^16 limit", _member(lower_limit=str(-(10**16))), JSON),
    ("10^16 upper limit", _member(upper_limit=str(10**16)), JSON),
    ("beyond 64 bits", _member(upper_limit=str(2**64)), JSON),
    ("5000 digits", _member(lower_limit="-" + "9" * 5000), JSON),
    ("1e400", _member(lower_limit="-1e400"), JSON),
    # unknown fields
    ("unknown field", _member(nickname='"D"'), JSON),
    ("repeated key", _member(name='"Eve"'), JSON),
    ("repeated key with the same value", _member(id='"dave"'), JSON),
    ("balance field", _member(balance="100"), JSON),
    # text the databases cannot store
    ("NUL in name", b'{"id":"dave","name":"Da\\u0000ve"}', JSON),
    ("lone surrogate in name", b'{"id":"dave","name":"\\ud800"}', JSON),
    ("low surrogate in name", b'{"id":"dave","name":"x\\udfffy"}', JSON),
    ("lone surrogate in id", b'{"id":"\\ud800","name":"Dave"}', JSON),
    ("NUL in id", b'{"id":"da\\u0000ve","name":"Dave"}', JSON),
    ("surrogate in unknown key", b'{"id":"dave","name":"Dave","\\ud800":1}', JSON),
    ("name too long", b'{"id":"dave","name":"' + b"x" * 100_000 + b'"}', JSON),
]


def _refusals(api: Api) -> Iterator[tuple[str, Any]]:
    for case, content, content_type in UNREADABLE_MEMBER_BODIES:
        headers = {"Content-Type": content_type} if content_type else {}
        yield case, api.post(MEMBERS, content=content, headers=headers)


def test_unreadable_or_invalid_member_bodies_are_validation_errors_and_change_nothing(
    api: Api, community: dict[str, Any]
) -> None:
    give(api, "riverside", "alice", "bob", 3)
    before = member_state(api, "riverside")

    for case, response in _refusals(api):
        assert response.status_code == 422, (case, response.status_code, response.text[:500])
        validation_problem(response)

    assert member_state(api, "riverside") == before
    problem(api.get(f"{MEMBERS}/dave"), 404, "not_found")


def test_wrongly_typed_or_huge_amounts_are_refused_and_post_nothing(
    api: Api, community: dict[str, Any]
) -> None:
    before = member_state(api, "riverside")
    for amount in ('"7"', "7.0", "1.5", "true", "null", "0", "-5", str(10**16), "9" * 5000):
        content = (
            '{"provider":"alice","receiver":"bob","amount":' + amount + ',"description":"x"}'
        ).encode()
        response = api.post(f"{C}/exchanges", content=content, headers={"Content-Type": JSON})
        assert response.status_code == 422, (amount[:20], response.text[:500])
        validation_problem(response)
    assert member_state(api, "riverside") == before


def test_wrongly_typed_community_fields_are_refused(api: Api) -> None:
    for fields in (
        '"unit":{"code":"HOUR","name":"hour","scale":"2"},"default_lower_limit":0',
        '"unit":{"code":"HOUR","name":"hour","scale":2.0},"default_lower_limit":0',
        '"unit":{"code":"HOUR","name":"hour","scale":true},"default_lower_limit":0',
        '"unit":{"code":"HOUR","name":"hour","scale":0},"default_lower_limit":"-5"',
        '"unit":{"code":"HOUR","name":"hour","scale":0},"default_lower_limit":-5.0',
        '"unit":{"code":"HOUR","name":"hour","scale":0},"default_lower_limit":false',
        '"unit":"HOUR","default_lower_limit":0',
    ):
        content = ('{"id":"riverside","name":"R",' + fields + "}").encode()
        response = api.post("/v1/communities", content=content, headers={"Content-Type": JSON})
        assert response.status_code == 422, (fields, response.text)
        validation_problem(response)
    assert api.get("/v1/communities").json()["items"] == []


def test_a_body_naming_a_key_twice_is_refused_wherever_it_is(
    api: Api, community: dict[str, Any]
) -> None:
    """JSON parsers disagree on which of two repeated keys wins: the API takes neither."""
    before = member_state(api, "riverside")
    item = '{"provider":"alice","receiver":"bob","amount":1,"description":"x"'
    for path, content in (
        (f"{C}/exchanges", item + ',"amount":1000}'),
        (f"{C}/exchanges:batch", '{"exchanges":[' + item + ',"receiver":"carol"}]}'),
        (f"{C}/exchanges", item + ',"metadata":{"k":1,"k":2}}'),
        ("/v1/api-keys", '{"role":"app","community":"riverside","role":"admin"}'),
    ):
        response = api.post(path, content=content, headers={"Content-Type": JSON})
        body = validation_problem(response)
        assert body["errors"][0]["loc"] == ["body"], body
        assert "more than once" in body["errors"][0]["msg"], body
    assert member_state(api, "riverside") == before
    assert len(api.get("/v1/api-keys").json()["items"]) == 1  # the test's own admin key


def test_every_operation_with_a_json_body_refuses_a_repeated_key(
    api: Api, community: dict[str, Any]
) -> None:
    document = api.get("/openapi.json").json()
    operations = [
        (method, path)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    ]
    assert len(operations) >= 8, operations
    for method, path in operations:
        concrete = path.format(
            community_id="riverside",
            member_id="alice",
            exchange_id="00000000-0000-4000-8000-000000000000",
            key_id="key_0000000000000000",
            link_id="00000000-0000-4000-8000-000000000000",
            intertrade_id="00000000-0000-4000-8000-000000000000",
        )
        response = api.request(
            method.upper(), concrete, content='{"x":1,"x":1}', headers={"Content-Type": JSON}
        )
        body = validation_problem(response)
        assert "more than once" in body["errors"][0]["msg"], (method, path, body)


def test_validation_errors_say_where_and_what(api: Api, community: dict[str, Any]) -> None:
    response = api.post(MEMBERS, json={"id": "dave", "name": "Dave", "lower_limit": "-7"})
    body = validation_problem(response)
    assert ["body", "lower_limit"] in [error["loc"] for error in body["errors"]]
    assert "lower_limit" in body["detail"]

    body = validation_problem(api.post(MEMBERS, json={"id": "dave", "name": "D", "colour": 1}))
    assert ["body", "colour"] in [error["loc"] for error in body["errors"]]


def test_unicode_names_are_kept_exactly(api: Api, community: dict[str, Any]) -> None:
    names = {
        "zoe": "Zoë Ångström-Øberg",
        "coop": "合作社 🌱 Coopérative",
        "amal": "أمل الحسن",
        "combining": "Cafe\u0301 e\u0300",  # combining accents stay as sent, not normalised
        "emoji": "👩🏽‍🌾 farmer",
    }
    for member_id, name in names.items():
        created = create_member(api, "riverside", member_id, name=name)
        assert created["name"] == name
    stored = {m["id"]: m["name"] for m in members(api, "riverside")}
    assert {k: stored[k] for k in names} == names
    renamed = api.patch(f"{MEMBERS}/zoe", json={"name": "Zoë 🌍"})
    assert renamed.json()["name"] == "Zoë 🌍"
    community_name = "Коопера́тив «Рассвет»"
    assert api.patch(C, json={"name": community_name}).json()["name"] == community_name


def test_bodies_over_one_mebibyte_are_refused_with_413(api: Api, community: dict[str, Any]) -> None:
    before = member_state(api, "riverside")
    padded = ('{"id":"dave","name":"' + "x" * 150 + '"}').encode()
    at_limit = padded + b" " * (ONE_MIB - len(padded))
    over = at_limit + b" "

    def streamed() -> Iterator[bytes]:  # no Content-Length: the limit is counted as it arrives
        for start in range(0, len(over), 64 * 1024):
            yield over[start : start + 64 * 1024]

    problem(
        api.post(MEMBERS, content=over, headers={"Content-Type": JSON}), 413, "payload_too_large"
    )
    problem(
        api.post(MEMBERS, content=streamed(), headers={"Content-Type": JSON}),
        413,
        "payload_too_large",
    )
    huge_declared = {"Content-Type": JSON, "Content-Length": str(10**12)}
    response = api.post(MEMBERS, content=b"{}", headers=huge_declared)
    problem(response, 413, "payload_too_large")
    assert member_state(api, "riverside") == before

    accepted = api.post(MEMBERS, content=at_limit, headers={"Content-Type": JSON})
    assert accepted.status_code == 201, accepted.text[:300]


def test_unknown_routes_are_404_problems(api: Api, community: dict[str, Any]) -> None:
    for path in (
        "/nope",
        "/v1",
        "/v1/nope",
        f"{C}/nope",
        f"{MEMBERS}/alice/nope",
        "/v2/communities",
    ):
        problem(api.get(path), 404, "not_found")
        problem(api.as_(None).get(path), 404, "not_found")


def test_wrong_methods_are_405_problems(api: Api, community: dict[str, Any]) -> None:
    before = member_state(api, "riverside")
    for method, path in (
        ("PUT", "/v1/communities"),
        ("DELETE", C),
        ("PUT", C),
        ("DELETE", f"{MEMBERS}/alice"),
        ("PUT", f"{MEMBERS}/alice"),
        ("POST", f"{MEMBERS}/alice"),
        ("PATCH", "/v1/api-keys"),
        ("POST", "/healthz"),
    ):
        problem(api.request(method, path, json={"name": "x"}), 405, "method_not_allowed")
    assert member_state(api, "riverside") == before
    assert api.get(C).json() == community


def test_missing_or_garbage_credentials_are_401_problems(
    api: Api, community: dict[str, Any], admin_token: str
) -> None:
    before = member_state(api, "riverside")
    attempts: list[dict[str, Any]] = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {admin_token}"},
        {"Authorization": f"Token {admin_token}"},
        {"Authorization": admin_token},
        {"Authorization": f"Bearer {admin_token}x"},
        {"Authorization": f"Bearer {admin_token[:-1]}"},
        {"Authorization": "Bearer " + "A" * 8000},
        {"Authorization": "Bearer pcp_\u00e9\u00e8".encode("latin-1")},
        {"Authorization": b"Bearer \xff\xfe\x00"[:-1]},
    ]
    for headers in attempts:
        client = api.client
        for method, path, body in (
            ("GET", "/v1/communities", None),
            ("GET", MEMBERS, None),
            ("POST", MEMBERS, {"id": "mallory", "name": "Mallory"}),
            ("PATCH", f"{MEMBERS}/alice", {"name": "Pwned"}),
            ("POST", "/v1/api-keys", {"role": "admin"}),
        ):
            response = client.request(method, path, headers=headers, json=body)
            problem(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].startswith("Bearer")
    assert member_state(api, "riverside") == before


def test_bad_idempotency_keys_are_refused(api: Api, community: dict[str, Any]) -> None:
    before = member_state(api, "riverside")
    for key in ("", "k" * 256, "caf\u00e9".encode("latin-1"), "tab\there"):
        response = api.post(
            MEMBERS, json={"id": "dave", "name": "Dave"}, headers={"Idempotency-Key": key}
        )
        validation_problem(response)
    assert member_state(api, "riverside") == before


def test_no_bad_request_gets_a_500(api: Api, community: dict[str, Any]) -> None:
    """A sweep over every route with hostile path values, queries and bodies."""
    hostile_segments = ["%00", "%ff", "%2e%2e", "@commons", "x" * 300, "%F0%9F%8C%B1"]
    hostile_bodies: list[Any] = [None, [], "x", 1, {"id": None}, {"": ""}, {"name": "\u0000"}]
    paths = [
        "/v1/communities/{s}",
        "/v1/communities/{s}/members",
        "/v1/communities/riverside/members/{s}",
        "/v1/communities/riverside/exchanges/{s}",
        "/v1/api-keys/{s}",
    ]
    for template in paths:
        for segment in hostile_segments:
            path = template.format(s=segment)
            for method in ("GET", "POST", "PATCH", "DELETE"):
                for body in hostile_bodies[:2] if method != "GET" else [None]:
                    response = api.request(method, path, json=body)
                    assert response.status_code < 500, (method, path, body, response.text)
                    assert response.headers["content-type"].startswith(
                        ("application/json", "application/problem+json")
                    ), (method, path, response.headers)
    for body in hostile_bodies:
        for path in ("/v1/communities", MEMBERS, "/v1/api-keys", f"{C}/exchanges"):
            response = api.post(path, json=body)
            assert response.status_code in (404, 409, 422), (path, body, response.text)
    for query in ("limit=%00", "cursor=%00", "cursor=%ff%fe", "status=%00", "limit=1&limit=2"):
        response = api.get(f"{MEMBERS}?{query}")
        assert response.status_code in (200, 422), (query, response.text)

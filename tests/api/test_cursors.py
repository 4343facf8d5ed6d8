"""List cursors are opaque and decoded strictly: whatever a client puts in `cursor`, a list
either goes on from a position it gave out or answers `422 validation_error` — never a 500."""

from __future__ import annotations

import base64
from typing import Any

from tests.support.api import Api
from tests.support.ledger import EXCHANGES, C, forged_cursor, posted, problem
from tests.support.workflows import proposed

LISTS = [
    "/v1/communities",
    "/v1/api-keys",
    "/v1/audit-log",
    f"{C}/members",
    EXCHANGES,
    f"{EXCHANGES}?status=pending",
    f"{EXCHANGES}?status=rejected",
    f"{C}/balances",
    f"{C}/members/alice/statement",
    f"{C}/audit-log",
]
"""Every list that pages with a cursor."""


def raw_cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


GARBAGE = {
    "nested arrays": raw_cursor(b"[" * 1536),  # 2048 characters: as long as a cursor may be
    "nested objects": raw_cursor(b'{"a":' * 150),
    "nested inside a position": forged_cursor({"after": [[[[[]]]]]}),
    "a number past 64 bits": raw_cursor(b"1" + b"0" * 400),
    "a huge integer field": raw_cursor(b'{"after_seq":' + b"9" * 500 + b"}"),
    "NaN": raw_cursor(b'{"after_seq":NaN}'),
    "not base64": "%%%",
    "not UTF-8": raw_cursor(b'{"after":"\xff"}'),
    "a string": forged_cursor("after"),  # type: ignore[arg-type]
    "null": raw_cursor(b"null"),
}


def test_garbage_cursors_are_refused_by_every_list(
    api: Api, community: dict[str, Any], subtests: Any
) -> None:
    posted(api, "alice", "bob", 1)
    for path in LISTS:
        for case, cursor in GARBAGE.items():
            with subtests.test(path=path, case=case):
                problem(api.get(path, params={"cursor": cursor}), 422, "validation_error")


NOT_AWARE_TIMES = [
    "2026-01-01T00:00:00",  # naive
    "2026-01-01",  # a date
    "2026-01-01T00:00:00.000000",
    "2026-01-01 00:00:00+00:00",  # not RFC 3339
    "2026-01-01T00:00:00+00:00\n",
    "9999-12-31T23:59:59-05:00",  # past year 9999 in UTC
    "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
    "2026-13-01T00:00:00Z",
    "tomorrow",
]


def test_a_proposal_cursor_must_hold_a_time_with_an_offset(
    api: Api, community: dict[str, Any], subtests: Any
) -> None:
    first = proposed(api, "alice", "bob", 1)
    for status in ("pending", "cancelled"):
        for moment in NOT_AWARE_TIMES:
            with subtests.test(status=status, moment=moment):
                cursor = forged_cursor({"after_time": moment, "after_id": first["id"]})
                response = api.get(EXCHANGES, params={"status": status, "cursor": cursor})
                problem(response, 422, "validation_error")
    for moment in ("2000-01-01T00:00:00Z", "2000-01-01T01:00:00.5+01:00"):
        cursor = forged_cursor({"after_time": moment, "after_id": first["id"]})
        response = api.get(EXCHANGES, params={"status": "pending", "cursor": cursor})
        assert response.status_code == 200, response.text
        assert [item["id"] for item in response.json()["items"]] == [first["id"]]


def test_proposal_pages_still_follow_their_own_cursor(api: Api, community: dict[str, Any]) -> None:
    ids = [proposed(api, "alice", "bob", 1)["id"] for _ in range(3)]
    seen: list[str] = []
    params: dict[str, Any] = {"status": "pending", "limit": 2}
    while True:
        page = api.get(EXCHANGES, params=params).json()
        seen.extend(item["id"] for item in page["items"])
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == ids

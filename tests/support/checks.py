"""Helpers for the foundation tests: problem documents, exchanges that give members a balance, and
what a refused request must leave untouched."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from tests.support.api import Api, every_item

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
PROBLEM_MEMBERS = {"type", "title", "status", "detail", "code"}


def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """Assert `response` is the RFC 9457 problem `code` with `status`; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = dict(response.json())
    assert set(body) >= PROBLEM_MEMBERS, body
    assert body["code"] == code, body
    assert body["status"] == status, body
    assert isinstance(body["title"], str), body
    assert body["title"], body
    assert isinstance(body["detail"], str), body
    assert body["detail"], body
    assert body["type"].endswith(code), body
    return body


def validation_problem(response: Any) -> dict[str, Any]:
    """Assert `response` is `422 validation_error` listing where and what is wrong."""
    body = problem(response, 422, "validation_error")
    assert body["errors"], body
    for error in body["errors"]:
        assert isinstance(error["loc"], list), error
        assert isinstance(error["msg"], str), error
        assert error["msg"], error
    return body


def give(api: Api, community: str, provider: str, receiver: str, amount: int) -> dict[str, Any]:
    """Record that `provider` gave `receiver` something worth `amount` (provider's balance goes
    up, receiver's down)."""
    response = api.post(
        f"/v1/communities/{community}/exchanges",
        json={
            "provider": provider,
            "receiver": receiver,
            "amount": amount,
            "description": f"{provider} helped {receiver}",
        },
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def members(api: Api, community: str, **params: Any) -> list[dict[str, Any]]:
    """Every member of `community` (following the cursor)."""
    return every_item(api.get, f"/v1/communities/{community}/members", **params)


def member_state(api: Api, community: str) -> list[tuple[Any, ...]]:
    """What a refused request must leave untouched: every member's fields, balance and limits."""
    return [
        (
            m["id"],
            m["name"],
            m["kind"],
            m["status"],
            m["balance"],
            m["lower_limit"],
            m["upper_limit"],
        )
        for m in members(api, community)
    ]


def cursor_of(position: Any) -> str:
    """A cursor that encodes `position` the way the service's cursors look (base64url JSON)."""
    raw = json.dumps(position, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def walk_pages(api: Api, path: str, limit: int, **filters: Any) -> list[list[str]]:
    """The ids on each page of a list, following `next_cursor` until it is null."""
    pages: list[list[str]] = []
    params: dict[str, Any] = {"limit": limit, **filters}
    while True:
        response = api.get(path, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append([item["id"] for item in page["items"]])
        if page["next_cursor"] is None:
            return pages
        assert len(pages) < 100, "the cursor never ends"
        params = {"limit": limit, **filters, "cursor": page["next_cursor"]}

"""Calling the API as a test: a client bound to one key, keys made as the command line makes
them, and the communities, members and pages most tests start from."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from protocoop.auth.roles import Role
from protocoop.db import Database
from protocoop.keys import service as keys_service


class Api:
    """A test client that authenticates as one key: `api.as_(token)` switches keys."""

    def __init__(self, client: TestClient, token: str | None) -> None:
        self.client = client
        self.token = token

    def as_(self, token: str | None) -> Api:
        return Api(self.client, token)

    def _headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        merged = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        merged.update(headers or {})
        return merged

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        kwargs["headers"] = self._headers(kwargs.get("headers"))
        return self.client.request(method, path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Any:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)


def make_key(db: Database, role: Role, community: str | None = None) -> str:
    """A fresh token of `role`, made as the command line would."""
    return db.run_write(
        lambda session: keys_service.create_key(
            session, role=role, community_id=community, label=f"test {role.value}", created_by=None
        )
    ).token


def every_item(get: Callable[..., Any], path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a list at `path`, following `next_cursor` 1000 at a time; `get(path,
    params=...)` is any client's GET (each page must answer 200)."""
    items: list[dict[str, Any]] = []
    query: dict[str, Any] = {"limit": 1000, **params}
    while True:
        response = get(path, params=query)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
        page = response.json()
        items.extend(page["items"])
        if page["next_cursor"] is None:
            return items
        query = {**query, "cursor": page["next_cursor"]}


def create_community(api: Api, community_id: str = "riverside", **fields: Any) -> dict[str, Any]:
    body = {
        "id": community_id,
        "name": fields.pop("name", community_id.title()),
        "unit": fields.pop("unit", {"code": "HOUR", "name": "hour", "scale": 0}),
        "default_lower_limit": fields.pop("default_lower_limit", -100),
        **fields,
    }
    response = api.post("/v1/communities", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def create_member(api: Api, community_id: str, member_id: str, **fields: Any) -> dict[str, Any]:
    body = {"id": member_id, "name": fields.pop("name", member_id.title()), **fields}
    response = api.post(f"/v1/communities/{community_id}/members", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())

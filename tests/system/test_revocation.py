"""A revoked key is refused on its very next request, by every worker of a real
`protocoop serve --workers 2`, whether it was revoked through the API (answered by one worker) or
with `protocoop keys revoke` from another process — though both workers had it cached."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.live_server import LiveServer, admin_call, protocoop_command, serving

pytestmark = pytest.mark.exclusive  # timing, crash windows and group sizes need the cores

COMMUNITY = "riverside"
C = f"/v1/communities/{COMMUNITY}"
REQUESTS = 16
"""Requests of each kind, each on a new connection, so that both workers answer some."""
EXCHANGE = {"provider": "alice", "receiver": "bob", "amount": 1, "description": "tea"}


@pytest.fixture
def server(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    """A live server whose workers keep authenticated keys in their caches for minutes: long
    enough that only the revocation itself can stop a cached key in this test."""
    with serving(backend, tmp_path, request, {"PROTOCOOP_AUTH_CACHE_S": "600"}) as live:
        yield live


def answers(server: LiveServer, token: str, method: str, path: str, **kwargs: Any) -> list[int]:
    """The statuses of `REQUESTS` identical requests, each on a connection of its own."""
    statuses = []
    for _ in range(REQUESTS):
        with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
            response = client.request(
                method, path, headers={"Authorization": f"Bearer {token}"}, **kwargs
            )
        statuses.append(response.status_code)
    return statuses


def revoke_with_the_command_line(server: LiveServer, key_id: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROTOCOOP_")}
    env["PROTOCOOP_DATABASE_URL"] = server.database_url
    result = subprocess.run(
        [*protocoop_command(), "keys", "revoke", key_id],
        cwd=server.workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def exchange_count(server: LiveServer) -> int:
    return len(admin_call(server, "GET", f"{C}/exchanges", params={"limit": 1000}).json()["items"])


@pytest.mark.slow
@pytest.mark.parametrize("how", ["api", "command line"])
def test_a_revoked_key_is_refused_at_once_by_every_worker_however_it_was_revoked(
    server: LiveServer, how: str
) -> None:
    admin_call(
        server,
        "POST",
        "/v1/communities",
        json={
            "id": COMMUNITY,
            "name": "Riverside",
            "unit": {"code": "HOUR", "name": "hour", "scale": 0},
            "default_lower_limit": -1000,
        },
    )
    for member in ("alice", "bob"):
        admin_call(server, "POST", f"{C}/members", json={"id": member, "name": member})
    key = admin_call(
        server, "POST", "/v1/api-keys", json={"role": "app", "community": COMMUNITY}
    ).json()
    token = key["token"]
    reads = [f"{C}/members/alice/balance", f"{C}/exchanges", C]
    # Both workers authenticate the key, and keep it in their caches.
    for path in reads:
        assert set(answers(server, token, "GET", path)) == {200}, path
    assert set(answers(server, token, "POST", f"{C}/exchanges", json=EXCHANGE)) == {201}
    recorded = exchange_count(server)

    if how == "api":
        admin_call(server, "DELETE", f"/v1/api-keys/{key['id']}")
    else:
        revoke_with_the_command_line(server, key["id"])

    for path in reads:
        assert set(answers(server, token, "GET", path)) == {401}, path
    assert set(answers(server, token, "POST", f"{C}/exchanges", json=EXCHANGE)) == {401}
    assert exchange_count(server) == recorded

"""Invariant 7, one acknowledgement at a time: `kill -9` of the whole server the moment it has
answered 201, then a restart, many times over, on SQLite (`synchronous=FULL`) and PostgreSQL.
Every acknowledged exchange is there after each restart, exactly as acknowledged, its
Idempotency-Key still answers the same bytes, and nothing else was recorded.

Each start is `protocoop serve --workers 1` forked from a process that imported protocoop once
(`ForkedServer`), so a round costs the app's startup rather than an interpreter's imports; each
server is still a process of its own that nothing survives but the database.
`PROTOCOOP_TEST_DURABILITY_ROUNDS` changes how many rounds run (default 10).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest

from tests.support.faults import forked_serving
from tests.support.live_server import create_tight_community, read_json, read_ledger

pytestmark = pytest.mark.exclusive  # timing, crash windows and group sizes need the cores

ROUNDS = int(os.environ.get("PROTOCOOP_TEST_DURABILITY_ROUNDS", "10"))
COMMUNITY = "durable-coop"
MEMBERS = ["ana", "ben", "chloe", "dev"]


@pytest.mark.slow
def test_kill_9_right_after_each_201_never_loses_the_acknowledged_exchange(
    backend: str, fresh_database_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with forked_serving(
        request,
        backend=backend,
        database_url=fresh_database_url,
        workdir=tmp_path / "server",
        extra_env={"PROTOCOOP_SQLITE_SYNCHRONOUS": "FULL"},
    ) as server:
        tokens = create_tight_community(server, COMMUNITY, MEMBERS, -1000, 1000)
        url = f"/v1/communities/{COMMUNITY}/exchanges"
        acknowledged: dict[str, tuple[bytes, dict[str, object]]] = {}
        began = time.monotonic()
        for round_ in range(1, ROUNDS + 1):
            key = f"durable-{round_}"
            body = {
                "provider": MEMBERS[round_ % 4],
                "receiver": MEMBERS[(round_ + 1) % 4],
                "amount": round_,
                "description": f"round {round_}",
            }
            headers = {"Authorization": f"Bearer {tokens['app']}", "Idempotency-Key": key}
            with httpx.Client(base_url=server.base_url, timeout=30) as client:
                response = client.post(url, json=body, headers=headers)
                if response.status_code == 201:
                    server.kill()  # the moment the 201 is in: supervisor, workers, everything
            assert response.status_code == 201, response.text
            acknowledged[key] = (response.content, response.json())
            server.start()

            exchange = response.json()
            with httpx.Client(base_url=server.base_url, timeout=30) as client:
                found = client.get(f"{url}/{exchange['id']}", headers=headers)
                assert found.status_code == 200, f"round {round_}: {found.text}"
                assert found.json()["seq"] == round_
                assert found.json()["hash"] == exchange["hash"]
                assert found.json()["entries"] == exchange["entries"]
                replayed = client.post(url, json=body, headers=headers)
            assert (replayed.status_code, replayed.content) == (201, response.content)
            assert replayed.headers.get("idempotent-replayed") == "true"
        print(
            f"\n[{backend}] {ROUNDS} rounds of post, 201, kill -9, restart in "
            f"{time.monotonic() - began:.1f}s ({server.starts} starts)"
        )

        ledger = read_ledger(server, COMMUNITY, server.admin_token)
        assert [x["id"] for x in ledger] == [doc["id"] for _, doc in acknowledged.values()]
        audit = read_json(server, f"/v1/communities/{COMMUNITY}/audit", server.admin_token)
        assert audit["ok"], audit["problems"]
        assert audit["checked_exchanges"] == ROUNDS
        assert json.loads(acknowledged[f"durable-{ROUNDS}"][0])["seq"] == ROUNDS

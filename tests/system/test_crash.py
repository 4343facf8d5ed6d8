"""`kill -9` of a real `protocoop serve --workers 2` in the middle of a load, on SQLite and
PostgreSQL: after a restart on the same database, every exchange that was acknowledged (201) is
in the ledger, every answered Idempotency-Key still answers the same, the requests cut off by the
crash can be retried with their key, and the audit finds nothing wrong (invariant 7: an
acknowledged write is durable).
"""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.live_server import (
    ExchangeLoad,
    LiveServer,
    create_tight_community,
    nonzero,
    read_json,
    read_ledger,
    replay,
    snapshot_violations,
)

pytestmark = pytest.mark.exclusive  # timing, crash windows and group sizes need the cores

COMMUNITY = "crash-coop"
MEMBERS = [f"member-{n}" for n in range(10)]
LOWER, UPPER = -20, 20
KILL_AFTER_ACKNOWLEDGED = 200
"""The load is killed once this many distinct exchanges were acknowledged (of about 1,500)."""
REPLAYED_KEYS = 50


@pytest.mark.slow
def test_acknowledged_exchanges_survive_kill_9_of_the_server(live_server: LiveServer) -> None:
    tokens = create_tight_community(live_server, COMMUNITY, MEMBERS, LOWER, UPPER)
    load = ExchangeLoad(
        base_url=live_server.base_url,
        community=COMMUNITY,
        members=MEMBERS,
        app_token=tokens["app"],
        auditor_token=tokens["auditor"],
        threads=8,
        exchanges_per_thread=250,
        seed=7,
    )
    began = time.monotonic()
    load.start()
    deadline = time.monotonic() + 120
    while len(load.acknowledged) < KILL_AFTER_ACKNOWLEDGED and time.monotonic() < deadline:
        time.sleep(0.01)
    live_server.kill()
    load.stop.set()
    load.join()
    print(f"\n[{live_server.backend}] before the kill: {load.summary()}")
    assert len(load.acknowledged) >= KILL_AFTER_ACKNOWLEDGED, "the load was too slow"
    assert load.lost, "the kill cut off no request: it was not in the middle of the load"
    assert not load.server_errors, load.server_errors[:5]
    assert not load.idempotency_violations()

    killed_at = time.monotonic() - began
    live_server.start()
    restarted_at = time.monotonic() - began
    admin = live_server.admin_token

    # Every acknowledged exchange is there, exactly as acknowledged.
    with (
        httpx.Client(
            base_url=live_server.base_url,
            timeout=60.0,
            headers={"Authorization": f"Bearer {admin}"},
            limits=httpx.Limits(max_connections=4),
        ) as client,
        ThreadPoolExecutor(4) as pool,
    ):
        found = pool.map(
            lambda exchange_id: client.get(f"/v1/communities/{COMMUNITY}/exchanges/{exchange_id}"),
            list(load.acknowledged),
        )
        for (exchange_id, acknowledged), response in zip(
            load.acknowledged.items(), found, strict=True
        ):
            assert response.status_code == 200, (exchange_id, response.text)
            assert _chained_fields(response.json()) == _chained_fields(acknowledged)

    # An answered key answers the same after the crash (its record committed with its exchange)...
    answered = sorted(load.key_answers)
    for key in random.Random(1).sample(answered, min(REPLAYED_KEYS, len(answered))):
        assert _post(live_server, tokens["app"], key, load.key_bodies[key]) == (
            load.key_answers[key][0].status,
            load.key_answers[key][0].content,
        ), key
    # ...and a request the crash cut off can be retried with its key: once recorded, or now.
    unanswered_unkeyed = 0
    for lost_key, body in load.lost:
        if lost_key is None:
            unanswered_unkeyed += 1
            continue
        status, content = _post(live_server, tokens["app"], lost_key, body)
        assert status in (201, 409), content
        if lost_key in load.key_answers:
            assert (status, content) == (
                load.key_answers[lost_key][0].status,
                load.key_answers[lost_key][0].content,
            )
        if status == 201:
            document = json.loads(content)
            load.acknowledged.setdefault(document["id"], document)

    ledger = read_ledger(live_server, COMMUNITY, admin)
    recorded = {x["id"] for x in ledger}
    assert set(load.acknowledged) <= recorded
    # Only a request without a key that the crash cut off may be recorded unacknowledged.
    assert len(recorded - set(load.acknowledged)) <= unanswered_unkeyed
    assert [x["seq"] for x in ledger] == list(range(1, len(ledger) + 1))
    print(
        f"[{live_server.backend}] after the restart: {len(ledger)} exchanges in the ledger, "
        f"{len(load.acknowledged)} acknowledged (incl. retried keys), "
        f"{len(load.lost)} requests cut off ({unanswered_unkeyed} without a key); killed at "
        f"{killed_at:.1f}s, ready again at {restarted_at:.1f}s, checked at "
        f"{time.monotonic() - began:.1f}s"
    )

    balances_page = read_json(
        live_server, f"/v1/communities/{COMMUNITY}/balances?limit=1000", admin
    )
    balances = {item["account"]: item["balance"] for item in balances_page["items"]}
    assert balances_page["sum"] == 0
    assert sum(balances.values()) == 0
    assert balances_page["as_of_seq"] == len(ledger)
    assert nonzero(balances) == nonzero(replay(ledger))
    assert all(LOWER <= balances[m] <= UPPER for m in MEMBERS)
    assert snapshot_violations(load.snapshots, ledger) == []

    audit = read_json(live_server, f"/v1/communities/{COMMUNITY}/audit", admin)
    assert audit["ok"], audit["problems"]
    assert audit["checked_exchanges"] == len(ledger)

    # The restarted server goes on extending the same chain.
    provider = min(MEMBERS, key=lambda m: balances[m])
    receiver = max(MEMBERS, key=lambda m: balances[m])
    status, content = _post(
        live_server,
        tokens["app"],
        "after-the-crash",
        json.dumps(
            {"provider": provider, "receiver": receiver, "amount": 1, "description": "after"}
        ).encode(),
    )
    assert status == 201, content
    after = json.loads(content)
    assert after["seq"] == len(ledger) + 1
    assert after["prev_hash"] == (ledger[-1]["hash"] if ledger else "0" * 64)


def _post(server: LiveServer, token: str, key: str, body: bytes) -> tuple[int, bytes]:
    """POST an exchange with an Idempotency-Key until it has a final answer."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Idempotency-Key": key,
    }
    with httpx.Client(base_url=server.base_url, timeout=60.0) as client:
        for _ in range(200):
            response = client.post(
                f"/v1/communities/{COMMUNITY}/exchanges", content=body, headers=headers
            )
            if response.status_code == 409 and response.json()["code"] == "request_in_progress":
                time.sleep(0.05)
                continue
            return response.status_code, response.content
    raise AssertionError(f"{key} stayed in progress")


def _chained_fields(exchange: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "seq", "provider", "receiver", "amount", "entries", "prev_hash", "hash")
    return {key: exchange[key] for key in keys}

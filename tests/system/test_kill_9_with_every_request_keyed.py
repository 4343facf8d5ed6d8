"""`kill -9` of a real `protocoop serve --workers 2` in the middle of a load in which EVERY request
carries an Idempotency-Key, on SQLite and PostgreSQL: after the restart, every request is sent
again with its key until it has a final answer, and then the ledger holds exactly the exchanges
those answers acknowledge — no tolerance for "unexplained" ones — each once, as its own request
asked.

Two communities are loaded at once (6 client threads each, keys retried by the same thread and
sometimes concurrently by another). Every request has a unique description, so an exchange
recorded twice (under two ids) shows up as a repeated description, and one recorded for a request
whose answer was lost shows up as a recorded id no answer acknowledges.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import httpx
import pytest

from tests.support.live_server import (
    Answer,
    ExchangeLoad,
    LiveServer,
    create_tight_community,
    read_json,
    read_ledger,
    snapshot_violations,
)
from tests.support.matching import answer_mismatches, replay_bodies

pytestmark = pytest.mark.exclusive  # timing, crash windows and group sizes need the cores

COMMUNITIES = ["keyed-coop-a", "keyed-coop-b"]
MEMBERS = [f"member-{n}" for n in range(10)]
LOWER, UPPER = -20, 20
KILL_AFTER_ACKNOWLEDGED = 80
"""Per community: the server is killed once both have this many acknowledged exchanges."""


@pytest.mark.slow
def test_after_kill_9_every_keyed_request_resolves_and_the_ledger_is_exactly_the_acknowledged(
    live_server: LiveServer,
) -> None:
    server = live_server
    loads: dict[str, ExchangeLoad] = {}
    for n, community in enumerate(COMMUNITIES):
        tokens = create_tight_community(server, community, MEMBERS, LOWER, UPPER)
        loads[community] = ExchangeLoad(
            base_url=server.base_url,
            community=community,
            members=MEMBERS,
            app_token=tokens["app"],
            auditor_token=tokens["auditor"],
            threads=6,
            exchanges_per_thread=250,
            idempotent_share=1.0,
            seed=97 + n,
        )
    for load in loads.values():
        load.start()
    deadline = time.monotonic() + 120
    while (
        min(len(load.acknowledged) for load in loads.values()) < KILL_AFTER_ACKNOWLEDGED
        and time.monotonic() < deadline
    ):
        time.sleep(0.01)
    server.kill()
    for load in loads.values():
        load.stop.set()
    for load in loads.values():
        load.join()
        print(f"\n[{server.backend}] {load.community} before the kill: {load.summary()}")
        assert len(load.acknowledged) >= KILL_AFTER_ACKNOWLEDGED, "the load was too slow"
        assert all(key is not None for key, _ in load.lost), "a request went without a key"
        assert not load.idempotency_violations()
    assert any(load.lost for load in loads.values()), "the kill cut off no request"
    killed_at = time.monotonic()
    server.start()
    print(f"[{server.backend}] ready again after {time.monotonic() - killed_at:.1f} s")

    admin = server.admin_token
    for community, load in loads.items():
        # Every key, answered or not before the crash, until it has a final answer.
        keys = sorted(load.key_bodies)
        with (
            httpx.Client(
                base_url=server.base_url,
                timeout=60.0,
                headers={"Authorization": f"Bearer {load.app_token}"},
                limits=httpx.Limits(max_connections=4),
            ) as client,
            ThreadPoolExecutor(4) as pool,
        ):
            finals = dict(
                zip(keys, pool.map(partial(final_answer, client, load), keys), strict=True)
            )
        acknowledged: dict[str, dict[str, Any]] = {}
        for key, answer in finals.items():
            body = json.loads(load.key_bodies[key])
            before = [a for a in load.key_answers.get(key, []) if a.status != 503]
            if before:  # a final answer before the crash is the answer now, byte for byte
                assert answer == before[0], (key, answer, before[0])
            assert answer.status in (201, 409), (key, answer)
            if answer.status == 409:
                assert answer.code == "limit_exceeded", (key, answer)
                continue
            document = json.loads(answer.content)
            assert (
                answer_mismatches(
                    body, document, community=community, status="completed", policy=None
                )
                == []
            ), (key, document)
            assert document["id"] not in acknowledged, f"two keys answered {document['id']}"
            acknowledged[document["id"]] = body
        assert set(load.acknowledged) <= set(acknowledged)

        # Recorded == acknowledged, exactly; no request recorded twice.
        ledger = read_ledger(server, community, admin)
        assert [x["seq"] for x in ledger] == list(range(1, len(ledger) + 1))
        assert {x["id"] for x in ledger} == set(acknowledged), community
        assert len(ledger) == len(acknowledged)
        assert Counter(x["description"] for x in ledger).most_common(1)[0][1] == 1
        for recorded in ledger:
            assert (
                answer_mismatches(
                    acknowledged[recorded["id"]],
                    recorded,
                    community=community,
                    status="completed",
                    policy=None,
                )
                == []
            ), recorded
        print(
            f"[{server.backend}] {community}: {len(keys)} keys, {len(acknowledged)} recorded, "
            f"{len(load.lost)} cut off by the kill"
        )

        page = read_json(server, f"/v1/communities/{community}/balances?limit=1000", admin)
        shown = {i["account"]: i["balance"] for i in page["items"] if i["balance"]}
        assert page["sum"] == 0
        assert page["as_of_seq"] == len(ledger)
        assert shown == replay_bodies(acknowledged.values(), None)
        assert all(
            LOWER <= i["balance"] <= UPPER for i in page["items"] if i["account"] != "@commons"
        )
        assert snapshot_violations(load.snapshots, ledger) == []
        audit = read_json(server, f"/v1/communities/{community}/audit", admin)
        assert audit["ok"], audit["problems"]
        assert audit["checked_exchanges"] == len(ledger)


def final_answer(client: httpx.Client, load: ExchangeLoad, key: str) -> Answer:
    """POST the key's request until it gets an answer that is neither `request_in_progress` nor
    a 503."""
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    for _ in range(600):
        try:
            response = client.post(
                load.exchanges_url, content=load.key_bodies[key], headers=headers
            )
        except httpx.TransportError:
            time.sleep(0.1)
            continue
        answer = Answer(response.status_code, response.content)
        if answer.status == 503 or (answer.status == 409 and answer.code == "request_in_progress"):
            time.sleep(0.05)
            continue
        return answer
    raise AssertionError(f"{key} never got a final answer")

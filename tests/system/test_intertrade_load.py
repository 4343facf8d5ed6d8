"""Intertrades under load against a real `protocoop serve --workers 2`, on SQLite and PostgreSQL.

Two linked communities trade both ways at once: threads post intertrades into `west` (a member of
`east` gives) and into `east` (a member of `west` gives), every request with an Idempotency-Key,
amounts and rounding side at random, caps tight enough that many are refused. Both heads are
locked in community-id order, so the two directions queue rather than deadlock: no request may
get a 5xx. Afterwards each community's ledger holds exactly the acknowledged intertrades, each
once and with both sides; each clearing account equals its imports minus its exports and never
passed its cap; both audits are ok.

The second test kills the server (`kill -9`) in the middle of such a load, restarts it, and sends
every unanswered request again with its key until it has a final answer: each intertrade is then
recorded on both sides or on neither, and exactly the acknowledged ones are.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.support.live_server import (
    LiveServer,
    admin_call,
    create_tight_community,
    read_json,
    read_ledger,
)

pytestmark = pytest.mark.exclusive  # timing, crash windows and group sizes need the cores

WEST, EAST = "west-coop", "east-coop"
MEMBERS = [f"member-{n}" for n in range(6)]
LOWER, UPPER = -60, 60
RATE = {"a": 2, "b": 3}  # 2 units of WEST are worth 3 of EAST
CAPS = {"a_cap": 40, "b_cap": 60}
THREADS, PER_THREAD = 8, 40


@dataclass
class Request:
    key: str
    receiver_community: str
    body: dict[str, Any]
    answer: tuple[int, dict[str, Any]] | None = None


@dataclass
class Traders:
    server: LiveServer
    tokens: dict[str, str]
    requests: list[Request] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def plan(self, seed: int) -> list[Request]:
        rng = random.Random(seed)
        planned = []
        for _ in range(PER_THREAD):
            receiver_community, provider_community = rng.choice([(WEST, EAST), (EAST, WEST)])
            planned.append(
                Request(
                    key=str(uuid.uuid4()),
                    receiver_community=receiver_community,
                    body={
                        "provider": f"{provider_community}/{rng.choice(MEMBERS)}",
                        "receiver": rng.choice(MEMBERS),
                        "amount": rng.randint(1, 12),
                        "amount_in": rng.choice(["provider", "receiver"]),
                        "description": f"load {uuid.uuid4().hex[:10]}",
                    },
                )
            )
        with self.lock:
            self.requests.extend(planned)
        return planned

    def send(self, client: httpx.Client, request: Request) -> bool:
        """One attempt; True when it got a final answer (201, or a 4xx refusal)."""
        try:
            response = client.post(
                f"/v1/communities/{request.receiver_community}/intertrades",
                json=request.body,
                headers={
                    "Authorization": f"Bearer {self.tokens[request.receiver_community]}",
                    "Idempotency-Key": request.key,
                },
            )
        except httpx.TransportError:
            return False
        if response.status_code >= 500:
            with self.lock:
                self.server_errors.append(f"{response.status_code} {response.text[:200]}")
            return False
        if response.status_code == 409 and response.json().get("code") == "request_in_progress":
            return False
        request.answer = (response.status_code, response.json())
        return True

    def run(self, requests: list[Request], stop: threading.Event | None = None) -> None:
        with httpx.Client(base_url=self.server.base_url, timeout=30.0) as client:
            for request in requests:
                if stop is not None and stop.is_set():
                    return
                self.send(client, request)

    def resolve_all(self, deadline_s: float = 120.0) -> None:
        """Send every request without a final answer again, with its key, until each has one."""
        deadline = time.monotonic() + deadline_s
        with httpx.Client(base_url=self.server.base_url, timeout=30.0) as client:
            for request in self.requests:
                while request.answer is None:
                    assert time.monotonic() < deadline, "a request never got a final answer"
                    if not self.send(client, request):
                        time.sleep(0.1)


def linked_network(server: LiveServer) -> tuple[Traders, str]:
    tokens = {}
    for community in (WEST, EAST):
        tokens[community] = create_tight_community(server, community, MEMBERS, LOWER, UPPER)["app"]
    link = admin_call(
        server, "POST", "/v1/links", json={"a": WEST, "b": EAST, "rate": RATE, **CAPS}
    ).json()
    return Traders(server, tokens), link["id"]


def check_ledgers(traders: Traders, link_id: str) -> Counter[tuple[int, str | None]]:
    server = traders.server
    admin = server.admin_token
    acknowledged = {
        request.answer[1]["id"]: request
        for request in traders.requests
        if request.answer is not None and request.answer[0] == 201
    }
    outcomes: Counter[tuple[int, str | None]] = Counter(
        (request.answer[0], request.answer[1].get("code"))
        for request in traders.requests
        if request.answer is not None
    )
    assert set(outcomes) <= {(201, None), (409, "limit_exceeded"), (422, "validation_error")}, (
        outcomes
    )
    sides: dict[str, dict[str, dict[str, Any]]] = {}
    for community in (WEST, EAST):
        ledger = read_ledger(server, community, admin)
        assert [x["seq"] for x in ledger] == list(range(1, len(ledger) + 1))
        ids = [x["intertrade_id"] for x in ledger]
        assert None not in ids  # nothing else was posted
        assert len(ids) == len(set(ids)), "an intertrade recorded twice in one community"
        sides[community] = {x["intertrade_id"]: x for x in ledger}
    assert set(sides[WEST]) == set(sides[EAST]) == set(acknowledged), "one side without the other"
    imports = dict.fromkeys((WEST, EAST), 0)
    exports = dict.fromkeys((WEST, EAST), 0)
    for intertrade_id, request in acknowledged.items():
        document = request.answer[1] if request.answer else {}
        provider, receiver = document["provider"], document["receiver"]
        assert provider["community"] == request.body["provider"].split("/")[0]
        assert receiver["member"] == request.body["receiver"]
        stated = provider if request.body["amount_in"] == "provider" else receiver
        assert stated["amount"] == request.body["amount"]
        assert sides[provider["community"]][intertrade_id]["amount"] == provider["amount"]
        assert sides[receiver["community"]][intertrade_id]["amount"] == receiver["amount"]
        exports[provider["community"]] += provider["amount"]
        imports[receiver["community"]] += receiver["amount"]
    link = read_json(server, f"/v1/links/{link_id}", admin)
    for side in link["sides"]:
        community = side["community"]
        assert side["balance"] == imports[community] - exports[community]
        assert side["balance"] >= -side["cap"]
    for community in (WEST, EAST):
        audit = read_json(server, f"/v1/communities/{community}/audit", admin)
        assert audit["ok"], audit["problems"]
    return outcomes


@pytest.mark.slow
def test_intertrades_both_ways_at_once_never_deadlock_cross_a_cap_or_lose_a_side(
    live_server: LiveServer,
) -> None:
    traders, link_id = linked_network(live_server)
    threads = [
        threading.Thread(target=traders.run, args=(traders.plan(seed),)) for seed in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert traders.server_errors == []
    traders.resolve_all()  # a 409 request_in_progress only: nothing else lacks an answer
    outcomes = check_ledgers(traders, link_id)
    print(f"\n[{live_server.backend}] {dict(outcomes)}")
    assert outcomes[(201, None)] >= 40
    assert outcomes[(409, "limit_exceeded")] > 0, "the caps and limits were never tested"


@pytest.mark.slow
def test_after_kill_9_each_intertrade_is_recorded_on_both_sides_or_neither(
    live_server: LiveServer,
) -> None:
    traders, link_id = linked_network(live_server)
    stop = threading.Event()
    threads = [
        threading.Thread(target=traders.run, args=(traders.plan(100 + seed), stop))
        for seed in range(6)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while sum(1 for r in traders.requests if r.answer) < 40 and time.monotonic() < deadline:
        time.sleep(0.02)
    live_server.kill()
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    live_server.start()
    traders.server_errors.clear()  # answers cut off by the kill are sent again below
    traders.resolve_all()
    outcomes = check_ledgers(traders, link_id)
    print(f"\n[{live_server.backend}] after kill -9: {dict(outcomes)}")
